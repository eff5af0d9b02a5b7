"""The wire format: ``Message`` <-> bytes without pickle, validated on decoding.

Layout (little-endian)::

    magic  b"FMLM"    4 bytes
    version           u16
    header length     u32   (JSON, UTF-8)
    payload length    u64   (raw tensor bytes)
    header            JSON: kind, sender, receiver, round, metadata, tensors [{name, dtype, shape}]
    payload           the tensors' bytes, one after another in header order

Decoding checks the magic, version, lengths, every header field, every dtype and that the tensor
sizes add up to the payload exactly; anything else raises ``ProtocolError``. Nothing in a message is
ever executed: the header is plain JSON and tensors are rebuilt from bytes with an allow-listed dtype.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import torch

from fedml.core.comm.message import MAX_PEER_ID, PROTOCOL_VERSION, Message, MessageKind
from fedml.errors import ProtocolError

MAGIC = b"FMLM"
_PREFIX = struct.Struct("<4sHIQ")
DEFAULT_MAX_BYTES = 1 << 30
"""Default largest message accepted by ``decode`` (1 GiB)."""
ALIGNMENT = 64
"""``encode`` starts the payload at a multiple of this many bytes (whitespace after the JSON header)."""
_MAX_DIMS = 32
_MAX_DIM = 1 << 48
"""Largest size of one tensor dimension, even in a tensor with no elements (torch cannot build more)."""

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""The tensor dtypes that may travel, by wire name."""
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def encode(message: Message) -> bytearray:
    """Serialise ``message`` to bytes, copying each tensor's data once, straight into place.

    Raises
    ------
    ProtocolError
        If the metadata is not JSON-able or a tensor has a dtype that cannot travel.

    """
    parts, total = encode_parts(message)
    out = bytearray(total)
    view = np.frombuffer(out, dtype=np.uint8)
    offset = 0
    for part in parts:
        size = len(part)
        view[offset : offset + size] = np.frombuffer(part, dtype=np.uint8)
        offset += size
    return out


def encode_parts(message: Message) -> tuple[list[memoryview], int]:
    """Return the bytes of ``encode(message)`` as pieces (prefix and header, then each tensor's data).

    The pieces view the tensors' own memory, so a transport can send them without building the whole
    message first; ``total`` is their summed length. The header is padded with JSON whitespace so
    the payload starts at a multiple of ``ALIGNMENT``, which lets ``decode(..., copy=False)`` build
    tensors on the received buffer itself.

    Raises
    ------
    ProtocolError
        If the metadata is not JSON-able or a tensor has a dtype that cannot travel.

    """
    specs, flats = [], []
    _check_json(message.metadata, "metadata")
    for name, tensor in message.tensors.items():
        if not isinstance(name, str):
            raise ProtocolError(f"tensor name {name!r:.100} is not a string")
        if tensor.dtype not in _NAMES:
            raise ProtocolError(f"tensor {name!r} has dtype {tensor.dtype}, which cannot be sent")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        specs.append({"name": name, "dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape)})
        flats.append(flat.view(torch.uint8))
    for end in (message.sender, message.receiver):
        if not isinstance(end, str) or not 0 < len(end) <= MAX_PEER_ID:
            raise ProtocolError(f"peer id {end!r:.100} is not a string of 1 to {MAX_PEER_ID} characters")
    header_fields = {
        "kind": int(message.kind),
        "sender": message.sender,
        "receiver": message.receiver,
        "round": message.round_idx,
        "metadata": message.metadata,
        "tensors": specs,
    }
    try:
        header = json.dumps(header_fields, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"message metadata is not JSON-able: {exc}") from exc
    header += b" " * (-(_PREFIX.size + len(header)) % ALIGNMENT)
    payload_len = sum(flat.numel() for flat in flats)
    head = _PREFIX.pack(MAGIC, message.version, len(header), payload_len) + header
    parts = [memoryview(head)] + [flat.numpy().data for flat in flats if flat.numel()]
    return parts, len(head) + payload_len


def decode(
    data: bytes | bytearray | memoryview, max_bytes: int = DEFAULT_MAX_BYTES, copy: bool = True
) -> Message:
    """Rebuild a ``Message`` from bytes made by ``encode``, checking everything on the way.

    Parameters
    ----------
    data
        The received bytes.
    max_bytes
        Largest message accepted.
    copy
        Copy each tensor out of ``data`` (the default). With ``False`` and a ``bytearray`` that the
        caller hands over (a transport's reassembly buffer), tensors whose bytes are aligned for
        their dtype are built on ``data`` itself, which they then keep alive.

    Raises
    ------
    ProtocolError
        If the bytes are oversized, truncated, of another version or malformed in any way.

    """
    view = memoryview(data).cast("B")
    if len(view) > max_bytes:
        raise ProtocolError(f"message of {len(view)} bytes exceeds the limit of {max_bytes} bytes")
    if len(view) < _PREFIX.size:
        raise ProtocolError(f"message of {len(view)} bytes is shorter than its {_PREFIX.size}-byte prefix")
    magic, version, header_len, payload_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(f"not a fedml message (magic {bytes(magic)!r})")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported (this fedml speaks {PROTOCOL_VERSION})"
        )
    if _PREFIX.size + header_len + payload_len != len(view):
        raise ProtocolError(
            f"length mismatch: prefix announces {header_len} + {payload_len} bytes after it, "
            f"{len(view) - _PREFIX.size} received"
        )
    header = _parse_header(view[_PREFIX.size : _PREFIX.size + header_len])
    start = _PREFIX.size + header_len
    shared = data if not copy and isinstance(data, bytearray) else None
    tensors = _read_tensors(header["tensors"], view[start:], shared, start)
    return Message(
        kind=header["kind"],
        sender=header["sender"],
        receiver=header["receiver"],
        round_idx=header["round"],
        metadata=header["metadata"],
        tensors=tensors,
        version=version,
    )


def _parse_header(raw: memoryview) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"message header is not valid JSON: {exc}") from exc
    expected = {"kind", "sender", "receiver", "round", "metadata", "tensors"}
    if not isinstance(header, dict) or set(header) != expected:
        keys = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise ProtocolError(f"message header must have the keys {sorted(expected)}, got {keys}")
    for key in ("kind", "round"):
        if not is_int(header[key]):
            raise ProtocolError(f"message header field {key!r} must be an integer, got {header[key]!r:.100}")
    for key in ("sender", "receiver"):
        if not isinstance(header[key], str) or not 0 < len(header[key]) <= MAX_PEER_ID:
            raise ProtocolError(
                f"message header field {key!r} must be a peer id of 1 to {MAX_PEER_ID} characters, "
                f"got {header[key]!r:.100}"
            )
    try:
        header["kind"] = MessageKind(header["kind"])
    except ValueError as exc:
        raise ProtocolError(f"unknown message kind {header['kind']}") from exc
    if not isinstance(header["metadata"], dict):
        raise ProtocolError("message metadata must be a JSON object")
    if not isinstance(header["tensors"], list):
        raise ProtocolError("message header field 'tensors' must be a list")
    return header


