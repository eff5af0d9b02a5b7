"""The algorithm contract: a client update rule and a server update rule, with no transport code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from fedml.data import ClientData
    from fedml.ml import ClientTrainer, ServerAggregator


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
    """One participant of a round: its index and its local training data."""

    idx: int
    train_data: ClientData


@dataclass
class Update:
    """What a client sends back: its state, the weight it carries (its sample count) and its metrics."""

    client_idx: int
    weight: float
    state: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundContext:
    """What an algorithm may use in a round: the arguments, device, trainer and aggregator."""

    round_idx: int
    args: Any
    device: torch.device
    trainer: ClientTrainer
    aggregator: ServerAggregator


class Algorithm(Protocol):
    """A federated optimizer. Stateful algorithms keep their state on the object."""

    name: str

    def client_update(
        self, global_state: dict[str, torch.Tensor], client: Client, ctx: RoundContext
    ) -> Update:
        """Train ``client`` starting from ``global_state`` and return its update."""
        ...

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: list[Update], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Combine the round's updates into the next global state."""
        ...

    def local_objective(self) -> LocalObjective | None:
        """Describe ``client_update`` functionally for the vectorized engine, or ``None`` if it cannot be."""
        ...


def train_locally(
    global_state: dict[str, torch.Tensor], client: Client, ctx: RoundContext, objective: LocalObjective
) -> Update:
    """Run the round's trainer on ``client`` from ``global_state`` with ``objective``; weight = sample count.

    This is the client update of every algorithm whose rule is a ``LocalObjective``; the vectorized
    engine computes the same thing for many clients at once.
    """
    trainer = ctx.trainer
    trainer.set_id(client.idx)
    trainer.set_round(ctx.round_idx)
    trainer.set_model_params(global_state)
    trainer.set_penalty(objective.penalty, global_state)
    try:
        metrics = trainer.train(client.train_data, ctx.device, ctx.args) or {}
    finally:
        trainer.set_penalty(None, None)
    return Update(client.idx, float(len(client.train_data)), trainer.get_model_params(), dict(metrics))
