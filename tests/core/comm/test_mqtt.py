import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack

import paho.mqtt.client as paho
import pytest
import torch

from fedml.core.comm import create_transport, transport_names
from fedml.core.comm.broker import BrokerTLS, MosquittoBroker
from fedml.core.comm.chunks import Chunk, encode_chunk, split
from fedml.core.comm.codec import encode
from fedml.core.comm.message import PROTOCOL_VERSION, Message, MessageKind
from fedml.core.comm.mqtt import MqttTransport
from fedml.core.comm.mqtt_frames import FrameKind, pack_frame
from fedml.core.comm.network import NetworkSettings, TLSFiles, resolve_tls
from fedml.errors import ProtocolError, TransportError
from tests.conftest import ROOT
from tests.core.comm.conftest import needs_mosquitto


@pytest.fixture(autouse=True)
def no_paho_thread_left():
    yield
    deadline = time.monotonic() + 5
    while any(t.name.startswith("paho-mqtt") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt")]


@pytest.fixture
def run_id():
    return f"run-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ends():
    with ExitStack() as stack:
        yield lambda transport: stack.enter_context(transport)


def plain(broker, run_id, **overrides):
    values = {
        "port": broker.port,
        "username": broker.username,
        "password": broker.password,
        "insecure": True,
        "run_id": run_id,
        "connect_timeout": 5.0,
        "timeout": 5.0,
        **overrides,
    }
    return NetworkSettings(**values)


def init(sender, **metadata):
    return Message(MessageKind.INIT, sender, "0", -1, metadata)


def raw_publish(broker, topic, payloads):
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:6]}")
    client.username_pw_set(broker.username, broker.password)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_registered_as_mqtt(broker, run_id):
    assert "MQTT" in transport_names()

    with create_transport("mqtt", settings=plain(broker, run_id)) as transport:
        assert isinstance(transport, MqttTransport)
        assert (transport.address, transport.rank, transport.world_size) == ("0", 0, 0)
        assert transport.port == broker.port


def test_round_trip_with_two_clients_and_a_100_mb_state_each_way(broker, run_id, ends):
    settings = plain(broker, run_id, timeout=60.0)
    server = ends(MqttTransport(settings))
    one = ends(MqttTransport(settings, address="1", server=False))
    two = ends(MqttTransport(settings, address="silo-2", server=False))
    state = torch.arange(25_000_000, dtype=torch.float32)

    one.send(init("1", clients=[0]))
    two.send(init("silo-2", clients=[1]))
    joined = {server.receive(5).sender, server.receive(5).sender}
    for peer in ("1", "silo-2"):
        server.send(Message(MessageKind.SYNC_MODEL, "0", peer, 3, {"lr": 0.1}, {"w": torch.ones(2, 3) * 7}))
    got_one, got_two = one.receive(5), two.receive(5)
    server.send(Message(MessageKind.SYNC_MODEL, "0", "1", 4, {}, {"state": state}))
    down = one.receive(30)
    one.send(Message(MessageKind.CLIENT_UPDATE, "1", "0", 4, {"n": 5}, {"state": down.tensors["state"] + 1}))
    up = server.receive(30)

    assert joined == {"1", "silo-2"}
    assert one.rank == 1
    assert two.rank == 0
    assert (got_one.kind, got_one.round_idx, got_one.metadata) == (MessageKind.SYNC_MODEL, 3, {"lr": 0.1})
    assert torch.equal(got_two.tensors["w"], torch.ones(2, 3) * 7)
    assert torch.equal(down.tensors["state"], state)
    assert (up.sender, up.metadata) == ("1", {"n": 5})
    assert torch.equal(up.tensors["state"], state + 1)


def test_wrong_broker_password_fails_at_construction(broker, run_id):
    settings = dataclasses.replace(plain(broker, run_id), password="wrong")

    with pytest.raises(
        TransportError, match=rf"127\.0\.0\.1:{broker.port} refused the connection: Not authorized"
    ):
        MqttTransport(settings, address="1", server=False)


def test_no_broker_fails_within_the_connect_timeout(run_id):
    from fedml.core.comm.broker import free_port

    settings = NetworkSettings(port=free_port(), insecure=True, run_id=run_id, connect_timeout=1.0)
    started = time.monotonic()

    with pytest.raises(TransportError, match=r"cannot connect to the MQTT broker 127\.0\.0\.1"):
        MqttTransport(settings)

    assert time.monotonic() - started < 4


def send_and_wait(transport, message):
    # The refusal is raised by whichever call comes after it arrives.
    transport.send(message)
    transport.receive(5)


