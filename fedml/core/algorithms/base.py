"""The algorithm contract: a client update rule and a server update rule, with no transport code."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from fedml.errors import AggregationError

if TYPE_CHECKING:
    from torch import nn

    from fedml.data import ClientData


Penalty = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]
"""``penalty(params, global_state) -> scalar`` added to the local loss; pure torch, so ``vmap`` can run it."""


@dataclass(frozen=True)
class LocalObjective:
    """A client rule in functional form: the default local training on ``loss + penalty``.

    An algorithm whose ``local_objective()`` returns one lets the vectorized engine train many clients
    at once with exactly its rule; one that returns ``None`` (arbitrary client code) is trained one
    client at a time. Later rules extend this description rather than the engines.

    Attributes
    ----------
    penalty
        Added to the mini-batch loss, called with the client's current parameters and the global state
        of the round; ``None`` for none.

    """

    penalty: Penalty | None = None


@dataclass(frozen=True)
class Client:
    """One participant of a round: its index, its local training data and what the server sent it.

    ``payload`` holds the per-client tensors of stateful algorithms (SCAFFOLD's control variates,
    FedDyn's gradient state) that travel with the global state; empty for the others.
    """

    idx: int
    train_data: ClientData
    payload: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Update:
    """What a client sends back: its state, the weight it carries (its sample count) and its metrics."""

    client_idx: int
    weight: float
    state: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-client tensors for the server rule beyond the state (e.g. a control-variate change)."""


@dataclass
class SummedUpdate:
    """Several clients' updates combined before they reach the server: their sample-weighted mean.

    NCCL's all-reduce produces one. Only an algorithm with ``accepts_presummed_updates`` and server steps
    that do not need individual updates accept it; the check at start refuses any other combination.

    Attributes
    ----------
    clients
        How many client updates went into the mean.
    weight
        Their total weight (sample count).
    state
        The weighted mean of their states.
    metrics
        Weighted means of their metrics (``train_loss``).

    """

    clients: int
    weight: float
    state: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)


RoundResults = list[Update] | SummedUpdate
"""What a backend returns for a round: every client's update, or their sum."""


def weighted_states(results: RoundResults) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """Return ``(weight, state)`` pairs of a round's results, for an aggregator (one pair for a sum)."""
    if isinstance(results, SummedUpdate):
        return [(results.weight, results.state)]
    return [(u.weight, u.state) for u in results]


def individual_updates(results: RoundResults, algorithm: str) -> list[Update]:
    """Return ``results`` as a list of updates; an algorithm that needs each client's update calls this.

    Raises
    ------
    AggregationError
        For a ``SummedUpdate`` (the check at start normally refuses such a run before it begins).

    """
    if isinstance(results, SummedUpdate):
        raise AggregationError(f"{algorithm} needs every client's update, but the backend summed them")
    return results


class Trainer(Protocol):
    """What the round needs of a client trainer; ``fedml.ml.ClientTrainer`` is the one users subclass."""

    model: nn.Module

    def set_id(self, trainer_id: int) -> None:
        """Act for client ``trainer_id`` next."""
        ...

    def set_round(self, round_idx: int) -> None:
        """Set the round being trained."""
        ...

    def set_penalty(self, penalty: Penalty | None, anchor: Mapping[str, torch.Tensor] | None) -> None:
        """Add ``penalty(params, anchor)`` to the loss of the next ``train`` calls."""
        ...

    def set_model_params(self, model_parameters: Mapping[str, torch.Tensor]) -> None:
        """Load a state into the model."""
        ...

    def get_model_params(self) -> dict[str, torch.Tensor]:
        """Return a copy of the model state."""
        ...

    def train(self, train_data: ClientData, device: torch.device, args: Any) -> dict[str, float]:
        """Train on ``train_data``; return the metrics."""
        ...


