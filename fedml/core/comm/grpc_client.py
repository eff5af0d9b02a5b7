"""The client end of the gRPC transport: one stream to the server, kept open across server restarts.

Imported only by ``fedml.core.comm.grpc`` (after it has checked that grpc is installed).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator

import grpc

from fedml.core.comm.grpc_wire import (
    REFUSALS,
    SERVER_ADDRESS,
    SERVER_KEY,
    Deliver,
    StreamJoiner,
    channel_credentials,
    handshake,
    message_chunks,
    options,
    target,
)
from fedml.core.comm.message import Message, MessageKind
from fedml.core.comm.network import NetworkSettings
from fedml.core.comm.proto import fedml_pb2, fedml_pb2_grpc
from fedml.errors import TransportError

_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0
"""Backoff between connection attempts: 0.1 s, doubling, at most 2 s."""
_POLL = 0.25
_CLOSE_WAIT = 1.0
_VERDICT_SLACK = 1.0

Outgoing = queue.Queue[Iterable[fedml_pb2.Chunk] | None]


class GrpcClient:
    """Keeps this peer's stream to the server open, in a background thread.

    Parameters
    ----------
    settings
        Where the server is, TLS, the token, run id and limits.
    address
        This peer's id.
    port
        The server's port.
    deliver
        Receives every message and error for the transport's inbox.
    log
        Where connections and losses are logged.

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
        self.name = f"{settings.host}:{port}"
        self.deliver = deliver
        self.log = log
        credentials = channel_credentials(settings)
        where, channel_options = target(settings.host, port), options(settings, server=False)
        if credentials is None:
            self.channel = grpc.insecure_channel(where, options=channel_options)
        else:
            self.channel = grpc.secure_channel(where, credentials, options=channel_options)
        self.stub = fedml_pb2_grpc.FedMLStub(self.channel)
        self.metadata = handshake(settings, address)
        self.server_id = SERVER_ADDRESS
        self.ready = threading.Condition()
        self.outgoing: Outgoing | None = None
        self.failure: TransportError | None = None
        self.last_init: list[fedml_pb2.Chunk] | None = None
        self.call: grpc.Future | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"fedml-grpc-client-{address[:32]}", daemon=True
        )
        self.thread.start()

    def send(self, message: Message) -> None:
        """Queue ``message`` on the stream, waiting up to ``connect_timeout`` while (re)connecting.

        Raises
        ------
        TransportError
            If the receiver is not the server, the server refused this peer, or no connection is made
            in time.

        """
        if message.receiver != self.server_id:
            raise TransportError(
                f"peer {self.address} sends only to the server ({self.server_id!r}), "
                f"not to {message.receiver!r:.40}"
            )
        chunks = message_chunks(message, self.settings)
        # The connection thread gives up within connect_timeout and says why; wait a little longer
        # so that its verdict, not this bare timeout, is what the caller sees.
        deadline = time.monotonic() + self.settings.connect_timeout + _VERDICT_SLACK
        with self.ready:
            while self.outgoing is None and self.failure is None and not self.stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportError(
                        f"peer {self.address}: not connected to the server at {self.name} within "
                        f"{self.settings.connect_timeout} s (comm_args.join_timeout)"
                    )
                self.ready.wait(remaining)
            if self.failure is not None:
                raise TransportError(str(self.failure))
            if self.outgoing is None:
                raise TransportError(f"peer {self.address}: the transport is closed")
            if message.kind == MessageKind.INIT:
                self.last_init = list(chunks)
                chunks = iter(self.last_init)
            self.outgoing.put(chunks)

    def close(self) -> None:
        """End the stream, stop the background thread and close the channel; idempotent."""
        self.stopping.set()
        with self.ready:
            if self.outgoing is not None:
                self.outgoing.put(None)
            self.ready.notify_all()
        # The ended request stream tells the server this peer left; cancel if it does not answer soon.
        self.thread.join(timeout=_CLOSE_WAIT)
        call = self.call
        if call is not None:
            call.cancel()
        self.thread.join(timeout=5)
        self.channel.close()

    def _run(self) -> None:
        deadline = time.monotonic() + self.settings.connect_timeout
        delay = _FIRST_DELAY
        joined = False
        while not self.stopping.is_set():
            if not self._wait_ready(deadline):
                if not self.stopping.is_set():
                    self._fail(
                        f"peer {self.address}: cannot {'reconnect' if joined else 'connect'} to the server "
                        f"at {self.name} within {self.settings.connect_timeout} s (comm_args.join_timeout); "
                        "is it running, and do both ends use the same TLS settings?"
                    )
                return
            outgoing: Outgoing = queue.Queue()
            call = self.stub.Connect(self._requests(outgoing), metadata=self.metadata)
            self.call = call
            try:
                accepted = dict(call.initial_metadata() or ()).get(SERVER_KEY)
                if isinstance(accepted, str):
                    self._connected(outgoing, accepted, joined)
                    joined, delay = True, _FIRST_DELAY
                    joiner = StreamJoiner(accepted, self.settings.max_bytes, accepted, self.deliver)
                    for chunk in call:
                        joiner.feed(chunk)
                    reason = "the server ended the stream"
                else:
                    code, details = call.code(), call.details()
                    if code in REFUSALS:
                        self._fail(f"the server at {self.name} refused peer {self.address}: {details}")
                        return
                    reason = f"{code.name}: {details}"
            except grpc.RpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            finally:
                with self.ready:
                    self.outgoing = None
                outgoing.put(None)
            if self.stopping.is_set():
                return
            if joined:
                self.log.warning(
                    "Lost the connection to the server at %s (%s); reconnecting", self.name, reason
                )
                deadline = time.monotonic() + self.settings.connect_timeout
            self.stopping.wait(delay)
            delay = min(2 * delay, _MAX_DELAY)

    def _wait_ready(self, deadline: float) -> bool:
        while not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready = grpc.channel_ready_future(self.channel)
            try:
                ready.result(timeout=min(remaining, _POLL))
                return True
            except grpc.FutureTimeoutError:
                ready.cancel()
        return False

    def _connected(self, outgoing: Outgoing, server_id: str, rejoin: bool) -> None:
        with self.ready:
            if rejoin and self.last_init is not None:
                # A restarted server knows no peers: the INIT it missed comes first on the new stream.
                outgoing.put(iter(self.last_init))
            self.outgoing = outgoing
            self.server_id = server_id
            self.ready.notify_all()
        self.log.info(
            "%s the server at %s%s",
            "Reconnected to" if rejoin else "Connected to",
            self.name,
            "; sent INIT again" if rejoin and self.last_init is not None else "",
        )

    def _fail(self, reason: str) -> None:
        error = TransportError(reason)
        with self.ready:
            self.failure = error
            self.ready.notify_all()
        self.log.error("%s", reason)
        self.deliver(error)

    def _requests(self, outgoing: Outgoing) -> Iterator[fedml_pb2.Chunk]:
        while not self.stopping.is_set():
            try:
                chunks = outgoing.get(timeout=_POLL)
            except queue.Empty:
                continue
            if chunks is None:
                return
            yield from chunks
