"""Federated optimizers, chosen by ``train_args.federated_optimizer`` through a registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedml.core.algorithms.base import (
    Algorithm,
    Client,
    LocalObjective,
    Penalty,
    RoundContext,
    Update,
    train_locally,
)
from fedml.core.algorithms.fedavg import FedAvg
from fedml.core.algorithms.feddyn import FedDyn
from fedml.core.algorithms.fednova import FedNova
from fedml.core.algorithms.fedopt import FedOpt
from fedml.core.algorithms.fedprox import FedProx
from fedml.core.algorithms.scaffold import Scaffold
from fedml.errors import ConfigError

AlgorithmFactory = Callable[[Any], Algorithm]
"""Builds an algorithm from the run's arguments."""

_ALGORITHMS: dict[str, AlgorithmFactory] = {}


def register_algorithm(name: str, factory: AlgorithmFactory) -> None:
    """Make ``factory(args)`` available as ``train_args.federated_optimizer: name``."""
    _ALGORITHMS[name] = factory


def algorithm_names() -> list[str]:
    """Return the registered algorithm names."""
    return sorted(_ALGORITHMS)


def create_algorithm(args: Any) -> Algorithm:
    """Build the algorithm named by ``args.federated_optimizer``, wrapped in the simulated attack if enabled.

    Raises
    ------
    ConfigError
        If the name is not registered; the message lists the valid names.

    """
    name = args.federated_optimizer
    if name not in _ALGORITHMS:
        raise ConfigError(
            f"train_args.federated_optimizer: unknown optimizer {name!r}; "
            f"valid: {', '.join(algorithm_names())}"
        )
    algorithm = _ALGORITHMS[name](args)
    if getattr(args, "enable_attack", False):
        from fedml.core.attacks import AttackedAlgorithm

        algorithm = AttackedAlgorithm(algorithm, args)
    return algorithm


register_algorithm("FedAvg", FedAvg)
register_algorithm("FedProx", FedProx)
register_algorithm("FedOpt", FedOpt)
register_algorithm("FedNova", FedNova)
register_algorithm("SCAFFOLD", Scaffold)
register_algorithm("FedDyn", FedDyn)

__all__ = [
    "Algorithm",
    "AlgorithmFactory",
    "Client",
    "FedAvg",
    "FedDyn",
    "FedNova",
    "FedOpt",
    "FedProx",
    "LocalObjective",
    "Penalty",
    "RoundContext",
    "Scaffold",
    "Update",
    "algorithm_names",
    "create_algorithm",
    "register_algorithm",
    "train_locally",
]
