import dataclasses

import pytest
import torch

from fedml.core.comm import BROADCAST, PROTOCOL_VERSION, Message, MessageKind, decode, encode, rank_of
from fedml.errors import TransportError


def test_message_defaults_are_outside_rounds_empty_and_current_version():
    message = Message(MessageKind.INIT, sender="0", receiver="1")

    assert message.round_idx == -1
    assert message.metadata == {}
    assert message.tensors == {}
    assert message.version == PROTOCOL_VERSION


def test_message_defaults_are_not_shared_between_messages():
    first = Message(MessageKind.INIT, "0", "1")
    second = Message(MessageKind.INIT, "0", "1")

    first.metadata["clients"] = [1]
    first.tensors["w"] = torch.ones(1)

    assert second.metadata == {}
    assert second.tensors == {}


def test_message_peer_ids_are_strings_and_survive_the_codec():
    message = Message(MessageKind.CLIENT_UPDATE, sender="silo-a", receiver="0", round_idx=4)

    decoded = decode(encode(message))

    assert (decoded.sender, decoded.receiver, decoded.round_idx) == ("silo-a", "0", 4)
    assert isinstance(decoded.sender, str)
    assert decoded.version == PROTOCOL_VERSION


def test_describe_names_kind_ends_round_and_tensor_count():
    message = Message(
        MessageKind.SYNC_MODEL,
        sender="0",
        receiver="silo-a",
        round_idx=3,
        metadata={"clients": [1, 2]},
        tensors={"w": torch.zeros(2), "b": torch.zeros(1)},
    )

    assert message.describe() == "SYNC_MODEL from 0 to silo-a (round 3, 2 tensors)"


def test_describe_outside_rounds_shows_round_minus_one_and_no_tensors():
    assert (
        Message(MessageKind.FINISH, "0", BROADCAST).describe() == "FINISH from 0 to * (round -1, 0 tensors)"
    )


def test_message_kinds_have_stable_wire_values():
    assert {kind.name: int(kind) for kind in MessageKind} == {
        "INIT": 1,
        "SYNC_MODEL": 2,
        "CLIENT_UPDATE": 3,
        "FINISH": 4,
        "ERROR": 5,
        "SECURE_AGGREGATION": 6,
        "GOSSIP": 7,
    }
    assert MessageKind(3) is MessageKind.CLIENT_UPDATE


def test_an_unknown_kind_value_is_not_a_message_kind():
    with pytest.raises(ValueError, match="8"):
        MessageKind(8)


def test_protocol_version_is_the_string_peer_id_version():
    assert PROTOCOL_VERSION == 2
    assert isinstance(PROTOCOL_VERSION, int)


def test_broadcast_is_a_peer_id_that_names_no_rank():
    assert BROADCAST == "*"
    with pytest.raises(TransportError, match=r"no rank '\*'"):
        rank_of(BROADCAST, 4)


def test_message_is_a_mutable_dataclass_with_the_documented_fields():
    names = [f.name for f in dataclasses.fields(Message)]

    assert names == ["kind", "sender", "receiver", "round_idx", "metadata", "tensors", "version"]


@pytest.mark.parametrize(
    ("peer", "world_size", "rank"), [("0", 1, 0), ("0", 3, 0), ("2", 3, 2), ("41", 42, 41)]
)
def test_rank_of_returns_the_rank_of_a_decimal_id(peer, world_size, rank):
    assert rank_of(peer, world_size) == rank


@pytest.mark.parametrize("peer", ["silo-a", "1.0", " 1", "1 ", "0x1", "", "one"])
def test_rank_of_rejects_ids_that_are_not_decimal(peer):
    with pytest.raises(TransportError, match=r"\(world size 4\)"):
        rank_of(peer, 4)


@pytest.mark.parametrize("peer", ["3", "4", "100"])
def test_rank_of_rejects_ranks_outside_the_world(peer):
    with pytest.raises(TransportError, match=rf"no rank '{peer}' \(world size 3\)"):
        rank_of(peer, 3)


@pytest.mark.parametrize("peer", ["-1", "-0", "+1"])
def test_rank_of_rejects_signed_ids(peer):
    with pytest.raises(TransportError, match="no rank"):
        rank_of(peer, 4)


def test_rank_of_rejects_an_integer_peer():
    with pytest.raises(TransportError, match=r"no rank 1 \(world size 4\)"):
        rank_of(1, 4)  # type: ignore[arg-type]


def test_rank_of_shortens_a_long_peer_id_in_its_error():
    peer = "x" * 500

    with pytest.raises(TransportError) as caught:
        rank_of(peer, 2)

    assert peer not in str(caught.value)
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize("peer", ["01", "\u0661", " 1", "1.0"])
def test_only_the_canonical_spelling_names_a_rank(peer):
    with pytest.raises(TransportError, match="no rank"):
        rank_of(peer, 4)
