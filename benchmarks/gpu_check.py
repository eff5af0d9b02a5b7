"""GPU check for a maintainer with a CUDA machine (not run in CI): same model on CUDA as on the CPU.

Runs a short FedAvg simulation with the sequential and the vectorized engine on ``cuda`` and on the
CPU, prints the wall times, and fails if the engines disagree or CUDA is missing::

    python benchmarks/gpu_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

import fedml
from fedml.config import load_arguments

SETTINGS = {"client_num_in_total": 100, "client_num_per_round": 100, "comm_round": 3, "download": False}


def run(engine: str, using_gpu: bool) -> tuple[dict[str, torch.Tensor], float]:
    """Return the final global state (on the CPU) and the wall time of one run."""
    with tempfile.TemporaryDirectory() as runs:
        args = load_arguments(None, {**SETTINGS, "engine": engine, "using_gpu": using_gpu, "run_dir": runs})
        device = fedml.device.get_device(args)
        dataset, output_dim = fedml.data.load(args)
        model = fedml.model.create(args, output_dim)
        start = time.perf_counter()
        result = fedml.FedMLRunner(args, device, dataset, model).run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {k: v.cpu() for k, v in result.model_state.items()}, seconds


def main() -> int:
    """Compare the engines on CUDA with the CPU; return the exit status."""
    if not torch.cuda.is_available():
        print("CUDA is not available; nothing to check")
        return 1
    reference, cpu_seconds = run("sequential", using_gpu=False)
    print(f"cpu  sequential {cpu_seconds:6.2f} s")
    worst = 0.0
    for engine in ("sequential", "vectorized"):
        state, seconds = run(engine, using_gpu=True)
        diff = max(float((state[k] - reference[k]).abs().max()) for k in state)
        worst = max(worst, diff)
        print(f"cuda {engine:<10} {seconds:6.2f} s   max |diff| vs cpu sequential = {diff:.2e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
