"""Convolutional models in the vectorized engine: seconds per round, sequential vs vmap vs folded forward.

For the FedAvg CNN (MNIST-shaped, 1.66 M parameters) and ResNet-20 with GroupNorm (CIFAR-shaped), one
process builds random data for the round's clients once, then runs three engines interleaved,
``--repeat`` times each: the sequential engine, the vectorized engine with its old forward
(``vmap(functional_call)``) and with the folded forward (``fedml.simulation.batched_forward``: clients
folded into the channels, one grouped convolution per layer). Seconds per round is the median over the
repeats of each run's median round (the first and the last round left out: warm-up and evaluation);
the ratios are medians of the per-repeat ratios to the sequential run next to it. Run from the
repository root::

    OMP_NUM_THREADS=1 python benchmarks/conv_batching.py          # the table (about 8 minutes on 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/conv_batching.py --quick  # a smoke run (under a minute)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fedml  # noqa: E402
from fedml.config import load_arguments  # noqa: E402
from fedml.data import FederatedDataset  # noqa: E402
from fedml.simulation import vectorized  # noqa: E402

CASES = [
    # model, one sample's shape, clients per round, batch size, samples per client
    ("cnn", (1, 28, 28), 10, 10, 50),
    ("cnn", (1, 28, 28), 10, 32, 64),
    ("resnet20", (3, 32, 32), 10, 10, 20),
    ("resnet20", (3, 32, 32), 10, 32, 32),
    ("cnn", (1, 28, 28), 32, 10, 20),
    ("resnet20", (3, 32, 32), 32, 10, 10),
]
"""The table's rows."""

QUICK_CASES = [("cnn", (1, 28, 28), 4, 10, 10), ("resnet20", (3, 32, 32), 4, 10, 10)]
"""The smoke run's rows."""

RUNNERS = ("sequential", "vmap", "folded")
"""The engines compared: one by one, vectorized with ``vmap``, vectorized with the folded forward."""


def make_dataset(shape: tuple[int, ...], clients: int, per_client: int) -> FederatedDataset:
    """Return ``clients`` clients of ``per_client`` random samples of ``shape`` and 10 classes (seeded)."""
    generator = torch.Generator().manual_seed(0)
    n = clients * per_client
    x = torch.rand(n, *shape, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    split = [list(range(c, n, clients)) for c in range(clients)]
    return FederatedDataset.from_tensors(x, y, x[:clients], y[:clients], split, output_dim=10)


def run_once(settings: dict, runner: str, dataset: FederatedDataset, shape: tuple[int, ...]) -> float:
    """Return the median seconds of a run's inner rounds with ``runner``."""
    engine = "sequential" if runner == "sequential" else "vectorized"
    args = load_arguments(None, {**settings, "engine": engine})
    model = fedml.model.create(args, 10, input_shape=shape)
    kind = "vmap" if runner == "vmap" else "folded"
    with mock.patch.object(vectorized, "forward_kind", return_value=kind):
        result = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()
    if result.engine != engine:
        raise RuntimeError(f"{runner}: the run trained with the {result.engine} engine")
    rounds = result.round_seconds
    return statistics.median(rounds[1:-1] or rounds)


def measure(case: tuple, rounds: int, repeat: int, runs: Path) -> dict[str, list[float]]:
    """Return each runner's seconds per round over ``repeat`` interleaved repetitions of one case."""
    model, shape, clients, batch, per_client = case
    dataset = make_dataset(shape, clients, per_client)
    settings = {
        "model": model,
        "client_num_in_total": clients,
        "client_num_per_round": clients,
        "comm_round": rounds,
        "frequency_of_the_test": rounds,
        "batch_size": batch,
        "learning_rate": 0.05,
        "epochs": 1,
        "run_dir": str(runs),
        "quiet": True,
        "plots": False,
        "save_model": False,
        "random_seed": 0,
    }
    seconds: dict[str, list[float]] = {runner: [] for runner in RUNNERS}
    for _ in range(repeat):
        for runner in RUNNERS:
            seconds[runner].append(run_once(settings, runner, dataset, shape))
    return seconds


def main() -> None:
    """Print the table as Markdown, one row per case as it is measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small cases, 3 rounds, one repeat")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (default 3)")
    opts = parser.parse_args()
    logging.getLogger("fedml").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    cases, rounds, repeat = (QUICK_CASES, 3, 1) if opts.quick else (CASES, 4, opts.repeat)
    print(f"{rounds} rounds per run, 1 local epoch, SGD lr 0.05, {repeat} interleaved repeat(s), 1 thread")
    print()
    print(
        "| model | clients | batch | samples per client | s/round sequential | s/round vmap "
        "| s/round folded | vmap / sequential | folded / sequential |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            seconds = measure(case, rounds, repeat, Path(folder))
            seq = seconds["sequential"]
            ratios = {
                runner: statistics.median(v / s for v, s in zip(seconds[runner], seq, strict=True))
                for runner in ("vmap", "folded")
            }
            model, _, clients, batch, per_client = case
            print(
                f"| `{model}` | {clients} | {batch} | {per_client} | {statistics.median(seq):.3f} "
                f"| {statistics.median(seconds['vmap']):.3f} | {statistics.median(seconds['folded']):.3f} "
                f"| {ratios['vmap']:.2f}x | {ratios['folded']:.2f}x |",
                flush=True,
            )
    print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