class Aggregator(Protocol):
    """What the round needs of a server aggregator; users subclass ``fedml.ml.ServerAggregator``."""

    def aggregate_with_hooks(
        self, updates: Sequence[tuple[float, Mapping[str, torch.Tensor]]]
    ) -> dict[str, torch.Tensor]:
        """Combine ``(weight, state)`` pairs into one state."""
        ...

    def set_model_params(self, model_parameters: Mapping[str, torch.Tensor]) -> None:
        """Load a state into the global model."""
        ...

    def get_model_params(self) -> dict[str, torch.Tensor]:
        """Return a copy of the global model state."""
        ...

    def test(self, test_data: ClientData, device: torch.device, args: Any) -> dict[str, float]:
        """Evaluate the global model on ``test_data``."""
        ...


@dataclass
class RoundContext:
    """What an algorithm may use in a round: the arguments, device, trainer and aggregator."""

    round_idx: int
    args: Any
    device: torch.device
    trainer: Trainer
    aggregator: Aggregator


class Algorithm(Protocol):
    """A federated optimizer. Stateful algorithms keep their state on the object."""

    name: str
    accepts_presummed_updates: bool
    """True when the server rule depends on a round's updates only through their sample-weighted mean,
    so a backend may sum them before they reach the server (NCCL's all-reduce)."""
    keeps_client_state: bool
    """True when the server keeps state per client between rounds (SCAFFOLD's control variates,
    FedDyn's gradients), which needs the same clients to come back: not so for cross-device devices."""

    def client_update(
        self, global_state: dict[str, torch.Tensor], client: Client, ctx: RoundContext
    ) -> Update:
        """Train ``client`` starting from ``global_state`` and return its update."""
        ...

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: RoundResults, ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Combine the round's updates (a ``SummedUpdate`` only if ``accepts_presummed_updates``)."""
        ...

    def client_payload(self, client_idx: int) -> dict[str, torch.Tensor]:
        """Return what the server sends client ``client_idx`` besides the global state (often nothing)."""
        ...

    def local_objective(self) -> LocalObjective | None:
        """Describe ``client_update`` functionally for the vectorized engine, or ``None`` if it cannot be."""
        ...


def total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Return the sum of ``terms`` (one or more scalar tensors), as ``sum`` would, but typed as a tensor."""
    return functools.reduce(operator.add, terms)


@runtime_checkable
class Checkpointable(Protocol):
    """An algorithm with state to save: its ``state_dict`` goes into checkpoints and comes back."""

    def state_dict(self) -> dict[str, Any]:
        """Return the state to save."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state returned by ``state_dict``."""
        ...


def train_locally(
    global_state: dict[str, torch.Tensor],
    client: Client,
    ctx: RoundContext,
    objective: LocalObjective | None = None,
) -> Update:
    """Train ``client`` from ``global_state`` and return its ``Update`` (weight: its sample count).

    The stateless training call: the round's ``ClientTrainer`` (the FedML-compatible customization
    point, which keeps one model for every client) does the work, and nothing of one call survives
    into the next. This is the client update of every algorithm whose rule is a ``LocalObjective``
    (``None``: the plain loss); the vectorized engine computes the same thing for many clients at once.
    """
    trainer = ctx.trainer
    trainer.set_id(client.idx)
    trainer.set_round(ctx.round_idx)
    trainer.set_model_params(global_state)
    trainer.set_penalty(objective.penalty if objective is not None else None, global_state)
    try:
        metrics = trainer.train(client.train_data, ctx.device, ctx.args) or {}
    finally:
        trainer.set_penalty(None, None)
    return Update(client.idx, float(len(client.train_data)), trainer.get_model_params(), dict(metrics))


def local_steps(update: Update, args: Any) -> int:
    """Return the local steps behind ``update``: its ``num_steps`` metric, else ``epochs * ceil(n / B)``."""
    if "num_steps" in update.metrics:
        return max(int(update.metrics["num_steps"]), 1)
    return int(args.epochs * max(math.ceil(update.weight / args.batch_size), 1))
