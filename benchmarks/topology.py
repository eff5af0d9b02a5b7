"""Topologies table: rounds to a target accuracy and final accuracy of the star and of D-PSGD graphs.

MNIST (embedded subset unless full MNIST is cached), logistic regression, 32 nodes with a
Dirichlet(0.5) label split, 1 local epoch per round, batch 10, learning rate 0.03. The star is FedAvg
with all 32 clients every round; ring, torus (4 x 8) and random 4-regular are D-PSGD with one gossip
step per round, every node training every round. Every figure is the mean over the seeds (the seed
draws the split, the model and the random graph). Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/topology.py            # the table in docs/topology.md
    OMP_NUM_THREADS=1 python benchmarks/topology.py --rounds 10 --seeds 0
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile

import fedml
from fedml.core.topology import build_graph, mixing_matrix, spectral_gap

NODES = 32
TOPOLOGIES = {
    "star (FedAvg)": {"topology": "star", "federated_optimizer": "FedAvg"},
    "ring": {"topology": "decentralized", "federated_optimizer": "DPSGD", "graph": "ring"},
    "torus 4 x 8": {"topology": "decentralized", "federated_optimizer": "DPSGD", "graph": "torus"},
    "random 4-regular": {
        "topology": "decentralized",
        "federated_optimizer": "DPSGD",
        "graph": "random_regular",
        "degree": 4,
    },
}


def history(settings: dict, rounds: int, seed: int, run_dir: str) -> list[dict[str, float]]:
    """Return the records of every round of one run."""
    result = fedml.run_simulation(
        "sp",
        argv=[],
        client_num_in_total=NODES,
        client_num_per_round=NODES,
        comm_round=rounds,
        partition_method="hetero",
        partition_alpha=0.5,
        download=False,
        random_seed=seed,
        run_dir=run_dir,
        save_model=False,
        quiet=True,
        **settings,
    )
    return result.history


def gap(settings: dict, seed: int) -> float | None:
    """Return the spectral gap of a D-PSGD graph's mixing matrix (``None`` for the star)."""
    if settings["topology"] == "star":
        return None
    graph = build_graph(settings["graph"], NODES, settings.get("degree", 4), seed=seed)
    return spectral_gap(mixing_matrix(graph))


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--target", type=float, default=0.86)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options = parser.parse_args()
    logging.getLogger("fedml").setLevel(logging.WARNING)
    print(
        f"{options.rounds} rounds, seeds {options.seeds}, {NODES} nodes (Dirichlet 0.5), all training "
        f"every round, 1 local epoch, 1 gossip step; target {100 * options.target:.0f}%\n"
    )
    print(
        "| topology | spectral gap | rounds to target (mean; - = not reached by all seeds) "
        "| final accuracy % (mean ± sd) | final consensus distance |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as run_dir:
        for label, settings in TOPOLOGIES.items():
            runs = [history(settings, options.rounds, seed, run_dir) for seed in options.seeds]
            accuracies = [[r["test_accuracy"] for r in h] for h in runs]
            reached = [
                next((i + 1 for i, a in enumerate(h) if a >= options.target), None) for h in accuracies
            ]
            to_target = f"{statistics.mean(reached):.1f}" if None not in reached else "-"
            finals = [100 * h[-1] for h in accuracies]
            spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
            gaps = [g for g in (gap(settings, seed) for seed in options.seeds) if g is not None]
            gap_text = f"{statistics.mean(gaps):.4f}" if gaps else "-"
            distances = [h[-1]["consensus_distance"] for h in runs if "consensus_distance" in h[-1]]
            distance_text = f"{statistics.mean(distances):.3f}" if distances else "0 (one model)"
            print(
                f"| {label} | {gap_text} | {to_target} | {statistics.mean(finals):.1f} ± {spread:.1f} "
                f"| {distance_text} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
