"""``GrpcTransport``: a real server and real clients in this process, on 127.0.0.1 with free ports."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

grpc = pytest.importorskip("grpc")

from fedml.core.comm import Message, MessageKind, create_transport, encode  # noqa: E402
from fedml.core.comm import certs as certs_module  # noqa: E402
from fedml.core.comm.certs import make_deployment  # noqa: E402
from fedml.core.comm.grpc import GrpcTransport  # noqa: E402
from fedml.core.comm.grpc_wire import handshake  # noqa: E402
from fedml.core.comm.network import NetworkSettings, TLSFiles  # noqa: E402
from fedml.core.comm.proto import fedml_pb2, fedml_pb2_grpc  # noqa: E402
from fedml.errors import ProtocolError, TransportError  # noqa: E402

from ...conftest import ROOT  # noqa: E402

WAIT = 5.0
BASE = NetworkSettings(
    host="127.0.0.1", port=0, insecure=True, timeout=WAIT, connect_timeout=WAIT, heartbeat=2
)


@pytest.fixture(autouse=True)
def dev_cert_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The development CA lives in the test's tmp dir, never in ~/.cache."""
    folder = tmp_path / "dev-certs"
    # resolve_tls imports dev_certificates from the module at each call, so patch it there.
    monkeypatch.setattr(
        certs_module, "dev_certificates", functools.partial(certs_module.dev_certificates, directory=folder)
    )
    return folder


@pytest.fixture
def net() -> Iterator[Callable[..., GrpcTransport]]:
    """Open transports with ``net(settings, address, server)``; closed, their threads gone, after."""
    opened: list[GrpcTransport] = []

    def open_transport(settings: NetworkSettings, address: str = "0", server: bool = True) -> GrpcTransport:
        transport = GrpcTransport(settings, address=address, server=server)
        opened.append(transport)
        return transport

    yield open_transport
    for transport in reversed(opened):
        transport.close()
    deadline = time.monotonic() + WAIT
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ours(), f"threads left running: {ours()}"


def ours() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fedml-grpc")]


def client_settings(server: GrpcTransport, **changes: Any) -> NetworkSettings:
    return replace(server.settings, port=server.port, **changes)


def init(sender: str, **tensors: torch.Tensor) -> Message:
    return Message(
        MessageKind.INIT, sender, "0", -1, {"clients": [int(sender) if sender.isdecimal() else 9]}, tensors
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_messages_with_tensors_go_both_ways_between_a_server_and_two_clients(net) -> None:
    server = net(BASE)
    alice, bob = net(client_settings(server), "1", False), net(client_settings(server), "silo-b", False)
    weights = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "mask": torch.tensor([True, False])}

    alice.send(init("1", **weights))
    bob.send(init("silo-b", w=weights["w"] * 2))
    joined = {m.sender: m for m in (server.receive(WAIT), server.receive(WAIT))}
    for peer in ("1", "silo-b"):
        server.send(Message(MessageKind.SYNC_MODEL, "0", peer, 3, {"to": peer}, {"w": weights["w"] + 1}))
    got_alice, got_bob = alice.receive(WAIT), bob.receive(WAIT)

    assert sorted(joined) == ["1", "silo-b"]
    assert joined["1"].kind == MessageKind.INIT
    assert torch.equal(joined["1"].tensors["w"], weights["w"])
    assert torch.equal(joined["1"].tensors["mask"], weights["mask"])
    assert torch.equal(joined["silo-b"].tensors["w"], weights["w"] * 2)
    for got, peer in ((got_alice, "1"), (got_bob, "silo-b")):
        assert (got.kind, got.sender, got.receiver, got.round_idx) == (MessageKind.SYNC_MODEL, "0", peer, 3)
        assert got.metadata == {"to": peer}
        assert torch.equal(got.tensors["w"], weights["w"] + 1)
    assert (server.rank, alice.rank, bob.rank, server.world_size) == (0, 1, 0, 0)


