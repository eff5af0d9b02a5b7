"""Algorithms table: rounds to reach a target accuracy and final accuracy of each optimizer, non-IID.

MNIST (embedded subset unless full MNIST is cached), logistic regression, 20 clients with a
Dirichlet(0.1) label split, 10 sampled per round, 2 local epochs; every figure is the mean over the
seeds. Run from the repository root::

    python benchmarks/algorithms.py                  # the table in docs/algorithms.md
    python benchmarks/algorithms.py --rounds 10 --seeds 0
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile

import fedml

OPTIMIZERS = {
    "FedAvg": {"federated_optimizer": "FedAvg"},
    "FedProx (mu 0.1)": {"federated_optimizer": "FedProx", "fedprox_mu": 0.1},
    "FedAvgM (sgd, server momentum 0.9)": {
        "federated_optimizer": "FedOpt",
        "server_optimizer": "sgd",
        "server_lr": 1.0,
        "server_momentum": 0.9,
    },
    "FedAdam (lr 0.01)": {
        "federated_optimizer": "FedOpt",
        "server_optimizer": "adam",
        "server_lr": 0.01,
        "server_momentum": 0.9,
    },
    "FedYogi (lr 0.01)": {
        "federated_optimizer": "FedOpt",
        "server_optimizer": "yogi",
        "server_lr": 0.01,
        "server_momentum": 0.9,
    },
    "FedAdagrad (lr 0.1)": {
        "federated_optimizer": "FedOpt",
        "server_optimizer": "adagrad",
        "server_lr": 0.1,
        "server_momentum": 0.9,
    },
    "FedNova": {"federated_optimizer": "FedNova"},
    "SCAFFOLD": {"federated_optimizer": "SCAFFOLD"},
    "FedDyn (alpha 0.01)": {"federated_optimizer": "FedDyn", "feddyn_alpha": 0.01},
}


def history(settings: dict, rounds: int, seed: int, run_dir: str) -> list[float]:
    """Return the test accuracy after every round of one run."""
    result = fedml.run_simulation(
        "sp",
        argv=[],
        client_num_in_total=20,
        client_num_per_round=10,
        comm_round=rounds,
        epochs=2,
        partition_alpha=0.1,
        random_seed=seed,
        run_dir=run_dir,
        save_model=False,
        **settings,
    )
    return [record["test_accuracy"] for record in result.history]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options = parser.parse_args()
    logging.getLogger("fedml").setLevel(logging.WARNING)
    print(
        f"{options.rounds} rounds, seeds {options.seeds}, 20 clients (Dirichlet 0.1), 10 per round, "
        f"2 local epochs; target {100 * options.target:.0f}%\n"
    )
    print(
        "| optimizer | rounds to target (mean; - = not reached by all seeds) | final accuracy % (mean ± sd) |"
    )
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as run_dir:
        for label, settings in OPTIMIZERS.items():
            runs = [history(settings, options.rounds, seed, run_dir) for seed in options.seeds]
            reached = [next((i + 1 for i, a in enumerate(h) if a >= options.target), None) for h in runs]
            to_target = f"{statistics.mean(reached):.1f}" if None not in reached else "-"
            finals = [100 * h[-1] for h in runs]
            spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
            print(f"| {label} | {to_target} | {statistics.mean(finals):.1f} ± {spread:.1f} |", flush=True)


if __name__ == "__main__":
    main()