@pytest.mark.parametrize(
    ("token", "version", "reason"),
    [
        ("bad", PROTOCOL_VERSION, "wrong auth token"),
        (None, PROTOCOL_VERSION, "no auth token"),
        ("good", 1, f"protocol version 1 is not supported \\(the server speaks {PROTOCOL_VERSION}\\)"),
    ],
)
def test_refused_peer_is_told_why_and_a_good_peer_goes_on(
    broker, run_id, ends, caplog, token, version, reason
):
    log = logging.getLogger("tests.mqtt.server")
    server = ends(MqttTransport(plain(broker, run_id, auth_token="good"), log=log))
    bad = ends(MqttTransport(plain(broker, run_id, auth_token=token), address="bad", server=False))
    good = ends(MqttTransport(plain(broker, run_id, auth_token="good"), address="good", server=False))

    with caplog.at_level(logging.WARNING, logger="tests.mqtt.server"):
        with pytest.raises(TransportError, match=f"the server refused peer bad: {reason}"):
            send_and_wait(bad, dataclasses.replace(init("bad"), version=version))
        good.send(init("good"))
        joined = server.receive(5)
        server.send(Message(MessageKind.SYNC_MODEL, "0", "good", 0))
        reply = good.receive(5)
        with pytest.raises(TransportError, match="refused peer bad"):
            bad.send(init("bad"))

    assert joined.sender == "good"
    assert reply.kind == MessageKind.SYNC_MODEL
    warnings = [r.getMessage() for r in caplog.records if "Refused peer bad" in r.getMessage()]
    assert len(warnings) == 1
    with pytest.raises(TransportError, match="no message"):
        server.receive(0.3)


def test_malformed_frames_raise_protocol_errors_and_the_server_goes_on(broker, run_id, ends):
    server = ends(MqttTransport(plain(broker, run_id, max_bytes=1 << 20)))
    client = ends(MqttTransport(plain(broker, run_id), address="1", server=False))

    def frame(body):
        return pack_frame(FrameKind.DATA, "evil", run_id, None, body)

    good = split(b"x" * 100)[0]
    bad_digest = dataclasses.replace(good, digest=bytes(32))
    oversized = Chunk(os.urandom(16), 0, 3, 2 << 20, bytes(32), b"y" * 10)
    not_a_message = split(b"these bytes are no fedml message")[0]
    raw_publish(
        broker,
        f"fedml/{run_id}/from/evil",
        [
            os.urandom(64),
            frame(encode_chunk(good))[:9],
            frame(encode_chunk(bad_digest)),
            frame(encode_chunk(oversized)),
            frame(encode_chunk(not_a_message)),
        ],
    )
    client.send(init("1"))

    patterns = ["not a fedml MQTT frame", "truncated", "SHA-256", "exceeds the limit", "not a fedml message"]
    for pattern in patterns:
        with pytest.raises(ProtocolError, match=f"on fedml/{run_id}/from/evil: .*{pattern}"):
            server.receive(5)
    assert server.receive(5).sender == "1"


def test_a_message_whose_sender_is_not_the_frames_is_refused(broker, run_id, ends):
    server = ends(MqttTransport(plain(broker, run_id)))
    client = ends(MqttTransport(plain(broker, run_id), address="1", server=False))

    forged = split(encode(init("someone-else")))[0]
    raw_publish(
        broker,
        f"fedml/{run_id}/from/1",
        [pack_frame(FrameKind.DATA, "1", run_id, None, encode_chunk(forged))],
    )

    with pytest.raises(ProtocolError, match="from peer 1 claims the sender 'someone-else'"):
        server.receive(5)
    impostor = split(encode(init("2")))[0]
    raw_publish(
        broker,
        f"fedml/{run_id}/from/1",
        [pack_frame(FrameKind.DATA, "2", run_id, None, encode_chunk(impostor))],
    )
    with pytest.raises(ProtocolError, match=f"on fedml/{run_id}/from/1: a frame claims the sender '2'"):
        server.receive(5)
    client.send(init("1"))
    assert server.receive(5).sender == "1"


WILL_SCRIPT = """
import json, sys, time
from fedml.core.comm.mqtt import MqttTransport
from fedml.core.comm.network import NetworkSettings
from fedml.core.comm.message import Message, MessageKind
client = MqttTransport(NetworkSettings(**json.loads(sys.argv[1])), address="silo-7", server=False)
client.send(Message(MessageKind.INIT, "silo-7", "0"))
print("joined", flush=True)
time.sleep(60)
"""


