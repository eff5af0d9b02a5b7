"""The server end of the gRPC transport: one stream per peer, admitted by its handshake.

Imported only by ``fedml.core.comm.grpc`` (after it has checked that grpc is installed).
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from fedml.core.comm.grpc_wire import (
    PEER_KEY,
    RUN_KEY,
    SERVER_KEY,
    TOKEN_KEY,
    VERSION_KEY,
    Deliver,
    StreamJoiner,
    message_chunks,
    options,
    read_handshake,
    server_credentials,
    target,
)
from fedml.core.comm.message import BROADCAST, MAX_PEER_ID, PROTOCOL_VERSION, Message, MessageKind
from fedml.core.comm.network import NetworkSettings
from fedml.core.comm.proto import fedml_pb2, fedml_pb2_grpc
from fedml.errors import ProtocolError, TransportError

MAX_PEERS = 1024
"""Streams the server serves at once; a peer beyond them is answered RESOURCE_EXHAUSTED and retries."""

_GRACE = 0.5
"""Seconds ``close`` lets streams finish before cancelling them."""
_POLL = 0.5


@dataclass(eq=False)
class _Stream:
    """One peer's open stream: what is queued for it."""

    peer: str
    outgoing: queue.Queue[Iterable[fedml_pb2.Chunk] | None] = field(default_factory=queue.Queue)


