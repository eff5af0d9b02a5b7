"""Differential privacy: accuracy vs epsilon of central DP, and the per-round cost of DP against no DP.

Table 1, accuracy vs epsilon: DP-FedAvg (``dp_solution_type: cdp``) on MNIST (the embedded 4,000-digit
subset unless full MNIST is cached; ``download`` is off), logistic regression, 1,000 clients with an
IID split (``partition_method: homo``: 4 digits each, so the curve shows what DP costs, not label skew),
100 sampled per round, one local epoch at learning rate 0.3, FedOpt with server SGD at ``server_lr``
1 (FedAvg's step; ``--server-lr`` changes it), ``clipping_norm`` 0.1. Each row is one noise
multiplier or one target epsilon (the multiplier is then calibrated for the rounds), mean and spread
over the seeds; epsilon is at delta 1e-5 from the run's RDP accountant (Opacus, sample rate 0.1).
Only the last round is evaluated, so the accountant runs once per run.

Table 2, per-round cost: the same workload on the vectorized engine, plain vs ``ldp`` and vs ``cdp``
(noise multiplier 1; also with a ``max_epsilon`` it never reaches), every other round evaluated; the
wall time of a round without evaluation (train, DP steps, aggregate) and of a round with one (plus
test and the epsilon of every record), each the median over a run's rounds (the first left out), then
the median over interleaved repeats. Ratios are to plain in the same repeats. Table 3: ``dpsgd``
(Opacus) vs plain on the sequential engine, on a smaller workload (100 clients of 40 digits, 10 per
round). One torch thread throughout. Run from the repository root::

    python benchmarks/privacy.py           # the tables in docs/privacy.md (about 6 minutes on 2 cores)
    python benchmarks/privacy.py --quick   # a smoke run of every table (under a minute)

``OMP_NUM_THREADS`` is 1 unless set.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import warnings
from typing import Any

# Before torch is imported, so its thread pool is sized once.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

import fedml

WORKLOAD: dict[str, Any] = {
    "dataset": "mnist",
    "model": "lr",
    "download": False,
    "client_num_in_total": 1000,
    "client_num_per_round": 100,
    "partition_method": "homo",
    "epochs": 1,
    "learning_rate": 0.3,
    "federated_optimizer": "FedOpt",
    "server_optimizer": "sgd",
    "server_lr": 1.0,
    "save_model": False,
    "plots": False,
    "quiet": True,
}
"""MNIST LR, 1,000 clients, 100 per round: the workload of tables 1 and 2."""

SMALL: dict[str, Any] = {**WORKLOAD, "client_num_in_total": 100, "client_num_per_round": 10}
"""The DP-SGD cost workload: 100 clients of 40 digits, 10 per round (Opacus trains them one by one)."""

CLIP = 0.1
DELTA = 1e-5
ACCURACY_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("no DP", {}),
    ("cdp, noise 0 (clipping only)", {"noise_multiplier": 0.0}),
    ("cdp, noise 0.5", {"noise_multiplier": 0.5}),
    ("cdp, noise 1", {"noise_multiplier": 1.0}),
    ("cdp, noise 2", {"noise_multiplier": 2.0}),
    ("cdp, noise 4", {"noise_multiplier": 4.0}),
    ("cdp, noise 8", {"noise_multiplier": 8.0}),
    ("cdp, target epsilon 3", {"epsilon": 3.0}),
    ("cdp, target epsilon 1", {"epsilon": 1.0}),
]
"""Table 1's rows: the DP settings on top of ``WORKLOAD``; the first, without DP, is the baseline."""

COST_MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "ldp": {"dp_solution_type": "ldp", "noise_multiplier": 1.0},
    "cdp": {"dp_solution_type": "cdp", "noise_multiplier": 1.0},
    "cdp, max_epsilon 100": {"dp_solution_type": "cdp", "noise_multiplier": 1.0, "max_epsilon": 100.0},
}
"""Table 2's runs on the vectorized engine. A budget (never reached here) makes the accountant predict
the next round's epsilon before every round, evaluated or not."""


def dp(settings: dict[str, Any]) -> dict[str, Any]:
    """Return the ``dp_args`` overrides of a row's settings (none for the baseline)."""
    if not settings:
        return {}
    return {
        "enable_dp": True,
        "dp_solution_type": "cdp",
        "clipping_norm": CLIP,
        "delta": DELTA,
        **settings,
    }


def simulate(settings: dict[str, Any], run_dir: str) -> fedml.RunResult:
    """Run one simulation on the sp backend with ``settings`` over the defaults."""
    return fedml.run_simulation("sp", argv=[], run_dir=run_dir, **settings)


def accuracy_table(rounds: int, seeds: list[int], run_dir: str) -> None:
    """Print table 1: final accuracy and epsilon reached of each row, over ``seeds``."""
    print(
        f"Table 1: {rounds} rounds, seeds {seeds}, clipping_norm {CLIP}, delta {DELTA:g}; "
        "final test accuracy (%) and epsilon reached\n"
    )
    print("| setting | noise multiplier | epsilon | accuracy % (mean ± sd) | points vs no DP |")
    print("|---|---|---|---|---|")
    baseline: float | None = None
    for label, settings in ACCURACY_ROWS:
        finals, reached = [], math.nan
        for seed in seeds:
            result = simulate(
                {
                    **WORKLOAD,
                    **dp(settings),
                    "engine": "vectorized",
                    "comm_round": rounds,
                    "frequency_of_the_test": rounds,
                    "random_seed": seed,
                },
                run_dir,
            )
            finals.append(100 * result.final_metrics["test_accuracy"])
            reached = result.final_metrics.get("epsilon", math.nan)
        noise = settings.get("noise_multiplier")
        if "epsilon" in settings:
            noise = calibrated_noise(settings["epsilon"], rounds)
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        mean = statistics.mean(finals)
        if baseline is None:
            baseline = mean  # the first row is the run without DP
        print(
            f"| {label} | {'-' if noise is None else f'{noise:.3g}'} | "
            f"{'-' if math.isnan(reached) else f'{reached:.3g}'} | "
            f"{mean:.1f} ± {spread:.1f} | {mean - baseline:+.1f} |",
            flush=True,
        )