def test_a_100_mb_state_arrives_intact_in_both_directions(net) -> None:
    server = net(BASE)
    client = net(client_settings(server), "1", False)
    state = torch.randn(25_000_000, generator=torch.Generator().manual_seed(0))

    client.send(Message(MessageKind.CLIENT_UPDATE, "1", "0", 0, tensors={"w": state}))
    up = server.receive(60)
    server.send(Message(MessageKind.SYNC_MODEL, "0", "1", 1, tensors={"w": up.tensors["w"] + 1}))
    down = client.receive(60)

    assert state.numel() * state.element_size() >= 100_000_000
    assert torch.equal(up.tensors["w"], state)
    assert torch.equal(down.tensors["w"], state + 1)


def test_tls_with_a_server_certificate_from_a_test_ca(net, tmp_path: Path) -> None:
    files = make_deployment(tmp_path / "certs", server_hosts=["127.0.0.1"])
    server = net(
        replace(BASE, insecure=False, tls=TLSFiles(cert=files["server"].cert, key=files["server"].key))
    )
    client = net(client_settings(server, tls=TLSFiles(ca=files["ca"].cert)), "1", False)

    client.send(init("1"))
    server.send(Message(MessageKind.FINISH, "0", "1"))

    assert server.receive(WAIT).sender == "1"
    assert client.receive(WAIT).kind == MessageKind.FINISH


def test_mutual_tls_admits_a_client_certificate_and_refuses_a_client_without_one(net, tmp_path: Path) -> None:
    files = make_deployment(tmp_path / "certs", server_hosts=["127.0.0.1"], clients=["silo-1"])
    ca, server_files, silo = files["ca"].cert, files["server"], files["silo-1"]
    server = net(
        replace(BASE, insecure=False, client_auth=True, tls=TLSFiles(ca, server_files.cert, server_files.key))
    )
    good = net(client_settings(server, tls=TLSFiles(ca, silo.cert, silo.key)), "1", False)
    anonymous = net(
        client_settings(server, client_auth=False, tls=TLSFiles(ca=ca), connect_timeout=1.5), "2", False
    )

    good.send(init("1"))
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"127\.0\.0\.1:\d+"):
        anonymous.send(init("2"))

    assert time.monotonic() - start < 4
    assert server.receive(WAIT).sender == "1"


def test_a_plaintext_client_to_a_tls_server_fails_within_connect_timeout(net) -> None:
    server = net(replace(BASE, insecure=False))
    client = net(client_settings(server, insecure=True, connect_timeout=1.5), "1", False)

    start = time.monotonic()
    with pytest.raises(TransportError, match=rf"cannot connect to the server at 127\.0\.0\.1:{server.port}"):
        client.send(init("1"))

    assert time.monotonic() - start < 4
    with pytest.raises(TransportError, match="cannot connect"):
        client.receive(1)


def test_by_default_a_loopback_run_is_encrypted_with_the_development_ca(net, dev_cert_dir: Path) -> None:
    server = net(replace(BASE, insecure=False))
    client = net(client_settings(server), "1", False)

    client.send(init("1"))

    assert server.receive(WAIT).sender == "1"
    assert (dev_cert_dir / "ca.pem").is_file()
    assert (dev_cert_dir / "server.pem").is_file()


