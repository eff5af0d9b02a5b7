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
from dataclasses import dataclass
from typing import Any

import torch

from fedml.core.aggregation import State, WeightedState, check_weights, weighted_mean
from fedml.core.registry import Registry
from fedml.errors import AggregationError, ConfigError


def coordinate_median(updates: Sequence[WeightedState]) -> dict[str, torch.Tensor]:
    """Return the coordinate-wise median of the states (``median_of_rows``: even n averages the middle two).

    Weights are ignored: a Byzantine client must not buy influence by claiming many samples.
    """
    matrix, weights = _stack(updates)
    return _unflatten(median_of_rows(matrix), updates, weights)


def median_of_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Return the per-column median of ``matrix``; for an even number of rows, the mean of the middle two.

    The one median of this module (the coordinate-wise median and Bulyan's centre), the statistical
    convention rather than ``torch.median``'s lower middle value.

    Examples
    --------
    >>> median_of_rows(torch.tensor([[1.0], [2.0], [4.0], [10.0]]))
    tensor([3.])

    """
    ordered = matrix.sort(dim=0).values
    n = ordered.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


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
    The median is ``median_of_rows`` (even counts average the middle two, as ``coordinate_median``);
    ties in the distance to it go to the update that comes first in client order.

    Raises
    ------
    AggregationError
        Unless ``n >= 4f + 3``.

    """
    n, f = len(updates), byzantine_num
    _require_bulyan(n, f)
    selected = krum_select(updates, f, select_num=n - 2 * f)
    matrix, weights = _stack([updates[i] for i in sorted(selected)])
    beta = n - 4 * f
    median = median_of_rows(matrix)
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
    clipped, weights = _clipped(updates, global_state, norm_bound)
    return _unflatten((torch.tensor(weights)[:, None] * clipped).sum(dim=0) / sum(weights), updates, weights)


def clip_to_norm(
    updates: Sequence[WeightedState], global_state: State, norm_bound: float
) -> list[dict[str, torch.Tensor]]:
    """Return each update's state with its distance from ``global_state`` clipped to ``norm_bound``.

    Raises
    ------
    AggregationError
        If ``norm_bound`` is not positive.

    """
    clipped, weights = _clipped(updates, global_state, norm_bound)
    return [_unflatten(row, [updates[i]], [weights[i]]) for i, row in enumerate(clipped)]


def _clipped(
    updates: Sequence[WeightedState], global_state: State, norm_bound: float
) -> tuple[torch.Tensor, list[float]]:
    if not norm_bound > 0:
        raise AggregationError(f"norm_diff_clipping needs norm_bound > 0, got {norm_bound}")
    matrix, weights = _stack(updates)
    origin = _flatten(global_state)
    diffs = matrix - origin
    norms = diffs.norm(dim=1, keepdim=True)
    return origin + diffs * (norm_bound / norms.clamp(min=norm_bound)), weights


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


def _require_bulyan(n: int, f: int) -> None:
    if f < 0 or n < 4 * f + 3:
        raise AggregationError(f"Bulyan needs n >= 4f + 3 updates: {n} updates, byzantine_client_num {f}")


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

SelectionRule = Callable[[Sequence[WeightedState], State], list[tuple[int, dict[str, torch.Tensor]]]]
"""``rule(updates, global_state) -> [(index, state)]``: the updates that go on, each with its state."""


@dataclass(frozen=True)
class RobustRule:
    """A registered ``defense_type``: its aggregating form and, when it has one, its selecting form.

    A rule whose ``select`` is set (Krum keeps some updates, norm clipping shrinks each) can stand
    before another in a ``defense_type`` list; an aggregating-only rule (median) must come last.
    Both factories take the ``defense_args`` section.
    """

    aggregate: Callable[[Any], AggregationRule]
    select: Callable[[Any], SelectionRule] | None = None


RULES: Registry[RobustRule] = Registry("defense", key="defense_args.defense_type")
"""The ``defense_args.defense_type`` names."""


def register_aggregation_rule(
    name: str, factory: Callable[[Any], AggregationRule], select: Callable[[Any], SelectionRule] | None = None
) -> None:
    """Make ``factory(defense_args)`` available as ``defense_args.defense_type: name``."""
    RULES.register(name, RobustRule(factory, select))


def aggregation_rule_names() -> list[str]:
    """Return the registered ``defense_type`` names."""
    return RULES.names()


def defense_chain(defense: Any) -> list[str]:
    """Return the rule names of a ``defense_args`` section in order (empty when the defense is off)."""
    if not defense.enable_defense or defense.defense_type is None:
        return []
    kind = defense.defense_type
    return [kind] if isinstance(kind, str) else list(kind)


def chain_preconditions(names: Sequence[str], defense: Any, updates: int) -> list[str]:
    """Return the preconditions a chain of rules breaks with ``updates`` updates a round, before any run.

    The same checks as the rules make at aggregation, made from the configuration: Krum's and
    Bulyan's ``n`` against ``byzantine_client_num`` and multi-Krum's ``krum_param_m``. A Krum step
    passes on the updates it keeps (1, or ``krum_param_m``) to the next rule.
    """
    problems = []
    n, f = updates, defense.byzantine_client_num
    for name in names:
        try:
            if name in ("krum", "multikrum"):
                _require_krum(n, f, defense.krum_param_m if name == "multikrum" else 1)
            elif name == "bulyan":
                _require_bulyan(n, f)
        except AggregationError as exc:
            problems.append(f"{exc} (with train_args.client_num_per_round {updates})")
        if name == "krum":
            n = 1
        elif name == "multikrum":
            n = min(defense.krum_param_m, n)
    return problems


def chain_problems(names: Sequence[str]) -> list[str]:
    """Return what is wrong with a ``defense_type`` list: unknown names, or an aggregating rule not last."""
    problems = [RULES.unknown(name).partition(": ")[2] for name in names if name not in RULES]
    for name in names[:-1]:
        if name in RULES and RULES.get(name).select is None:
            problems.append(
                f"{name} combines the updates into one, so it can only come last in the list "
                f"(rules that can come first: {', '.join(n for n in RULES if RULES.get(n).select)})"
            )
    return problems


def create_aggregation_rule(args: Any) -> AggregationRule:
    """Return the last rule of ``defense_args.defense_type`` when the defense is on, else the weighted mean.

    Raises
    ------
    ConfigError
        If the defense is enabled with a name that is not registered.

    """
    names = defense_chain(args.defense_args)
    if not names:
        return _mean
    return RULES.get(names[-1]).aggregate(args.defense_args)


def create_selection_rules(args: Any) -> list[tuple[str, SelectionRule]]:
    """Return the rules that come before the last one in ``defense_args.defense_type``, in order.

    Raises
    ------
    ConfigError
        If one of them has no selecting form (it aggregates, so it can only come last).

    """
    names = defense_chain(args.defense_args)
    problems = chain_problems(names)
    if problems:
        raise ConfigError(f"defense_args.defense_type: {'; '.join(problems)}")
    rules = []
    for name in names[:-1]:
        select = RULES.get(name).select
        if select is not None:
            rules.append((name, select(args.defense_args)))
    return rules


def _mean(updates: Sequence[WeightedState], global_state: State) -> dict[str, torch.Tensor]:
    return weighted_mean(updates)


def _kept(
    updates: Sequence[WeightedState], indices: Sequence[int]
) -> list[tuple[int, dict[str, torch.Tensor]]]:
    return [(i, dict(updates[i][1])) for i in sorted(indices)]


register_aggregation_rule("median", lambda d: lambda u, g: coordinate_median(u))
register_aggregation_rule("trimmed_mean", lambda d: lambda u, g: trimmed_mean(u, d.trim_param_b))
register_aggregation_rule(
    "krum",
    lambda d: lambda u, g: krum(u, d.byzantine_client_num),
    select=lambda d: lambda u, g: _kept(u, krum_select(u, d.byzantine_client_num)),
)
register_aggregation_rule(
    "multikrum",
    lambda d: lambda u, g: krum(u, d.byzantine_client_num, d.krum_param_m),
    select=lambda d: lambda u, g: _kept(u, krum_select(u, d.byzantine_client_num, d.krum_param_m)),
)
register_aggregation_rule("bulyan", lambda d: lambda u, g: bulyan(u, d.byzantine_client_num))
register_aggregation_rule(
    "norm_diff_clipping",
    lambda d: lambda u, g: norm_diff_clipping(u, g, d.norm_bound),
    select=lambda d: lambda u, g: list(enumerate(clip_to_norm(u, g, d.norm_bound))),
)
register_aggregation_rule("geometric_median", lambda d: lambda u, g: geometric_median(u))
