"""Fake devices for backend tests: threads that answer a server's tasks by a script, over any transport."""

from __future__ import annotations

import threading
from typing import Any

import torch

from fedml.core.algorithms import Update
from fedml.core.comm import Message, MessageKind
from fedml.core.round.wire import pack_updates, unpack_assignment
from fedml.errors import TransportError


def join(transport: Any, client: int, client_num: int) -> None:
    """Announce ``client`` (with 10 samples) to the server."""
    metadata = {"client_num": client_num, "clients": [client], "sample_counts": [10]}
    transport.send(Message(MessageKind.INIT, transport.address, "0", -1, metadata))


class FakeDevice(threading.Thread):
    """Answers each ``SYNC_MODEL`` with the state it got plus ``delta``, once ``gate`` lets it.

    ``gate`` is released by the test, once per reply it allows; ``silent`` never answers (a straggler);
    ``duplicate`` sends each reply twice. ``tasks`` records the round index (request id) of each task.
    """

    def __init__(
        self,
        transport: Any,
        client: int,
        client_num: int,
        delta: float = 1.0,
        gated: bool = False,
        silent: bool = False,
        duplicate: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.transport, self.client, self.client_num = transport, client, client_num
        self.delta, self.silent, self.duplicate = delta, silent, duplicate
        self.gate = threading.Semaphore(0) if gated else None
        self.tasks: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        join(self.transport, self.client, self.client_num)
        while not self.stopped.is_set():
            try:
                message = self.transport.receive(0.2)
            except TransportError:
                continue
            if message.kind == MessageKind.FINISH:
                return
            if message.kind != MessageKind.SYNC_MODEL:
                continue
            self.tasks.append(message.round_idx)
            if self.silent:
                continue
            while self.gate is not None and not self.gate.acquire(timeout=0.2):
                if self.stopped.is_set():
                    return
            clients, state, _ = unpack_assignment(message)
            update = Update(clients[0], 10.0, {k: v + self.delta for k, v in state.items()})
            metadata, tensors = pack_updates([update])
            reply = Message(
                MessageKind.CLIENT_UPDATE, self.transport.address, "0", message.round_idx, metadata, tensors
            )
            for _ in range(2 if self.duplicate else 1):
                self.transport.send(reply)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), value)}
