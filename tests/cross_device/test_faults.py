"""Faults a cross-device round survives, with a real Mosquitto: a killed device, a straggler, a device
with wrong credentials, malformed and oversized payloads on a device's topic."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack

import paho.mqtt.client as paho
import pytest

from fedml.cli import main
from fedml.core.comm.chunks import Chunk, encode_chunk
from fedml.core.comm.mqtt import MqttTransport
from fedml.core.comm.mqtt_frames import FrameKind, pack_frame
from fedml.core.comm.network import NetworkSettings
from fedml.core.round import FirstReplies, RoundTask
from fedml.cross_device.devices import DeviceBackend
from tests.conftest import ROOT
from tests.cross_device.fakes import FakeDevice, state

SILENT_DEVICE = """
import json, sys
from fedml.core.comm.mqtt import MqttTransport
from fedml.core.comm.network import NetworkSettings
from tests.cross_device.fakes import FakeDevice

transport = MqttTransport(NetworkSettings(**json.loads(sys.argv[1])), address="3", server=False)
FakeDevice(transport, 2, 3, silent=True).run()
"""


def fields(broker, run_id, **overrides):
    return {
        "port": broker.port,
        "username": broker.username,
        "password": broker.password,
        "insecure": True,
        "run_id": run_id,
        "connect_timeout": 10.0,
        "timeout": 10.0,
        "heartbeat": 1.0,
        "max_bytes": 1 << 20,
        **overrides,
    }


@pytest.fixture
def round_setup(broker):
    """A server backend and two fake devices over the real broker; the test adds the third."""
    run_id = f"fault-{uuid.uuid4().hex[:6]}"
    with ExitStack() as stack:
        link = stack.enter_context(MqttTransport(NetworkSettings(**fields(broker, run_id))))

        def backend(timeout, min_peers=3):
            return DeviceBackend(
                link, FirstReplies(timeout, 0.0, 2), "MQTT", min_peers=min_peers, join_timeout=30.0
            )

        fakes = []
        for n in (1, 2):
            device = stack.enter_context(
                MqttTransport(NetworkSettings(**fields(broker, run_id)), address=str(n), server=False)
            )
            fakes.append(FakeDevice(device, n - 1, 3))
            fakes[-1].start()
        stack.callback(lambda: [fake.stop() for fake in fakes])
        yield run_id, backend, stack


def task():
    return RoundTask(0, state(0.0), [0, 1, 2], {}, 3)


def test_a_device_killed_mid_round_is_left_out_and_the_round_completes(broker, round_setup, caplog):
    run_id, make_backend, _ = round_setup
    backend = make_backend(timeout=30.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", SILENT_DEVICE, json.dumps(fields(broker, run_id))], env=env
    )
    try:
        backend.open()

        def kill_when_asked():
            # The device is killed once its task is out: mid-round.
            time.sleep(1.0)
            process.kill()

        threading.Thread(target=kill_when_asked, daemon=True).start()
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="fedml"):
            updates = backend.train(task())
        seconds = time.monotonic() - began
    finally:
        process.kill()
        process.wait(10)

    assert sorted(u.client_idx for u in updates) == [0, 1]
    assert seconds < 15
    assert "peer 3 failed: connection to the broker lost" in caplog.text
    assert backend.registry.devices["3"].online is False


def test_a_straggler_past_the_deadline_is_dropped_with_a_line(broker, round_setup, caplog):
    run_id, make_backend, stack = round_setup
    backend = make_backend(timeout=1.5)
    device = stack.enter_context(
        MqttTransport(NetworkSettings(**fields(broker, run_id)), address="3", server=False)
    )
    straggler = FakeDevice(device, 2, 3, silent=True)
    straggler.start()
    stack.callback(straggler.stop)
    backend.open()
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fedml"):
        updates = backend.train(task())

    assert time.monotonic() - began >= 1.5
    assert sorted(u.client_idx for u in updates) == [0, 1]
    assert "no CLIENT_UPDATE from peer(s) ['3'] within 1.5 s" in caplog.text


def test_malformed_and_oversized_payloads_on_a_devices_topic_are_dropped_naming_it(
    broker, round_setup, caplog
):
    run_id, make_backend, stack = round_setup
    backend = make_backend(timeout=20.0)
    device = stack.enter_context(
        MqttTransport(NetworkSettings(**fields(broker, run_id)), address="3", server=False)
    )
    gated = FakeDevice(device, 2, 3, gated=True)
    gated.start()
    stack.callback(gated.stop)
    backend.open()
    raw = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:6]}")
    raw.username_pw_set(broker.username, broker.password)
    raw.connect("127.0.0.1", broker.port)
    raw.loop_start()
    try:
        oversized = Chunk(os.urandom(16), 0, 3, 2 << 20, bytes(32), b"y" * 10)
        for payload in (
            os.urandom(64),
            pack_frame(FrameKind.DATA, "3", run_id, None, encode_chunk(oversized)),
            os.urandom(2 << 20),
        ):
            raw.publish(f"fedml/{run_id}/from/3", payload, qos=1).wait_for_publish(5)
        with caplog.at_level(logging.WARNING, logger="fedml"):
            gated.gate.release()
            updates = backend.train(task())
    finally:
        raw.disconnect()
        raw.loop_stop()

    assert sorted(u.client_idx for u in updates) == [0, 1, 2]
    malformed = [r.getMessage() for r in caplog.records if "Ignored a malformed message" in r.getMessage()]
    assert len(malformed) == 3
    assert all(f"on fedml/{run_id}/from/3:" in line for line in malformed)
    assert any("exceeds the limit" in line for line in malformed)


def test_a_device_with_wrong_credentials_is_refused_in_one_line(broker, round_setup, capsys):
    _, make_backend, _ = round_setup
    wrong = [
        "run",
        "--cf",
        str(ROOT / "configs" / "cross_device_fedavg_mnist_lr.yaml"),
        "--rank",
        "3",
        "--role",
        "client",
        "download=false",
        f"comm_args.port={broker.port}",
        "comm_args.broker_username='3'",
        "comm_args.broker_password=wrong",
        "comm_args.insecure=true",
        "comm_args.join_timeout=5",
    ]
    assert main(wrong) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "refused the connection" in err[0]
    assert "Not authorized" in err[0]
    # The two devices with good credentials still train a round (two of three are enough).
    backend = make_backend(3.0, min_peers=2)
    backend.open()
    updates = backend.train(RoundTask(0, state(0.0), [0, 1], {}, 2))
    assert sorted(u.client_idx for u in updates) == [0, 1]
