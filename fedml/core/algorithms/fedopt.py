"""FedOpt (Reddi et al., 2021): a server optimizer stepping along the averaged client change.

The averaged change is a pseudo-gradient; the server applies SGD with momentum (FedAvgM), Adam
(FedAdam), Yogi (FedYogi) or Adagrad (FedAdagrad) to it.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    server_beta2: float = Field(0.99, gt=0, lt=1)
    server_bias_correction: bool = False

    @classmethod
    def cross_check(cls, sections: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Refuse bias correction for an optimizer without second moments to correct."""
        train = sections["train_args"]
        if train.server_bias_correction and train.server_optimizer not in ("adam", "yogi"):
            return [
                (
                    "train_args.server_bias_correction",
                    f"applies to server_optimizer adam or yogi, not {train.server_optimizer}",
                )
            ]
        return []


class FedOpt(FedAvg):
    """FedAvg's client rule with an adaptive server rule; the optimizer moments live on this object.

    With ``server_optimizer: sgd``, ``server_lr: 1`` and ``server_momentum: 0`` it is FedAvg. Reddi et
    al. use ``server_momentum`` (beta1) 0.9, ``server_beta2`` 0.99 and ``server_epsilon`` (tau) 1e-3 for
    the adaptive optimizers.

    Conventions (Reddi et al. 2021, Algorithm 2): the second moment starts at ``tau**2`` and is not bias
    corrected; FedAdagrad keeps the beta1 momentum of the first moment. ``server_bias_correction: true``
    gives the convention of other libraries for adam and yogi instead: the second moment starts at 0
    and both moments are divided by ``1 - beta**t`` after ``t`` server steps.
    """

    name = "FedOpt"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        settings = read_settings(args, FedOptSettings)
        self.optimizer = settings.server_optimizer
        self.lr = float(settings.server_lr)
        self.beta1 = float(settings.server_momentum)
        self.tau = float(settings.server_epsilon)
        self.beta2 = float(settings.server_beta2)
        self.bias_correction = bool(settings.server_bias_correction)
        self.step = 0
        self.momentum: dict[str, torch.Tensor] = {}
        self.variance: dict[str, torch.Tensor] = {}

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: RoundResults, ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Average the client states (through the aggregator), then take one server optimizer step."""
        averaged = super().server_update(global_state, updates, ctx)
        self.step += 1
        new_state: dict[str, torch.Tensor] = {}
        for name, current in global_state.items():
            if not current.dtype.is_floating_point:
                new_state[name] = averaged[name]
                continue
            delta = averaged[name] - current
            new_state[name] = current + self.lr * self._direction(name, delta)
        return new_state

    def state_dict(self) -> dict[str, Any]:
        """Return the server optimizer's moments and step count, for checkpoints."""
        return {"momentum": dict(self.momentum), "variance": dict(self.variance), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved (a checkpoint without a step count resumes at step 0)."""
        self.momentum = dict(state["momentum"])
        self.variance = dict(state["variance"])
        self.step = int(state.get("step", 0))

    def _direction(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        if self.optimizer == "sgd":
            m = self.momentum.get(name)
            self.momentum[name] = delta if m is None else self.beta1 * m + delta
            return self.momentum[name]
        m = self.momentum.get(name, torch.zeros_like(delta))
        self.momentum[name] = self.beta1 * m + (1 - self.beta1) * delta
        squared = delta * delta
        start = 0.0 if self.bias_correction else self.tau * self.tau
        v = self.variance.get(name, torch.full_like(delta, start))
        if self.optimizer == "adam":
            v = self.beta2 * v + (1 - self.beta2) * squared
        elif self.optimizer == "yogi":
            v = v - (1 - self.beta2) * squared * torch.sign(v - squared)
        else:
            v = v + squared
        self.variance[name] = v
        if self.bias_correction:
            m_hat = self.momentum[name] / (1 - self.beta1**self.step)
            v_hat = v / (1 - self.beta2**self.step)
            return m_hat / (v_hat.sqrt() + self.tau)
        return self.momentum[name] / (v.sqrt() + self.tau)
