"""Large messages in chunks: split encoded bytes, check each chunk, reassemble with a checksum.

Network transports carry a message as a sequence of chunks, so a model of any size passes a gRPC
message limit or a broker's payload limit. Every chunk names its message, its position, the count and
the whole message's size and SHA-256; the receiver refuses anything inconsistent, keeps a bounded
number of partial messages per sender, and checks the digest before the bytes reach the codec.

Examples
--------
>>> data = bytes(range(256)) * 10
>>> chunks = split(data, chunk_bytes=1000)
>>> len(chunks), chunks[0].count
(3, 3)
>>> joiner = Reassembler(max_bytes=1 << 20)
>>> [joiner.add("peer", decode_chunk(encode_chunk(c))) for c in chunks][-1] == data
True

"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass, field

from fedml.errors import ProtocolError

CHUNK_BYTES = 1 << 20
"""Default payload bytes per chunk (1 MiB): below gRPC's 4 MB default and any broker's limit."""

_MAGIC = b"FMLC"
_HEADER = struct.Struct("!4s16sIIQ32s")
"""magic, message id, index, count, total size, SHA-256 of the whole message."""


@dataclass(frozen=True)
class Chunk:
    """One piece of an encoded message."""

    message_id: bytes
    index: int
    count: int
    total: int
    digest: bytes
    data: bytes


def split(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """Return ``data`` as chunks of at most ``chunk_bytes`` bytes (one empty chunk for empty data)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    message_id = os.urandom(16)
    digest = hashlib.sha256(data).digest()
    view = memoryview(data)
    count = max(1, -(-len(data) // chunk_bytes))
    return [
        Chunk(message_id, i, count, len(data), digest, bytes(view[i * chunk_bytes : (i + 1) * chunk_bytes]))
        for i in range(count)
    ]


def encode_chunk(chunk: Chunk) -> bytes:
    """Return ``chunk`` as bytes: a fixed binary header followed by its data."""
    header = _HEADER.pack(_MAGIC, chunk.message_id, chunk.index, chunk.count, chunk.total, chunk.digest)
    return header + chunk.data


def decode_chunk(payload: bytes | bytearray | memoryview) -> Chunk:
    """Parse bytes made by ``encode_chunk``.

    Raises
    ------
    ProtocolError
        If the payload is shorter than the header or does not start with the chunk magic.

    """
    view = memoryview(payload)
    if len(view) < _HEADER.size:
        raise ProtocolError(f"a chunk of {len(view)} bytes is shorter than its {_HEADER.size}-byte header")
    magic, message_id, index, count, total, digest = _HEADER.unpack_from(view)
    if magic != _MAGIC:
        raise ProtocolError("not a fedml chunk (bad magic bytes)")
    return Chunk(message_id, index, count, total, digest, bytes(view[_HEADER.size :]))


@dataclass
class _Partial:
    first: Chunk
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    started: float = field(default_factory=time.monotonic)


class Reassembler:
    """Joins the chunks of each sender's messages; returns a message's bytes once all have arrived.

    Parameters
    ----------
    max_bytes
        Largest message accepted; a chunk announcing more is refused before anything is buffered.
    max_partial
        Partial messages kept per sender; the oldest is dropped when another starts.
    expiry
        Seconds after which a partial message that stopped receiving chunks is dropped.

    """

    def __init__(self, max_bytes: int, max_partial: int = 4, expiry: float = 600.0) -> None:
        self.max_bytes = max_bytes
        self.max_partial = max_partial
        self.expiry = expiry
        self.partial: dict[str, dict[bytes, _Partial]] = {}

    def add(self, sender: str, chunk: Chunk) -> bytes | None:
        """Take one chunk from ``sender``; return the whole message when this chunk completes it.

        Raises
        ------
        ProtocolError
            For a chunk that contradicts the others of its message, a message over ``max_bytes``, or
            a complete message whose SHA-256 does not match; that message is dropped.

        """
        self._check_alone(chunk)
        if chunk.count == 1:
            return self._verified(chunk, chunk.data)
        messages = self.partial.setdefault(sender, {})
        self._expire(messages)
        partial = messages.get(chunk.message_id)
        if partial is None:
            if len(messages) >= self.max_partial:
                del messages[min(messages, key=lambda key: messages[key].started)]
            partial = messages[chunk.message_id] = _Partial(chunk)
        first = partial.first
        if (chunk.count, chunk.total, chunk.digest) != (first.count, first.total, first.digest):
            del messages[chunk.message_id]
            raise ProtocolError(f"chunk {chunk.index} of a message from {sender} contradicts its first chunk")
        if chunk.index in partial.parts:
            del messages[chunk.message_id]
            raise ProtocolError(f"chunk {chunk.index} of a message from {sender} arrived twice")
        partial.size += len(chunk.data)
        if partial.size > chunk.total:
            del messages[chunk.message_id]
            raise ProtocolError(f"a message from {sender} has more bytes than the {chunk.total} it announced")
        partial.parts[chunk.index] = chunk.data
        if len(partial.parts) < chunk.count:
            return None
        del messages[chunk.message_id]
        return self._verified(chunk, b"".join(partial.parts[i] for i in range(chunk.count)))

    def forget(self, sender: str) -> None:
        """Drop the partial messages of ``sender`` (it disconnected)."""
        self.partial.pop(sender, None)

    def _check_alone(self, chunk: Chunk) -> None:
        if chunk.total > self.max_bytes:
            raise ProtocolError(
                f"a message of {chunk.total} bytes exceeds the limit of {self.max_bytes} bytes "
                "(comm_args.max_message_mb)"
            )
        # Only a message of no bytes has an empty chunk; empty parts would let a count of billions
        # fill memory without ever adding to the size checked against ``total``.
        empty_part = chunk.count > 1 and not chunk.data
        if not 0 <= chunk.index < chunk.count or len(chunk.data) > chunk.total or empty_part:
            raise ProtocolError(
                f"chunk {chunk.index} of {chunk.count} ({len(chunk.data)} of {chunk.total} bytes) "
                "is inconsistent"
            )

    def _verified(self, chunk: Chunk, data: bytes) -> bytes:
        if len(data) != chunk.total or hashlib.sha256(data).digest() != chunk.digest:
            raise ProtocolError(
                f"a message of {len(data)} bytes (announced {chunk.total}) fails its SHA-256 check; "
                "it was corrupted or truncated in transit"
            )
        return data

    def _expire(self, messages: dict[bytes, _Partial]) -> None:
        now = time.monotonic()
        for key in [k for k, p in messages.items() if now - p.started > self.expiry]:
            del messages[key]
