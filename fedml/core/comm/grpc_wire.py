"""What both ends of the gRPC transport agree on: chunks as protobuf, the handshake, options and TLS.

Imported only by ``fedml.core.comm.grpc`` (after it has checked that grpc is installed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import grpc

from fedml.core.comm.chunks import Chunk, Reassembler, iter_chunks
from fedml.core.comm.codec import decode, encode_parts
from fedml.core.comm.message import PROTOCOL_VERSION, Message
from fedml.core.comm.network import NetworkSettings, resolve_tls
from fedml.core.comm.proto import fedml_pb2
from fedml.errors import ConfigError, ProtocolError, TransportError

PEER_KEY = "fedml-peer"
VERSION_KEY = "fedml-version"
RUN_KEY = "fedml-run"
TOKEN_KEY = "fedml-token"
SERVER_KEY = "fedml-server"
"""Invocation metadata of the handshake; the server answers with its own id under ``SERVER_KEY``."""

SERVER_ADDRESS = "0"
"""The peer id of the server end, the one receiver a client end sends to."""

REFUSALS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
"""Status codes by which the server refuses a peer; retrying cannot help."""

HEADROOM = 64 << 10
"""Bytes a gRPC message may carry beyond one chunk's data (the chunk's other fields, framing)."""

_MESSAGE_ID_BYTES = 16

Deliver = Callable[[Message | TransportError], None]
"""Puts a received message, or an error to raise from ``receive``, into a transport's inbox."""


def message_chunks(message: Message, settings: NetworkSettings) -> Iterator[fedml_pb2.Chunk]:
    """Encode ``message`` into chunks of ``settings.chunk_bytes`` now; return them as protobuf, made as taken.

    The tensors' bytes are copied into the chunks at once (so the caller may change its tensors as
    soon as this returns), without building the whole message in one buffer first; the protobuf
    copies are made while gRPC sends the chunks before them. Their ``sha256`` is left empty: a gRPC
    stream's integrity is TLS's (an authenticated record per write) or, in plaintext on loopback,
    TCP's; a digest would only double the work per byte.

    Raises
    ------
    TransportError
        If the encoded message is larger than ``settings.max_bytes`` (the receiver would refuse it).
    ProtocolError
        If the message cannot be encoded.

    """
    parts, total = encode_parts(message)
    if total > settings.max_bytes:
        raise TransportError(
            f"{message.describe()}: {total} bytes exceed the limit of {settings.max_bytes} bytes "
            "(comm_args.max_message_mb)"
        )
    chunks = list(iter_chunks(parts, settings.chunk_bytes, checksum=False))
    return (
        fedml_pb2.Chunk(
            message_id=c.message_id, index=c.index, count=c.count, total=c.total, sha256=c.digest, data=c.data
        )
        for c in chunks
    )


class StreamJoiner:
    """Turns the chunks of one stream back into messages, delivering each message or error.

    Parameters
    ----------
    peer
        The stream's peer id (named in every error).
    max_bytes
        Largest message accepted.
    sender
        The ``sender`` every message must carry.
    deliver
        Receives each decoded message and each ``ProtocolError``.

    """

    def __init__(self, peer: str, max_bytes: int, sender: str, deliver: Deliver) -> None:
        self.peer = peer
        self.max_bytes = max_bytes
        self.sender = sender
        self.deliver = deliver
        self.joiner = Reassembler(max_bytes, checksum=False)

    def feed(self, raw: fedml_pb2.Chunk) -> None:
        """Take the stream's next chunk; deliver a message when it completes one, or an error."""
        try:
            message = self._message(raw)
        except ProtocolError as exc:
            self.deliver(ProtocolError(f"peer {self.peer}: {exc}; the message is dropped"))
            return
        if message is None:
            return
        if message.sender != self.sender:
            self.deliver(
                ProtocolError(
                    f"peer {self.peer} sent a message from {message.sender!r:.40}; the message is dropped"
                )
            )
            return
        self.deliver(message)

    def unfinished(self) -> int:
        """Return how many messages have some of their chunks only."""
        return len(self.joiner.partial.get(self.peer, {}))

    def _message(self, raw: fedml_pb2.Chunk) -> Message | None:
        if len(raw.message_id) != _MESSAGE_ID_BYTES:
            raise ProtocolError(
                f"a chunk's message id has {len(raw.message_id)} bytes, not {_MESSAGE_ID_BYTES}"
            )
        chunk = Chunk(raw.message_id, raw.index, raw.count, raw.total, raw.sha256, raw.data)
        pending = self.joiner.partial.get(self.peer, {})
        if pending and chunk.message_id not in pending:
            # A stream carries one message at a time, so the earlier one can never be completed.
            self.joiner.forget(self.peer)
            self.deliver(ProtocolError(f"peer {self.peer}: a message stopped before its last chunk"))
        data = self.joiner.add(self.peer, chunk)
        return None if data is None else decode(data, self.max_bytes, copy=False)


