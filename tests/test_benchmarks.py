"""The prepared benchmark scripts run as written: gpu_check's --smoke on the CPU, the speed targets' sizes."""

import importlib.util
import os
import subprocess
import sys

import torch

from .conftest import ROOT


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: a dataclass looks its module up in sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_runs_its_code_on_the_cpu_with_smoke_and_writes_the_table(tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    gpu_check = load("gpu_check")
    expected = {(model, clients) for model in gpu_check.MODELS for clients in gpu_check.SMOKE_CLIENTS}
    found = {(row.split(" | ")[0][2:], int(row.split(" | ")[1])) for row in rows[1:]}
    assert found == expected
    diffs = [float(row.split(" | ")[5].rstrip(" |")) for row in rows[1:]]
    assert max(diffs) <= gpu_check.TOLERANCE


def test_the_gpu_check_fails_when_the_engines_disagree():
    gpu_check = load("gpu_check")
    agree = gpu_check.Row("lr", 10, 1.0, 0.5, 1e-7)
    disagree = gpu_check.Row("cnn", 10, 1.0, 0.5, 1e-2)
    table = gpu_check.table("test", [agree, disagree], [], 1, 8)
    assert "| lr | 10 | 1.000 | 0.500 | 2.0x | 1.0e-07 |" in table
    assert agree.speedup == 2.0
    assert not disagree.diff <= gpu_check.TOLERANCE


def test_the_random_datasets_are_seeded_and_shaped_for_each_model():
    gpu_check = load("gpu_check")
    for model, shape in gpu_check.MODELS.items():
        first, second = gpu_check.dataset(model, 3, 8), gpu_check.dataset(model, 3, 8)
        assert torch.equal(first.train_x, second.train_x)
        assert tuple(first.train_x.shape) == (24, *shape)
        assert first.client_num == 3


def test_the_quick_targets_stay_a_smoke_run():
    speed = load("simulation_speed")
    for name, workload in speed.WORKLOADS.items():
        quick = {**workload, **speed.QUICK_WORKLOADS[name]}
        assert quick["comm_round"] * quick["client_num_per_round"] <= 300, name
    assert speed.median([3.0, 1.0, 2.0]) == 2.0
    assert speed.median([4.0, 1.0]) == 2.5
