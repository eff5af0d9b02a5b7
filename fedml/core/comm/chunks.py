"""Large messages in chunks: split encoded bytes, check each chunk, reassemble.

Network transports carry a message as a sequence of chunks, so a model of any size passes a gRPC
message limit or a broker's payload limit. Every chunk names its message, its position, the count and
the whole message's size, and carries the SHA-256 of its own data. The receiver refuses anything
inconsistent, keeps a bounded number of partial messages per sender, and checks each chunk as it
arrives: a message whose chunks all passed, with every index present and the sizes adding up to the
announced total, is the message that was sent. Checking per chunk lets both ends hash while the
network carries the other chunks (``iter_chunks`` is lazy), instead of hashing the whole message
before the first byte leaves and after the last arrives.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from fedml.errors import ProtocolError

CHUNK_BYTES = 1 << 20
"""Default payload bytes per chunk (1 MiB): below gRPC's 4 MB default and any broker's limit."""

_MAGIC = b"FMLC"
_HEADER = struct.Struct("!4s16sIIQ32s")
"""magic, message id, index, count, total size, SHA-256 of this chunk's data."""


@dataclass(frozen=True)
class Chunk:
    """One piece of an encoded message; ``digest`` is the SHA-256 of ``data``."""

    message_id: bytes
    index: int
    count: int
    total: int
    digest: bytes
    data: bytes


Buffers = bytes | bytearray | Sequence[memoryview]
"""A message's bytes: in one buffer, or as pieces (``codec.encode_parts``) that are never joined."""


def iter_chunks(data: Buffers, chunk_bytes: int = CHUNK_BYTES, checksum: bool = True) -> Iterator[Chunk]:
    """Yield ``data`` as chunks of at most ``chunk_bytes`` bytes, each made only when it is taken.

    ``data`` may be the pieces of a message, copied straight into the chunks. One empty chunk stands
    for empty data. With ``checksum=False`` the digests are left empty, for a channel that protects
    integrity itself (gRPC: TLS records, TCP).
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    parts = [memoryview(data)] if isinstance(data, (bytes, bytearray)) else list(data)
    total = sum(part.nbytes for part in parts)
    message_id = os.urandom(16)
    count = max(1, -(-total // chunk_bytes))
    for index, piece in enumerate(_pieces(parts, chunk_bytes)):
        digest = hashlib.sha256(piece).digest() if checksum else b""
        yield Chunk(message_id, index, count, total, digest, piece)


def _pieces(parts: list[memoryview], chunk_bytes: int) -> Iterator[bytes]:
    """Yield the concatenation of ``parts`` in pieces of ``chunk_bytes`` (the last may be shorter)."""
    gathered: list[memoryview] = []
    size = 0
    for part in parts:
        view = part.cast("B") if part.format != "B" or part.ndim != 1 else part
        while len(view):
            take = min(chunk_bytes - size, len(view))
            gathered.append(view[:take])
            size += take
            view = view[take:]
            if size == chunk_bytes:
                yield b"".join(gathered)
                gathered, size = [], 0
    if size or not any(part.nbytes for part in parts):
        yield b"".join(gathered)


def split(data: Buffers, chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """Return ``data`` as a list of chunks (``iter_chunks``, all at once)."""
    return list(iter_chunks(data, chunk_bytes))


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
    """A message being joined: its chunks are copied into place in ``buffer`` as they arrive.

    The buffer is allocated at the announced total but only takes memory as it is written, so a
    message that announces more than it sends costs what it sent.
    """

    first: Chunk
    buffer: bytearray
    received: set[int] = field(default_factory=set)
    part: int | None = None
    size: int = 0
    started: float = field(default_factory=time.monotonic)

    def place(self, chunk: Chunk) -> bool:
        """Copy ``chunk`` into place; return ``False`` when its size contradicts the other chunks'."""
        last = chunk.index == chunk.count - 1
        if last:
            offset = chunk.total - len(chunk.data)
            if self.part is not None and offset != self.part * chunk.index:
                return False
        else:
            if self.part is None:
                self.part = len(chunk.data)
            if len(chunk.data) != self.part:
                return False
            offset = self.part * chunk.index
            if offset + len(chunk.data) > chunk.total:
                return False
        self.buffer[offset : offset + len(chunk.data)] = chunk.data
        self.received.add(chunk.index)
        self.size += len(chunk.data)
        return True


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
    checksum
        Check each chunk's SHA-256 (``False`` for chunks made with ``checksum=False``).

    """

    def __init__(
        self, max_bytes: int, max_partial: int = 4, expiry: float = 600.0, checksum: bool = True
    ) -> None:
        self.checksum = checksum
        self.max_bytes = max_bytes
        self.max_partial = max_partial
        self.expiry = expiry
        self.partial: dict[str, dict[bytes, _Partial]] = {}

    def add(self, sender: str, chunk: Chunk) -> bytes | bytearray | None:
        """Take one chunk from ``sender``; return the whole message when this chunk completes it.

        Raises
        ------
        ProtocolError
            For a chunk whose data fails its SHA-256, that contradicts the others of its message, or
            that announces a message over ``max_bytes``; that message is dropped.

        """
        self._check_alone(chunk)
        if chunk.count == 1:
            return chunk.data
        messages = self.partial.setdefault(sender, {})
        self._expire(messages)
        partial = messages.get(chunk.message_id)
        if partial is None:
            if len(messages) >= self.max_partial:
                del messages[min(messages, key=lambda key: messages[key].started)]
            partial = messages[chunk.message_id] = _Partial(chunk, bytearray(chunk.total))
        first = partial.first
        if (chunk.count, chunk.total) != (first.count, first.total):
            del messages[chunk.message_id]
            raise ProtocolError(f"chunk {chunk.index} of a message from {sender} contradicts its first chunk")
        if chunk.index in partial.received:
            del messages[chunk.message_id]
            raise ProtocolError(f"chunk {chunk.index} of a message from {sender} arrived twice")
        if not partial.place(chunk):
            del messages[chunk.message_id]
            raise ProtocolError(
                f"chunk {chunk.index} of a message from {sender} has {len(chunk.data)} bytes, which do not "
                f"fit the other chunks and the {chunk.total} bytes announced"
            )
        if len(partial.received) < chunk.count:
            return None
        del messages[chunk.message_id]
        if partial.size != chunk.total:
            raise ProtocolError(
                f"a message from {sender} has {partial.size} bytes, not the {chunk.total} it announced; "
                "it was truncated in transit"
            )
        return partial.buffer

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
        if chunk.count == 1 and len(chunk.data) != chunk.total:
            raise ProtocolError(
                f"a message of {len(chunk.data)} bytes (announced {chunk.total}) was truncated in transit"
            )
        if self.checksum and hashlib.sha256(chunk.data).digest() != chunk.digest:
            raise ProtocolError(
                f"chunk {chunk.index} of {chunk.count} ({len(chunk.data)} bytes) fails its SHA-256 check; "
                "it was corrupted in transit"
            )

    def _expire(self, messages: dict[bytes, _Partial]) -> None:
        now = time.monotonic()
        for key in [k for k, p in messages.items() if now - p.started > self.expiry]:
            del messages[key]
