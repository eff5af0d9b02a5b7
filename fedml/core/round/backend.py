"""Backends: where a round's clients train. The protocol, the work of one round, and the in-process backend.

A backend answers one question for the round driver: "train these clients from this state and give me
back their results". ``LocalBackend`` trains them in this process (one by one, or all at once with the
vectorized engine) and is what MPI workers and NCCL ranks run for their share, so every backend trains
a client the same way. The client steps (attack simulation, ...) run here, around each client's
training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from fedml.core.algorithms import Algorithm, Client, RoundContext, RoundResults, Update
from fedml.core.algorithms.base import Aggregator, Trainer
from fedml.core.steps import ClientStep, Steps, check_compatibility, prepare_client, run_client_steps

if TYPE_CHECKING:
    from fedml.data import ClientData
    from fedml.tracking import RunResult


@dataclass
class RoundTask:
    """One round's work: train ``clients`` from ``global_state``, each with its payload.

    Attributes
    ----------
    round_idx
        The 0-based round.
    global_state
        The state every client starts from.
    clients
        The sampled clients, sorted.
    payloads
        Per-client tensors of stateful algorithms (empty mappings for the others).
    wanted
        How many results the round needs (``client_num_per_round``); a policy that over-selects
        may stop once this many have arrived.

    """

    round_idx: int
    global_state: dict[str, torch.Tensor]
    clients: list[int]
    payloads: Mapping[int, Mapping[str, torch.Tensor]]
    wanted: int


class Backend(Protocol):
    """Where a round's clients train, as the round driver sees it.

    Attributes
    ----------
    name
        The ``comm_args.backend`` name, for messages.
    presummed
        True when ``train`` returns a ``SummedUpdate`` instead of every client's update.
    retries
        How often the driver retries a round whose ``train`` raised ``RoundIncompleteError``.

    """

    name: str
    presummed: bool
    retries: int

    def open(self) -> None:
        """Get ready for the first round (connect, wait for peers)."""
        ...

    def clients(self) -> list[int]:
        """Return the clients that can be sampled now, sorted."""
        ...

    def selection_size(self, wanted: int) -> int:
        """Return how many clients to sample for a round that needs ``wanted`` results."""
        ...

    def train(self, task: RoundTask) -> RoundResults:
        """Train the task's clients and return their results."""
        ...

    def close(self, result: RunResult | None, error: BaseException | None) -> None:
        """End the run: hand the result (or the error) to whoever else takes part."""
        ...


BatchTrainer = Callable[[int, Mapping[str, torch.Tensor], Sequence[tuple[int, "ClientData"]]], list[Update]]
"""``train(round_idx, global_state, [(client, data)]) -> updates``: many clients in one computation."""


class LocalBackend:
    """Trains a round's clients in this process with the algorithm's client rule and the client steps.

    Parameters
    ----------
    args
        The run's arguments.
    device
        Where clients train.
    data
        ``data(client) -> ClientData``: a client's local training data.
    client_num
        How many clients there are (ids ``0 .. client_num - 1``).
    algorithm
        Its ``client_update`` trains one client.
    trainer, aggregator
        What the algorithm sees in its round context.
    steps
        The client chain, run around each client's training.
    batch_trainer
        The vectorized engine's ``train_round`` when it trains this run, else ``None`` (one by one).
    name
        The ``comm_args.backend`` this process serves, for the compatibility check.

    """

    presummed = False
    retries = 0

    def __init__(
        self,
        args: Any,
        device: torch.device,
        data: Callable[[int], ClientData],
        client_num: int,
        algorithm: Algorithm,
        trainer: Trainer,
        aggregator: Aggregator,
        steps: Sequence[ClientStep] = (),
        batch_trainer: BatchTrainer | None = None,
        name: str = "sp",
    ) -> None:
        self.args = args
        self.device = device
        self.data = data
        self.client_num = client_num
        self.algorithm = algorithm
        self.trainer = trainer
        self.aggregator = aggregator
        self.steps = list(steps)
        self.batch_trainer = batch_trainer
        self.name = name
        self.engine = "vectorized" if batch_trainer is not None else "sequential"
        check_compatibility(Steps(client=self.steps), algorithm, name, engine=self.engine)

    def open(self) -> None:
        """Nothing to prepare."""

    def clients(self) -> list[int]:
        """Return every client id."""
        return list(range(self.client_num))

    def selection_size(self, wanted: int) -> int:
        """Return ``wanted``: every sampled client trains."""
        return wanted

    def train(self, task: RoundTask) -> list[Update]:
        """Train the task's clients from its state; return their updates in the task's client order."""
        ctx = RoundContext(task.round_idx, self.args, self.device, self.trainer, self.aggregator)
        state = task.global_state
        # A generator: one by one, a client's data (built lazily by some datasets) lives only while
        # it trains; the vectorized engine needs them all at once anyway.
        clients = (
            prepare_client(self.steps, Client(c, self.data(c), dict(task.payloads.get(c, {}))), ctx)
            for c in task.clients
        )
        if self.batch_trainer is not None:
            updates = self.batch_trainer(task.round_idx, state, [(c.idx, c.train_data) for c in clients])
            return [run_client_steps(self.steps, update, state, ctx) for update in updates]
        return [
            run_client_steps(self.steps, self.algorithm.client_update(state, client, ctx), state, ctx)
            for client in clients
        ]

    def close(self, result: RunResult | None, error: BaseException | None) -> None:
        """Nothing to release."""
