"""Cross-device runs as real processes: a server and edge devices through a real Mosquitto."""

from __future__ import annotations

import json
import re

import pytest
import torch

import fedml
from fedml.errors import ConfigError, NotSupportedError
from tests.conftest import ROOT
from tests.cross_silo.jobs import launch

CONFIG = ROOT / "configs" / "cross_device_fedavg_mnist_lr.yaml"
EDGE = ROOT / "examples" / "cross_device_edge.py"
FINAL = r"Final Accuracy after Round (\d+): ([\d.]+)%"


def test_the_seeds_edge_snippet_runs_five_devices_against_a_server(job, tmp_path, broker):
    args = [
        "download=false",
        f"run_dir={tmp_path / 'runs'}",
        f"comm_args.port={broker.port}",
        f"comm_args.broker_username={broker.username}",
        f"comm_args.broker_password={broker.password}",
        "comm_args.insecure=true",
    ]
    server = job.start("server", "-m", "fedml", "run", "--cf", str(CONFIG), "--rank", "0", *args)
    edges = [
        job.start(f"edge{n}", str(EDGE), "--cf", str(CONFIG), "--device_id", str(n), *args)
        for n in range(1, 6)
    ]
    assert server.wait(180) == 0, server.output()
    found = re.search(FINAL, server.output())
    assert found
    assert found.group(1) == "5"
    (run_dir,) = list((tmp_path / "runs").iterdir())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Five devices asked each round, the first four reports aggregated, the fifth dropped.
    assert [r["clients"] for r in records] == [4, 4, 4, 4, 4]
    assert "Dropped a late or stale message" in server.output()
    for edge in edges:
        assert edge.wait(30) == 0, edge.output()


def test_launch_runs_a_cross_device_job_with_a_broker_of_its_own(tmp_path):
    done = launch(tmp_path, "--clients", "5", "comm_round=2", config=CONFIG)
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"\[server\] .*" + FINAL, done.stdout)
    assert "[client 5] " in done.stdout


def test_an_algorithm_with_per_client_state_is_refused_at_start(make_args):
    args = make_args(CONFIG, federated_optimizer="SCAFFOLD")
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    with pytest.raises(NotSupportedError, match="SCAFFOLD keeps state per client"):
        fedml.FedMLRunner(args, torch.device("cpu"), dataset, model)


def test_init_edge_needs_a_device_id_and_reads_it_as_the_rank():
    with pytest.raises(ConfigError, match="--device_id N"):
        fedml.init_edge([])
    args = fedml.init_edge(["--device_id", "3", "comm_args.host=10.0.0.7"])
    assert (args.rank, args.role, args.training_type, args.backend) == (3, "client", "cross_device", "MQTT")
    assert args.host == "10.0.0.7"
