"""``FedMLRunner``: one table maps ``(training_type, backend)`` to the runner that carries out the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from fedml.core.registry import Registry
from fedml.device import set_threads
from fedml.errors import NotSupportedError

if TYPE_CHECKING:
    from fedml.data import ClientDataset
    from fedml.ml import ClientTrainer, ServerAggregator
    from fedml.tracking import RunResult


class Runner(Protocol):
    """Anything that carries out a run."""

    def run(self) -> RunResult:
        """Carry out the run and return its result."""
        ...


RunnerFactory = Callable[..., Runner]
"""Called as ``factory(args, device, dataset, model, client_trainer=..., server_aggregator=...)``."""

RUNNERS: Registry[RunnerFactory] = Registry("runner", key="common_args.training_type/comm_args.backend")
"""Runners by ``"<training_type>/<backend>"``."""


def register_runner(
    training_type: str, backend: str, factory: RunnerFactory | str, settings: Any = None
) -> None:
    """Make ``factory`` the runner for ``common_args.training_type`` and ``comm_args.backend``.

    ``factory`` may be ``"module:attribute"``, imported on first use; ``settings`` is the
    ``ComponentSettings`` model (or ``"module:Model"``) of the YAML keys the runner adds.
    """
    RUNNERS.register(f"{training_type}/{backend}", factory, settings=settings)


def available_runners() -> list[tuple[str, str]]:
    """Return the ``(training_type, backend)`` pairs that can run."""
    return [(pair.split("/")[0], pair.split("/")[1]) for pair in RUNNERS.names()]


class FedMLRunner:
    """Picks and runs the runner for ``args.training_type`` and ``args.backend``.

    Parameters
    ----------
    args
        The run's arguments (``fedml.init()``).
    device
        ``fedml.device.get_device(args)``.
    dataset
        ``fedml.data.load(args)[0]``.
    model
        ``fedml.model.create(args, output_dim)``.
    client_trainer, server_aggregator
        Optional customizations (subclasses of ``fedml.core.ClientTrainer`` / ``ServerAggregator``).

    Raises
    ------
    NotSupportedError
        For a combination that is not built; the message lists those that are.

    """

    def __init__(
        self,
        args: Any,
        device: torch.device,
        dataset: ClientDataset,
        model: nn.Module,
        client_trainer: ClientTrainer | None = None,
        server_aggregator: ServerAggregator | None = None,
    ) -> None:
        set_threads(args, device)
        key = (args.training_type, args.backend)
        if f"{key[0]}/{key[1]}" not in RUNNERS:
            built = ", ".join(f"{t}/{b}" for t, b in available_runners())
            raise NotSupportedError(
                f"training_type {key[0]!r} with comm_args.backend {key[1]!r} is not available yet; "
                f"available: {built}"
            )
        self.runner = RUNNERS.get(f"{key[0]}/{key[1]}")(
            args, device, dataset, model, client_trainer=client_trainer, server_aggregator=server_aggregator
        )

    def run(self) -> RunResult:
        """Carry out the run and return its ``RunResult``."""
        return self.runner.run()


register_runner("simulation", "sp", "fedml.simulation.sp:SPSimulator")
register_runner("simulation", "MPI", "fedml.simulation.mpi:MPISimulator")
register_runner("simulation", "NCCL", "fedml.simulation.nccl:NCCLSimulator")
register_runner("simulation", "TRPC", "fedml.simulation.trpc:TRPCSimulator")
register_runner("cross_silo", "GRPC", "fedml.cross_silo:cross_silo_runner")
register_runner("cross_silo", "MQTT", "fedml.cross_silo:cross_silo_runner")
register_runner(
    "cross_device",
    "MQTT",
    "fedml.cross_device:cross_device_runner",
    "fedml.cross_device.settings:FedBuffSettings",
)
