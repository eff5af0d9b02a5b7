"""Robustness table: final accuracy of FedAvg and of every defense under Byzantine clients.

MNIST (embedded subset unless full MNIST is cached), logistic regression, 20 clients all taking part
every round, 4 of them Byzantine, 20 rounds, Dirichlet(0.5) label split. Run from the repository root::

    python benchmarks/robustness.py            # the table in docs/robustness.md
    python benchmarks/robustness.py --rounds 5 # a quicker look
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import fedml

DEFENSES = [
    None,
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "bulyan",
    "norm_diff_clipping",
    "geometric_median",
    ["norm_diff_clipping", "trimmed_mean"],
]
ATTACKS = {
    "no attack": {},
    "byzantine scaled (x100)": {"attack_type": "byzantine", "attack_mode": "scaled", "scale_factor": 100.0},
    "byzantine flip": {"attack_type": "byzantine", "attack_mode": "flip"},
    "byzantine random": {"attack_type": "byzantine", "attack_mode": "random"},
}


def accuracy(rounds: int, seed: int, attack: dict, defense: str | list[str] | None, run_dir: str) -> float:
    """Return the final test accuracy of one run."""
    settings = {
        "client_num_in_total": 20,
        "client_num_per_round": 20,
        "comm_round": rounds,
        "random_seed": seed,
        "byzantine_client_num": 4,
        "trim_param_b": 0.2,
        "krum_param_m": 10,
        "norm_bound": 1.0,
        "run_dir": run_dir,
        "save_model": False,
        "enable_attack": bool(attack),
        **attack,
    }
    if defense is not None:
        settings.update(enable_defense=True, defense_type=defense)
    return fedml.run_simulation("sp", argv=[], **settings).final_metrics["test_accuracy"]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    logging.getLogger("fedml").setLevel(logging.WARNING)
    names = ["FedAvg (mean)" if d is None else d if isinstance(d, str) else " -> ".join(d) for d in DEFENSES]
    print(f"{options.rounds} rounds, seed {options.seed}, 20 clients, 4 Byzantine; final test accuracy (%)\n")
    print("| attack | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    with tempfile.TemporaryDirectory() as run_dir:
        for label, attack in ATTACKS.items():
            row = [accuracy(options.rounds, options.seed, attack, d, run_dir) for d in DEFENSES]
            print(f"| {label} | " + " | ".join(f"{100 * a:.1f}" for a in row) + " |", flush=True)


if __name__ == "__main__":
    main()
