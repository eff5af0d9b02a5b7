"""In-process transport: one queue per rank, for tests and for running a round's processes as threads.

Messages still go through the codec, so everything a real transport would reject is rejected here.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence

from fedml.core.comm.base import ClosingContext
from fedml.core.comm.codec import DEFAULT_MAX_BYTES, decode, encode
from fedml.core.comm.message import Message
from fedml.errors import TransportError


class LocalHub:
    """The shared mailboxes of ``world_size`` in-process endpoints.

    Endpoint ``rank`` has the peer id ``names[rank]`` (default: the rank as a decimal string), so tests
    can stand in for named silos as well as for MPI ranks.

    Examples
    --------
    >>> hub = LocalHub(2)
    >>> server, worker = hub.endpoint(0), hub.endpoint(1)
    >>> LocalHub(3, names=["server", "a", "b"]).endpoint(2).address
    'b'

    """

    def __init__(self, world_size: int, names: Sequence[str] | None = None) -> None:
        if world_size < 1:
            raise TransportError(f"a hub needs at least one endpoint, got world_size={world_size}")
        addresses = list(names) if names is not None else [str(rank) for rank in range(world_size)]
        if len(addresses) != world_size or len(set(addresses)) != world_size:
            raise TransportError(f"a hub of {world_size} endpoints needs {world_size} distinct names")
        self.world_size = world_size
        self.names = addresses
        self.ranks = {name: rank for rank, name in enumerate(addresses)}
        self.queues: list[queue.Queue[bytes | bytearray]] = [queue.Queue() for _ in range(world_size)]

    def lookup(self, peer: str) -> int:
        """Return the rank of the endpoint whose peer id is ``peer``.

        Raises
        ------
        TransportError
            If no endpoint has that id.

        """
        rank = self.ranks.get(peer)
        if rank is None:
            raise TransportError(f"no endpoint {peer!r:.40} on this hub (world size {self.world_size})")
        return rank

    def endpoint(
        self, rank: int, timeout: float = 60.0, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> LocalTransport:
        """Return the transport of ``rank``."""
        return LocalTransport(hub=self, rank=rank, timeout=timeout, max_bytes=max_bytes)


class LocalTransport(ClosingContext):
    """One endpoint of a ``LocalHub``.

    Parameters
    ----------
    hub
        The shared mailboxes.
    rank
        This endpoint's address, ``0 <= rank < hub.world_size``.
    timeout
        Default seconds ``receive`` waits.
    max_bytes
        Largest message accepted.

    """

    def __init__(
        self, hub: LocalHub, rank: int, timeout: float = 60.0, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if not 0 <= rank < hub.world_size:
            raise TransportError(f"rank {rank} is outside the hub's 0..{hub.world_size - 1}")
        self.hub = hub
        self.rank = rank
        self.address = hub.names[rank]
        self.world_size = hub.world_size
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.closed = False

    def send(self, message: Message) -> None:
        """Encode ``message`` and put it in the receiver's mailbox."""
        self._check_open()
        self.hub.queues[self.hub.lookup(message.receiver)].put(encode(message))

    def receive(self, timeout: float | None = None) -> Message:
        """Return the next message for this endpoint, waiting at most ``timeout`` seconds."""
        self._check_open()
        wait = self.timeout if timeout is None else timeout
        try:
            data = self.hub.queues[self.rank].get(timeout=wait)
        except queue.Empty:
            raise TransportError(f"rank {self.rank}: no message within {wait} s") from None
        return decode(data, self.max_bytes)

    def close(self) -> None:
        """Mark the endpoint closed; later sends and receives raise ``TransportError``."""
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise TransportError(f"rank {self.rank}: the transport is closed")
