"""``DeviceBackend``: the server's ``RemoteBackend`` for devices, keeping the device registry up to date.

Every message that reaches the round also reaches the registry (``fedml.cross_device.registry``);
after each aggregation the server logs one line of online/offline counts and rewrites
``devices.json`` in the run directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from fedml.core.comm import Message, MessageKind
from fedml.core.round.remote import TRAIN, RemoteBackend, Stage
from fedml.cross_device.registry import DEVICES_FILE, DeviceRegistry
from fedml.tracking import RunResult


class DeviceBackend(RemoteBackend):
    """``RemoteBackend`` with a ``DeviceRegistry`` (``registry``) fed by every message it handles.

    Parameters
    ----------
    *args, **kwargs
        As for ``RemoteBackend``.
    run_dir
        Returns the run directory once the run has one (``None`` before), where ``devices.json`` goes.

    """

    def __init__(self, *args: Any, run_dir: Callable[[], Path | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry = DeviceRegistry()
        self.run_dir = run_dir or (lambda: None)

    def exchange(
        self,
        stage: Stage,
        round_idx: int,
        requests: Mapping[str, tuple[dict[str, Any], dict[str, torch.Tensor]]],
        sizes: Mapping[str, int],
        wanted: int,
    ) -> dict[str, Message]:
        """Run the stage as ``RemoteBackend`` does; after training, count the devices whose reports count."""
        replies = super().exchange(stage, round_idx, requests, sizes, wanted)
        if stage == TRAIN:
            self.aggregated(round_idx, replies)
        return replies

    def aggregated(self, round_idx: int, devices: Iterable[str]) -> None:
        """Count a served round for each of ``devices``, log the registry's summary and write it."""
        self.registry.served(devices)
        self.log.info("Round %d: %s", round_idx + 1, self._sync_registry())
        self.write_registry()

    def poll(self, seconds: float) -> None:
        """Handle what arrives in the next ``seconds`` (registrations, wills) between rounds."""
        deadline = time.monotonic() + seconds
        while True:
            message = self._next(deadline)
            if message is None:
                return
            self._handle(message, None)

    def write_registry(self) -> None:
        """Write ``devices.json`` into the run directory (once there is one)."""
        run_dir = self.run_dir()
        if run_dir is not None:
            self.registry.write(run_dir / DEVICES_FILE)

    def close(self, result: RunResult | None, error: BaseException | None) -> None:
        """Tell the devices to stop, then write the registry a last time."""
        super().close(result, error)
        self._sync_registry()
        self.write_registry()

    def _handle(self, message: Message, collection: Any) -> None:
        super()._handle(message, collection)
        self.observe(message)

    def observe(self, message: Message) -> None:
        """Record ``message`` in the registry: a registration, a sign of life, or a drop."""
        peer = self.peers.get(message.sender)
        if peer is None:
            return
        if message.kind == MessageKind.INIT:
            self.registry.joined(message.sender)
        elif message.kind == MessageKind.ERROR or not peer.online:
            self.registry.dropped(message.sender)
        else:
            self.registry.seen(message.sender)

    def _sync_registry(self) -> str:
        # A failed send marks a peer offline without a message: the peers' flags are the truth.
        for peer_id, peer in self.peers.items():
            if not peer.online:
                self.registry.dropped(peer_id)
        return self.registry.summary()
