import sys

import pytest
import torch

from fedml.core.comm import (
    LocalHub,
    LocalTransport,
    Message,
    MessageKind,
    Transport,
    create_transport,
    register_transport,
    transport_names,
)
from fedml.core.comm import base as comm_base
from fedml.errors import ConfigError, ProtocolError, TransportError


def test_local_transport_delivers_messages_in_order_through_the_codec():
    hub = LocalHub(3)
    with hub.endpoint(1) as one, hub.endpoint(2) as two:
        one.send(Message(MessageKind.SYNC_MODEL, "1", "2", 0, {"i": 0}, {"w": torch.ones(2)}))
        one.send(Message(MessageKind.FINISH, "1", "2", 0, {"i": 1}))
        first, second = two.receive(timeout=1), two.receive(timeout=1)
    assert (first.metadata["i"], second.metadata["i"]) == (0, 1)
    assert first.sender == "1"
    assert torch.equal(first.tensors["w"], torch.ones(2))
    assert first.tensors["w"] is not None


def test_local_transport_satisfies_the_protocol_and_closes_on_exit():
    hub = LocalHub(2)
    with hub.endpoint(0) as endpoint:
        assert isinstance(endpoint, Transport)
    with pytest.raises(TransportError, match="closed"):
        endpoint.send(Message(MessageKind.INIT, "0", "1"))


def test_receive_times_out_with_a_transport_error():
    endpoint = LocalHub(2).endpoint(0)
    with pytest.raises(TransportError, match=r"rank 0: no message within 0.05 s"):
        endpoint.receive(timeout=0.05)


def test_sending_to_an_unknown_rank_fails():
    endpoint = LocalHub(2).endpoint(0)
    with pytest.raises(TransportError, match=r"no endpoint '5' on this hub \(world size 2\)"):
        endpoint.send(Message(MessageKind.INIT, "0", "5"))
    with pytest.raises(TransportError, match="no endpoint 'silo-a'"):
        endpoint.send(Message(MessageKind.INIT, "0", "silo-a"))


def test_corrupt_bytes_on_the_queue_raise_protocol_error():
    hub = LocalHub(2)
    hub.queues[1].put(b"garbage")
    with pytest.raises(ProtocolError):
        hub.endpoint(1).receive(timeout=1)


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
