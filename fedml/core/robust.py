"""Byzantine-robust aggregation rules: pure functions over ``(weight, state)`` pairs.

Each rule works on the floating-point tensors of the states, flattened to one vector per client;
integer buffers (such as BatchNorm's ``num_batches_tracked``) take the plain weighted mean. Rules never
mutate their inputs, never read configuration, and raise ``AggregationError`` naming the numbers when
their precondition (enough honest clients for the declared Byzantine ones) does not hold.

References: coordinate-wise median and trimmed mean (Yin et al., 2018), Krum and multi-Krum (Blanchard
et al., 2017), Bulyan (El Mhamdi et al., 2018), norm-difference clipping (Sun et al., 2019), geometric
median by smoothed Weiszfeld iterations (RFA, Pillutla et al., 2022).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fedml.core.aggregation import State, WeightedState, check_weights, weighted_mean
from fedml.errors import AggregationError, ConfigError


def coordinate_median(updates: Sequence[WeightedState]) -> dict[str, torch.Tensor]:
    """Return the coordinate-wise median of the states (the mean of the two middle values for even n).

    Weights are ignored: a Byzantine client must not buy influence by claiming many samples.
    """
    matrix, weights = _stack(updates)
    ordered = matrix.sort(dim=0).values
    n = ordered.shape[0]
    middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return _unflatten(middle, updates, weights)


def trimmed_mean(updates: Sequence[WeightedState], trim_ratio: float) -> dict[str, torch.Tensor]:
    """Drop the ``floor(trim_ratio * n)`` largest and smallest values of every coordinate; average the rest.

    Raises
    ------
    AggregationError
        If ``trim_ratio`` is outside [0, 0.5) or would trim every value.

    """
    if not 0 <= trim_ratio < 0.5:
        raise AggregationError(f"trimmed mean needs 0 <= trim_param_b < 0.5, got {trim_ratio}")
    matrix, weights = _stack(updates)
    n = matrix.shape[0]
    k = int(trim_ratio * n)
    if n - 2 * k < 1:
        raise AggregationError(f"trimming {k} from each end of {n} updates leaves nothing to average")
    kept = matrix.sort(dim=0).values[k : n - k]
    return _unflatten(kept.mean(dim=0), updates, weights)


def krum_select(updates: Sequence[WeightedState], byzantine_num: int, select_num: int = 1) -> list[int]:
    """Return the indices of the ``select_num`` updates with the lowest Krum scores, best first.

    A score is the sum of squared distances to the ``n - f - 2`` nearest other updates.

    Raises
    ------
    AggregationError
        Unless ``n >= 2f + 3`` (with ``f > 0``) and ``1 <= select_num <= n - f``.

    """
    matrix, _ = _stack(updates)
    n = matrix.shape[0]
    _require_krum(n, byzantine_num, select_num)
    distances = torch.cdist(matrix, matrix).pow(2)
    neighbours = max(n - byzantine_num - 2, 1) if n > 1 else 0
    nearest = distances.sort(dim=1).values[:, 1 : 1 + neighbours]
    scores = nearest.sum(dim=1)
    return [int(i) for i in torch.argsort(scores, stable=True)[:select_num]]


def krum(
    updates: Sequence[WeightedState], byzantine_num: int, select_num: int = 1
) -> dict[str, torch.Tensor]:
    """Krum (``select_num == 1``) or multi-Krum: the weighted mean of the best-scoring updates."""
    chosen = krum_select(updates, byzantine_num, select_num)
    return weighted_mean([updates[i] for i in chosen])


def bulyan(updates: Sequence[WeightedState], byzantine_num: int) -> dict[str, torch.Tensor]:
    """Bulyan: Krum picks ``n - 2f`` updates; per coordinate, average the ``n - 4f`` nearest the median.

    The selection set is the ``n - 2f`` best Krum scores of the full set (one scoring pass rather than
    El Mhamdi et al.'s re-scoring after each pick, which ties on its last picks and so depends on order).

    Raises
    ------
    AggregationError
        Unless ``n >= 4f + 3``.

    """
    n, f = len(updates), byzantine_num
    if f < 0 or n < 4 * f + 3:
        raise AggregationError(f"Bulyan needs n >= 4f + 3 updates: {n} updates, byzantine_client_num {f}")
    selected = krum_select(updates, f, select_num=n - 2 * f)
    matrix, weights = _stack([updates[i] for i in sorted(selected)])
    beta = n - 4 * f
    median = matrix.median(dim=0).values
    closest = (matrix - median).abs().argsort(dim=0, stable=True)[:beta]
    return _unflatten(matrix.gather(0, closest).mean(dim=0), updates, weights)


def norm_diff_clipping(
    updates: Sequence[WeightedState], global_state: State, norm_bound: float
) -> dict[str, torch.Tensor]:
    """Clip each update's distance from ``global_state`` to L2 norm ``norm_bound``; return the weighted mean.

    Raises
    ------
    AggregationError
        If ``norm_bound`` is not positive.

    """
    if not norm_bound > 0:
        raise AggregationError(f"norm_diff_clipping needs norm_bound > 0, got {norm_bound}")
    matrix, weights = _stack(updates)
    origin = _flatten(global_state)
    diffs = matrix - origin
    norms = diffs.norm(dim=1, keepdim=True)
    clipped = origin + diffs * (norm_bound / norms.clamp(min=norm_bound))
    return _unflatten((torch.tensor(weights)[:, None] * clipped).sum(dim=0) / sum(weights), updates, weights)


def geometric_median(
    updates: Sequence[WeightedState], max_iter: int = 100, tol: float = 1e-6, smoothing: float = 1e-6
) -> dict[str, torch.Tensor]:
    """Return the weighted geometric median by smoothed Weiszfeld iterations (RFA)."""
    matrix, weights = _stack(updates)
    alphas = torch.tensor(weights, dtype=matrix.dtype) / sum(weights)
    median = (alphas[:, None] * matrix).sum(dim=0)
    for _ in range(max_iter):
        distances = (matrix - median).norm(dim=1).clamp(min=smoothing)
        beta = alphas / distances
        updated = (beta[:, None] * matrix).sum(dim=0) / beta.sum()
        if (updated - median).norm() <= tol * max(1.0, float(median.norm())):
            median = updated
            break
        median = updated
    return _unflatten(median, updates, weights)


def _require_krum(n: int, f: int, select_num: int) -> None:
    if f < 0:
        raise AggregationError(f"byzantine_client_num must be >= 0, got {f}")
    if f > 0 and n < 2 * f + 3:
        raise AggregationError(f"Krum needs n >= 2f + 3 updates: {n} updates, byzantine_client_num {f}")
    if not 1 <= select_num <= max(n - f, 1):
        raise AggregationError(f"krum_param_m must be between 1 and n - f = {n - f}, got {select_num}")


def _float_keys(state: State) -> list[str]:
    return [k for k, t in state.items() if t.dtype.is_floating_point]


def _flatten(state: State) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).to(torch.float32) for k in _float_keys(state)])


def _stack(updates: Sequence[WeightedState]) -> tuple[torch.Tensor, list[float]]:
    weights = check_weights(updates)
    keys = list(updates[0][1])
    for index, (_, state) in enumerate(updates):
        if list(state) != keys:
            raise AggregationError(f"update {index} has different keys from update 0")
    return torch.stack([_flatten(state) for _, state in updates]), weights


def _unflatten(
    vector: torch.Tensor, updates: Sequence[WeightedState], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Shape ``vector`` like the float tensors of the states; integer buffers take the weighted mean."""
    reference: Mapping[str, torch.Tensor] = updates[0][1]
    integer_keys = [k for k in reference if k not in set(_float_keys(reference))]
    integers = (
        weighted_mean(
            [(w, {k: s[k] for k in integer_keys}) for w, (_, s) in zip(weights, updates, strict=True)]
        )
        if integer_keys
        else {}
    )
    result: dict[str, torch.Tensor] = {}
    offset = 0
    for key, tensor in reference.items():
        if key in integers:
            result[key] = integers[key]
        else:
            size = tensor.numel()
            result[key] = vector[offset : offset + size].reshape(tensor.shape).to(tensor.dtype)
            offset += size
    return result


AggregationRule = Callable[[Sequence[WeightedState], State], dict[str, torch.Tensor]]
"""``rule(updates, global_state) -> state``: how a round's updates become the next global state."""

_RULES: dict[str, Callable[[Any], AggregationRule]] = {}


def register_aggregation_rule(name: str, factory: Callable[[Any], AggregationRule]) -> None:
    """Make ``factory(args)`` available as ``defense_args.defense_type: name``."""
    _RULES[name] = factory


def aggregation_rule_names() -> list[str]:
    """Return the registered ``defense_type`` names."""
    return sorted(_RULES)


def create_aggregation_rule(args: Any) -> AggregationRule:
    """Return the rule named by ``defense_args.defense_type`` when ``enable_defense`` is set, else the mean.

    Raises
    ------
    ConfigError
        If the defense is enabled with a type that is not registered.

    """
    if not getattr(args, "enable_defense", False):
        return _mean
    name = args.defense_type
    if name not in _RULES:
        raise ConfigError(
            f"defense_args.defense_type: unknown defense {name!r}; "
            f"valid: {', '.join(aggregation_rule_names())}"
        )
    return _RULES[name](args)


def _mean(updates: Sequence[WeightedState], global_state: State) -> dict[str, torch.Tensor]:
    return weighted_mean(updates)


register_aggregation_rule("median", lambda args: lambda u, g: coordinate_median(u))
register_aggregation_rule("trimmed_mean", lambda args: lambda u, g: trimmed_mean(u, args.trim_param_b))
register_aggregation_rule("krum", lambda args: lambda u, g: krum(u, args.byzantine_client_num))
register_aggregation_rule(
    "multikrum", lambda args: lambda u, g: krum(u, args.byzantine_client_num, args.krum_param_m)
)
register_aggregation_rule("bulyan", lambda args: lambda u, g: bulyan(u, args.byzantine_client_num))
register_aggregation_rule(
    "norm_diff_clipping", lambda args: lambda u, g: norm_diff_clipping(u, g, args.norm_bound)
)
register_aggregation_rule("geometric_median", lambda args: lambda u, g: geometric_median(u))
