"""The algorithm contract: a client update rule and a server update rule, with no transport code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from fedml.data import ClientData
    from fedml.ml import ClientTrainer, ServerAggregator


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
