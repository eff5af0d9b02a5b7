"""Helpers for integration tests that start real ``mpirun`` and ``torchrun`` jobs on this host."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ..conftest import ROOT

BIN = Path(sys.executable).parent
SETTINGS = [
    "comm_round=5",
    "client_num_per_round=7",
    "download=false",
    "engine=sequential",
]
"""Overrides shared by the launched runs and their in-process sp reference (7 of 10 clients per round)."""


def launcher(name: str) -> str:
    """Return the path of ``name`` next to this Python or on PATH; fail (never skip) if absent."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f'{name} not found next to {sys.executable} or on PATH; install with pip install -e ".[mpi]"'
        )
    return found


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(
    command: list[str], tmp_path: Path, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``command`` with this checkout importable, one thread per process; return it and its seconds."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done, time.monotonic() - started


def run_dir_of(runs: Path) -> Path:
    """Return the one run directory under ``runs``."""
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return run_dir


RUN_FILES = {"config.yaml", "metrics.jsonl", "summary.json", "timings.json", "model.pt", "curves.png"}
"""What every backend's run directory holds after a finished run (written by the server side only)."""


def final_model_and_accuracy(runs: Path) -> tuple[dict[str, torch.Tensor], float]:
    """Read ``model.pt`` and the last evaluated accuracy of the run saved under ``runs``."""
    run_dir = run_dir_of(runs)
    assert {path.name for path in run_dir.iterdir()} >= RUN_FILES, sorted(run_dir.iterdir())
    state = torch.load(run_dir / "model.pt", weights_only=True)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return state, last["test_accuracy"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two states with the same keys."""
    assert list(a) == list(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
