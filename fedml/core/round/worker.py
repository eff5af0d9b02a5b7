"""``RoundWorker``: a peer of the round over a transport, answering the server's requests.

It joins with the clients it hosts, then serves each request kind with a handler (training today;
secure aggregation adds its stages as more handlers) until the server says ``FINISH``. It trains
through the same ``LocalBackend`` as a single-process run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedml.core.comm import Message, MessageKind, Transport
from fedml.core.round.backend import LocalBackend, RoundTask
from fedml.core.round.remote import TRAIN
from fedml.core.round.wire import pack_updates, unpack_assignment, unpack_outcome
from fedml.errors import ProtocolError
from fedml.tracking import RunResult, role_logger

Handler = Callable[[Message], tuple[MessageKind, dict[str, Any], dict[str, torch.Tensor]]]
"""Answers one request kind: ``handler(message) -> (reply kind, metadata, tensors)``."""


def server_wait(timeout: float) -> float:
    """Return how long a peer waits for the server's next message when the server waits ``timeout``.

    Between two messages to one peer the server may wait up to ``timeout`` for its slowest other peer,
    then aggregate, evaluate and record the round. A peer that waited only ``timeout`` could give up on
    a healthy server, or abort the job while the server is still writing down which peer died; it
    waits twice as long.

    >>> server_wait(3.0)
    6.0
    """
    return 2 * timeout


class RoundWorker:
    """A peer: joins, then answers the server's requests until it says ``FINISH``.

    Parameters
    ----------
    transport
        Connects this process to the server.
    backend
        Trains the clients the server assigns (the same in-process backend ``sp`` uses).
    sample_counts
        Client id -> sample count of every client this peer hosts (announced when it joins).
    timeout
        Seconds to wait for the server's next message (``server_wait`` of the server's own timeout).
    server
        The server's peer id.

    """

    def __init__(
        self,
        transport: Transport,
        backend: LocalBackend,
        sample_counts: Mapping[int, int],
        timeout: float,
        server: str = "0",
    ) -> None:
        self.transport = transport
        self.backend = backend
        self.sample_counts = dict(sample_counts)
        self.timeout = timeout
        self.server = server
        self.log = role_logger("Client", transport.rank)
        self.handlers: dict[MessageKind, Handler] = {TRAIN.request: self.train}

    def join(self) -> None:
        """Announce this peer, its clients and their sample counts to the server."""
        clients = sorted(self.sample_counts)
        metadata = {
            "client_num": self.backend.client_num,
            "clients": clients,
            "sample_counts": [self.sample_counts[c] for c in clients],
        }
        self.transport.send(Message(MessageKind.INIT, self.transport.address, self.server, -1, metadata))

    def run(self) -> RunResult:
        """Join, serve requests until ``FINISH``; return the run's result as the server reported it."""
        self.join()
        while True:
            try:
                message = self.transport.receive(self.timeout)
            except ProtocolError as exc:
                self.log.warning("Ignored a malformed message: %s", exc)
                continue
            if message.sender != self.server:
                self.log.warning("Ignored a message that is not from the server: %s", message.describe())
                continue
            if message.kind == MessageKind.FINISH:
                return self._result(message)
            handler = self.handlers.get(message.kind)
            if handler is None:
                self.log.warning("Ignored an unexpected message: %s", message.describe())
                continue
            try:
                kind, metadata, tensors = handler(message)
            except Exception as exc:
                self.transport.send(
                    Message(
                        MessageKind.ERROR,
                        self.transport.address,
                        self.server,
                        message.round_idx,
                        {"error": repr(exc)},
                    )
                )
                raise
            self.transport.send(
                Message(kind, self.transport.address, self.server, message.round_idx, metadata, tensors)
            )

    def train(self, message: Message) -> tuple[MessageKind, dict[str, Any], dict[str, torch.Tensor]]:
        """Train the clients named in a ``SYNC_MODEL`` message from the state it carries."""
        if message.metadata.get("secure"):
            # Fail closed: a peer without secure aggregation would send its updates in the clear.
            raise ProtocolError(
                f"peer {self.transport.address} got a secure-aggregation round but has no "
                "secure_aggregation_args enabled: every process must load the same configuration"
            )
        clients, state, payloads = unpack_assignment(message)
        self.log.debug("Round %d: training clients %s", message.round_idx + 1, clients)
        task = RoundTask(message.round_idx, state, clients, payloads, len(clients))
        metadata, tensors = pack_updates(self.backend.train(task))
        return TRAIN.reply, metadata, tensors

    def _result(self, message: Message) -> RunResult:
        result = unpack_outcome(message, "the server")
        self.log.info("Finished; the server saved the run in %s", result.run_dir)
        return result
