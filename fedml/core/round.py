"""The server side of a federated round, written once for every backend.

A backend only decides how the global state reaches the sampled clients and how their updates come
back; choosing clients, checking and aggregating updates, evaluating and tracking happen here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fedml.core.aggregation import finite_states
from fedml.core.algorithms import Algorithm, RoundContext, Update
from fedml.core.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from fedml.core.sampling import sample_clients
from fedml.errors import AggregationError
from fedml.tracking import RunResult, RunTracker

if TYPE_CHECKING:
    from fedml.data import FederatedDataset
    from fedml.ml import ClientTrainer, ServerAggregator


class FederatedRound:
    """Selection, aggregation and evaluation of each round of one run.

    Parameters
    ----------
    args
        The run's arguments.
    device
        Where the global model is evaluated.
    dataset
        Supplies the global test set and the number of clients.
    algorithm
        The federated optimizer; its ``server_update`` turns a round's updates into the next state.
    trainer, aggregator
        Handed to the algorithm through the round context.

    """

    def __init__(
        self,
        args: Any,
        device: torch.device,
        dataset: FederatedDataset,
        algorithm: Algorithm,
        trainer: ClientTrainer,
        aggregator: ServerAggregator,
    ) -> None:
        self.args = args
        self.device = device
        self.dataset = dataset
        self.algorithm = algorithm
        self.trainer = trainer
        self.aggregator = aggregator
        self.tracker = RunTracker(args)
        self.log = self.tracker.log
        self.first_round = 0

    def start(self) -> dict[str, torch.Tensor]:
        """Log the header line and return the initial global state (from ``resume_from`` if set).

        After a resume, ``first_round`` is the index of the first round still to run.
        """
        self.tracker.start(self.dataset.client_num)
        if self.args.resume_from:
            checkpoint = load_checkpoint(self.args.resume_from)
            self.aggregator.set_model_params(checkpoint.model_state)
            if checkpoint.algorithm_state:
                self.algorithm.load_state_dict(checkpoint.algorithm_state)
            self.first_round = checkpoint.rounds_done
            self.log.info("Resumed from %s after round %d", self.args.resume_from, self.first_round)
        return self.aggregator.get_model_params()

    def checkpoint(self, rounds_done: int) -> None:
        """Save the global model and the algorithm's state in the run directory's ``checkpoint.pt``."""
        state_dict = getattr(self.algorithm, "state_dict", None)
        algorithm_state = state_dict() if state_dict is not None else {}
        checkpoint = Checkpoint(rounds_done, self.aggregator.get_model_params(), algorithm_state)
        save_checkpoint(self.tracker.run_dir / CHECKPOINT_FILE, checkpoint)

    def context(self, round_idx: int) -> RoundContext:
        """Return what the algorithm sees in round ``round_idx``."""
        return RoundContext(round_idx, self.args, self.device, self.trainer, self.aggregator)

    def clients(self, round_idx: int) -> list[int]:
        """Return the clients sampled for round ``round_idx`` (seeded; the same on every backend)."""
        args = self.args
        return sample_clients(args.random_seed, round_idx, self.dataset.client_num, args.client_num_per_round)

    def finish(
        self, round_idx: int, global_state: dict[str, torch.Tensor], updates: list[Update]
    ) -> dict[str, torch.Tensor]:
        """Aggregate the round's updates into the next global state, then evaluate if the round is due.

        Updates with non-finite values or a non-positive weight are dropped with a warning naming the
        client, so one diverged client does not poison the model.

        Raises
        ------
        AggregationError
            If no usable update is left.

        """
        usable = usable_updates(round_idx, updates, self.log)
        if not usable:
            raise AggregationError(
                f"round {round_idx + 1}: none of the {len(updates)} client updates is usable (non-finite "
                "values or zero weight); training diverged, try a smaller train_args.learning_rate"
            )
        new_state = self.algorithm.server_update(global_state, usable, self.context(round_idx))
        self.aggregator.set_model_params(new_state)
        if self._evaluates(round_idx):
            test = self.aggregator.test(self.dataset.test_global, self.device, self.args)
            self.tracker.log_round(round_idx, test, _train_loss(usable))
        frequency = self.args.checkpoint_frequency
        if frequency and (round_idx + 1) % frequency == 0:
            self.checkpoint(round_idx + 1)
        return new_state

    def result(self) -> RunResult:
        """Save the final checkpoint (with ``save_model``), finish tracking and return the run's result."""
        if self.args.save_model:
            self.checkpoint(self.args.comm_round)
        return self.tracker.finish(self.aggregator.get_model_params())

    def _evaluates(self, round_idx: int) -> bool:
        last = round_idx == self.args.comm_round - 1
        return last or (round_idx + 1) % self.args.frequency_of_the_test == 0


def usable_updates(round_idx: int, updates: list[Update], log: Any) -> list[Update]:
    """Return the updates with a positive weight and only finite values; log each one dropped, by client."""
    usable = []
    for update, finite in zip(updates, finite_states([u.state for u in updates]), strict=True):
        if update.weight > 0 and finite:
            usable.append(update)
            continue
        log.warning(
            "Round %d: dropped the update of client %d (weight %s, non-finite values: %s)",
            round_idx + 1,
            update.client_idx,
            update.weight,
            not finite,
        )
    return usable


def _train_loss(updates: list[Update]) -> float:
    weighted = [(u.weight, u.metrics["train_loss"]) for u in updates if "train_loss" in u.metrics]
    total = sum(w for w, _ in weighted)
    return sum(w * loss for w, loss in weighted) / total if total else float("nan")