def calibrated_noise(target: float, rounds: int) -> float:
    """Return the noise multiplier a ``cdp`` run with a target epsilon uses (as the run computes it)."""
    from fedml.core.privacy.accountant import calibrate_noise

    rate = WORKLOAD["client_num_per_round"] / WORKLOAD["client_num_in_total"]
    return calibrate_noise(target, DELTA, rate, rounds)


def round_times(result: fedml.RunResult) -> tuple[float, float, float]:
    """Return the median seconds of a run's unevaluated and evaluated rounds, and its loop's mean.

    Runs have an even number of rounds and evaluate every other one (``frequency_of_the_test`` 2):
    indices 1, 3, ..., the last included; the first round is left out. The loop's mean per round also
    counts what runs between rounds (the budget check), from the last record's clock less the setup.
    """
    seconds = result.round_seconds
    plain = [s for i, s in enumerate(seconds) if i > 0 and i % 2 == 0]
    evaluated = [s for i, s in enumerate(seconds) if i % 2 == 1]
    loop = (result.final_metrics["seconds"] - result.phases["setup"]) / len(seconds)
    return statistics.median(plain), statistics.median(evaluated), loop


def cost_table(
    modes: dict[str, dict[str, Any]], workload: dict[str, Any], rounds: int, repeat: int, run_dir: str
) -> dict[str, tuple[float, float, float, str]]:
    """Return per mode the medians of ``round_times`` over ``repeat`` interleaved runs, and the engine.

    The first pass is a warm-up (imports, the allocator, Opacus) and is not counted.
    """
    times: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
    engines: dict[str, str] = {}
    for attempt in range(repeat + 1):
        for mode, settings in modes.items():
            extra = {"enable_dp": True, "clipping_norm": CLIP, "delta": DELTA, **settings} if settings else {}
            result = simulate(
                {**workload, **extra, "comm_round": rounds, "frequency_of_the_test": 2}, run_dir
            )
            engines[mode] = result.engine
            if attempt > 0:
                times[mode].append(round_times(result))
    return {
        mode: (
            statistics.median(t[0] for t in runs),
            statistics.median(t[1] for t in runs),
            statistics.median(t[2] for t in runs),
            engines[mode],
        )
        for mode, runs in times.items()
    }


def print_cost(title: str, rows: dict[str, tuple[float, float, float, str]], baseline: str) -> None:
    """Print one cost table with ratios to ``baseline``."""
    base = rows[baseline][:3]
    print(f"\n{title}\n")
    print(
        "| run | engine | round ms | x plain | evaluated round ms | x plain | loop ms per round | x plain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, (*seconds, engine) in rows.items():
        cells = " | ".join(f"{1000 * s:.1f} | {s / b:.2f}" for s, b in zip(seconds, base, strict=True))
        print(f"| {mode} | {engine} | {cells} |", flush=True)


def main() -> None:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of every table (under a minute)")
    parser.add_argument("--rounds", type=int, default=None, help="table 1's rounds (default 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="table 1's seeds (default 0 1 2)")
    parser.add_argument("--repeat", type=int, default=None, help="cost runs per mode (default 5)")
    parser.add_argument("--server-lr", type=float, default=1.0, help="FedOpt's server SGD step size")
    options = parser.parse_args()
    WORKLOAD["server_lr"] = SMALL["server_lr"] = options.server_lr
    # Opacus's noise search warns when its own (narrower) orders top out; fedml re-checks the result.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    # One thread: the cost ratios are of the work, not of how well each part uses a thread pool.
    torch.set_num_threads(1)
    logging.getLogger("fedml").setLevel(logging.WARNING)
    rounds = options.rounds or (10 if options.quick else 100)
    seeds = options.seeds or ([0] if options.quick else [0, 1, 2])
    repeat = options.repeat or (1 if options.quick else 5)
    cost_rounds = 8 if options.quick else 22
    with tempfile.TemporaryDirectory() as run_dir:
        accuracy_table(rounds, seeds, run_dir)
        vectorized = {**WORKLOAD, "engine": "vectorized"}
        rows = cost_table(COST_MODES, vectorized, cost_rounds, repeat, run_dir)
        print_cost(
            f"Table 2: per-round cost, 1,000 clients, 100 per round, {cost_rounds} rounds, median of "
            f"{repeat} interleaved runs; noise multiplier 1, clipping_norm {CLIP}",
            rows,
            "plain",
        )
        sequential = {**SMALL, "engine": "sequential"}
        dpsgd = {"plain": {}, "dpsgd": {"dp_solution_type": "dpsgd", "noise_multiplier": 1.0}}
        rows = cost_table(dpsgd, sequential, cost_rounds, repeat, run_dir)
        print_cost(
            f"Table 3: per-round cost of DP-SGD, 100 clients, 10 per round, {cost_rounds} rounds, median of "
            f"{repeat} interleaved runs; noise multiplier 1, per-sample clipping_norm {CLIP}",
            rows,
            "plain",
        )


if __name__ == "__main__":
    main()
