"""FedAvg (McMahan et al., 2017): clients run local SGD; the server takes the sample-weighted mean."""

from __future__ import annotations

from typing import Any

import torch

from fedml.core.algorithms.base import Client, RoundContext, Update


class FedAvg:
    """Federated averaging. Stateless; the trainer and aggregator do the numerical work."""

    name = "FedAvg"

    def __init__(self, args: Any = None) -> None:
        self.args = args

    def client_update(
        self, global_state: dict[str, torch.Tensor], client: Client, ctx: RoundContext
    ) -> Update:
        """Load the global state, train locally, return the trained state weighted by the sample count."""
        trainer = ctx.trainer
        trainer.set_id(client.idx)
        trainer.set_round(ctx.round_idx)
        trainer.set_model_params(global_state)
        metrics = trainer.train(client.train_data, ctx.device, ctx.args) or {}
        return Update(client.idx, float(len(client.train_data)), trainer.get_model_params(), dict(metrics))

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: list[Update], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Return the aggregator's combination (by default the weighted mean) of the client states."""
        return ctx.aggregator.aggregate_with_hooks([(u.weight, u.state) for u in updates])
