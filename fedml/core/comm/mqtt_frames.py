"""The frames the MQTT transport publishes: a small binary header naming sender, run and token, then a body.

Layout (big-endian)::

    magic            b"FMQF"  4 bytes
    frame version    u8
    kind             u8       (``FrameKind``)
    protocol version u16      (``PROTOCOL_VERSION`` of the message it carries)
    sender, run id, token     each a u16 length and UTF-8 bytes
    body                      the rest: one chunk (``encode_chunk``) or a refusal's reason

Parsing is strict: anything that does not follow the layout raises ``ProtocolError``. Names that
become MQTT topic levels (peer ids, run ids) may not hold the topic separator or wildcards.

Examples
--------
>>> frame = parse_frame(pack_frame(FrameKind.REFUSAL, "0", "run-1", body=b"wrong auth token"))
>>> frame.kind.name, frame.sender, frame.run_id, bytes(frame.body)
('REFUSAL', '0', 'run-1', b'wrong auth token')

"""

from __future__ import annotations

import enum
import hmac
import struct
from dataclasses import dataclass

from fedml.core.comm.message import MAX_PEER_ID, PROTOCOL_VERSION
from fedml.errors import ProtocolError

MAGIC = b"FMQF"
FRAME_VERSION = 1
"""Version of the frame layout; a frame of another version is malformed."""
MAX_FIELD = 1024
"""Longest sender, run id or token in a frame, in bytes."""
MAX_REASON = 1024
"""Longest refusal reason, in bytes."""

_FIXED = struct.Struct("!4sBBH")
_LENGTH = struct.Struct("!H")
_TOPIC_FORBIDDEN = ("/", "+", "#", "\0")


class FrameKind(enum.IntEnum):
    """What a frame carries."""

    DATA = 1
    """One chunk of an encoded message."""
    REFUSAL = 2
    """The server refused the peer's frames; the body is the reason (UTF-8)."""
    WILL = 3
    """The broker's last will for a client end that vanished; no body."""
    HELLO = 4
    """The server end (re)connected; client ends re-send their ``INIT``. No body."""


@dataclass(frozen=True)
class Frame:
    """A parsed frame; ``body`` is a view into the received payload."""

    kind: FrameKind
    version: int
    sender: str
    run_id: str
    token: str
    body: memoryview


def pack_frame(
    kind: FrameKind,
    sender: str,
    run_id: str,
    token: str | None = None,
    body: bytes = b"",
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """Return a frame of ``kind`` from ``sender`` in run ``run_id`` carrying ``body``.

    Raises
    ------
    ProtocolError
        If a field is longer than ``MAX_FIELD`` bytes or ``version`` does not fit in 16 bits.

    """
    if not 0 <= version <= 0xFFFF:
        raise ProtocolError(f"protocol version {version} does not fit in a frame")
    parts = [_FIXED.pack(MAGIC, FRAME_VERSION, int(kind), version)]
    for name, value in (("sender", sender), ("run id", run_id), ("token", token or "")):
        raw = value.encode("utf-8")
        if len(raw) > MAX_FIELD:
            raise ProtocolError(f"frame {name} of {len(raw)} bytes exceeds {MAX_FIELD} bytes")
        parts += [_LENGTH.pack(len(raw)), raw]
    parts.append(body)
    return b"".join(parts)


def parse_frame(payload: bytes | bytearray | memoryview) -> Frame:
    """Parse a frame made by ``pack_frame``, checking every field.

    Raises
    ------
    ProtocolError
        If the payload is truncated, of another magic, frame version or kind, or names a sender that
        is not a valid peer id.

    """
    view = memoryview(payload).cast("B")
    if len(view) < _FIXED.size:
        raise ProtocolError(f"a frame of {len(view)} bytes is shorter than its {_FIXED.size}-byte header")
    magic, frame_version, kind, version = _FIXED.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(f"not a fedml MQTT frame (magic {bytes(magic)!r})")
    if frame_version != FRAME_VERSION:
        raise ProtocolError(
            f"frame version {frame_version} is not supported (this fedml uses {FRAME_VERSION})"
        )
    try:
        frame_kind = FrameKind(kind)
    except ValueError:
        raise ProtocolError(f"unknown frame kind {kind}") from None
    offset = _FIXED.size
    fields = []
    for name in ("sender", "run id", "token"):
        if offset + _LENGTH.size > len(view):
            raise ProtocolError(f"the frame header is truncated before its {name}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > MAX_FIELD or offset + length > len(view):
            raise ProtocolError(f"the frame's {name} of {length} bytes is too long or truncated")
        try:
            fields.append(bytes(view[offset : offset + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"the frame's {name} is not UTF-8") from None
        offset += length
    sender, run_id, token = fields
    reason = topic_name_problem(sender, MAX_PEER_ID)
    if reason:
        raise ProtocolError(f"the frame's sender {sender!r:.40} {reason}")
    body = view[offset:]
    if frame_kind in (FrameKind.WILL, FrameKind.HELLO) and len(body):
        raise ProtocolError(f"a {frame_kind.name} frame has a body of {len(body)} bytes; it must be empty")
    if frame_kind == FrameKind.REFUSAL and len(body) > MAX_REASON:
        raise ProtocolError(f"a refusal's reason of {len(body)} bytes exceeds {MAX_REASON} bytes")
    return Frame(frame_kind, version, sender, run_id, token, body)


def refusal_reason(frame: Frame, run_id: str, token: str | None) -> str | None:
    """Return why the server refuses ``frame`` (wrong run, protocol version or token), or ``None``.

    The token is compared in constant time; with no token configured any token passes.
    """
    if frame.run_id != run_id:
        return f"run id {frame.run_id!r:.40} is not this run's"
    if frame.version != PROTOCOL_VERSION:
        return f"protocol version {frame.version} is not supported (the server speaks {PROTOCOL_VERSION})"
    if token is not None and not hmac.compare_digest(frame.token.encode("utf-8"), token.encode("utf-8")):
        return "wrong auth token (comm_args.auth_token)" if frame.token else "no auth token"
    return None


def topic_name_problem(name: str, max_length: int = MAX_FIELD) -> str | None:
    """Return what makes ``name`` unusable as one MQTT topic level, or ``None`` when it is usable.

    Examples
    --------
    >>> topic_name_problem("silo-1") is None, topic_name_problem("a/b")
    (True, "contains one of '/', '+', '#' or NUL")

    """
    if not isinstance(name, str) or not 0 < len(name) <= max_length:
        return f"is not a string of 1 to {max_length} characters"
    if any(char in name for char in _TOPIC_FORBIDDEN):
        return "contains one of '/', '+', '#' or NUL"
    return None
