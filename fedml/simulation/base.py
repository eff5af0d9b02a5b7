"""What every simulation runner starts from: the model on its device, trainer, aggregator, algorithm, steps.

A simulation runner is set-up code: it builds these once, then hands ``FederatedRound`` (on the server)
a backend, or serves as a worker over the same ``LocalBackend``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.core.algorithms import create_algorithm
from fedml.core.privacy.dpsgd import dpsgd_trainer
from fedml.core.round import FederatedRound, LocalBackend
from fedml.core.steps import build_steps
from fedml.errors import ConfigError
from fedml.ml import ClientTrainer, ServerAggregator
from fedml.model import MODELS
from fedml.simulation.engine import choose_engine

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Callable

    from fedml.data import ClientData, ClientDataset
    from fedml.tracking import RunResult


class Simulator:
    """Common set-up of the simulation runners (``sp``, ``MPI``, ``NCCL``); subclasses implement ``run``.

    ``train_args.engine`` chooses how this process trains clients: one after the other (``sequential``)
    or all at once as one batched computation (``vectorized``); ``auto`` follows
    ``fedml.simulation.engine.choose_engine``. Both give the same model up to float rounding.

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

    backend_name = "sp"
    """The ``comm_args.backend`` this runner serves."""

    def __init__(
        self,
        args: Any,
        device: torch.device,
        dataset: ClientDataset,
        model: nn.Module,
        client_trainer: ClientTrainer | None = None,
        server_aggregator: ServerAggregator | None = None,
    ) -> None:
        self.args = args
        self.device = device
        self.dataset = dataset
        self.adopt_dataset_size()
        self.model = model.to(device)
        self.custom_trainer = client_trainer is not None
        private = dpsgd_trainer(model, args, self.custom_trainer)
        self.trainer = client_trainer or private or ClientTrainer(model, args)
        self.aggregator = server_aggregator or ServerAggregator(model, args)
        self.algorithm = create_algorithm(args)
        self.steps = build_steps(args)
        self.engine, objective = choose_engine(
            args,
            device,
            model,
            self.algorithm,
            dataset,
            custom_trainer=self.custom_trainer,
            sequential_reason="dp_args dpsgd trains each client with Opacus" if private else None,
        )
        self.batch_trainer = None
        if objective is not None:
            from fedml.simulation.vectorized import VectorizedTrainer

            self.batch_trainer = VectorizedTrainer(model, args, device, objective).train_round

    def adopt_dataset_size(self) -> None:
        """Make ``client_num_in_total`` the dataset's client count (see ``_follow_the_dataset``)."""
        _follow_the_dataset(self.args, self.dataset)

    def rounds(self) -> FederatedRound:
        """Return the round driver of this run (on the process that acts as the server)."""
        return FederatedRound(
            self.args,
            self.device,
            self.dataset.test_global,
            self.algorithm,
            self.trainer,
            self.aggregator,
            self.steps,
            names=self.names(),
            engine=self.engine,
            data_seconds=getattr(self.dataset, "load_seconds", None),
        )

    def names(self) -> dict[str, str]:
        """Return the names of the dataset and model that run, where they are not the configuration's.

        A custom dataset is named by its ``name``; a model that is not the registered ``model_args.model``
        by its class.
        """
        names = {}
        dataset_name = getattr(self.dataset, "name", None)
        if isinstance(dataset_name, str) and dataset_name != self.args.dataset:
            names["dataset"] = dataset_name
        registered = MODELS.get(self.args.model) if self.args.model in MODELS else None
        if isinstance(registered, type) and not isinstance(self.model, registered):
            names["model"] = type(self.model).__name__
        return names

    def local_backend(
        self, data: Callable[[int], ClientData] | None = None, client_num: int | None = None
    ) -> LocalBackend:
        """Return the backend that trains clients in this process with the chosen engine.

        ``data`` (client -> its training data) and ``client_num`` default to the dataset's.
        """
        return LocalBackend(
            self.args,
            self.device,
            data or self.dataset.local_train,
            self.dataset.client_num if client_num is None else client_num,
            self.algorithm,
            self.trainer,
            self.aggregator,
            self.steps.client,
            self.batch_trainer,
            self.backend_name,
        )

    def sample_counts(self) -> dict[int, int]:
        """Return every client's number of training samples (what a worker announces when it joins)."""
        return {c: self.dataset.local_sample_num(c) for c in range(self.dataset.client_num)}

    def run(self) -> RunResult:
        """Carry out the run and return its result."""
        raise NotImplementedError


def _follow_the_dataset(args: Any, dataset: ClientDataset) -> None:
    """Make ``client_num_in_total`` the dataset's client count, so the run samples and records the same.

    A custom dataset may have another count than the configuration says; the dataset wins (it is what
    trains) and the run directory's ``config.yaml`` records it.

    Raises
    ------
    ConfigError
        If the dataset has fewer clients than ``client_num_per_round``.

    """
    count = dataset.client_num
    if count == args.client_num_in_total:
        return
    if count < args.client_num_per_round:
        raise ConfigError(
            f"the dataset has {count} clients, fewer than train_args.client_num_per_round "
            f"{args.client_num_per_round}"
        )
    log.info(
        "The dataset has %d clients, train_args.client_num_in_total said %d: the run uses %d",
        count,
        args.client_num_in_total,
        count,
    )
    args.client_num_in_total = count
