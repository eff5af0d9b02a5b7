"""Single-process simulation: clients trained one by one by one reused model, or many at once (vectorized)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.core.algorithms import Client, RoundContext, Update
from fedml.core.round import FederatedRound
from fedml.ml import ClientTrainer, ServerAggregator
from fedml.simulation.base import Simulator
from fedml.simulation.engine import choose_engine
from fedml.tracking import RunResult, progress

if TYPE_CHECKING:
    from fedml.data import FederatedDataset


class SPSimulator(Simulator):
    """Runs ``comm_round`` rounds of ``train_args.federated_optimizer`` in this process.

    ``train_args.engine`` chooses how the sampled clients of a round are trained: one after the other
    (``sequential``) or all at once as one batched computation (``vectorized``); ``auto`` follows
    ``fedml.simulation.engine.choose_engine``. Both give the same model up to float rounding.

    Parameters
    ----------
    args, device, dataset, model, client_trainer, server_aggregator
        As for ``Simulator``.

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
        super().__init__(args, device, dataset, model, client_trainer, server_aggregator)
        self.engine, objective = choose_engine(
            args, device, model, self.algorithm, dataset, custom_trainer=self.custom_trainer
        )
        self.vectorized = None
        if objective is not None:
            from fedml.simulation.vectorized import VectorizedTrainer

            self.vectorized = VectorizedTrainer(model, args, device, objective)

    def run(self) -> RunResult:
        """Train and evaluate all rounds; return the final metrics, history and run directory."""
        rounds = FederatedRound(
            self.args, self.device, self.dataset, self.algorithm, self.trainer, self.aggregator
        )
        try:
            global_state = rounds.start()
            for round_idx in progress(range(rounds.first_round, self.args.comm_round), "rounds"):
                updates = self._train(
                    round_idx, global_state, rounds.clients(round_idx), rounds.context(round_idx)
                )
                global_state = rounds.finish(round_idx, global_state, updates)
        except BaseException as exc:
            rounds.tracker.fail(exc)
            raise
        return rounds.result()

    def _train(
        self, round_idx: int, global_state: dict[str, torch.Tensor], clients: list[int], ctx: RoundContext
    ) -> list[Update]:
        if self.vectorized is not None:
            data = [(c, self.dataset.local_train(c)) for c in clients]
            return self.vectorized.train_round(round_idx, global_state, data)
        return [
            self.algorithm.client_update(
                global_state, Client(c, self.dataset.local_train(c), self.algorithm.client_payload(c)), ctx
            )
            for c in clients
        ]
