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
    RoundResults,
    SummedUpdate,
    Update,
    individual_updates,
    train_locally,
    weighted_states,
)
from fedml.core.algorithms.fedavg import FedAvg
from fedml.core.algorithms.feddyn import FedDyn, FedDynSettings
from fedml.core.algorithms.fednova import FedNova
from fedml.core.algorithms.fedopt import FedOpt, FedOptSettings
from fedml.core.algorithms.fedprox import FedProx, FedProxSettings
from fedml.core.algorithms.scaffold import Scaffold
from fedml.core.registry import Registry

AlgorithmFactory = Callable[[Any], Algorithm]
"""Builds an algorithm from the run's arguments."""

ALGORITHMS: Registry[AlgorithmFactory] = Registry("optimizer", key="train_args.federated_optimizer")
"""The ``train_args.federated_optimizer`` names."""


def register_algorithm(name: str, factory: AlgorithmFactory | str, settings: Any = None) -> None:
    """Make ``factory(args)`` available as ``train_args.federated_optimizer: name``.

    ``factory`` may be ``"module:attribute"``, imported on first use.

    ``settings`` is the algorithm's ``ComponentSettings`` model: the keys it adds to its section.
    """
    ALGORITHMS.register(name, factory, settings=settings)


def algorithm_names() -> list[str]:
    """Return the registered algorithm names."""
    return ALGORITHMS.names()


def create_algorithm(args: Any) -> Algorithm:
    """Build the algorithm named by ``args.federated_optimizer``.

    Raises
    ------
    ConfigError
        If the name is not registered; the message lists the valid names.

    """
    return ALGORITHMS.get(args.federated_optimizer)(args)


register_algorithm("FedAvg", FedAvg)
register_algorithm("FedProx", FedProx, FedProxSettings)
register_algorithm("FedOpt", FedOpt, FedOptSettings)
register_algorithm("FedNova", FedNova)
register_algorithm("SCAFFOLD", Scaffold)
register_algorithm("FedDyn", FedDyn, FedDynSettings)
register_algorithm("DPSGD", "fedml.core.round.gossip:DPSGD")

__all__ = [
    "ALGORITHMS",
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
    "RoundResults",
    "Scaffold",
    "SummedUpdate",
    "Update",
    "algorithm_names",
    "create_algorithm",
    "individual_updates",
    "register_algorithm",
    "train_locally",
    "weighted_states",
]
