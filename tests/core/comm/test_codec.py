import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedml.core.comm import PROTOCOL_VERSION, Message, MessageKind, decode, encode
from fedml.core.comm.codec import DTYPES, MAGIC
from fedml.errors import ProtocolError

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def tensors(draw):
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    values = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    return (values * 10).to(dtype)


messages = st.builds(
    Message,
    kind=st.sampled_from(MessageKind),
    sender=st.text(min_size=1, max_size=20),
    receiver=st.text(min_size=1, max_size=20),
    round_idx=st.integers(-1, 10**6),
    metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    tensors=st.dictionaries(st.text(max_size=12), tensors(), max_size=4),
)


def valid_message():
    return Message(
        MessageKind.CLIENT_UPDATE,
        sender="2",
        receiver="0",
        round_idx=3,
        metadata={"clients": [1, 4], "loss": 0.5},
        tensors={"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(7)},
    )


@given(messages)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_preserves_every_field_and_tensor(message):
    decoded = decode(encode(message))
    assert (decoded.kind, decoded.sender, decoded.receiver, decoded.round_idx) == (
        message.kind,
        message.sender,
        message.receiver,
        message.round_idx,
    )
    assert decoded.version == PROTOCOL_VERSION
    assert decoded.metadata == message.metadata
    assert list(decoded.tensors) == list(message.tensors)
    for name, tensor in message.tensors.items():
        assert decoded.tensors[name].dtype == tensor.dtype
        assert torch.equal(decoded.tensors[name], tensor)


def test_non_contiguous_and_bfloat16_tensors_round_trip():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    b = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    out = decode(encode(Message(MessageKind.SYNC_MODEL, "0", "1", tensors={"t": t, "b": b}))).tensors
    assert torch.equal(out["t"], t)
    assert torch.equal(out["b"], b)


def test_decoded_tensors_are_writable_copies():
    data = encode(valid_message())
    out = decode(data).tensors["w"]
    out += 1
    assert torch.equal(decode(data).tensors["w"], valid_message().tensors["w"])


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_bytes_only_ever_raise_protocol_error(data):
    with pytest.raises(ProtocolError):
        decode(data)


@given(st.data())
@settings(max_examples=300)
def test_mutated_encodings_decode_or_raise_protocol_error(data):
    encoded = bytearray(encode(valid_message()))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(encoded))
    except ProtocolError:
        return
    assert isinstance(decoded.kind, MessageKind)
    assert all(isinstance(t, torch.Tensor) for t in decoded.tensors.values())


@given(st.data())
@settings(max_examples=200)
def test_truncations_raise_protocol_error(data):
    encoded = encode(valid_message())
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(ProtocolError):
        decode(encoded[:cut])


def test_trailing_bytes_are_rejected():
    with pytest.raises(ProtocolError, match="length mismatch"):
        decode(encode(valid_message()) + b"\0")


def test_oversized_message_is_rejected_before_parsing():
    encoded = encode(valid_message())
    with pytest.raises(ProtocolError, match="exceeds the limit of 10 bytes"):
        decode(encoded, max_bytes=10)


def test_other_protocol_version_is_rejected():
    encoded = bytearray(encode(valid_message()))
    struct.pack_into("<H", encoded, len(MAGIC), PROTOCOL_VERSION + 1)
    with pytest.raises(ProtocolError, match=f"protocol version {PROTOCOL_VERSION + 1} is not supported"):
        decode(bytes(encoded))


