"""Aggregation rules as pure functions over ``(weight, state)`` pairs, shared by every runner.

A state is an ordered mapping ``name -> tensor``. Functions here never mutate their inputs and never
read configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedml.errors import AggregationError

State = Mapping[str, torch.Tensor]
"""A model state: parameter or buffer name -> tensor."""

WeightedState = tuple[float, State]
"""One client's contribution: its weight (usually its sample count) and its state."""


def weighted_mean(updates: Sequence[WeightedState]) -> dict[str, torch.Tensor]:
    """Return the weighted average of states, the FedAvg rule of McMahan et al. (2017).

    Each weight is divided by the total first, so scaling every weight by the same factor gives the same
    result. Integer tensors (such as BatchNorm's ``num_batches_tracked``) are averaged and rounded back.

    Parameters
    ----------
    updates
        ``(weight, state)`` pairs; weights must be finite and non-negative with a positive sum, and every
        state must have the same keys, shapes and dtypes.

    Raises
    ------
    AggregationError
        If there is nothing to aggregate, a weight is invalid, or the states do not match.

    Examples
    --------
    >>> a, b = {"w": torch.tensor([0.0])}, {"w": torch.tensor([3.0])}
    >>> weighted_mean([(1, a), (2, b)])["w"]
    tensor([2.])

    """
    weights = check_weights(updates)
    total = sum(weights)
    reference = updates[0][1]
    _check_compatible(reference, [state for _, state in updates])
    result: dict[str, torch.Tensor] = {}
    for name, ref in reference.items():
        rows = stacked_rows([state[name] for _, state in updates]) if ref.dtype in _MATRIX_DTYPES else None
        if rows is not None:
            # The states are rows of one tensor (the vectorized engine's): one product, no copies.
            shares = torch.tensor([w / total for w in weights], dtype=ref.dtype, device=ref.device)
            result[name] = (shares @ rows.flatten(1)).view(ref.shape)
            continue
        acc = torch.zeros(ref.shape, dtype=_accumulator_dtype(ref.dtype), device=ref.device)
        for weight, (_, state) in zip(weights, updates, strict=True):
            acc.add_(state[name].to(acc.dtype), alpha=weight / total)
        result[name] = acc.round().to(ref.dtype) if not ref.dtype.is_floating_point else acc.to(ref.dtype)
    return result


def check_weights(updates: Sequence[WeightedState]) -> list[float]:
    """Return the weights of ``updates`` as floats after checking there is something to aggregate.

    Raises
    ------
    AggregationError
        If ``updates`` is empty, a weight is negative or not finite, or the weights sum to zero.

    """
    if not updates:
        raise AggregationError("no client updates to aggregate")
    weights = [float(w) for w, _ in updates]
    if any(not w >= 0 or w == float("inf") for w in weights):
        raise AggregationError(f"weights must be finite and non-negative, got {weights}")
    if sum(weights) <= 0:
        raise AggregationError(f"the weights sum to {sum(weights)}; at least one must be positive")
    return weights


def is_finite_state(state: State) -> bool:
    """Return whether every floating-point tensor of ``state`` is free of NaN and infinity."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.dtype.is_floating_point)


_BLOCK_ELEMENTS = 1 << 24
"""Elements stacked at a time by ``finite_states`` (64 MiB of float32), bounding its extra memory."""


def finite_states(states: Sequence[State]) -> list[bool]:
    """Return ``is_finite_state`` of every state, checking all states at once per tensor name.

    A sum propagates NaN and infinity, so one sum per state and name (over rows read in place, or
    stacked in blocks of bounded size), added up over the names, and one check of those totals replace
    a check, and a host sync, per state and name. Only a state whose total is not finite (a NaN, an
    infinity, or finite values whose sum overflows) is checked value by value. States whose keys or
    shapes differ are checked one by one.
    """
    if not states:
        return []
    reference = states[0]
    names = reference.keys()
    if any(s.keys() != names for s in states):
        return [is_finite_state(s) for s in states]
    sums: list[torch.Tensor] = []
    for name, tensor in reference.items():
        if not tensor.dtype.is_floating_point or tensor.numel() == 0:
            continue
        column = [s[name] for s in states]
        rows = stacked_rows(column)
        if rows is not None:
            sums.append(rows.flatten(1).sum(dim=1))
            continue
        if any(t.shape != tensor.shape for t in column):
            return [is_finite_state(s) for s in states]
        per_block = max(1, _BLOCK_ELEMENTS // tensor.numel())
        # One block stacked at a time: each is freed once summed.
        starts = range(0, len(states), per_block)
        block_sums = [torch.stack(column[i : i + per_block]).flatten(1).sum(dim=1) for i in starts]
        sums.append(torch.cat(block_sums))
    if not sums:
        return [True] * len(states)
    device = sums[0].device
    # The sums of all names added up: finite only if each is (or flagged, and checked value by value).
    finite = torch.isfinite(torch.stack([s.to(device) for s in sums]).sum(dim=0)).tolist()
    return [ok or is_finite_state(state) for ok, state in zip(finite, states, strict=True)]


_MATRIX_DTYPES = (torch.float32, torch.float64)
"""Dtypes whose weighted mean over stacked rows is one matrix product (others accumulate one by one)."""


def stacked_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Return ``torch.stack(tensors)`` as a view when they are consecutive rows of one tensor, else None.

    The vectorized engine's updates are views of its stacked parameters, so the round's checks and
    mean read them where they lie instead of copying every client's state again.

    Examples
    --------
    >>> stacked = torch.arange(6.0).view(3, 2)
    >>> stacked_rows([stacked[0], stacked[1]])
    tensor([[0., 1.],
            [2., 3.]])
    >>> stacked_rows([stacked[0], stacked[2]]) is None
    True
    >>> stacked_rows([]) is None
    True

    """
    if not tensors:
        return None
    first, last = tensors[0], tensors[-1]
    size, shape, dtype, device = first.numel(), first.shape, first.dtype, first.device
    start, step = first.data_ptr(), size * first.element_size()
    # Each tensor's values at its place in a row-major stack of the first one's; the first and the last
    # in one storage, which then holds every row in between.
    if (
        not first.is_contiguous()
        or last.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
        or any(
            t.data_ptr() != start + i * step
            or t.dtype != dtype
            or t.shape != shape
            or t.device != device
            or not t.is_contiguous()
            for i, t in enumerate(tensors)
        )
    ):
        return None
    return first.as_strided((len(tensors), *shape), (size, *first.stride()))


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype.is_floating_point:
        return dtype
    return torch.float64


def _check_compatible(reference: State, states: Sequence[State]) -> None:
    keys = list(reference)
    for index, state in enumerate(states):
        if list(state) != keys:
            missing = sorted(set(keys) - set(state))
            extra = sorted(set(state) - set(keys))
            raise AggregationError(
                f"update {index} has different keys: missing {missing}, unexpected {extra}"
            )
        for name in keys:
            if state[name].shape != reference[name].shape:
                raise AggregationError(
                    f"update {index}: {name!r} has shape {tuple(state[name].shape)}, "
                    f"expected {tuple(reference[name].shape)}"
                )
