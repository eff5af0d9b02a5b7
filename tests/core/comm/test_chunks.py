"""``split`` and ``Reassembler``: messages survive chunking; inconsistent chunks are refused."""

from __future__ import annotations

import pytest

from fedml.core.comm.chunks import Chunk, Reassembler, split
from fedml.errors import ProtocolError


def test_chunks_in_any_order_rebuild_the_message() -> None:
    data = bytes(range(256)) * 40
    joiner = Reassembler(max_bytes=1 << 20)

    results = [joiner.add("peer", chunk) for chunk in reversed(split(data, chunk_bytes=1000))]

    assert results[:-1] == [None] * 10
    assert results[-1] == data
    assert joiner.partial["peer"] == {}


def test_empty_parts_of_a_multi_chunk_message_are_refused() -> None:
    first = split(b"abc", chunk_bytes=2)[0]
    empty = Chunk(first.message_id, 1, 2**32 - 1, first.total, first.digest, b"")
    joiner = Reassembler(max_bytes=1 << 20)

    with pytest.raises(ProtocolError, match="inconsistent"):
        joiner.add("peer", empty)
    assert joiner.add("peer", split(b"", chunk_bytes=2)[0]) == b""
