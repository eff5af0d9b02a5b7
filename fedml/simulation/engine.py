"""Which engine trains the clients of a single-process run: ``train_args.engine`` and the ``auto`` rule."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedml.errors import ConfigError
from fedml.ml.trainer import sgd_step

if TYPE_CHECKING:
    from fedml.core.algorithms import Algorithm, LocalObjective
    from fedml.data import ClientDataset

log = logging.getLogger(__name__)

ENGINES = ("auto", "sequential", "vectorized")
"""The values of ``train_args.engine``."""

COST_BUDGET_S = 0.3
"""``auto``'s cost model times repetitions for at most about this long (after one warm-up of each)."""

COST_REPEATS = 3
"""``auto``'s cost model keeps the fastest of at most this many timed repetitions of each engine's step."""


@dataclass(frozen=True)
class StepCosts:
    """Measured seconds of one local step for a round's clients, batched and one client at a time.

    Parameters
    ----------
    clients
        Clients per round (the batched step's clients, and the sequential steps' count).
    batched
        One lock-step step of the vectorized engine for all ``clients`` (forward, backward, SGD).
    sequential
        One sequential step of one client, times ``clients``.

    """

    clients: int
    batched: float
    sequential: float

    @property
    def prefers_vectorized(self) -> bool:
        """Whether the batched step is the cheaper one: ``auto``'s decision on a CPU.

        Examples
        --------
        >>> StepCosts(clients=10, batched=0.004, sequential=0.012).prefers_vectorized
        True
        >>> StepCosts(clients=10, batched=0.150, sequential=0.120).prefers_vectorized
        False

        """
        return self.batched < self.sequential

    def describe(self) -> str:
        """Return the figures for the log line."""
        return (
            f"one lock-step step of {self.clients} clients {1000 * self.batched:.1f} ms, "
            f"{self.clients} sequential steps {1000 * self.sequential:.1f} ms"
        )


MEASURED: dict[tuple[Any, ...], StepCosts] = {}
"""``auto``'s measurements in this process, by model architecture, clients, batch, device and SGD rule.

A run measures once and later runs of the same setting in the process reuse the figures, so they
choose the same engine and give bit-identical models (a fresh measurement near a tie could flip).
"""


