"""Fixtures of the transport tests: certificates, and a skip where Mosquitto is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedml.core.comm.broker import find_mosquitto


def needs_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto; make test installs it)")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from fedml.core.comm.certs import make_deployment

    folder: Path = tmp_path_factory.mktemp("certs")
    return make_deployment(folder, server_hosts=["127.0.0.1", "localhost"], clients=["silo-1"])
