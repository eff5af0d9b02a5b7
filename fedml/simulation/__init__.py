"""Simulation runners and ``run_fedavg``, the keyword-argument shortcut to a single-process FedAvg run."""

from __future__ import annotations

from typing import Any

from fedml.tracking import RunResult


def run_fedavg(
    dataset: str = "mnist",
    model: str = "lr",
    num_clients: int = 10,
    num_rounds: int = 50,
    **overrides: Any,
) -> RunResult:
    """Run FedAvg in one process and return its ``RunResult``.

    Every other config key can be given as a keyword (``learning_rate=0.1``, ``partition_method="homo"``).
    Unless ``client_num_per_round`` is given, ``min(num_clients, 10)`` clients take part in each round.
    The command line is not read.

    Examples
    --------
    A run of a few seconds that prints its rounds (shown here, not run as a doctest)::

        from fedml.simulation import run_fedavg
        result = run_fedavg(dataset="mnist", model="lr", num_clients=10, num_rounds=50)

    """
    import fedml

    settings = {
        "dataset": dataset,
        "model": model,
        "client_num_in_total": num_clients,
        "client_num_per_round": min(num_clients, 10),
        "comm_round": num_rounds,
        "federated_optimizer": "FedAvg",
        **overrides,
    }
    return fedml.run_simulation("sp", argv=[], **settings)


__all__ = ["run_fedavg"]
