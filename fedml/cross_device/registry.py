"""``DeviceRegistry``: what the cross-device server knows of each device (online, last seen, rounds served).

The server's backend feeds it: a device's ``INIT`` registers it (again, after a reconnect), every
message from it refreshes ``last_seen``, and an ``ERROR`` (the broker's publication of its last will
when its connection drops or its keepalive pings stop, or a failure it reported) marks it offline.
The heartbeat is MQTT's own keepalive (``comm_args.heartbeat`` seconds): the broker publishes a
device's will about 1.5 heartbeats after its last ping. A device's counts survive reconnects.

Examples
--------
>>> registry = DeviceRegistry(clock=lambda: 100.0)
>>> registry.joined("1"); registry.joined("2"); registry.served(["1"]); registry.dropped("2")
>>> registry.summary()
'2 device(s): 1 online, 1 offline'
>>> registry.snapshot()["1"]["rounds_served"]
1

"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedml.core.files import atomic_write_text

DEVICES_FILE = "devices.json"
"""The registry's file in the run directory, rewritten after every aggregation."""


@dataclass
class DeviceRecord:
    """One device as the server knows it.

    Attributes
    ----------
    device
        Its id (its MQTT username and topic level).
    online
        Whether it is connected and has not failed since it last registered.
    first_seen, last_seen
        Wall-clock times (seconds since the epoch) of its first registration and its last message.
    rounds_served
        How many of its updates were aggregated.
    joins
        How many times it registered (1 + reconnects).
    drops
        How many times it went offline.

    """

    device: str
    online: bool
    first_seen: float
    last_seen: float
    rounds_served: int = 0
    joins: int = 0
    drops: int = 0


class DeviceRegistry:
    """Devices by id, fed by the server's backend; see the module docstring.

    Parameters
    ----------
    clock
        Returns the current wall-clock time (``time.time``).

    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.devices: dict[str, DeviceRecord] = {}

    def joined(self, device: str) -> None:
        """Record a registration (``INIT``): the device is online."""
        now = self.clock()
        record = self.devices.get(device)
        if record is None:
            record = self.devices[device] = DeviceRecord(device, True, now, now)
        record.online, record.last_seen, record.joins = True, now, record.joins + 1

    def seen(self, device: str) -> None:
        """Record a message from a registered device (unknown ids are ignored)."""
        record = self.devices.get(device)
        if record is not None:
            record.last_seen = self.clock()

    def dropped(self, device: str) -> None:
        """Record that the device went offline (its will, a reported failure, a failed send)."""
        record = self.devices.get(device)
        if record is not None and record.online:
            record.online, record.drops = False, record.drops + 1

    def served(self, devices: Iterable[str]) -> None:
        """Count one aggregated update for each of ``devices``."""
        for device in devices:
            record = self.devices.get(device)
            if record is not None:
                record.rounds_served += 1

    def counts(self) -> tuple[int, int]:
        """Return ``(online, offline)`` device counts."""
        online = sum(record.online for record in self.devices.values())
        return online, len(self.devices) - online

    def summary(self) -> str:
        """Return the one-line summary the server logs after each aggregation."""
        online, offline = self.counts()
        return f"{online + offline} device(s): {online} online, {offline} offline"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Return every record as plain data, by device id (numeric ids in numeric order)."""
        order = sorted(self.devices, key=lambda d: (0, int(d), "") if d.isdecimal() else (1, 0, d))
        return {device: asdict(self.devices[device]) for device in order}

    def write(self, path: Path) -> None:
        """Write the snapshot to ``path`` as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.snapshot(), indent=1) + "\n")
