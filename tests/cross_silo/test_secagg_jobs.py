"""Secure aggregation in cross-silo jobs: real server and silo processes over gRPC and MQTT."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .jobs import SEED_CONFIG, launch
from .test_jobs import common, network, only_run_dir

FINAL = r"Final Accuracy after Round 2: ([\d.]+)%"
UNMASKED = r"Round (\d+): secure aggregation unmasked the sum of (\d+) masked inputs \((\d+) clients unmasked"


@pytest.mark.parametrize(("backend", "method"), [("GRPC", "secagg"), ("MQTT", "secagg_plus")])
def test_a_secure_job_completes_and_the_server_unmasks_only_sums(tmp_path, backend, method):
    secure = ["enable_secure_aggregation=true", f"sa_method={method}", "client_num_per_round=3"]
    done = launch(tmp_path, "--clients", "3", "comm_round=2", *secure, f"comm_args.backend={backend}")
    assert done.returncode == 0, done.stdout[-3000:]
    found = re.search(FINAL, done.stdout)
    assert found
    assert float(found.group(1)) > 50
    assert f"Secure aggregation ({method})" in done.stdout
    assert [m.groups() for m in re.finditer(UNMASKED, done.stdout)] == [("1", "3", "3"), ("2", "3", "3")]
    # A training reply carrying an update would have failed the round, naming it sent "in the clear".
    assert "in the clear" not in done.stdout


def test_a_silo_killed_after_its_masked_input_is_recovered(job, tmp_path):
    args = common(
        tmp_path,
        *network("GRPC", None),
        "enable_secure_aggregation=true",
        "client_num_per_round=3",
        "comm_round=2",
        "min_clients_per_round=2",
        "round_timeout=60",
    )
    server = job.seed("server", 0, *args)
    silos = [job.seed(f"client{rank}", rank, *args) for rank in (1, 2)]
    dying = Path(__file__).with_name("secagg_dying_silo.py")
    role = ["--cf", str(SEED_CONFIG), "--role", "client", "--rank", "3"]
    victim = job.start("client3", str(dying), *role, *args)
    assert server.wait(120) == 0, server.output()
    assert victim.wait(10) == 3
    for silo in silos:
        assert silo.wait(30) == 0, silo.output()
    # Round 1: silo 3's masked input arrived, so its update is in the sum; the two others unmasked it.
    assert re.search(
        r"Round 1: secure aggregation unmasked the sum of 3 masked inputs \(2 clients", server.output()
    )
    records = [
        json.loads(x) for x in (only_run_dir(tmp_path / "runs") / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["clients"] for r in records] == [3, 2]
    assert re.search(r"Final Accuracy after Round 2", server.output())