def test_refused_peers_get_the_reason_while_a_good_peer_keeps_working(
    net, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = net(replace(BASE, auth_token="s3cret"))
    good = net(client_settings(server), "1", False)
    good.send(init("1"))
    assert server.receive(WAIT).sender == "1"
    with monkeypatch.context() as patch:
        patch.setattr("fedml.core.comm.grpc_wire.PROTOCOL_VERSION", 1)
        old = net(client_settings(server), "3", False)
    cases = {
        "wrong auth token": net(client_settings(server, auth_token="guess"), "2", False),
        "no auth token": net(client_settings(server, auth_token=None), "4", False),
        "protocol version '1' is not supported": old,
        "run 'other' is not this server's run": net(client_settings(server, run_id="other"), "5", False),
        "peer id '0' must be": net(client_settings(server), "0", False),
    }

    with caplog.at_level(logging.WARNING, logger="fedml"):
        for reason, client in cases.items():
            with pytest.raises(TransportError, match=rf"refused peer {client.address}: {reason}"):
                client.receive(WAIT)
            with pytest.raises(TransportError, match=reason):
                client.send(init(client.address))
    server.send(Message(MessageKind.SYNC_MODEL, "0", "1", 0))
    good.send(Message(MessageKind.CLIENT_UPDATE, "1", "0", 0))

    assert good.receive(WAIT).kind == MessageKind.SYNC_MODEL
    assert server.receive(WAIT).kind == MessageKind.CLIENT_UPDATE
    refusals = [r.getMessage() for r in caplog.records if "Refused peer" in r.getMessage()]
    assert len(refusals) == len(cases)
    assert any("'2' from ipv4:127.0.0.1" in line and "wrong auth token" in line for line in refusals)


def raw_chunk(data: bytes, **fields: Any) -> fedml_pb2.Chunk:
    values = {"message_id": os.urandom(16), "index": 0, "count": 1, "total": len(data)}
    values["sha256"] = hashlib.sha256(data).digest()
    return fedml_pb2.Chunk(**{**values, **fields}, data=data)


def test_malformed_chunks_raise_protocol_errors_naming_the_peer_and_the_server_carries_on(net) -> None:
    server = net(BASE)
    good = bytes(encode(init("raw")))
    first_half = raw_chunk(good[:10], count=2, total=len(good))
    message_id = os.urandom(16)
    misfit = [
        raw_chunk(good[:10], message_id=message_id, count=2, total=len(good)),
        raw_chunk(good[10:20], message_id=message_id, index=1, count=2, total=len(good)),
    ]
    streams = [
        [
            *misfit,
            raw_chunk(b"x", total=BASE.max_bytes + 1),
            raw_chunk(b"not a fedml message"),
            raw_chunk(bytes(encode(init("mallory")))),
            raw_chunk(good),
        ],
        [first_half],
    ]
    expected = [
        "do not fit the other chunks",
        "exceeds the limit",
        "not a fedml message",
        "sent a message from 'mallory'",
        None,
        "connection lost",
        "ended in the middle of a message",
        "connection lost",
    ]

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = fedml_pb2_grpc.FedMLStub(channel)
        for chunks in streams:
            call = stub.Connect(iter(chunks), metadata=handshake(BASE, "raw"), timeout=WAIT)
            assert list(call) == []
    got = []
    for _ in expected:
        try:
            message = server.receive(WAIT)
        except ProtocolError as exc:
            got.append(str(exc))
        else:
            got.append(message.metadata.get("error") if message.kind == MessageKind.ERROR else None)
            assert message.sender == "raw"
    client = net(client_settings(server), "1", False)
    client.send(init("1"))

    for reason, line in zip(expected, got, strict=True):
        if reason is None:
            assert line is None
        else:
            assert reason in line
            assert "connection lost" in line or "peer raw" in line
    assert server.receive(WAIT).sender == "1"


def test_a_closed_client_becomes_an_error_message_from_its_peer_id(net) -> None:
    server = net(BASE)
    client = net(client_settings(server), "silo-7", False)
    client.send(init("silo-7"))
    assert server.receive(WAIT).kind == MessageKind.INIT

    client.close()
    message = server.receive(WAIT)

    assert (message.kind, message.sender, message.receiver) == (MessageKind.ERROR, "silo-7", "0")
    assert message.metadata["error"].startswith("connection lost")
    with pytest.raises(TransportError, match="not connected"):
        server.send(Message(MessageKind.SYNC_MODEL, "0", "silo-7"))


KILLED_CLIENT = """
import sys, time
from fedml.core.comm import Message, MessageKind
from fedml.core.comm.grpc import GrpcTransport
from fedml.core.comm.network import NetworkSettings
settings = NetworkSettings(port=int(sys.argv[1]), insecure=True, connect_timeout=20)
transport = GrpcTransport(settings, address="9", server=False)
transport.send(Message(MessageKind.INIT, "9", "0"))
time.sleep(60)
"""


def test_a_killed_client_process_becomes_an_error_message_from_its_peer_id(net) -> None:
    server = net(BASE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(server.port)], env=env)
    try:
        joined = server.receive(30)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=WAIT)
        lost = server.receive(WAIT)
    finally:
        process.kill()
        process.wait(timeout=WAIT)

    assert (joined.kind, joined.sender) == (MessageKind.INIT, "9")
    assert (lost.kind, lost.sender) == (MessageKind.ERROR, "9")
    assert "connection lost" in lost.metadata["error"]


