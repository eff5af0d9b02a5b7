"""``fedml devices credentials``: the files it writes, and a real Mosquitto that uses them."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
import uuid

import pytest
import yaml

import fedml
from fedml.cli import main
from fedml.core.comm import Message, MessageKind
from fedml.core.comm.broker import find_mosquitto, free_port
from fedml.core.comm.mqtt import MqttTransport
from fedml.core.comm.network import NetworkSettings
from fedml.errors import TransportError
from tests.core.comm.conftest import needs_mosquitto


def test_every_file_is_owner_only_and_a_device_config_reads_its_password_file(tmp_path, capsys):
    out = tmp_path / "creds"
    assert main(["devices", "credentials", "--count", "3", "--out", str(out), "--insecure"]) == 0
    assert "3 device(s)" in capsys.readouterr().out
    written = [path for path in out.rglob("*") if path.is_file()]
    names = sorted(str(path.relative_to(out)) for path in written)
    assert names == sorted(
        ["acl", "mosquitto.conf", "passwd", "server.yaml"]
        + [f"devices/device-{n}.{kind}" for n in (1, 2, 3) for kind in ("yaml", "password")]
    )
    assert {stat.S_IMODE(path.stat().st_mode) for path in written} == {0o600}
    assert "pattern read fedml/+/to/%u" in (out / "acl").read_text()

    args = fedml.init_edge(["--cf", str(out / "devices" / "device-2.yaml")])
    password = (out / "devices" / "device-2.password").read_text().strip()
    assert (args.rank, args.broker_username, args.broker_password) == (2, "2", password)
    assert (
        "broker_password" not in yaml.safe_load((out / "devices" / "device-2.yaml").read_text())["comm_args"]
    )


def test_a_count_below_one_is_refused_in_one_line(tmp_path, capsys):
    assert main(["devices", "credentials", "--count", "0", "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip() == (
        "fedml: error: --count 0: generate credentials for at least one device"
    )


@pytest.fixture
def generated_broker(tmp_path):
    needs_mosquitto()
    out, port = tmp_path / "creds", free_port()
    assert (
        main(["devices", "credentials", "--count", "2", "--out", str(out), "--insecure", "--port", str(port)])
        == 0
    )
    config = (out / "mosquitto.conf").read_text().replace(f"listener {port}", f"listener {port} 127.0.0.1")
    if os.geteuid() == 0:
        # As root Mosquitto drops to its own user, which may not read these owner-only files.
        config += "user root\n"
    (out / "test.conf").write_text(config)
    process = subprocess.Popen(
        [find_mosquitto(), "-c", str(out / "test.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        yield out, port
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()


def device_settings(out, port, run_id, device):
    edge = yaml.safe_load((out / "devices" / f"device-{device}.yaml").read_text())["comm_args"]
    password = (out / "devices" / f"device-{device}.password").read_text().strip()
    return NetworkSettings(
        port=port,
        username=edge["broker_username"],
        password=password,
        insecure=True,
        run_id=run_id,
        connect_timeout=5.0,
        timeout=5.0,
    )


def test_generated_credentials_let_device_k_in_and_only_it_read_its_tasks(generated_broker):
    out, port = generated_broker
    run_id = f"cred-{uuid.uuid4().hex[:6]}"
    server_comm = yaml.safe_load((out / "server.yaml").read_text())["comm_args"]
    server_settings = NetworkSettings(
        port=port,
        username=server_comm["broker_username"],
        password=server_comm["broker_password"],
        insecure=True,
        run_id=run_id,
        connect_timeout=5.0,
        timeout=5.0,
    )
    with (
        MqttTransport(server_settings) as server,
        MqttTransport(device_settings(out, port, run_id, 1), address="1", server=False) as one,
        MqttTransport(device_settings(out, port, run_id, 2), address="1", server=False) as two_as_one,
    ):
        one.send(Message(MessageKind.INIT, "1", "0", -1))
        assert server.receive(5).sender == "1"
        server.send(Message(MessageKind.SYNC_MODEL, "0", "1", 0))
        assert one.receive(5).kind == MessageKind.SYNC_MODEL
        with pytest.raises(TransportError, match="no message"):
            two_as_one.receive(1.5)

    wrong = device_settings(out, port, run_id, 1)
    with pytest.raises(TransportError, match="refused the connection"):
        MqttTransport(
            NetworkSettings(**{**vars(wrong), "password": "not-the-password"}), address="1", server=False
        )
