import pytest
import torch

from fedml.core.comm import LocalHub, Message, MessageKind, Transport, encode
from fedml.errors import ProtocolError, TransportError


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


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_address_is_the_rank_as_a_decimal_string(rank):
    endpoint = LocalHub(3).endpoint(rank)

    assert endpoint.address == str(rank)
    assert endpoint.rank == rank
    assert endpoint.world_size == 3


def test_a_hub_needs_at_least_one_endpoint():
    with pytest.raises(TransportError, match="at least one endpoint, got world_size=0"):
        LocalHub(0)


@pytest.mark.parametrize("rank", [-1, 2])
def test_an_endpoint_outside_the_hub_is_refused(rank):
    with pytest.raises(TransportError, match=rf"rank {rank} is outside the hub's 0..1"):
        LocalHub(2).endpoint(rank)


def test_a_closed_endpoint_refuses_to_receive_even_with_mail_waiting():
    hub = LocalHub(2)
    hub.endpoint(0).send(Message(MessageKind.INIT, "0", "1"))
    endpoint = hub.endpoint(1)
    endpoint.close()

    with pytest.raises(TransportError, match="rank 1: the transport is closed"):
        endpoint.receive(timeout=1)

    assert hub.queues[1].qsize() == 1


def test_close_is_idempotent_and_leaves_other_endpoints_open():
    hub = LocalHub(2)
    zero, one = hub.endpoint(0), hub.endpoint(1)

    zero.close()
    zero.close()
    one.send(Message(MessageKind.INIT, "1", "1"))

    assert zero.closed
    assert one.receive(timeout=1).kind is MessageKind.INIT


def test_receive_uses_the_endpoint_default_timeout():
    endpoint = LocalHub(1).endpoint(0, timeout=0.05)

    with pytest.raises(TransportError, match=r"no message within 0.05 s"):
        endpoint.receive()


def test_a_message_rejected_by_the_codec_is_not_delivered():
    hub = LocalHub(2)
    sender = hub.endpoint(0)
    bad_dtype = Message(
        MessageKind.SYNC_MODEL, "0", "1", tensors={"z": torch.zeros(2, dtype=torch.complex64)}
    )
    bad_metadata = Message(MessageKind.SYNC_MODEL, "0", "1", metadata={"x": object()})

    with pytest.raises(ProtocolError, match="cannot be sent"):
        sender.send(bad_dtype)
    with pytest.raises(ProtocolError, match="not JSON-able"):
        sender.send(bad_metadata)

    assert hub.queues[1].empty()


def test_a_message_with_an_empty_sender_is_rejected_by_the_codec():
    hub = LocalHub(2)

    with pytest.raises(ProtocolError, match="peer id ''"):
        hub.endpoint(0).send(Message(MessageKind.INIT, "", "1"))

    assert hub.queues[1].empty()


def test_a_message_over_the_receivers_max_bytes_is_refused_on_receive():
    hub = LocalHub(2)
    message = Message(MessageKind.SYNC_MODEL, "0", "1", tensors={"w": torch.zeros(1000)})
    size = len(encode(message))
    hub.endpoint(0).send(message)

    with pytest.raises(ProtocolError, match=rf"message of {size} bytes exceeds the limit of 1000 bytes"):
        hub.endpoint(1, max_bytes=1000).receive(timeout=1)


def test_the_receiver_gets_a_copy_taken_when_the_message_was_sent():
    hub = LocalHub(2)
    weights = torch.arange(4.0)
    hub.endpoint(0).send(Message(MessageKind.SYNC_MODEL, "0", "1", tensors={"w": weights}))

    weights.add_(100)
    received = hub.endpoint(1).receive(timeout=1).tensors["w"]

    assert torch.equal(received, torch.arange(4.0))


def test_an_endpoint_can_send_to_itself_and_other_mailboxes_stay_empty():
    hub = LocalHub(3)
    endpoint = hub.endpoint(2)

    endpoint.send(Message(MessageKind.ERROR, "2", "2", metadata={"error": "x"}))

    assert endpoint.receive(timeout=1).metadata == {"error": "x"}
    assert hub.queues[0].empty()
    assert hub.queues[1].empty()
