"""Fixtures for the MQTT tests: real Mosquitto brokers on free loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedml.core.comm.broker import MosquittoBroker


def needs_mosquitto() -> None:
    if shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin:/usr/bin:/bin") is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    """A plaintext broker with a password file, shared by a module's tests (each uses its own run id)."""
    needs_mosquitto()
    with MosquittoBroker() as running:
        yield running


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from fedml.core.comm.certs import make_deployment

    folder: Path = tmp_path_factory.mktemp("certs")
    return make_deployment(folder, server_hosts=["127.0.0.1", "localhost"], clients=["silo-1"])
