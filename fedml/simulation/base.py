"""What every simulation runner starts from: the model on its device, trainer, aggregator and algorithm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.core.algorithms import create_algorithm
from fedml.ml import ClientTrainer, ServerAggregator

if TYPE_CHECKING:
    from fedml.data import FederatedDataset
    from fedml.tracking import RunResult


class Simulator:
    """Common set-up of the simulation runners (``sp``, ``MPI``, ``NCCL``); subclasses implement ``run``.

    Parameters
    ----------
    args
        The run's arguments.
    device
        Where training and evaluation run.
    dataset
        The federated dataset (``fedml.data.load``).
    model
        The model; moved to ``device`` and trained in place for each client, so no per-client copy is made.
    client_trainer, server_aggregator
        Custom training and aggregation; default to ``ClientTrainer`` and ``ServerAggregator`` on ``model``.

    """

    def __init__(
        self,
        args: Any,
        device: torch.device,
        dataset: FederatedDataset,
        model: nn.Module,
        client_trainer: ClientTrainer | None = None,
        server_aggregator: ServerAggregator | None = None,
    ) -> None:
        self.args = args
        self.device = device
        self.dataset = dataset
        self.model = model.to(device)
        self.custom_trainer = client_trainer is not None
        self.trainer = client_trainer or ClientTrainer(model, args)
        self.aggregator = server_aggregator or ServerAggregator(model, args)
        self.algorithm = create_algorithm(args)

    def run(self) -> RunResult:
        """Carry out the run and return its result."""
        raise NotImplementedError