def choose_engine(
    args: Any,
    device: torch.device,
    model: nn.Module,
    algorithm: Algorithm,
    dataset: ClientDataset,
    custom_trainer: bool,
    sequential_reason: str | None = None,
) -> tuple[str, LocalObjective | None]:
    """Return ``("sequential" | "vectorized", objective)`` for this run and log the choice in one line.

    ``vectorized`` needs the default ``ClientTrainer`` (``sequential_reason`` says why another trainer is
    used), an algorithm with a ``local_objective()``, SGD,
    and a model without in-place buffers or random layers that ``vmap`` can run; otherwise the run is
    sequential. ``auto`` picks vectorized when it is possible and either the device is a GPU or, on a
    CPU, one measured lock-step step of the round's clients is cheaper than their sequential steps
    (``measure_step_costs``; the log line gives both figures). The choice can differ between machines;
    the trained model does not (the engines agree to 1e-5).

    Raises
    ------
    ConfigError
        If ``train_args.engine`` is not one of ``ENGINES``.

    """
    from fedml.simulation.vectorized import probe, unsupported_reason

    engine = args.engine
    if engine not in ENGINES:
        raise ConfigError(f"train_args.engine: unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine == "sequential":
        log.info("engine: sequential (train_args.engine)")
        return "sequential", None
    local_objective = getattr(algorithm, "local_objective", None)
    objective = local_objective() if callable(local_objective) else None
    reason = "a custom ClientTrainer is used" if custom_trainer else sequential_reason
    if reason is None and getattr(dataset, "augments_training", False):
        reason = (
            "the dataset augments training batches (data_args.augment), which only sequential training does"
        )
    reason = reason or unsupported_reason(model, args, objective)
    if reason is None and objective is not None:
        reason = probe(model.to(device), _first_input(dataset).to(device), objective)
    if reason is not None:
        level = logging.WARNING if engine == "vectorized" else logging.INFO
        log.log(level, "engine: sequential, because the vectorized engine cannot run here: %s", reason)
        return "sequential", None
    if objective is None:  # unsupported_reason gave a reason for it above; this tells the type checker
        return "sequential", None
    if engine == "auto":
        costs, again = _auto_costs(args, device, model, objective, dataset)
        chosen = "vectorized" if auto_prefers_vectorized(args, device, costs) else "sequential"
        if costs is not None:
            detail = costs.describe() + (", measured earlier in this process" if again else "")
        else:
            detail = "GPU" if device.type == "cuda" else "one client per round"
        log.info("engine: %s (auto: %s)", chosen, detail)
        return chosen, objective if chosen == "vectorized" else None
    log.info("engine: vectorized (train_args.engine)")
    return "vectorized", objective


def auto_prefers_vectorized(args: Any, device: torch.device, costs: StepCosts | None) -> bool:
    """Return the ``auto`` rule's preference, for a run the vectorized engine can train.

    On a GPU the batched step always wins (one kernel launch for every client). On a CPU it is
    whichever of the measured ``costs`` is cheaper; without a second client there is nothing to batch.
    """
    if device.type == "cuda":
        return True
    if args.client_num_per_round < 2 or costs is None:
        return False
    return costs.prefers_vectorized


def measure_step_costs(
    model: nn.Module,
    objective: LocalObjective,
    x: torch.Tensor,
    y: torch.Tensor,
    args: Any,
    clock: Callable[[], float] = time.perf_counter,
) -> StepCosts:
    """Time one lock-step step for the round's clients against one client's step times their number.

    Both steps run on copies of ``model`` (its parameters are not changed) and on the batch ``x``,
    ``y`` (every client gets the same batch: only the time matters), with the run's SGD settings.
    After one warm-up of each, timed repetitions alternate between the two and stop after
    ``COST_REPEATS`` or once ``COST_BUDGET_S`` is spent; the fastest of each is kept, since on a
    shared machine the noise only ever adds time. When even one batched step of every client would
    overrun the budget, it is timed for fewer clients and scaled linearly, which can only favour
    the sequential engine (batching amortises more over more clients).
    """
    from fedml.simulation.vectorized import STACK_BYTES, _StepFunction, _trainable

    clients = int(args.client_num_per_round)
    single = copy.deepcopy(model)
    params = [p for _, p in _trainable(single)]
    named = dict(_trainable(single))
    anchor = {name: p.detach().clone() for name, p in named.items()}
    penalty = objective.penalty

    def sequential_step() -> None:
        loss = F.cross_entropy(single(x), y)
        if penalty is not None:
            loss = loss + penalty(named, anchor)
        sgd_step(params, torch.autograd.grad(loss, params), [None] * len(params), **_sgd(args))

    started = clock()
    sequential_step()
    warm_sequential = clock() - started
    # Fewer stacked clients when one batched step of all of them would not fit in the budget.
    by_time = int(COST_BUDGET_S / (3 * max(warm_sequential, 1e-9)))
    by_memory = STACK_BYTES // max(1, 3 * sum(p.numel() * p.element_size() for p in params))
    stacked_clients = max(2, min(clients, by_time, by_memory))
    step_fn = _StepFunction(model, objective)
    stacked = {n: a.unsqueeze(0).repeat(stacked_clients, *([1] * a.dim())) for n, a in anchor.items()}
    xs = x.unsqueeze(0).expand(stacked_clients, *x.shape)
    ys = y.unsqueeze(0).expand(stacked_clients, *y.shape)
    mask = torch.ones(stacked_clients, len(y), device=x.device)

    def batched_step() -> None:
        step_fn.train_step(stacked, xs, ys, mask, anchor, [None] * len(stacked), _sgd(args))

    batched_step()
    best_batched, best_sequential = float("inf"), float("inf")
    for _ in range(COST_REPEATS):
        t0 = clock()
        batched_step()
        t1 = clock()
        sequential_step()
        t2 = clock()
        best_batched, best_sequential = min(best_batched, t1 - t0), min(best_sequential, t2 - t1)
        if t2 - started > COST_BUDGET_S:
            break
    return StepCosts(clients, best_batched * clients / stacked_clients, best_sequential * clients)


def _auto_costs(
    args: Any, device: torch.device, model: nn.Module, objective: LocalObjective, dataset: ClientDataset
) -> tuple[StepCosts | None, bool]:
    """Return the setting's step costs (``None``: not measured here) and whether they were reused."""
    if device.type == "cuda" or args.client_num_per_round < 2:
        return None, False
    key = _cost_key(model, args, device, objective)
    if key in MEASURED:
        return MEASURED[key], True
    x, y = next(iter(dataset.test_global.batches(args.batch_size)))
    MEASURED[key] = measure_step_costs(model, objective, x.to(device), y.to(device), args)
    return MEASURED[key], False


def _cost_key(
    model: nn.Module, args: Any, device: torch.device, objective: LocalObjective
) -> tuple[Any, ...]:
    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad)
    rule = (args.momentum != 0, args.weight_decay != 0, objective.penalty is not None)
    return (type(model).__qualname__, shapes, args.client_num_per_round, args.batch_size, str(device), rule)


def _sgd(args: Any) -> dict[str, float]:
    return {"lr": args.learning_rate, "momentum": args.momentum, "weight_decay": args.weight_decay}


def _first_input(dataset: ClientDataset) -> torch.Tensor:
    x, _ = next(iter(dataset.test_global.batches(1)))
    return x[0]
