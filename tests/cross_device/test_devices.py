"""The device registry and FedBuff against a real Mosquitto: killed and returning devices, accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch

import fedml
from fedml.config import load_arguments
from fedml.core.comm.mqtt import MqttTransport
from fedml.core.comm.network import NetworkSettings
from fedml.core.round import FirstReplies, RoundTask
from fedml.cross_device.devices import DeviceBackend
from tests.conftest import ROOT
from tests.cross_device.fakes import state

CONFIG = ROOT / "configs" / "cross_device_fedavg_mnist_lr.yaml"

DEVICE_SCRIPT = """
import json, sys
from fedml.core.comm.mqtt import MqttTransport
from fedml.core.comm.network import NetworkSettings
from tests.cross_device.fakes import FakeDevice

transport = MqttTransport(NetworkSettings(**json.loads(sys.argv[1])), address="1", server=False)
FakeDevice(transport, 0, 1).run()
"""


def settings(broker, run_id):
    return {
        "port": broker.port,
        "username": broker.username,
        "password": broker.password,
        "insecure": True,
        "run_id": run_id,
        "connect_timeout": 10.0,
        "timeout": 10.0,
        "heartbeat": 1.0,
    }


def start_device(fields):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", DEVICE_SCRIPT, json.dumps(fields)], env=env)


def wait_until(backend, condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        backend.poll(0.2)
    return condition()


def test_a_killed_device_goes_offline_by_its_will_and_comes_back_with_its_rounds(broker, tmp_path):
    fields = settings(broker, f"reg-{uuid.uuid4().hex[:6]}")
    devices = []
    with MqttTransport(NetworkSettings(**fields)) as link:
        backend = DeviceBackend(
            link, FirstReplies(20.0, 0.0, 1), "MQTT", min_peers=1, join_timeout=30.0, run_dir=lambda: tmp_path
        )
        try:
            devices.append(start_device(fields))
            backend.open()
            backend.train(RoundTask(0, state(0.0), [0], {}, 1))
            served = json.loads((tmp_path / "devices.json").read_text())["1"]

            devices[0].kill()
            devices[0].wait(10)
            offline = wait_until(backend, lambda: not backend.registry.devices["1"].online)
            after_kill = dict(vars(backend.registry.devices["1"]))

            devices.append(start_device(fields))
            online = wait_until(backend, lambda: backend.registry.devices["1"].online)
            back = dict(vars(backend.registry.devices["1"]))
            backend.train(RoundTask(1, state(1.0), [0], {}, 1))
        finally:
            backend.close(None, None)
            for process in devices:
                process.kill()
                process.wait(10)

    assert (served["online"], served["rounds_served"], served["drops"]) == (True, 1, 0)
    assert offline
    assert (after_kill["rounds_served"], after_kill["drops"]) == (1, 1)
    assert online
    assert (back["rounds_served"], back["drops"]) == (1, 1)
    assert back["joins"] > after_kill["joins"]
    assert backend.registry.devices["1"].rounds_served == 2
    assert backend.registry.summary() == "1 device(s): 1 online, 0 offline"


def run_in_threads(broker, tmp_path, mode, **overrides):
    """Run a server and five devices as threads of this process; return the server's result."""
    run_id = f"{mode}-{uuid.uuid4().hex[:6]}"
    common = {
        "download": False,
        "run_dir": str(tmp_path / mode),
        "port": broker.port,
        "broker_username": broker.username,
        "broker_password": broker.password,
        "insecure": True,
        "aggregation_mode": mode,
        "quiet": True,
        "round_timeout": 20,
        **overrides,
    }
    server_args = load_arguments(CONFIG, common, rank=0, role="server", run_id=run_id)
    dataset, output_dim = fedml.data.load(server_args)
    results: dict[str, object] = {}

    def serve():
        model = fedml.model.create(server_args, output_dim)
        results["server"] = fedml.FedMLRunner(server_args, torch.device("cpu"), dataset, model).run()

    def device(n):
        args = fedml.init_edge(
            ["--device_id", str(n), "--run_id", run_id], config_file=CONFIG, overrides=common
        )
        fedml.edge_runner(args, dataset=dataset, model=fedml.model.create(args, output_dim)).run()

    threads = [threading.Thread(target=serve, daemon=True)]
    threads += [threading.Thread(target=device, args=(n,), daemon=True) for n in range(1, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if "server" not in results:
        pytest.fail(f"the {mode} server did not finish")
    return results["server"]


def test_fedbuff_reaches_the_accuracy_of_sync_fedavg(broker, tmp_path):
    sync = run_in_threads(broker, tmp_path, "sync", comm_round=6)
    buffered = run_in_threads(broker, tmp_path, "async", comm_round=6)

    assert buffered.final_metrics["test_accuracy"] >= sync.final_metrics["test_accuracy"] - 0.02
    assert buffered.final_metrics["test_accuracy"] > 0.8
    devices = json.loads((buffered.run_dir / "devices.json").read_text())
    assert sorted(devices, key=int) == ["1", "2", "3", "4", "5"]
    assert sum(d["rounds_served"] for d in devices.values()) == 6 * 4
