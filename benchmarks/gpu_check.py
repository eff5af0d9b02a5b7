"""GPU check, prepared to run unchanged on a lent CUDA machine: vectorized vs sequential, and NCCL ranks.

For LR and the FedAvg CNN on MNIST-shaped inputs and ResNet-20 (GroupNorm) on CIFAR-shaped inputs
(random tensors, seeded: nothing is downloaded) at 10, 100 and 1,000 clients per round, it times a
few rounds of each engine on the GPU, checks that the two engines reach the same model, runs the NCCL
example under ``torchrun`` with 1 rank and with every visible GPU (when there are several), and
writes a markdown table. It exits non-zero when the engines disagree or a run fails. Run from the
repository root::

    python benchmarks/gpu_check.py                          # on the GPU machine; writes docs/gpu_table.md
    python benchmarks/gpu_check.py --smoke --out table.md   # the same code on the CPU at tiny sizes

On one H200 the whole check takes about 3-5 minutes; a sequential case whose 100-client run says it
would take over ``--budget`` seconds at 1,000 clients is extrapolated instead (marked "est.").
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import fedml
from fedml.config import load_arguments
from fedml.data.dataset import FederatedDataset

ROOT = Path(__file__).resolve().parent.parent

MODELS = {"lr": (1, 28, 28), "cnn": (1, 28, 28), "resnet20": (3, 32, 32)}
"""Each model with the input shape of its data (MNIST for lr and cnn, CIFAR-10 for resnet20)."""
CLIENTS = (10, 100, 1000)
SMOKE_CLIENTS = (2, 3)
SAMPLES = 50
"""Training samples per client: 5 steps of batch 10 per round (8 in --smoke)."""
TOLERANCE = 1e-4
"""Largest absolute difference allowed between the engines' models after the timed rounds."""
CNN_GOAL = 10.0
"""Issue 18's goal: vectorized at least this many times faster than sequential for the CNN at 100+."""


@dataclass
class Row:
    """One model at one number of clients per round."""

    model: str
    clients: int
    sequential_s: float
    vectorized_s: float
    diff: float
    estimated: bool = False

    @property
    def speedup(self) -> float:
        """Sequential seconds per round over vectorized seconds per round."""
        return self.sequential_s / self.vectorized_s


def dataset(model: str, clients: int, samples: int) -> FederatedDataset:
    """Return ``clients`` clients of ``samples`` random inputs shaped for ``model`` (seeded).

    The global test set has ``4 * samples`` inputs; client ``c``'s test data is a tenth of it.
    """
    generator = torch.Generator().manual_seed(clients)
    shape = MODELS[model]
    total, tested = clients * samples, 4 * samples
    train_x = torch.randn(total, *shape, generator=generator)
    train_y = torch.randint(0, 10, (total,), generator=generator)
    test_x = torch.randn(tested, *shape, generator=generator)
    test_y = torch.randint(0, 10, (tested,), generator=generator)
    split = [torch.arange(c * samples, (c + 1) * samples) for c in range(clients)]
    tests = [torch.arange(tested)[c % 10 :: 10] for c in range(clients)]
    return FederatedDataset.from_tensors(
        train_x, train_y, test_x, test_y, split, tests, name=f"random-{model}", output_dim=10
    )


def run(
    model: str, clients: int, engine: str, rounds: int, device: torch.device, samples: int
) -> tuple[dict, float]:
    """Return the final state (on the CPU) and the seconds per round of one run of ``engine``."""
    with tempfile.TemporaryDirectory() as runs:
        args = load_arguments(
            None,
            {
                "dataset": "mnist" if model != "resnet20" else "cifar10",
                "model": model,
                "client_num_in_total": clients,
                "client_num_per_round": clients,
                "comm_round": rounds,
                "engine": engine,
                "using_gpu": device.type == "cuda",
                "download": False,
                "run_dir": runs,
                "plots": False,
                "quiet": True,
            },
        )
        data = dataset(model, clients, samples)
        net = fedml.model.create(args, 10, MODELS[model])
        start = time.perf_counter()
        result = fedml.FedMLRunner(args, device, data, net).run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / rounds
    return {k: v.detach().cpu() for k, v in result.model_state.items()}, seconds


