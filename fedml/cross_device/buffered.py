"""``BufferedBackend``: FedBuff (Nguyen et al. 2022), asynchronous buffered aggregation, for the round driver.

There is no global barrier. The server keeps ``max_concurrency`` devices training; whenever a device
reports, it gets the current model again at once. ``train(task)`` returns as soon as ``K``
(``buffer_size``) reports are buffered, so one "round" of the driver is one server aggregation and
``comm_round`` counts aggregations.

Each request carries a sequence number (the message's round index), the id of that update: a reply
is taken once, from the device that was asked, and a device has one request at a time. The backend
remembers the global state each request started from. When it hands the buffer to the driver it
rebases every update onto the current global state::

    rebased = current + w(staleness) * (update - started_from)

where ``staleness`` is how many aggregations happened since that request was sent and ``w`` is
``1 / sqrt(1 + staleness)`` (``staleness_weight: polynomial``) or 1 (``constant``). The algorithm's
server rule then does FedBuff's step: FedAvg's weighted mean of the rebased states is ``current`` plus
the staleness-weighted mean delta; FedOpt with ``server_optimizer: sgd`` scales that step by
``server_lr``. Updates older than ``max_staleness`` aggregations are dropped with a log line.

A device that has not reported ``comm_args.round_timeout`` seconds after its request straggles: its
slot goes to another device (one log line); its report still counts if it arrives in time for
``max_staleness``. A device whose connection drops (its will) or that registers again loses its request.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from fedml.core.algorithms import Update
from fedml.core.comm import Message, MessageKind
from fedml.core.round.backend import RoundTask
from fedml.core.round.remote import TRAIN, peer_order
from fedml.core.round.wire import pack_assignment, unpack_updates
from fedml.cross_device.devices import DeviceBackend
from fedml.cross_device.settings import StalenessWeight, staleness_weight
from fedml.errors import ProtocolError, RoundIncompleteError, TransportError


@dataclass
class Dispatch:
    """One request in flight: its id (``seq``), the device, the model version it started from, when sent."""

    seq: int
    peer: str
    version: int
    sent: float
    straggling: bool = False


class BufferedBackend(DeviceBackend):
    """The server side of FedBuff; see the module docstring.

    Parameters
    ----------
    *args, **kwargs
        As for ``DeviceBackend``; the policy's ``timeout`` is a request's deadline, and a ``train``
        call gives up (``RoundIncompleteError``) when fewer than ``policy.required(K, K)`` reports are
        buffered ``timeout`` seconds after it began.
    buffer_size
        ``K``: reports per aggregation.
    max_concurrency
        Devices training at once.
    weighting
        ``polynomial`` or ``constant`` (``fedml.cross_device.settings.staleness_weight``).
    max_staleness
        Older updates are dropped.
    seed
        Seeds the choice of idle devices to start.

    Attributes
    ----------
    aggregations
        For each aggregation, the requests whose updates went into it (their ``seq`` is the update's id).

    """

    def __init__(
        self,
        *args: Any,
        buffer_size: int,
        max_concurrency: int,
        weighting: StalenessWeight = "polynomial",
        max_staleness: int = 10,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.buffer_size = buffer_size
        self.max_concurrency = max_concurrency
        self.weighting: StalenessWeight = weighting
        self.max_staleness = max_staleness
        self.rng = random.Random(seed)
        self.version = -1
        self.state: dict[str, torch.Tensor] = {}
        self.versions: dict[int, dict[str, torch.Tensor]] = {}
        self.requests: dict[int, Dispatch] = {}
        self.buffer: list[tuple[Dispatch, Message]] = []
        self.aggregations: list[list[Dispatch]] = []
        self._seq = 0
        self._serving = False

    def selection_size(self, wanted: int) -> int:
        """Return ``wanted``; the driver's sample is not used: the backend keeps its devices busy itself."""
        return wanted

    def train(self, task: RoundTask) -> list[Update]:
        """Keep devices training from the task's state until ``K`` reports are buffered; return them rebased.

        Raises
        ------
        RoundIncompleteError
            If fewer than ``policy.required(K, K)`` reports are buffered ``policy.timeout`` seconds on.

        """
        self.version, self.state = task.round_idx, task.global_state
        self.versions[self.version] = task.global_state
        # Reports buffered beyond the last aggregation have aged by one more.
        self.buffer = [(d, m) for d, m in self.buffer if not self._too_stale(d)]
        deadline = time.monotonic() + self.policy.timeout
        self._serving = True
        try:
            self._fill()
            while len(self.buffer) < self.buffer_size:
                self._expire()
                message = self._next(min(deadline, self._next_expiry()))
                if message is None and time.monotonic() >= deadline:
                    break
                if message is not None:
                    self._handle(message, None)
                self._fill()
        finally:
            self._serving = False
        required = self.policy.required(self.buffer_size, self.buffer_size)
        if len(self.buffer) < required:
            raise RoundIncompleteError(
                f"aggregation {task.round_idx + 1}: {len(self.buffer)} of {self.buffer_size} reports "
                f"(train_args.buffer_size) within {self.policy.timeout} s, {required} needed; "
                f"{len(self._busy())} device(s) training, {len(self._online())} online"
            )
        taken, self.buffer = self.buffer[: self.buffer_size], self.buffer[self.buffer_size :]
        updates = self._rebase(taken)
        served = [dispatch for dispatch, _ in taken]
        self.aggregations.append(served)
        self.log.info(
            "Aggregation %d: updates %s (staleness %s)",
            task.round_idx + 1,
            [dispatch.seq for dispatch in served],
            [self.version - dispatch.version for dispatch in served],
        )
        self.aggregated(task.round_idx, [dispatch.peer for dispatch in served])
        self._forget_versions()
        return sorted(updates, key=lambda u: u.client_idx)

    def _rebase(self, taken: list[tuple[Dispatch, Message]]) -> list[Update]:
        updates: list[Update] = []
        for dispatch, message in taken:
            staleness = self.version - dispatch.version
            try:
                received = unpack_updates(message)
            except ProtocolError as exc:
                self.log.warning("Dropped update %d of device %s: %s", dispatch.seq, dispatch.peer, exc)
                continue
            weight = staleness_weight(self.weighting, staleness)
            base = self.versions[dispatch.version]
            updates.extend(rebased(update, base, self.state, weight) for update in received)
        return updates

    def _handle(self, message: Message, collection: Any) -> None:
        sender, kind = message.sender, message.kind
        if kind == MessageKind.INIT:
            self._join(message)
            self._void(sender, "registered again")
        elif sender not in self.peers:
            self.log.warning(
                "Ignored a message from device %s, which has not joined: %s", sender, message.describe()
            )
            return
        elif kind == MessageKind.ERROR:
            self.peers[sender].online = False
            self._void(sender, f"failed: {message.metadata.get('error')}")
        elif kind == TRAIN.reply:
            self._take(message)
        else:
            self.log.warning("Dropped an unexpected message: %s", message.describe())
        self.observe(message)
        if self._serving:
            self._fill()

    def _take(self, message: Message) -> None:
        dispatch = self.requests.get(message.round_idx)
        if dispatch is None or dispatch.peer != message.sender:
            self.log.warning("Dropped a late, stale or duplicate update: %s", message.describe())
            return
        del self.requests[dispatch.seq]
        self.peers[message.sender].online = True
        if not self._too_stale(dispatch):
            self.buffer.append((dispatch, message))

    def _too_stale(self, dispatch: Dispatch) -> bool:
        staleness = self.version - dispatch.version
        if staleness <= self.max_staleness:
            return False
        self.log.warning(
            "Dropped update %d of device %s: it started %d aggregations ago, over max_staleness %d",
            dispatch.seq,
            dispatch.peer,
            staleness,
            self.max_staleness,
        )
        return True

    def _void(self, peer: str, reason: str) -> None:
        for dispatch in [d for d in self.requests.values() if d.peer == peer]:
            del self.requests[dispatch.seq]
            self.log.info("Device %s %s; its update %d is void", peer, reason, dispatch.seq)

    def _busy(self) -> list[str]:
        return [d.peer for d in self.requests.values() if not d.straggling]

    def _fill(self) -> None:
        """Start idle online devices on the current model until ``max_concurrency`` are training."""
        asked = {d.peer for d in self.requests.values()}
        idle = [p for p in self._online() if p not in asked]
        room = self.max_concurrency - len(self._busy())
        if room <= 0 or not idle:
            return
        for peer in sorted(self.rng.sample(idle, min(room, len(idle))), key=peer_order):
            self._dispatch(peer)

    def _dispatch(self, peer: str) -> None:
        self._seq += 1
        dispatch = Dispatch(self._seq, peer, self.version, time.monotonic())
        clients = self.peers[peer].clients
        metadata, tensors = pack_assignment(self.state, {c: {} for c in clients})
        message = Message(TRAIN.request, self.transport.address, peer, dispatch.seq, metadata, tensors)
        self.requests[dispatch.seq] = dispatch
        try:
            self.transport.send(message)
        except TransportError as exc:
            del self.requests[dispatch.seq]
            self.peers[peer].online = False
            self.log.warning("Device %s: could not send its model: %s", peer, exc)

    def _expire(self) -> None:
        now = time.monotonic()
        for dispatch in self.requests.values():
            if not dispatch.straggling and now - dispatch.sent >= self.policy.timeout:
                dispatch.straggling = True
                self.log.warning(
                    "Device %s straggles: no update %d within %s s (comm_args.round_timeout); its slot "
                    "goes to another device",
                    dispatch.peer,
                    dispatch.seq,
                    self.policy.timeout,
                )

    def _next_expiry(self) -> float:
        pending = [d.sent for d in self.requests.values() if not d.straggling]
        return min(pending) + self.policy.timeout if pending else float("inf")

    def _forget_versions(self) -> None:
        keep = {self.version} | {d.version for d in self.requests.values()}
        keep |= {d.version for d, _ in self.buffer}
        self.versions = {v: s for v, s in self.versions.items() if v in keep}


def rebased(
    update: Update, started_from: dict[str, torch.Tensor], current: dict[str, torch.Tensor], weight: float
) -> Update:
    """Return ``update`` moved onto ``current``: ``current + weight * (update - started_from)``.

    Floating-point tensors are rebased; others (counters) and an update that does not fit the model
    (its names or shapes differ: the driver then drops it, naming the client) are returned as they are.

    Examples
    --------
    >>> u = Update(0, 1.0, {"w": torch.tensor([3.0])})
    >>> rebased(u, {"w": torch.tensor([1.0])}, {"w": torch.tensor([5.0])}, 0.5).state["w"]
    tensor([6.])

    """
    fits = set(update.state) == set(started_from) == set(current) and all(
        update.state[k].shape == current[k].shape == started_from[k].shape for k in current
    )
    if not fits:
        return update
    state = {
        name: current[name] + weight * (tensor - started_from[name]) if tensor.is_floating_point() else tensor
        for name, tensor in update.state.items()
    }
    return Update(update.client_idx, update.weight, state, update.metrics, update.extras)
