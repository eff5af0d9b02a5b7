"""FedProx (Li et al., 2020): FedAvg whose clients add a proximal term ``mu/2 * ||w - w_global||^2``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from fedml.config.sections import ComponentSettings, read_settings
from fedml.core.algorithms.base import LocalObjective, total
from fedml.core.algorithms.fedavg import FedAvg


class FedProxSettings(ComponentSettings):
    """FedProx's key in ``train_args``."""

    section = "train_args"
    fedprox_mu: float = Field(0.01, ge=0)


class FedProx(FedAvg):
    """FedAvg with the proximal penalty of strength ``train_args.fedprox_mu`` in every client's loss.

    With ``mu = 0`` it computes exactly what FedAvg computes. The penalty is a pure function of the
    parameters, so the vectorized engine runs FedProx too.

    Parameters
    ----------
    args
        The run's arguments; ``fedprox_mu`` (``FedProxSettings``) is read from them.

    """

    name = "FedProx"

    def __init__(self, args: Any = None) -> None:
        super().__init__(args)
        self.mu = float(read_settings(args, FedProxSettings).fedprox_mu)

    def local_objective(self) -> LocalObjective:
        """Return the local loss plus ``mu/2`` times the squared distance to the global model.

        With ``mu == 0`` there is no penalty: FedAvg's objective, trained by FedAvg's code paths.
        """
        return LocalObjective(penalty=self.proximal_term if self.mu else None)

    def proximal_term(
        self, params: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Return ``mu/2 * sum ||params - global_state||^2`` over the trainable parameters."""
        return 0.5 * self.mu * total((p - global_state[name]).pow(2).sum() for name, p in params.items())