def measure(
    device: torch.device, counts: tuple[int, ...], rounds: int, samples: int, budget: float
) -> list[Row]:
    """Time both engines for every model and client count; extrapolate what would exceed ``budget``."""
    rows = []
    for model in MODELS:
        if device.type == "cuda":
            run(model, counts[0], "vectorized", 1, device, samples)  # warm-up: context, autotuning
        per_client: float | None = None
        for clients in counts:
            vectorized, vectorized_s = run(model, clients, "vectorized", rounds, device, samples)
            if per_client is not None and per_client * clients * rounds > budget:
                rows.append(Row(model, clients, per_client * clients, vectorized_s, float("nan"), True))
            else:
                sequential, sequential_s = run(model, clients, "sequential", rounds, device, samples)
                per_client = sequential_s / clients
                diff = max(float((sequential[k] - vectorized[k]).abs().max()) for k in sequential)
                rows.append(Row(model, clients, sequential_s, vectorized_s, diff))
            row = rows[-1]
            print(
                f"{model:<9}{clients:>6} clients: sequential {row.sequential_s:8.3f} s/round"
                f"{' (est.)' if row.estimated else ''}, vectorized {row.vectorized_s:8.3f} s/round, "
                f"{row.speedup:7.1f}x, max |diff| {row.diff:.1e}",
                flush=True,
            )
    return rows


def nccl(ranks: int, rounds: int) -> tuple[float, bool]:
    """Run the NCCL example under ``torchrun`` with ``ranks`` processes; return its seconds and success."""
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun) if torchrun.exists() else shutil.which("torchrun") or "torchrun"]
    with tempfile.TemporaryDirectory() as runs:
        command += [
            "--nproc-per-node",
            str(ranks),
            "--master-port",
            "29517",
            str(ROOT / "examples" / "simulation_nccl_fedavg_mnist_lr.py"),
            "--cf",
            str(ROOT / "configs" / "simulation_nccl_fedavg_mnist_lr.yaml"),
            f"comm_round={rounds}",
            "client_num_in_total=100",
            "client_num_per_round=100",
            "download=false",
            "using_gpu=true",
            f"run_dir={runs}",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    return seconds, done.returncode == 0


def table(
    device: str, rows: list[Row], ranks: list[tuple[int, float, bool]], rounds: int, samples: int
) -> str:
    """Return the markdown table of the measurements."""
    lines = [
        f"Measured by `benchmarks/gpu_check.py` on {device} (torch {torch.__version__}), "
        f"{rounds} rounds per run, {samples} samples per client, batch 10, 1 epoch.",
        "",
        "| model | clients per round | sequential s/round | vectorized s/round | speed-up | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        seq = f"{r.sequential_s:.3f}{' (est.)' if r.estimated else ''}"
        diff = "not run" if r.estimated else f"{r.diff:.1e}"
        lines.append(
            f"| {r.model} | {r.clients:,} | {seq} | {r.vectorized_s:.3f} | {r.speedup:.1f}x | {diff} |"
        )
    if ranks:
        lines += ["", "| NCCL ranks (LR, 100 clients) | wall s | ok |", "|---|---|---|"]
        lines += [f"| {n} | {seconds:.1f} | {'yes' if ok else 'no'} |" for n, seconds, ok in ranks]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Measure, write the table and return the exit status (1 if engines disagree or a run failed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU at tiny sizes")
    parser.add_argument("--out", type=Path, help="where to write the table (default docs/gpu_table.md)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per run")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds one sequential run may take")
    opts = parser.parse_args()
    logging.getLogger("fedml").setLevel(logging.WARNING)
    if opts.smoke:
        device, counts, rounds, samples = torch.device("cpu"), SMOKE_CLIENTS, 1, 8
    elif torch.cuda.is_available():
        device, counts, rounds, samples = torch.device("cuda"), CLIENTS, opts.rounds, SAMPLES
        # Full float32 matmuls and convolutions, so the engines' agreement is not TF32's rounding.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        print("CUDA is not available; run with --smoke to check the script on the CPU", file=sys.stderr)
        return 1
    rows = measure(device, counts, rounds, samples, opts.budget)
    ranks: list[tuple[int, float, bool]] = []
    if device.type == "cuda":
        for n in sorted({1, torch.cuda.device_count()}):
            seconds, ok = nccl(n, rounds)
            ranks.append((n, seconds, ok))
            print(f"NCCL {n} rank{'s' if n > 1 else ''}: {seconds:.1f} s, {'ok' if ok else 'FAILED'}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU (--smoke)"
    text = table(name, rows, ranks, rounds, samples)
    out = opts.out or (None if opts.smoke else ROOT / "docs" / "gpu_table.md")
    if out is not None:
        out.write_text(text)
        print(f"table written to {out}")
    else:
        print(text)
    cnn = [r for r in rows if r.model == "cnn" and r.clients >= 100]
    if cnn and device.type == "cuda":
        met = all(r.speedup >= CNN_GOAL for r in cnn)
        print(f"CNN at 100+ clients: vectorized >= {CNN_GOAL:.0f}x sequential: {'met' if met else 'NOT met'}")
    disagree = [r for r in rows if not r.estimated and not r.diff <= TOLERANCE]
    for r in disagree:
        print(f"engines disagree: {r.model} at {r.clients} clients, max |diff| {r.diff:.1e}", file=sys.stderr)
    return 1 if disagree or not all(ok for _, _, ok in ranks) else 0


if __name__ == "__main__":
    sys.exit(main())