def test_a_killed_client_becomes_an_error_message_and_a_clean_close_does_not(broker, run_id, ends):
    settings = plain(broker, run_id, heartbeat=1.0)
    server = ends(MqttTransport(settings))
    fields = {
        k: getattr(settings, k) for k in ("port", "username", "password", "insecure", "run_id", "heartbeat")
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", WILL_SCRIPT, json.dumps(fields)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        joined = server.receive(30)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        started = time.monotonic()
        error = server.receive(5)
        elapsed = time.monotonic() - started
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()
    with MqttTransport(settings, address="tidy", server=False) as tidy:
        tidy.send(init("tidy"))
        tidy_joined = server.receive(5)

    assert (joined.kind, joined.sender) == (MessageKind.INIT, "silo-7")
    assert (error.kind, error.sender, error.receiver, error.round_idx) == (
        MessageKind.ERROR,
        "silo-7",
        "0",
        -1,
    )
    assert "connection to the broker lost" in error.metadata["error"]
    assert elapsed < 4
    assert tidy_joined.sender == "tidy"
    with pytest.raises(TransportError, match="no message"):
        server.receive(2.5)


def test_reconnect_after_a_broker_restart_resends_init(run_id):
    needs_mosquitto()
    with MosquittoBroker() as broker, ExitStack() as stack:
        settings = plain(broker, run_id, heartbeat=2.0, connect_timeout=10.0)
        server = stack.enter_context(MqttTransport(settings))
        client = stack.enter_context(MqttTransport(settings, address="1", server=False))
        client.send(init("1", clients=[4]))
        first = server.receive(5)

        broker.stop()
        broker.start()
        kinds = []
        while not kinds or kinds[-1] != MessageKind.INIT:
            again = server.receive(15)
            kinds.append(again.kind)
        server.send(Message(MessageKind.SYNC_MODEL, "0", "1", 0))
        reply = client.receive(10)

    assert first.metadata == again.metadata == {"clients": [4]}
    assert again.sender == "1"
    assert set(kinds) <= {MessageKind.ERROR, MessageKind.INIT}
    assert reply.kind == MessageKind.SYNC_MODEL


def test_a_restarted_server_end_gets_the_inits_again(broker, run_id, ends):
    settings = plain(broker, run_id)
    client = ends(MqttTransport(settings, address="1", server=False))
    client.send(init("1", clients=[2]))
    with MqttTransport(settings) as first:
        joined_first = first.receive(5)

    with MqttTransport(settings) as second:
        joined_second = second.receive(5)

    assert joined_first.metadata == joined_second.metadata == {"clients": [2]}


@pytest.fixture(scope="module")
def tls_broker(certificates):
    needs_mosquitto()
    tls = BrokerTLS(certificates["server"].cert, certificates["server"].key, certificates["ca"].cert)
    with MosquittoBroker(tls=tls, also_plaintext=True) as running:
        yield running


def tls_settings(broker, run_id, **overrides):
    return NetworkSettings(
        **{
            "port": broker.port,
            "username": broker.username,
            "password": broker.password,
            "run_id": run_id,
            "connect_timeout": 3.0,
            "timeout": 5.0,
            **overrides,
        }
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_to_the_broker(tls_broker, certificates, run_id, ends, host):
    settings = tls_settings(tls_broker, run_id, host=host, tls=TLSFiles(ca=certificates["ca"].cert))
    server = ends(MqttTransport(settings))
    client = ends(MqttTransport(settings, address="1", server=False))

    client.send(init("1", tls=True))

    assert server.receive(5).metadata == {"tls": True}


def test_tls_with_an_unknown_ca_is_refused(tls_broker, tmp_path, run_id):
    from fedml.core.comm.certs import make_deployment

    other = make_deployment(tmp_path, server_hosts=["127.0.0.1"])
    settings = tls_settings(tls_broker, run_id, tls=TLSFiles(ca=other["ca"].cert))

    with pytest.raises(
        TransportError, match=r"TLS with the MQTT broker .* failed: .*certificate verify failed"
    ):
        MqttTransport(settings)


def test_plaintext_needs_insecure(tls_broker, certificates, run_id, ends):
    tls = TLSFiles(ca=certificates["ca"].cert)
    default = tls_settings(tls_broker, run_id, port=tls_broker.plain_port, tls=tls)
    insecure = tls_settings(tls_broker, run_id, port=tls_broker.plain_port, insecure=True)

    assert resolve_tls(default, server=False) is not None
    with pytest.raises(TransportError, match=r"TLS with the MQTT broker .* plaintext listener"):
        MqttTransport(default)
    server = ends(MqttTransport(insecure))
    client = ends(MqttTransport(insecure, address="1", server=False))
    client.send(init("1"))
    assert server.receive(5).sender == "1"


def test_mutual_tls_presents_the_client_certificate(certificates, run_id, ends):
    needs_mosquitto()
    tls = BrokerTLS(certificates["server"].cert, certificates["server"].key, certificates["ca"].cert, True)
    silo = certificates["silo-1"]
    with MosquittoBroker(tls=tls) as broker:
        mutual = tls_settings(broker, run_id, tls=TLSFiles(certificates["ca"].cert, silo.cert, silo.key))
        anonymous = tls_settings(broker, run_id, tls=TLSFiles(ca=certificates["ca"].cert))
        with MqttTransport(mutual) as server, MqttTransport(mutual, address="1", server=False) as client:
            client.send(init("1"))
            joined = server.receive(5)
        with pytest.raises(TransportError, match="MQTT broker"):
            MqttTransport(anonymous)

    assert joined.sender == "1"


def test_two_runs_on_one_broker_do_not_mix(broker, ends):
    server_a = ends(MqttTransport(plain(broker, "run-a")))
    server_b = ends(MqttTransport(plain(broker, "run-b")))
    client_a = ends(MqttTransport(plain(broker, "run-a"), address="1", server=False))
    client_b = ends(MqttTransport(plain(broker, "run-b"), address="1", server=False))

    client_a.send(init("1", run="a"))
    client_b.send(init("1", run="b"))
    server_a.send(Message(MessageKind.SYNC_MODEL, "0", "1", 0, {"run": "a"}))

    assert server_a.receive(5).metadata == {"run": "a"}
    assert server_b.receive(5).metadata == {"run": "b"}
    assert client_a.receive(5).metadata == {"run": "a"}
    for transport in (server_a, server_b, client_b):
        with pytest.raises(TransportError, match="no message"):
            transport.receive(0.3)


def test_client_end_sends_to_the_server_only_and_close_is_idempotent(broker, run_id):
    client = MqttTransport(plain(broker, run_id), address="1", server=False)

    with pytest.raises(TransportError, match="sends to the server"):
        client.send(Message(MessageKind.INIT, "1", "2"))
    with pytest.raises(TransportError, match="cannot send a message from"):
        client.send(Message(MessageKind.INIT, "7", "0"))
    client.close()
    client.close()

    with pytest.raises(TransportError, match="closed"):
        client.receive(0)


@pytest.mark.parametrize("address", ["a/b", "+", "", "x" * 129])
def test_peer_ids_that_are_not_topic_levels_are_refused(broker, address):
    with pytest.raises(TransportError, match="peer id"):
        MqttTransport(plain(broker, "r"), address=address)


@pytest.fixture(scope="module")
def acl_broker():
    needs_mosquitto()
    with MosquittoBroker(username="fedml-server", devices={"1": "one-secret", "2": "two-secret"}) as running:
        yield running


def device(broker, run_id, user, password, **overrides):
    return plain(broker, run_id, username=user, password=password, **overrides)


def test_the_broker_acl_keeps_each_device_to_its_own_topics(acl_broker, run_id, ends):
    server = ends(MqttTransport(plain(acl_broker, run_id)))
    one = ends(MqttTransport(device(acl_broker, run_id, "1", "one-secret"), address="1", server=False))
    one.send(init("1"))
    assert server.receive(5).sender == "1"

    # Device 2's credentials cannot read device 1's tasks: the broker never delivers them...
    eavesdropper = ends(
        MqttTransport(device(acl_broker, run_id, "2", "two-secret"), address="1", server=False)
    )
    server.send(Message(MessageKind.SYNC_MODEL, "0", "1", 0))
    assert one.receive(5).kind == MessageKind.SYNC_MODEL
    with pytest.raises(TransportError, match="no message"):
        eavesdropper.receive(1.5)

    # ... nor publish an update as device 1: the broker drops it before the server sees it.
    impostor = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:6]}")
    impostor.username_pw_set("2", "two-secret")
    impostor.connect("127.0.0.1", acl_broker.port)
    impostor.loop_start()
    try:
        forged = split(encode(init("1")))[0]
        frame = pack_frame(FrameKind.DATA, "1", run_id, None, encode_chunk(forged))
        impostor.publish(f"fedml/{run_id}/from/1", frame, qos=1).wait_for_publish(5)
    finally:
        impostor.disconnect()
        impostor.loop_stop()
    with pytest.raises(TransportError, match="no message"):
        server.receive(1.5)

    two = ends(MqttTransport(device(acl_broker, run_id, "2", "two-secret"), address="2", server=False))
    two.send(init("2"))
    assert server.receive(5).sender == "2"
    server.send(Message(MessageKind.SYNC_MODEL, "0", "2", 0))
    assert two.receive(5).kind == MessageKind.SYNC_MODEL
