"""FedAvg (McMahan et al., 2017): clients run local SGD; the server takes the sample-weighted mean."""

from __future__ import annotations

from typing import Any

import torch

from fedml.core.algorithms.base import (
    Client,
    LocalObjective,
    RoundContext,
    RoundResults,
    Update,
    train_locally,
    weighted_states,
)


class FedAvg:
    """Federated averaging. Stateless; the trainer and aggregator do the numerical work."""

    name = "FedAvg"
    accepts_presummed_updates = True
    keeps_client_state = False

    def __init__(self, args: Any = None) -> None:
        self.args = args

    def client_payload(self, client_idx: int) -> dict[str, torch.Tensor]:
        """Return nothing: FedAvg clients need only the global state."""
        return {}

    def local_objective(self) -> LocalObjective | None:
        """Plain local training: the loss without a penalty."""
        return LocalObjective()

    def client_update(
        self, global_state: dict[str, torch.Tensor], client: Client, ctx: RoundContext
    ) -> Update:
        """Load the global state, train locally, return the trained state weighted by the sample count."""
        return train_locally(global_state, client, ctx, self.local_objective())

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: RoundResults, ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Return the aggregator's combination (by default the weighted mean) of the client states."""
        return ctx.aggregator.aggregate_with_hooks(weighted_states(updates))