def test_a_restarted_server_gets_the_clients_last_init_again(net) -> None:
    first = net(BASE)
    client = net(client_settings(first), "1", False)
    client.send(init("1", w=torch.ones(3)))
    assert first.receive(WAIT).kind == MessageKind.INIT

    first.close()
    second = net(replace(BASE, port=first.port))
    again = second.receive(WAIT)
    second.send(Message(MessageKind.SYNC_MODEL, "0", "1", 0))

    assert (again.kind, again.sender, again.metadata) == (MessageKind.INIT, "1", {"clients": [1]})
    assert torch.equal(again.tensors["w"], torch.ones(3))
    assert client.receive(WAIT).kind == MessageKind.SYNC_MODEL


def test_a_client_started_before_the_server_connects_once_it_appears(net) -> None:
    port = free_port()
    client = net(replace(BASE, port=port), "1", False)
    time.sleep(0.5)

    server = net(replace(BASE, port=port))
    client.send(init("1"))

    assert server.port == port
    assert server.receive(WAIT).sender == "1"


def test_a_second_stream_from_a_peer_id_replaces_the_first(net) -> None:
    server = net(BASE)
    before = net(client_settings(server), "1", False)
    before.send(init("1"))
    assert server.receive(WAIT).kind == MessageKind.INIT

    after = net(client_settings(server), "1", False)
    after.send(init("1"))
    assert server.receive(WAIT).kind == MessageKind.INIT
    server.send(Message(MessageKind.FINISH, "0", "1"))

    assert after.receive(WAIT).kind == MessageKind.FINISH


def test_sending_to_an_unknown_peer_or_past_the_size_limit_is_a_transport_error(net) -> None:
    server = net(BASE)
    client = net(client_settings(server, max_bytes=1000), "1", False)

    with pytest.raises(TransportError, match="'nobody' is not connected"):
        server.send(Message(MessageKind.SYNC_MODEL, "0", "nobody"))
    with pytest.raises(TransportError, match="sends only to the server"):
        client.send(Message(MessageKind.INIT, "1", "2"))
    with pytest.raises(TransportError, match="exceed the limit of 1000 bytes"):
        client.send(Message(MessageKind.INIT, "1", "0", tensors={"w": torch.zeros(1000)}))
    with pytest.raises(TransportError, match=r"no message within 0\.2 s"):
        server.receive(0.2)


def test_a_client_with_no_server_fails_naming_the_address_within_connect_timeout(net) -> None:
    port = free_port()
    client = net(replace(BASE, port=port, connect_timeout=1.0), "1", False)

    start = time.monotonic()
    with pytest.raises(TransportError, match=rf"127\.0\.0\.1:{port} within 1.0 s"):
        client.receive(WAIT)

    assert time.monotonic() - start < 3


def test_the_transport_is_built_by_name_and_closes_idempotently(net) -> None:
    transport = create_transport("grpc", settings=BASE)

    transport.close()
    transport.close()

    assert isinstance(transport, GrpcTransport)
    assert transport.port > 0
    with pytest.raises(TransportError, match="closed"):
        transport.receive(0.1)


def test_a_port_in_use_is_a_transport_error(net) -> None:
    server = net(BASE)

    with pytest.raises(TransportError, match="cannot listen"):
        net(replace(BASE, port=server.port))


def test_import_fedml_does_not_import_grpc() -> None:
    code = "import sys, fedml, fedml.core.comm; print('grpc' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.stdout.strip() == "False", result.stderr