class GrpcServer:
    """Listens for peers and keeps one stream per peer id.

    Parameters
    ----------
    settings
        Where to listen, TLS, the token, run id and limits.
    address
        The server's peer id.
    port
        The port to listen on (0: a free one, then ``self.port``).
    deliver
        Receives every message and error for the transport's inbox.
    log
        Where connections, refusals and losses are logged.

    """

    def __init__(
        self,
        settings: NetworkSettings,
        address: str,
        port: int,
        deliver: Deliver,
        log: logging.LoggerAdapter | logging.Logger,
    ) -> None:
        self.settings = settings
        self.address = address
        self.deliver = deliver
        self.log = log
        self.streams: dict[str, _Stream] = {}
        self.readers: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.closing = False
        credentials = server_credentials(settings)
        self.executor = ThreadPoolExecutor(max_workers=MAX_PEERS, thread_name_prefix="fedml-grpc-server")
        self.server = grpc.server(
            self.executor, options=options(settings, server=True), maximum_concurrent_rpcs=MAX_PEERS
        )
        fedml_pb2_grpc.add_FedMLServicer_to_server(_Servicer(self), self.server)
        where = target(settings.host, port)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(where)
            else:
                self.port = self.server.add_secure_port(where, credentials)
        except RuntimeError as exc:
            self.executor.shutdown(wait=False)
            raise TransportError(
                f"the gRPC server cannot listen on {where} ({exc}); is the port in use?"
            ) from exc
        self.server.start()
        self.log.info(
            "gRPC server listening on %s (%s)",
            target(settings.host, self.port),
            "plaintext" if credentials is None else "TLS",
        )

    def connect(
        self, requests: Iterator[fedml_pb2.Chunk], context: grpc.ServicerContext
    ) -> Iterator[fedml_pb2.Chunk]:
        """Admit one peer's stream and return the chunks to send it (the ``Connect`` RPC)."""
        entries = read_handshake(context.invocation_metadata())
        peer = entries.get(PEER_KEY, "")
        refusal = self._refusal(entries, peer)
        if refusal is not None:
            code, reason = refusal
            self.log.warning("Refused peer %r from %s: %s", peer[:MAX_PEER_ID], context.peer(), reason)
            context.abort(code, reason)
        stream = _Stream(peer)
        with self.lock:
            if self.closing:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server is closing")
            replaced = self.streams.get(peer)
            self.streams[peer] = stream
            self.readers = [t for t in self.readers if t.is_alive()]
            reader = threading.Thread(
                target=self._read, args=(stream, requests), name=f"fedml-grpc-read-{peer[:32]}", daemon=True
            )
            self.readers.append(reader)
        if replaced is not None:
            replaced.outgoing.put(None)
            self.log.info("Peer %s reconnected from %s; its earlier stream is closed", peer, context.peer())
        else:
            self.log.info("Peer %s connected from %s", peer, context.peer())
        context.send_initial_metadata(((SERVER_KEY, self.address),))
        reader.start()
        return self._write(stream, context)

    def send(self, message: Message) -> None:
        """Queue ``message`` on the stream of peer ``message.receiver``.

        Raises
        ------
        TransportError
            If that peer is not connected.

        """
        with self.lock:
            stream = self.streams.get(message.receiver)
        if stream is None:
            raise TransportError(
                f"peer {message.receiver!r:.40} is not connected to this gRPC server; "
                f"cannot send {message.kind.name}"
            )
        stream.outgoing.put(message_chunks(message, self.settings))

    def close(self) -> None:
        """End every stream, stop listening and stop the server's threads; idempotent."""
        with self.lock:
            if self.closing:
                return
            self.closing = True
            streams = list(self.streams.values())
            self.streams.clear()
            readers = list(self.readers)
        for stream in streams:
            stream.outgoing.put(None)
        self.server.stop(grace=_GRACE).wait(timeout=_GRACE + 2)
        for reader in readers:
            reader.join(timeout=2)
        self.executor.shutdown(wait=True)

    def _refusal(self, entries: dict[str, str], peer: str) -> tuple[grpc.StatusCode, str] | None:
        token = self.settings.auth_token
        if token is not None:
            given = entries.get(TOKEN_KEY)
            if given is None:
                return grpc.StatusCode.UNAUTHENTICATED, "no auth token was presented (comm_args.auth_token)"
            if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
                return grpc.StatusCode.UNAUTHENTICATED, "wrong auth token (comm_args.auth_token)"
        version = entries.get(VERSION_KEY)
        if version != str(PROTOCOL_VERSION):
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {version!r:.20} is not supported (this server speaks {PROTOCOL_VERSION})",
            )
        run = entries.get(RUN_KEY)
        if run != self.settings.run_id:
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {run!r:.40} is not this server's run {self.settings.run_id!r} (comm_args.run_id)",
            )
        if not 0 < len(peer) <= MAX_PEER_ID or peer in (self.address, BROADCAST):
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"peer id {peer!r:.40} must be 1 to {MAX_PEER_ID} characters, other than "
                f"{self.address!r} (the server) and {BROADCAST!r}",
            )
        return None

    def _write(self, stream: _Stream, context: grpc.ServicerContext) -> Iterator[fedml_pb2.Chunk]:
        while context.is_active():
            try:
                chunks = stream.outgoing.get(timeout=_POLL)
            except queue.Empty:
                continue
            if chunks is None:
                return
            yield from chunks

    def _read(self, stream: _Stream, requests: Iterator[fedml_pb2.Chunk]) -> None:
        joiner = StreamJoiner(stream.peer, self.settings.max_bytes, stream.peer, self.deliver)
        reason = "the peer closed its stream"
        try:
            try:
                for chunk in requests:
                    joiner.feed(chunk)
            except grpc.RpcError:
                reason = "the stream broke (the peer was cancelled, killed or its connection timed out)"
            # Before the stream's writer stops: a peer that reconnects at once must find this one gone.
            self._ended(stream, joiner, reason)
        finally:
            stream.outgoing.put(None)

    def _ended(self, stream: _Stream, joiner: StreamJoiner, reason: str) -> None:
        with self.lock:
            current = self.streams.get(stream.peer) is stream
            if current:
                del self.streams[stream.peer]
            closing = self.closing
        if closing:
            return
        if joiner.unfinished():
            self.deliver(ProtocolError(f"peer {stream.peer}: its stream ended in the middle of a message"))
        if current:
            self.log.warning("Peer %s disconnected: %s", stream.peer, reason)
            self.deliver(
                Message(
                    MessageKind.ERROR,
                    sender=stream.peer,
                    receiver=self.address,
                    round_idx=-1,
                    metadata={"error": f"connection lost: {reason}"},
                )
            )


class _Servicer(fedml_pb2_grpc.FedMLServicer):
    """The generated service's one method, handed to ``GrpcServer.connect``."""

    def __init__(self, server: GrpcServer) -> None:
        self.server = server

    def Connect(  # noqa: N802 - the name is the RPC's, fixed by fedml.proto
        self, request_iterator: Iterator[fedml_pb2.Chunk], context: grpc.ServicerContext
    ) -> Iterator[fedml_pb2.Chunk]:
        return self.server.connect(request_iterator, context)
