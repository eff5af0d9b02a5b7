"""FedNova (Wang et al., 2020): client changes normalized by their number of local steps.

Clients that run more steps would otherwise drag the global model toward their own objective.
"""

from __future__ import annotations

import torch

from fedml.core.aggregation import weighted_mean
from fedml.core.algorithms.base import RoundContext, RoundResults, individual_updates, local_steps
from fedml.core.algorithms.fedavg import FedAvg


class FedNova(FedAvg):
    """FedAvg's client rule; the server averages step-normalized changes and rescales by the mean steps.

    A client's local steps are its ``num_steps`` metric when its trainer reports one, otherwise
    ``epochs * ceil(samples / batch_size)`` (plain local SGD). With equal steps everywhere it is FedAvg.
    """

    name = "FedNova"
    accepts_presummed_updates = False

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: RoundResults, ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Return ``x - tau_eff * sum_i p_i (x - y_i) / tau_i`` with ``p_i`` the sample share."""
        updates = individual_updates(updates, self.name)
        total = sum(u.weight for u in updates)
        steps = [local_steps(u, ctx.args) for u in updates]
        tau_eff = sum(u.weight / total * tau for u, tau in zip(updates, steps, strict=True))
        integer_keys = [k for k, t in global_state.items() if not t.dtype.is_floating_point]
        new_state = (
            weighted_mean([(u.weight, {k: u.state[k] for k in integer_keys}) for u in updates])
            if integer_keys
            else {}
        )
        for name, current in global_state.items():
            if name in new_state:
                continue
            direction = torch.zeros_like(current)
            for update, tau in zip(updates, steps, strict=True):
                direction.add_(current - update.state[name], alpha=update.weight / total / tau)
            new_state[name] = current - tau_eff * direction
        return new_state
