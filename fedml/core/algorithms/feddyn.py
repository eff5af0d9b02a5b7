"""FedDyn (Acar et al., 2021): a dynamic regularizer aligns each client's optimum with the global one.

Client ``i`` minimizes ``L_i(w) - <h_i, w> + alpha/2 ||w - w_global||^2`` and then updates its gradient
state ``h_i <- h_i - alpha (w_i - w_global)``; the server keeps ``h <- h - alpha/N sum_i (w_i - w_global)``
and sets the model to the mean of the client models minus ``h / alpha``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from fedml.config.sections import ComponentSettings, read_settings
from fedml.core.algorithms.base import (
    Client,
    LocalObjective,
    RoundContext,
    RoundResults,
    Update,
    individual_updates,
    total,
    train_locally,
)
from fedml.core.algorithms.fedavg import FedAvg


class FedDynSettings(ComponentSettings):
    """FedDyn's key in ``train_args``."""

    section = "train_args"
    feddyn_alpha: float = Field(0.01, gt=0)


_STATE, _DELTA = "h_i/", "delta_h/"


class FedDyn(FedAvg):
    """FedDyn with strength ``train_args.feddyn_alpha``; gradient states live on this object.

    Only clients that have taken part have a stored ``h_i`` (others start from zero). Clients are trained
    one at a time (the linear term differs per client).
    """

    name = "FedDyn"
    accepts_presummed_updates = False
    keeps_client_state = True

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.alpha = float(read_settings(args, FedDynSettings).feddyn_alpha)
        self.server_state: dict[str, torch.Tensor] = {}
        self.client_states: dict[int, dict[str, torch.Tensor]] = {}

    def local_objective(self) -> None:
        """Return ``None``: the linear term differs per client, so clients train one at a time."""
        return None

    def client_payload(self, client_idx: int) -> dict[str, torch.Tensor]:
        """Send this client's gradient state ``h_i`` (empty before it first takes part: read as zero)."""
        return {_STATE + k: v for k, v in self.client_states.get(client_idx, {}).items()}

    def client_update(
        self, global_state: dict[str, torch.Tensor], client: Client, ctx: RoundContext
    ) -> Update:
        """Train on the regularized objective; return the state and the change of ``h_i``."""
        names = [name for name, _ in ctx.trainer.model.named_parameters()]
        own = {
            k: client.payload.get(_STATE + k, torch.zeros_like(global_state[k])).to(ctx.device) for k in names
        }
        alpha = self.alpha

        def dynamic_regularizer(
            params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor]
        ) -> torch.Tensor:
            linear = total((own[k] * p).sum() for k, p in params.items())
            proximal = total((p - anchor[k]).pow(2).sum() for k, p in params.items())
            return 0.5 * alpha * proximal - linear

        update = train_locally(global_state, client, ctx, LocalObjective(penalty=dynamic_regularizer))
        for k in names:
            update.extras[_DELTA + k] = -alpha * (update.state[k] - global_state[k]).to(own[k].device)
        return update

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: RoundResults, ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Average the models, update ``h`` and every participant's ``h_i``, return ``mean - h / alpha``."""
        updates = individual_updates(updates, self.name)
        averaged = super().server_update(global_state, updates, ctx)
        total = ctx.args.client_num_in_total
        for update in updates:
            own = self.client_states.setdefault(update.client_idx, {})
            for key, delta in update.extras.items():
                name = key.removeprefix(_DELTA)
                own[name] = own.get(name, torch.zeros_like(delta)) + delta
                self.server_state[name] = self.server_state.get(name, torch.zeros_like(delta)) + delta / total
        return {
            k: v - self.server_state[k] / self.alpha if k in self.server_state else v
            for k, v in averaged.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """Return a copy of the gradient states, for checkpoints (later rounds do not change it)."""
        return {
            "server_state": dict(self.server_state),
            "client_states": {c: dict(v) for c, v in self.client_states.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore gradient states saved by ``state_dict`` (copied: later rounds leave ``state`` alone)."""
        self.server_state = dict(state["server_state"])
        self.client_states = {c: dict(v) for c, v in state["client_states"].items()}
