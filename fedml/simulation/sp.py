"""Single-process simulation: every sampled client is trained in turn by one reused model object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.core.algorithms import Client, create_algorithm
from fedml.core.round import FederatedRound
from fedml.ml import ClientTrainer, ServerAggregator
from fedml.tracking import RunResult, progress

if TYPE_CHECKING:
    from fedml.data import FederatedDataset


class SPSimulator:
    """Runs ``comm_round`` rounds of ``train_args.federated_optimizer`` in this process.

    Parameters
    ----------
    args
        The run's arguments.
    device
        Where training and evaluation run.
    dataset
        The federated dataset (``fedml.data.load``).
    model
        The model; trained in place for each client, so no per-client copy is made.
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
        model.to(device)
        self.trainer = client_trainer or ClientTrainer(model, args)
        self.aggregator = server_aggregator or ServerAggregator(model, args)
        self.algorithm = create_algorithm(args)

    def run(self) -> RunResult:
        """Train and evaluate all rounds; return the final metrics, history and run directory."""
        rounds = FederatedRound(
            self.args, self.device, self.dataset, self.algorithm, self.trainer, self.aggregator
        )
        try:
            global_state = rounds.start()
            for round_idx in progress(range(self.args.comm_round), self.args.comm_round, "rounds"):
                ctx = rounds.context(round_idx)
                updates = [
                    self.algorithm.client_update(global_state, Client(c, self.dataset.local_train(c)), ctx)
                    for c in rounds.clients(round_idx)
                ]
                global_state = rounds.finish(round_idx, global_state, updates)
        except BaseException:
            rounds.tracker.close()
            raise
        return rounds.result()
