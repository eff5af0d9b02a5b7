import os
import pwd
import socket

import pytest

from fedml.core.comm.broker import INSTALL_HINT, BrokerTLS, MosquittoBroker, free_port
from fedml.errors import TransportError
from tests.core.comm.conftest import needs_mosquitto


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_free_port_can_be_bound():
    port = free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))

    assert 0 < port < 65536


def test_missing_binary_says_how_to_install_it():
    broker = MosquittoBroker(binary="no-such-mosquitto-binary")

    with pytest.raises(TransportError, match="apt-get install -y mosquitto") as caught:
        broker.start()

    assert "\n" not in str(caught.value)
    assert "comm_args.host/port" in INSTALL_HINT
    assert broker.process is None


def test_start_listens_and_stop_removes_everything():
    needs_mosquitto()
    broker = MosquittoBroker()

    broker.start(timeout=10)
    directory, process = broker.directory, broker.process
    config = (directory / "mosquitto.conf").read_text()
    listening = accepts(broker.port)
    broker.stop()

    assert listening
    assert "allow_anonymous false" in config
    assert f"listener {broker.port} 127.0.0.1" in config
    assert "persistence false" in config
    assert process.poll() is not None
    assert not directory.exists()
    assert not accepts(broker.port)
    broker.stop()


def test_generated_credentials_are_random_and_given_ones_are_kept():
    first, second = MosquittoBroker(), MosquittoBroker(username="alice", password="s3cret")

    assert first.username != MosquittoBroker().username
    assert len(first.password) >= 24
    assert (second.username, second.password) == ("alice", "s3cret")


def test_files_are_readable_by_the_broker_user_only():
    needs_mosquitto()

    with MosquittoBroker() as broker:
        modes = {path.name: path.stat().st_mode & 0o777 for path in broker.directory.iterdir()}
        owners = {path.name: path.stat().st_uid for path in broker.directory.iterdir()}
        expected = pwd.getpwnam("mosquitto").pw_uid if os.geteuid() == 0 else os.geteuid()

    assert modes["passwd"] == modes["mosquitto.conf"] == 0o600
    assert owners["passwd"] == owners["mosquitto.conf"] == expected


def test_a_broker_that_exits_reports_its_log():
    needs_mosquitto()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = MosquittoBroker(port=taken.getsockname()[1])

        try:
            with pytest.raises(TransportError, match="mosquitto exited") as caught:
                broker.start(timeout=5)
            cleaned = (broker.process, broker.directory)
        finally:
            broker.stop()

    assert "Address already in use" in str(caught.value)
    assert cleaned == (None, None)


def test_restart_keeps_port_and_credentials():
    needs_mosquitto()

    with MosquittoBroker() as broker:
        port, password = broker.port, broker.password
        broker.stop()
        down = accepts(port)
        broker.start()

        assert (broker.port, broker.password) == (port, password)
        assert not down
        assert accepts(port)


def test_tls_listener_with_an_extra_plaintext_one(certificates):
    needs_mosquitto()
    tls = BrokerTLS(certificates["server"].cert, certificates["server"].key, certificates["ca"].cert, True)

    with MosquittoBroker(tls=tls, also_plaintext=True) as broker:
        config = (broker.directory / "mosquitto.conf").read_text()

        assert broker.plain_port not in (None, broker.port)
        assert accepts(broker.port)
        assert accepts(broker.plain_port)
    assert "require_certificate true" in config
    assert "certfile" in config


def test_context_manager_stops_on_error():
    needs_mosquitto()
    broker = MosquittoBroker()

    with pytest.raises(RuntimeError, match="boom"), broker:
        raise RuntimeError("boom")

    assert broker.process is None
