"""FedOpt (Reddi et al., 2021): a server optimizer stepping along the averaged client change.

The averaged change is a pseudo-gradient; the server applies SGD with momentum (FedAvgM), Adam
(FedAdam), Yogi (FedYogi) or Adagrad (FedAdagrad) to it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from pydantic import Field

from fedml.config.sections import ComponentSettings, read_settings
from fedml.core.algorithms.base import RoundContext, RoundResults
from fedml.core.algorithms.fedavg import FedAvg

ServerOptimizer = Literal["sgd", "adam", "yogi", "adagrad"]
SERVER_OPTIMIZERS: tuple[str, ...] = get_args(ServerOptimizer)
"""Valid ``train_args.server_optimizer`` names."""


class FedOptSettings(ComponentSettings):
    """FedOpt's keys in ``train_args``: the server optimizer and its hyperparameters."""

    section = "train_args"
    server_optimizer: ServerOptimizer = "sgd"
    server_lr: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.0, ge=0, lt=1)
    server_epsilon: float = Field(1e-3, gt=0)


_BETA2 = 0.99


class FedOpt(FedAvg):
    """FedAvg's client rule with an adaptive server rule; the optimizer moments live on this object.

    With ``server_optimizer: sgd``, ``server_lr: 1`` and ``server_momentum: 0`` it is FedAvg. Reddi et
    al. use ``server_momentum`` (beta1) 0.9, beta2 0.99 and ``server_epsilon`` (tau) 1e-3 for the
    adaptive optimizers.
    """

    name = "FedOpt"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        settings = read_settings(args, FedOptSettings)
        self.optimizer = settings.server_optimizer
        self.lr = float(settings.server_lr)
        self.beta1 = float(settings.server_momentum)
        self.tau = float(settings.server_epsilon)
        self.momentum: dict[str, torch.Tensor] = {}
        self.variance: dict[str, torch.Tensor] = {}

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: RoundResults, ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Average the client states (through the aggregator), then take one server optimizer step."""
        averaged = super().server_update(global_state, updates, ctx)
        new_state: dict[str, torch.Tensor] = {}
        for name, current in global_state.items():
            if not current.dtype.is_floating_point:
                new_state[name] = averaged[name]
                continue
            delta = averaged[name] - current
            new_state[name] = current + self.lr * self._direction(name, delta)
        return new_state

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Return the server optimizer's moments, for checkpoints."""
        return {"momentum": dict(self.momentum), "variance": dict(self.variance)}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore moments saved by ``state_dict``."""
        self.momentum = dict(state["momentum"])
        self.variance = dict(state["variance"])

    def _direction(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        if self.optimizer == "sgd":
            m = self.momentum.get(name)
            self.momentum[name] = delta if m is None else self.beta1 * m + delta
            return self.momentum[name]
        m = self.momentum.get(name, torch.zeros_like(delta))
        self.momentum[name] = self.beta1 * m + (1 - self.beta1) * delta
        squared = delta * delta
        v = self.variance.get(name, torch.full_like(delta, self.tau * self.tau))
        if self.optimizer == "adam":
            v = _BETA2 * v + (1 - _BETA2) * squared
        elif self.optimizer == "yogi":
            v = v - (1 - _BETA2) * squared * torch.sign(v - squared)
        else:
            v = v + squared
        self.variance[name] = v
        return self.momentum[name] / (v.sqrt() + self.tau)
