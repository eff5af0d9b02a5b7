"""gRPC transport (grpcio): peers hold one bidirectional stream each to the server, over TLS by default.

Messages travel encoded by the codec (never pickled) and split into chunks with a SHA-256 digest, so
a model of any size up to ``comm_args.max_message_mb`` passes gRPC's per-message limit. The server
end (``grpc_server``) admits a peer by its handshake (token, protocol version, run id, peer id); the
client end (``grpc_client``) reconnects after a lost connection. ``grpc_wire`` holds what both share.
"""

from __future__ import annotations

import logging
import queue

from fedml.core.comm.base import ClosingContext, require

require("grpc", "grpc")

from fedml.core.comm.grpc_client import GrpcClient  # noqa: E402
from fedml.core.comm.grpc_server import GrpcServer  # noqa: E402
from fedml.core.comm.message import MAX_PEER_ID, Message  # noqa: E402
from fedml.core.comm.network import DEFAULT_PORTS, NetworkSettings  # noqa: E402
from fedml.errors import ProtocolError, TransportError  # noqa: E402
from fedml.tracking import role_logger  # noqa: E402


class GrpcTransport(ClosingContext):
    """One end of a gRPC run: the server (``server=True``) or a peer connecting to it.

    The server listens on ``settings.host:port`` and keeps one stream per peer id; a second stream
    from a connected peer id replaces the first (a restarted silo). A peer is refused, with one
    warning line on the server and a ``TransportError`` on the peer's next ``send``/``receive``, for
    a wrong or missing token, another protocol version or run id, or a bad peer id. Bad input from an
    admitted peer (a corrupt chunk, an oversized or undecodable message, a forged sender) makes the
    server's ``receive`` raise ``ProtocolError`` naming the peer; the message is dropped and the
    server carries on. When a peer's stream ends and is not replaced, the server receives an
    ``ERROR`` message from that peer (metadata ``error``: ``"connection lost: ..."``).

    A peer keeps trying to connect for ``settings.connect_timeout`` seconds, so silos may start
    before the server. After losing the connection (the server was restarted, the network broke) it
    reconnects, again for up to ``connect_timeout``, and then **sends the last ``INIT`` message it
    sent once more**, so a restarted server learns its peers again. Messages queued on a connection
    that broke are lost; the round's deadlines handle them.

    Parameters
    ----------
    settings
        Address, TLS, token, run id, timeouts and limits.
    address
        This end's peer id (the server's is ``"0"``; a peer's is its silo id, e.g. its rank).
    server
        Listen for peers (``True``) or connect to the server.
    log
        The logger; default the role's ``[FedML-Server(0)]`` / ``[FedML-Client(rank)]`` logger.

    Attributes
    ----------
    address, rank, world_size
        The peer id, ``int(address)`` when it is decimal (else 0), and 0 (membership is open).
    port
        The server's port: ``settings.port``, ``DEFAULT_PORTS["GRPC"]`` when unset, or the port
        picked by the server for port 0.

    Examples
    --------
    >>> from fedml.core.comm import Message, MessageKind
    >>> settings = NetworkSettings(port=0, insecure=True, timeout=5, connect_timeout=5)
    >>> with GrpcTransport(settings) as server:
    ...     peer_settings = NetworkSettings(port=server.port, insecure=True, timeout=5, connect_timeout=5)
    ...     with GrpcTransport(peer_settings, address="1", server=False) as peer:
    ...         peer.send(Message(MessageKind.INIT, sender="1", receiver="0"))
    ...         server.receive().describe()
    'INIT from 1 to 0 (round -1, 0 tensors)'

    """

    world_size = 0

    def __init__(
        self,
        settings: NetworkSettings,
        address: str = "0",
        server: bool = True,
        log: logging.LoggerAdapter | logging.Logger | None = None,
    ) -> None:
        if not isinstance(address, str) or not 0 < len(address) <= MAX_PEER_ID:
            raise TransportError(f"peer id {address!r:.40} is not a string of 1 to {MAX_PEER_ID} characters")
        self.settings = settings
        self.address = address
        self.rank = int(address) if address.isascii() and address.isdecimal() else 0
        self.is_server = server
        self.log = log or role_logger("Server" if server else "Client", self.rank)
        self.inbox: queue.Queue[Message | TransportError] = queue.Queue()
        self.closed = False
        port = DEFAULT_PORTS["GRPC"] if settings.port is None else settings.port
        self.end: GrpcServer | GrpcClient
        if server:
            self.end = GrpcServer(settings, address, port, self.inbox.put, self.log)
            self.port = self.end.port
        else:
            self.end = GrpcClient(settings, address, port, self.inbox.put, self.log)
            self.port = port

    def send(self, message: Message) -> None:
        """Send ``message`` to ``message.receiver``: a connected peer (server end) or the server.

        Raises
        ------
        TransportError
            If the receiver is not connected or not the server, the server refused this peer, or the
            peer cannot (re)connect within ``connect_timeout``.

        """
        self._check_open()
        self.end.send(message)

    def receive(self, timeout: float | None = None) -> Message:
        """Return the next message for this end, waiting at most ``timeout`` s (``settings.timeout``).

        Raises
        ------
        ProtocolError
            For a malformed message from a peer (the message is dropped; receive again).
        TransportError
            If no message arrives in time, or the connection to the server is finally lost or refused.

        """
        self._check_open()
        wait = self.settings.timeout if timeout is None else timeout
        try:
            item = self.inbox.get(timeout=wait)
        except queue.Empty:
            raise TransportError(f"gRPC peer {self.address}: no message within {wait} s") from None
        if isinstance(item, ProtocolError):
            raise item
        if isinstance(item, TransportError):
            # Final: every later receive raises it too.
            self.inbox.put(item)
            raise TransportError(str(item))
        return item

    def close(self) -> None:
        """Stop the server or end the stream; every thread of this end stops; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.end.close()

    def _check_open(self) -> None:
        if self.closed:
            raise TransportError(f"gRPC peer {self.address}: the transport is closed")