def _read_tensors(
    specs: list[Any], payload: memoryview, shared: bytearray | None, start: int
) -> dict[str, torch.Tensor]:
    """Build the tensors of ``specs`` from ``payload``, on ``shared`` (from ``start``) where aligned."""
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for spec in specs:
        name, dtype, shape = _check_spec(spec)
        if name in tensors:
            raise ProtocolError(f"tensor {name!r} appears twice")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > len(payload):
            raise ProtocolError(f"tensor {name!r} needs {nbytes} bytes; only {len(payload) - offset} remain")
        try:
            if nbytes:
                at = start + offset
                if shared is not None and at % dtype.itemsize == 0:
                    flat = torch.frombuffer(shared, dtype=torch.uint8, count=nbytes, offset=at)
                else:
                    flat = torch.frombuffer(bytearray(payload[offset : offset + nbytes]), dtype=torch.uint8)
                if dtype == torch.bool and int(flat.max()) > 1:
                    raise ProtocolError(f"tensor {name!r}: bool values must be bytes 0 or 1")
                tensors[name] = flat.view(dtype).reshape(shape)
            else:
                tensors[name] = torch.empty(shape, dtype=dtype)
        except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"tensor {name!r}: cannot be built from its description ({exc})") from exc
        offset += nbytes
    if offset != len(payload):
        raise ProtocolError(f"{len(payload) - offset} payload bytes are not claimed by any tensor")
    return tensors


def _check_spec(spec: Any) -> tuple[str, torch.dtype, list[int]]:
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
        raise ProtocolError(f"tensor description must have the keys dtype, name, shape: {spec!r:.200}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str):
        raise ProtocolError(f"tensor name must be a string, got {name!r:.100}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"tensor {name!r}: dtype {dtype!r:.100} is not one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(is_int(d) and d >= 0 for d in shape):
        raise ProtocolError(f"tensor {name!r}: shape must be a list of at most {_MAX_DIMS} sizes >= 0")
    if math.prod(d for d in shape if d) > _MAX_DIM:
        raise ProtocolError(f"tensor {name!r}: its dimensions multiply past {_MAX_DIM}")
    return name, DTYPES[dtype], shape


def _check_json(value: Any, where: str) -> None:
    """Refuse metadata that JSON would change on the way: non-string keys, tuples, other objects."""
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(
                    f"message {where} has a non-string key {key!r:.50}, which JSON would change"
                )
            _check_json(item, f"{where}.{key}")
        return
    raise ProtocolError(f"message {where} is not JSON-able without change ({type(value).__name__})")


def is_int(value: Any) -> bool:
    """Return whether ``value`` is an integer in JSON's sense (a ``bool`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)
