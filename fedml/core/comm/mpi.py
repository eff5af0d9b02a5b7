"""MPI transport (mpi4py): encoded messages travel as raw byte buffers with ``Isend``/``Recv``.

Nothing is pickled: mpi4py's lowercase ``send``/``recv`` would pickle Python objects, so only the
buffer methods are used. Waits poll (``Iprobe``/``Test``) against a deadline, so a peer that died or
hangs becomes a ``TransportError`` instead of a hang.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedml.core.comm.base import ClosingContext, require
from fedml.core.comm.codec import DEFAULT_MAX_BYTES, decode, encode
from fedml.core.comm.message import Message, rank_of
from fedml.errors import TransportError

TAG = 0xFED
"""MPI tag of fedml messages."""
_MAX_MPI_COUNT = 2**31 - 1


def mpi_module() -> Any:
    """Return ``mpi4py.MPI``, or raise an ImportError naming the ``mpi`` extra."""
    require("mpi4py", "mpi")
    from mpi4py import MPI

    return MPI


class MPITransport(ClosingContext):
    """Point-to-point messages between the ranks of an MPI communicator.

    Parameters
    ----------
    comm
        The communicator; ``MPI.COMM_WORLD`` by default.
    timeout
        Default seconds ``send`` and ``receive`` wait before raising ``TransportError``.
    max_bytes
        Largest message accepted (and sent); at most 2 GiB - 1, MPI's count limit.
    poll_interval
        Longest sleep between polls while waiting.

    """

    def __init__(
        self,
        comm: Any = None,
        timeout: float = 300.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        poll_interval: float = 0.002,
    ) -> None:
        self.MPI = mpi_module()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank = int(self.comm.Get_rank())
        self.world_size = int(self.comm.Get_size())
        self.address = str(self.rank)
        self.timeout = timeout
        self.max_bytes = min(max_bytes, _MAX_MPI_COUNT)
        self.poll_interval = poll_interval

    def send(self, message: Message) -> None:
        """Send ``message`` to rank ``message.receiver``; waits until the buffer is handed over."""
        dest = rank_of(message.receiver, self.world_size)
        data = encode(message)
        if len(data) > self.max_bytes:
            raise TransportError(f"message of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes")
        buffer = np.frombuffer(data, dtype=np.uint8)
        request = self.comm.Isend([buffer, self.MPI.BYTE], dest=dest, tag=TAG)
        self._wait(
            request.Test,
            f"rank {self.rank}: sending {message.kind.name} to rank {message.receiver} did not complete",
            self.timeout,
        )

    def receive(self, timeout: float | None = None) -> Message:
        """Return the next message from any rank, waiting at most ``timeout`` seconds."""
        status = self.MPI.Status()
        wait = self.timeout if timeout is None else timeout
        self._wait(
            lambda: self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=TAG, status=status),
            f"rank {self.rank}: no message arrived",
            wait,
        )
        size = status.Get_count(self.MPI.BYTE)
        buffer = np.empty(size, dtype=np.uint8)
        self.comm.Recv([buffer, self.MPI.BYTE], source=status.Get_source(), tag=TAG)
        return decode(buffer.data, self.max_bytes)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (``MPI_Abort``); used after a fatal error so no rank hangs."""
        self.comm.Abort(code)

    def _wait(self, done: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pause = 1e-5
        while not done():
            if time.monotonic() > deadline:
                raise TransportError(f"{what} within {timeout} s (comm_args.timeout); is the peer alive?")
            time.sleep(pause)
            pause = min(pause * 2, self.poll_interval)
