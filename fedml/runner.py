"""``FedMLRunner``: one table maps ``(training_type, backend)`` to the runner that carries out the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from fedml.errors import NotSupportedError

if TYPE_CHECKING:
    from fedml.data import FederatedDataset
    from fedml.ml import ClientTrainer, ServerAggregator
    from fedml.tracking import RunResult


class Runner(Protocol):
    """Anything that carries out a run."""

    def run(self) -> RunResult:
        """Carry out the run and return its result."""
        ...


RunnerFactory = Callable[..., Runner]
"""Called as ``factory(args, device, dataset, model, client_trainer=..., server_aggregator=...)``."""

_RUNNERS: dict[tuple[str, str], RunnerFactory] = {}


def register_runner(training_type: str, backend: str, factory: RunnerFactory) -> None:
    """Make ``factory`` the runner for ``common_args.training_type`` and ``comm_args.backend``."""
    _RUNNERS[(training_type, backend)] = factory


def available_runners() -> list[tuple[str, str]]:
    """Return the ``(training_type, backend)`` pairs that can run."""
    return sorted(_RUNNERS)


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
        dataset: FederatedDataset,
        model: nn.Module,
        client_trainer: ClientTrainer | None = None,
        server_aggregator: ServerAggregator | None = None,
    ) -> None:
        key = (args.training_type, args.backend)
        if key not in _RUNNERS:
            built = ", ".join(f"{t}/{b}" for t, b in available_runners())
            raise NotSupportedError(
                f"training_type {key[0]!r} with comm_args.backend {key[1]!r} is not available yet; "
                f"available: {built}"
            )
        self.runner = _RUNNERS[key](
            args, device, dataset, model, client_trainer=client_trainer, server_aggregator=server_aggregator
        )

    def run(self) -> RunResult:
        """Carry out the run and return its ``RunResult``."""
        return self.runner.run()


def _sp_simulator(*args: Any, **kwargs: Any) -> Runner:
    from fedml.simulation.sp import SPSimulator

    return SPSimulator(*args, **kwargs)


def _mpi_simulator(*args: Any, **kwargs: Any) -> Runner:
    from fedml.simulation.mpi import MPISimulator

    return MPISimulator(*args, **kwargs)


def _nccl_simulator(*args: Any, **kwargs: Any) -> Runner:
    from fedml.simulation.nccl import NCCLSimulator

    return NCCLSimulator(*args, **kwargs)


register_runner("simulation", "sp", _sp_simulator)
register_runner("simulation", "MPI", _mpi_simulator)
register_runner("simulation", "NCCL", _nccl_simulator)