def handshake(settings: NetworkSettings, peer: str) -> tuple[tuple[str, str], ...]:
    """Return the invocation metadata by which ``peer`` introduces itself (values percent-encoded)."""
    entries = [(PEER_KEY, peer), (VERSION_KEY, str(PROTOCOL_VERSION)), (RUN_KEY, settings.run_id)]
    if settings.auth_token is not None:
        entries.append((TOKEN_KEY, settings.auth_token))
    return tuple((key, quote(value, safe="")) for key, value in entries)


def read_handshake(metadata: tuple[tuple[str, str | bytes], ...]) -> dict[str, str]:
    """Return the handshake entries of a call's invocation metadata, decoded."""
    keys = {PEER_KEY, VERSION_KEY, RUN_KEY, TOKEN_KEY}
    return {key: unquote(value) for key, value in metadata if key in keys and isinstance(value, str)}


def options(settings: NetworkSettings, server: bool) -> list[tuple[str, int]]:
    """Return the gRPC channel (``server=False``) or server options for ``settings``.

    The message limit is one chunk plus ``HEADROOM``: chunking, not a raised limit, carries large
    models, and ``settings.max_bytes`` bounds the whole message. Keepalive pings every
    ``settings.heartbeat`` seconds, unanswered for as long again, free a dead peer's stream.
    """
    limit = settings.chunk_bytes + HEADROOM
    beat = max(1, round(settings.heartbeat * 1000))
    common = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", beat),
        ("grpc.keepalive_timeout_ms", beat),
        ("grpc.keepalive_permit_without_calls", 1),
        # A round can wait minutes with no data on a stream; keep pinging through it, so a peer that
        # hangs (not only one whose connection drops) is noticed within about two heartbeats.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_sent_ping_interval_without_data_ms", beat),
        ("grpc.http2.ping_timeout_ms", beat),
    ]
    if server:
        return [
            *common,
            ("grpc.http2.min_recv_ping_interval_without_data_ms", max(1, beat // 2)),
            # Peers may configure another heartbeat; their pings must never get them disconnected.
            ("grpc.http2.max_ping_strikes", 0),
            # A second server on a port in use must fail, not share the port's connections.
            ("grpc.so_reuseport", 0),
        ]
    return [
        *common,
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def target(host: str, port: int) -> str:
    """Return ``host:port`` as gRPC spells it (IPv6 addresses in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def server_credentials(settings: NetworkSettings) -> grpc.ServerCredentials | None:
    """Return the server's TLS credentials by ``resolve_tls``, or ``None`` for plaintext."""
    files = resolve_tls(settings, server=True)
    if files is None:
        return None
    if files.cert is None or files.key is None:
        raise ConfigError("comm_args: a TLS server needs tls_cert_file and tls_key_file")
    root = _read(files.ca, "tls_ca_file") if settings.client_auth else None
    return grpc.ssl_server_credentials(
        [(_read(files.key, "tls_key_file"), _read(files.cert, "tls_cert_file"))],
        root_certificates=root,
        require_client_auth=settings.client_auth,
    )


def channel_credentials(settings: NetworkSettings) -> grpc.ChannelCredentials | None:
    """Return the client's TLS credentials by ``resolve_tls``, or ``None`` for plaintext."""
    files = resolve_tls(settings, server=False)
    if files is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(files.ca, "tls_ca_file"),
        private_key=_read(files.key, "tls_key_file") if files.key else None,
        certificate_chain=_read(files.cert, "tls_cert_file") if files.cert else None,
    )


def _read(path: Path | None, key: str) -> bytes:
    if path is None:
        raise ConfigError(f"comm_args.{key} is needed for TLS")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"comm_args.{key}: cannot read {path} ({exc.strerror})") from exc
