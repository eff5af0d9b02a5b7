"""SCAFFOLD (Karimireddy et al., 2020): control variates correct each client's drift toward its own data.

Every local step follows ``grad + c - c_i``, with ``c`` the server's and ``c_i`` the client's control
variate. After training the client sets ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` (option II of the
paper) and sends the change; the server moves ``c`` by ``|S| / N`` times the mean change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedml.core.algorithms.base import (
    Client,
    LocalObjective,
    RoundContext,
    RoundResults,
    Update,
    individual_updates,
    local_steps,
    total,
    train_locally,
)
from fedml.core.algorithms.fedavg import FedAvg

_SERVER, _CLIENT, _DELTA = "c/", "c_i/", "delta_c/"


class Scaffold(FedAvg):
    """SCAFFOLD with sample-weighted model averaging (server learning rate 1).

    The server control variate and the control variates of clients that have taken part live on this
    object (``state_dict``); a client that has never taken part starts from zero, so memory grows with
    the clients seen, not with all registered clients. With zero control variates the first round is
    FedAvg's first round. Clients are trained one at a time (the correction is per client).
    """

    name = "SCAFFOLD"
    accepts_presummed_updates = False
    keeps_client_state = True

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.server_control: dict[str, torch.Tensor] = {}
        self.client_controls: dict[int, dict[str, torch.Tensor]] = {}

    def local_objective(self) -> None:
        """Return ``None``: the correction differs per client, so clients train one at a time."""
        return None

    def client_payload(self, client_idx: int) -> dict[str, torch.Tensor]:
        """Send ``c`` and this client's ``c_i`` (both empty before anyone has trained: read as zero)."""
        payload = {_SERVER + k: v for k, v in self.server_control.items()}
        payload.update({_CLIENT + k: v for k, v in self.client_controls.get(client_idx, {}).items()})
        return payload

    def client_update(
        self, global_state: dict[str, torch.Tensor], client: Client, ctx: RoundContext
    ) -> Update:
        """Train with the drift correction; return the state and the change of ``c_i``."""
        names = [name for name, _ in ctx.trainer.model.named_parameters()]
        server = _part(client.payload, _SERVER, names, global_state)
        own = _part(client.payload, _CLIENT, names, global_state)
        correction = {k: (server[k] - own[k]).to(ctx.device) for k in names}

        def drift_correction(
            params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor]
        ) -> torch.Tensor:
            return total((correction[k] * p).sum() for k, p in params.items())

        update = train_locally(global_state, client, ctx, LocalObjective(penalty=drift_correction))
        scale = 1.0 / (local_steps(update, ctx.args) * ctx.args.learning_rate)
        for k in names:
            new_own = own[k] - server[k] + (global_state[k] - update.state[k]) * scale
            update.extras[_DELTA + k] = new_own - own[k]
        return update

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: RoundResults, ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Average the models; add the participants' control-variate changes to theirs and to ``c``."""
        updates = individual_updates(updates, self.name)
        new_state = super().server_update(global_state, updates, ctx)
        share = len(updates) / ctx.args.client_num_in_total
        for update in updates:
            own = self.client_controls.setdefault(update.client_idx, {})
            for key, delta in update.extras.items():
                name = key.removeprefix(_DELTA)
                own[name] = own.get(name, torch.zeros_like(delta)) + delta
                mean_delta = delta * (share / len(updates))
                self.server_control[name] = (
                    self.server_control.get(name, torch.zeros_like(delta)) + mean_delta
                )
        return new_state

    def state_dict(self) -> dict[str, Any]:
        """Return a copy of the control variates, for checkpoints (later rounds do not change it)."""
        return {
            "server_control": dict(self.server_control),
            "client_controls": {c: dict(v) for c, v in self.client_controls.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore control variates saved by ``state_dict`` (copied: later rounds leave ``state`` alone)."""
        self.server_control = dict(state["server_control"])
        self.client_controls = {c: dict(v) for c, v in state["client_controls"].items()}


def _part(
    payload: Mapping[str, torch.Tensor], prefix: str, names: list[str], like: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return {k: payload.get(prefix + k, torch.zeros_like(like[k])) for k in names}
