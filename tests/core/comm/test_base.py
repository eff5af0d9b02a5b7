import json
import sys

import pytest

from fedml.core.comm import (
    ClosingContext,
    LocalHub,
    LocalTransport,
    Transport,
    create_transport,
    register_transport,
    transport_names,
)
from fedml.core.comm import base as comm_base
from fedml.errors import ConfigError


class CountingTransport(ClosingContext):
    def __init__(self):
        self.closes = 0

    def close(self):
        self.closes += 1


def test_closing_context_returns_itself_and_closes_on_exit():
    transport = CountingTransport()

    with transport as entered:
        assert entered is transport
        assert transport.closes == 0

    assert transport.closes == 1


def test_closing_context_closes_and_reraises_when_the_body_fails():
    transport = CountingTransport()

    with pytest.raises(RuntimeError, match="boom"), transport:
        raise RuntimeError("boom")

    assert transport.closes == 1


def test_closing_context_default_close_does_nothing():
    context = ClosingContext()

    with context as entered:
        pass

    assert entered is context
    context.close()


class CompleteTransport(ClosingContext):
    address, rank, world_size = "0", 0, 1

    def send(self, message):
        pass

    def receive(self, timeout=None):
        pass


class WithoutReceive(ClosingContext):
    address, rank, world_size = "0", 0, 1

    def send(self, message):
        pass


class WithoutAddress(ClosingContext):
    rank, world_size = 0, 1

    def send(self, message):
        pass

    def receive(self, timeout=None):
        pass


def test_only_an_object_with_every_member_is_a_transport():
    assert isinstance(CompleteTransport(), Transport)
    assert not isinstance(WithoutReceive(), Transport)
    assert not isinstance(WithoutAddress(), Transport)


def test_registry_builds_local_by_name_case_insensitively():
    hub = LocalHub(2)
    transport = create_transport("local", hub=hub, rank=1)
    assert isinstance(transport, LocalTransport)
    assert transport.rank == 1
    assert {"LOCAL", "MPI"} <= set(transport_names())


def test_unknown_transport_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match=r"comm_args.backend: unknown transport 'PIGEON'; valid: .*LOCAL.*MPI"
    ):
        create_transport("PIGEON")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[mpi\]"'):
        create_transport("MPI")


def test_registered_factories_are_used(monkeypatch):
    monkeypatch.setattr(comm_base.TRANSPORTS, "_entries", dict(comm_base.TRANSPORTS._entries))
    hub = LocalHub(1)
    register_transport("loopback", lambda: hub.endpoint(0))
    assert create_transport("LOOPBACK").rank == 0


def test_registered_names_are_listed_and_keyword_arguments_reach_the_factory(monkeypatch):
    monkeypatch.setattr(comm_base.TRANSPORTS, "_entries", dict(comm_base.TRANSPORTS._entries))
    received = {}

    def factory(**kwargs):
        received.update(kwargs)
        return LocalHub(3).endpoint(kwargs["rank"])

    register_transport("Recorder", factory)

    transport = create_transport("recorder", rank=2, timeout=5.0)

    assert "RECORDER" in {name.upper() for name in transport_names()}
    assert received == {"rank": 2, "timeout": 5.0}
    assert transport.address == "2"


def test_require_returns_an_installed_module():
    assert comm_base.require("json", "unused") is json


def test_require_names_the_extra_of_a_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "fedml_no_such_package", None)

    with pytest.raises(ImportError, match=r"'fedml_no_such_package' package.*pip install \"fedml\[grpc\]\""):
        comm_base.require("fedml_no_such_package", "grpc")
