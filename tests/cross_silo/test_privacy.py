"""DP in cross-silo and cross-device jobs: local noise in each peer's process, central noise on the server."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from fedml.core.privacy.accountant import epsilon
from tests.conftest import ROOT

from .jobs import launch

FINAL = r"\[server\] .*Final Accuracy after Round 3"


def server_run(runs: Path) -> tuple[list[dict], dict]:
    (metrics,) = [p for p in runs.rglob("metrics.jsonl") if p.read_text().strip()]
    config = yaml.safe_load((metrics.parent / "config.yaml").read_text())
    return [json.loads(line) for line in metrics.read_text().splitlines()], config["train_args"]


@pytest.mark.parametrize(("backend", "mode"), [("GRPC", "ldp"), ("MQTT", "cdp"), ("GRPC", "dpsgd")])
def test_a_dp_job_applies_and_accounts_its_noise(tmp_path, backend, mode):
    overrides = ["enable_dp=true", f"dp_solution_type={mode}", "noise_multiplier=0.5", "comm_round=3"]
    done = launch(tmp_path, "--clients", "3", *overrides, f"comm_args.backend={backend}")
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(FINAL, done.stdout)
    assert "(epsilon " in done.stdout
    records, train = server_run(tmp_path / "runs")
    rate = train["client_num_per_round"] / train["client_num_in_total"]
    if mode == "cdp":
        assert records[-1]["epsilon"] == pytest.approx(epsilon([(0.5, rate, 3)], 1e-5))
    elif mode == "dpsgd":
        # Each silo's own DP-SGD steps, as its trainer reported them: sample-level, so far below ldp's.
        assert 0 < records[-1]["epsilon"] < epsilon([(0.5, 1.0, 1)], 1e-5)
    else:
        # Each silo's releases, not amplified by sampling; the busiest silo took part in at most 3 rounds.
        assert records[-1]["epsilon"] <= epsilon([(0.25, 1.0, 3)], 1e-5) + 1e-9
        assert records[-1]["epsilon"] >= epsilon([(0.25, 1.0, math.ceil(3 * rate))], 1e-5) - 1e-9


def test_local_dp_runs_on_edge_devices(tmp_path):
    overrides = ["enable_dp=true", "dp_solution_type=ldp", "noise_multiplier=0.5", "comm_round=2"]
    done = launch(
        tmp_path, "--clients", "5", *overrides, config=ROOT / "configs" / "cross_device_fedavg_mnist_lr.yaml"
    )
    assert done.returncode == 0, done.stdout[-3000:]
    records, _ = server_run(tmp_path / "runs")
    assert 0 < records[-1]["epsilon"] <= epsilon([(0.25, 1.0, 2)], 1e-5) + 1e-9
    assert "Local DP: each client clips its delta" in done.stdout