def _with_header(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<4sHIQ", MAGIC, PROTOCOL_VERSION, len(header), len(payload)) + header + payload


@pytest.mark.parametrize(
    ("header", "payload", "match"),
    [
        (b"[1]", b"", "must have the keys"),
        (
            b'{"kind":9,"sender":"0","receiver":"1","round":0,"metadata":{},"tensors":[]}',
            b"",
            "unknown message kind 9",
        ),
        (
            b'{"kind":1,"sender":0,"receiver":"1","round":0,"metadata":{},"tensors":[]}',
            b"",
            "'sender' must be a peer id of 1 to 128 characters",
        ),
        (
            b'{"kind":1,"sender":"0","receiver":"","round":0,"metadata":{},"tensors":[]}',
            b"",
            "'receiver' must be a peer id",
        ),
        (
            b'{"kind":1,"sender":"0","receiver":"1","round":0,"metadata":{},'
            b'"tensors":[{"name":"x","dtype":"object","shape":[1]}]}',
            b"\0" * 8,
            "dtype 'object' is not one of",
        ),
        (
            b'{"kind":1,"sender":"0","receiver":"1","round":0,"metadata":{},'
            b'"tensors":[{"name":"x","dtype":"float32","shape":[1000000000000]}]}',
            b"\0" * 8,
            "needs 4000000000000 bytes",
        ),
        (
            b'{"kind":1,"sender":"0","receiver":"1","round":0,"metadata":{},'
            b'"tensors":[{"name":"x","dtype":"float32","shape":[1]}]}',
            b"\0" * 8,
            "4 payload bytes are not claimed",
        ),
        (b"[" * 100000, b"", "not valid JSON"),
    ],
)
def test_malformed_headers_are_named(header, payload, match):
    with pytest.raises(ProtocolError, match=match):
        decode(_with_header(header, payload))


def test_unsendable_metadata_and_dtypes_raise_protocol_error():
    with pytest.raises(ProtocolError, match="not JSON-able"):
        encode(Message(MessageKind.INIT, "0", "1", metadata={"x": object()}))
    with pytest.raises(ProtocolError, match="cannot be sent"):
        encode(Message(MessageKind.INIT, "0", "1", tensors={"c": torch.zeros(2, dtype=torch.complex64)}))


def _tensor_header(spec, metadata="{}"):
    return (
        b'{"kind":1,"sender":"0","receiver":"1","round":0,"metadata":'
        + metadata.encode()
        + b',"tensors":['
        + json.dumps(spec).encode()
        + b"]}"
    )


@pytest.mark.parametrize(
    ("shape", "payload"),
    [([0, 2**64], b""), ([2**64, 0], b""), ([0, 2**47, 2**47], b""), ([2**40, 2**40], b"\0" * 8)],
)
def test_shapes_that_overflow_are_protocol_errors(shape, payload):
    spec = {"name": "x", "dtype": "float32", "shape": shape}
    with pytest.raises(ProtocolError, match="tensor 'x'"):
        decode(_with_header(_tensor_header(spec), payload))


def test_bool_bytes_other_than_zero_and_one_are_refused():
    spec = {"name": "mask", "dtype": "bool", "shape": [2]}
    assert decode(_with_header(_tensor_header(spec), b"\x01\x00")).tensors["mask"].tolist() == [True, False]
    with pytest.raises(ProtocolError, match="bool values must be bytes 0 or 1"):
        decode(_with_header(_tensor_header(spec), b"\x01\x02"))


@pytest.mark.parametrize(
    ("metadata", "tensors", "match"),
    [
        ({1: "a"}, {}, "non-string key 1"),
        ({"clients": (1, 2)}, {}, r"metadata\.clients is not JSON-able without change \(tuple\)"),
        ({"nested": [{"ok": 1, 2: 3}]}, {}, "non-string key 2"),
        ({}, {3: torch.zeros(1)}, "tensor name 3 is not a string"),
    ],
)
def test_what_would_not_round_trip_is_refused_at_encode(metadata, tensors, match):
    with pytest.raises(ProtocolError, match=match):
        encode(Message(MessageKind.INIT, "0", "1", metadata=metadata, tensors=tensors))


header_values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.floats(),
    st.lists(st.integers(-(2**66), 2**66), max_size=5),
)


@given(
    field=st.sampled_from(
        ["kind", "sender", "receiver", "round", "metadata", "tensors", "name", "dtype", "shape"]
    ),
    value=header_values,
    payload=st.binary(max_size=64),
)
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_edited_headers_only_ever_raise_protocol_error(field, value, payload):
    header = {"kind": 1, "sender": "0", "receiver": "1", "round": 0, "metadata": {}, "tensors": []}
    spec = {"name": "x", "dtype": "float32", "shape": [2]}
    if field in spec:
        spec[field] = value
    else:
        header[field] = value
    header["tensors"] = header["tensors"] if field == "tensors" else [spec]
    raw = json.dumps(header).encode()
    try:
        decoded = decode(_with_header(raw, payload))
    except ProtocolError:
        return
    assert all(isinstance(t, torch.Tensor) for t in decoded.tensors.values())
