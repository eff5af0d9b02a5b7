"""The server side of the round over a ``Transport``: ``RemoteBackend``, its stages and its peers.

A round is a list of stages. Each stage sends a request to some peers and collects their replies
until its participation policy says it is complete; ``RemoteBackend.exchange`` is the one loop that
does this for every stage. Training is one stage (``SYNC_MODEL`` -> ``CLIENT_UPDATE``); a protocol
with more exchanges (secure aggregation) is more stages through the same ``exchange``.

Peers have string ids and join by sending ``INIT`` with the clients they host and their sample
counts, at any time; a peer that sends ``INIT`` again has rejoined (its unfinished work is void), and
one that reports an error is dropped until it rejoins. Replies that are late (an earlier round),
stale (another stage), duplicated or from a peer that never joined are dropped with one log line each.
MPI simulation runs this over the MPI transport with ``AllReplies``; the peers run ``RoundWorker``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from fedml.core.algorithms import Update
from fedml.core.comm import Message, MessageKind, Transport
from fedml.core.round.backend import RoundTask
from fedml.core.round.policy import ParticipationPolicy
from fedml.core.round.wire import (
    hosted_clients,
    pack_assignment,
    pack_outcome,
    unpack_updates,
)
from fedml.errors import ProtocolError, RoundIncompleteError, TransportError
from fedml.tracking import RunResult, role_logger

if TYPE_CHECKING:
    import logging


@dataclass(frozen=True)
class Stage:
    """One exchange of a round: the server sends ``request``, each peer answers with ``reply``."""

    name: str
    request: MessageKind
    reply: MessageKind


TRAIN = Stage("train", MessageKind.SYNC_MODEL, MessageKind.CLIENT_UPDATE)
"""The training stage: the global state and the clients to train out, their updates back."""


@dataclass
class Peer:
    """A peer the server knows: the clients it hosts (id -> sample count) and whether it is online."""

    id: str
    clients: dict[int, int]
    online: bool = True
    joins: int = 1


@dataclass
class _Collection:
    """What one stage has gathered so far: who still owes a reply (with its client count), who replied."""

    stage: Stage
    round_idx: int
    sizes: Mapping[str, int]
    requests: Mapping[str, tuple[dict[str, Any], dict[str, torch.Tensor]]]
    pending: dict[str, int] = field(init=False)
    replies: dict[str, Message] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pending = dict(self.sizes)

    def replied(self) -> int:
        return sum(self.sizes[p] for p in self.replies)


def assign_clients(
    clients: Sequence[int],
    sample_counts: Mapping[int, int] | Sequence[int],
    workers: Sequence[str],
    hosts: Mapping[str, Collection[int]] | None = None,
) -> dict[str, list[int]]:
    """Split ``clients`` among ``workers`` so their total sample counts are as even as possible.

    Largest clients go first, each to the currently lightest worker that hosts it (``hosts``; every
    worker hosts every client when omitted; ties: earliest in ``workers``), so the split is
    deterministic. Every worker gets a (possibly empty) sorted list.

    Raises
    ------
    TransportError
        If there are no workers, or no worker hosts one of the clients.

    Examples
    --------
    >>> assign_clients([0, 1, 2, 3], [50, 10, 40, 20], workers=["1", "2"])
    {'1': [0, 1], '2': [2, 3]}

    """
    if not workers:
        raise TransportError("there are no workers to assign clients to")
    loads = {peer: 0 for peer in workers}
    shares: dict[str, list[int]] = {peer: [] for peer in workers}
    order = {peer: position for position, peer in enumerate(workers)}
    heap = [(0, position, peer) for position, peer in enumerate(workers)]
    for client in sorted(clients, key=lambda c: (-sample_counts[c], c)):
        if hosts is None:
            _, _, peer = heapq.heappop(heap)
        else:
            able = [p for p in workers if client in hosts[p]]
            if not able:
                raise TransportError(f"no online peer hosts client {client}")
            peer = min(able, key=lambda p: (loads[p], order[p]))
        shares[peer].append(client)
        loads[peer] += sample_counts[client]
        if hosts is None:
            heapq.heappush(heap, (loads[peer], order[peer], peer))
    return {peer: sorted(share) for peer, share in shares.items()}


class RemoteBackend:
    """The server's side of training on remote peers over ``transport``.

    Parameters
    ----------
    transport
        Connects the server to its peers.
    policy
        When a stage is complete (and how many clients a round selects).
    name
        The ``comm_args.backend`` name, for messages.
    expected_peers
        Peers that must all have joined before round 1 (MPI: every worker rank); ``None`` for none.
    min_peers
        With no ``expected_peers``: how many peers to wait for before round 1.
    start_with
        How many of them are enough when ``join_timeout`` passes (default: ``min_peers``).
    join_timeout
        Seconds to wait for them, and for ``min_online`` peers when fewer are online before a round.
    min_online
        Peers that must be online for a round to start.
    client_num
        Every process must load the same number of clients; a peer announcing another is refused.
    retries
        How often the driver retries a round that got too few replies (``RoundIncompleteError``).
    log
        The server's logger.

    """

    presummed = False

    def __init__(
        self,
        transport: Transport,
        policy: ParticipationPolicy,
        name: str,
        *,
        expected_peers: Sequence[str] | None = None,
        min_peers: int = 1,
        start_with: int | None = None,
        join_timeout: float = 300.0,
        min_online: int = 1,
        client_num: int | None = None,
        retries: int = 0,
        log: logging.LoggerAdapter | None = None,
    ) -> None:
        self.retries = retries
        self.transport = transport
        self.policy = policy
        self.name = name
        self.expected = list(expected_peers or [])
        self.min_peers = len(self.expected) or min_peers
        self.start_with = min(start_with or self.min_peers, self.min_peers)
        self.join_timeout = join_timeout
        self.min_online = min_online
        self.client_num = client_num
        self.log = log or role_logger("Server", 0)
        self.peers: dict[str, Peer] = {}

    def open(self) -> None:
        """Wait until the expected peers (or ``min_peers`` peers) have joined.

        When ``join_timeout`` passes with fewer, the run starts anyway if ``start_with`` peers joined.

        Raises
        ------
        TransportError
            Naming the peers still missing when ``join_timeout`` passes.

        """
        deadline = time.monotonic() + self.join_timeout

        def joined() -> bool:
            online = {p for p, peer in self.peers.items() if peer.online}
            return set(self.expected) <= online if self.expected else len(online) >= self.min_peers

        while not joined():
            message = self._next(deadline)
            if message is None and not self.expected and len(self._online()) >= self.start_with:
                self.log.warning(
                    "%d of %d peers joined within %s s (comm_args.join_timeout); starting with them",
                    len(self._online()),
                    self.min_peers,
                    self.join_timeout,
                )
                break
            if message is None:
                missing = sorted(set(self.expected) - set(self.peers)) if self.expected else []
                raise TransportError(
                    f"{len(self.peers)} peer(s) joined within {self.join_timeout} s, {self.min_peers} needed"
                    + (f"; missing {missing}" if missing else "")
                    + " (comm_args.timeout); did every process start?"
                )
            self._handle(message, None)
        self.log.info("%d peers connected", len([p for p in self.peers.values() if p.online]))

    def clients(self) -> list[int]:
        """Return the clients hosted by online peers (after reading any joins that have arrived).

        With fewer than ``min_online`` peers online (silos dropped), waits up to ``join_timeout`` for
        some to join again.

        Raises
        ------
        TransportError
            If too few peers are online when ``join_timeout`` passes.

        """
        self._drain()
        deadline = time.monotonic() + self.join_timeout
        while len(self._online()) < self.min_online:
            message = self._next(deadline)
            if message is None:
                raise TransportError(
                    f"{len(self._online())} peer(s) online, {self.min_online} needed to go on, and none "
                    f"joined within {self.join_timeout} s (comm_args.join_timeout)"
                )
            self._handle(message, None)
        return sorted({c for p in self._online() for c in self.peers[p].clients})

    def _online(self) -> list[str]:
        return sorted((p for p, peer in self.peers.items() if peer.online), key=peer_order)

    def selection_size(self, wanted: int) -> int:
        """Return the policy's selection size for ``wanted`` results."""
        return self.policy.selection_size(wanted)

    def train(self, task: RoundTask) -> list[Update]:
        """Send each online peer its share of the task's clients; return the updates the policy accepts.

        Raises
        ------
        TransportError
            If fewer replies than the policy requires arrive by its deadline.

        """
        shares = self.assignment(task.clients)
        requests = {
            peer: pack_assignment(task.global_state, {c: task.payloads.get(c, {}) for c in share})
            for peer, share in shares.items()
            if share
        }
        sizes = {peer: len(shares[peer]) for peer in requests}
        try:
            replies = self.exchange(TRAIN, task.round_idx, requests, sizes, task.wanted)
        except RoundIncompleteError as exc:
            exc.updates = [u for message in exc.replies for u in unpack_updates(message)]
            raise
        updates: list[Update] = []
        for message in replies.values():
            updates.extend(unpack_updates(message))
        return sorted(updates, key=lambda u: u.client_idx)

    def assignment(self, clients: Sequence[int]) -> dict[str, list[int]]:
        """Return which online peer trains which of ``clients`` (``assign_clients`` by sample counts).

        Raises
        ------
        TransportError
            If no online peer hosts one of the clients.

        """
        online = self._online()
        counts = {c: n for p in online for c, n in self.peers[p].clients.items()}
        hosts = {p: self.peers[p].clients.keys() for p in online}
        return assign_clients(clients, counts, online, hosts)

    def exchange(
        self,
        stage: Stage,
        round_idx: int,
        requests: Mapping[str, tuple[dict[str, Any], dict[str, torch.Tensor]]],
        sizes: Mapping[str, int],
        wanted: int,
    ) -> dict[str, Message]:
        """Send every peer its request of ``stage`` and return the replies, as the policy decides.

        Parameters
        ----------
        stage
            The exchange.
        round_idx
            The round it belongs to.
        requests
            Peer id -> (metadata, tensors) of its request.
        sizes
            Peer id -> how many clients its reply stands for.
        wanted
            How many client results the stage needs.

        Raises
        ------
        RoundIncompleteError
            If fewer replies than the policy requires arrive by its deadline.

        """
        policy = self.policy
        selected = sum(sizes.values())
        target, required = policy.target(wanted, selected), policy.required(wanted, selected)
        collection = _Collection(stage, round_idx, sizes, requests)
        for peer in requests:
            self._request(collection, peer)
        deadline = time.monotonic() + policy.timeout
        while collection.pending and collection.replied() < target:
            message = self._next(deadline)
            if message is None:
                break
            self._handle(message, collection)
        replied = collection.replied()
        if replied < required:
            shortfall = self._shortfall(collection, replied, selected, required)
            raise RoundIncompleteError(shortfall, list(collection.replies.values()))
        late = sorted(collection.pending)
        if late:
            self.log.warning(
                "Round %d: %s goes on with %d of %d clients; no %s from peer(s) %s within %s s",
                round_idx + 1,
                stage.name,
                replied,
                selected,
                stage.reply.name,
                late,
                policy.timeout,
            )
        return collection.replies

    def _request(self, collection: _Collection, peer: str) -> None:
        """Send ``peer`` its request of the collection's stage; a failed send fails the peer."""
        metadata, tensors = collection.requests[peer]
        message = Message(
            collection.stage.request, self.transport.address, peer, collection.round_idx, metadata, tensors
        )
        try:
            self.transport.send(message)
        except TransportError as exc:
            self._fail(collection, peer, f"could not send {collection.stage.request.name}: {exc}")

    def close(self, result: RunResult | None, error: BaseException | None) -> None:
        """Tell every online peer to stop, with the run's result or the error."""
        metadata, state = pack_outcome(result, error)
        for peer_id, peer in self.peers.items():
            if not peer.online:
                continue
            try:
                self.transport.send(
                    Message(MessageKind.FINISH, self.transport.address, peer_id, -1, metadata, state)
                )
            except TransportError as exc:
                self.log.warning("Could not tell peer %s to stop: %s", peer_id, exc)

    def _next(self, deadline: float) -> Message | None:
        """Return the next well-formed message, or ``None`` once ``deadline`` has passed."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                return self.transport.receive(remaining)
            except ProtocolError as exc:
                self.log.warning("Ignored a malformed message: %s", exc)
            except TransportError:
                if time.monotonic() >= deadline:
                    return None
                raise

    def _drain(self) -> None:
        """Handle the messages that have already arrived (joins between rounds), without waiting."""
        while True:
            try:
                message = self.transport.receive(0)
            except ProtocolError as exc:
                self.log.warning("Ignored a malformed message: %s", exc)
                continue
            except TransportError:
                return
            self._handle(message, None)

    def _handle(self, message: Message, collection: _Collection | None) -> None:
        sender = message.sender
        if message.kind == MessageKind.INIT:
            self._join(message)
            if collection is not None and sender in collection.requests and sender not in collection.replies:
                # A restarted peer lost its work: it gets this stage's request again, and its reply counts.
                self.log.info(
                    "Round %d: peer %s rejoined; sent it the %s request again",
                    collection.round_idx + 1,
                    sender,
                    collection.stage.name,
                )
                collection.pending[sender] = collection.sizes[sender]
                collection.failures.pop(sender, None)
                self._request(collection, sender)
            return
        if sender not in self.peers:
            self.log.warning(
                "Ignored a message from peer %s, which has not joined: %s", sender, message.describe()
            )
            return
        if message.kind == MessageKind.ERROR:
            reason = str(message.metadata.get("error"))
            if collection is not None and sender in collection.pending:
                self._fail(collection, sender, f"failed: {reason}")
            else:
                self.peers[sender].online = False
                self.log.warning("Peer %s failed and is dropped until it rejoins: %s", sender, reason)
            return
        if (
            collection is None
            or message.kind != collection.stage.reply
            or message.round_idx != collection.round_idx
        ):
            self.log.warning("Dropped a late or stale message: %s", message.describe())
            return
        if sender in collection.replies:
            self.log.warning("Dropped a duplicate reply: %s", message.describe())
            return
        if sender not in collection.pending:
            self.log.warning(
                "Dropped a reply from peer %s, which was not asked: %s", sender, message.describe()
            )
            return
        del collection.pending[sender]
        collection.replies[sender] = message
        self.peers[sender].online = True

    def _join(self, message: Message) -> None:
        clients = hosted_clients(message)
        announced = message.metadata.get("client_num")
        if self.client_num is not None and announced is not None and announced != self.client_num:
            raise ProtocolError(
                f"peer {message.sender} has {announced} clients, the server {self.client_num}: every "
                "process must load the same configuration"
            )
        known = self.peers.get(message.sender)
        if known is None:
            self.peers[message.sender] = Peer(message.sender, clients)
            self.log.debug("Peer %s joined with %d clients", message.sender, len(clients))
            return
        known.clients, known.online, known.joins = clients, True, known.joins + 1
        self.log.info("Peer %s rejoined", message.sender)

    def _fail(self, collection: _Collection, peer: str, reason: str) -> None:
        collection.pending.pop(peer, None)
        collection.failures[peer] = reason
        if peer in self.peers:
            self.peers[peer].online = False
        self.log.warning("Round %d: peer %s %s", collection.round_idx + 1, peer, reason)

    def _shortfall(self, collection: _Collection, replied: int, selected: int, required: int) -> str:
        stage, round_idx = collection.stage, collection.round_idx
        parts = [
            f"round {round_idx + 1}: {stage.name}: {replied} of {selected} clients replied, {required} needed"
        ]
        parts += [f"peer {peer} {reason}" for peer, reason in sorted(collection.failures.items())]
        if collection.pending:
            parts.append(
                f"no {stage.reply.name} from peer(s) {sorted(collection.pending)} within "
                f"{self.policy.timeout} s (comm_args.timeout); a peer process probably died or hangs"
            )
        return "; ".join(parts)


def peer_order(peer: str) -> tuple[int, int, str]:
    """Sort key of peer ids: ranks numerically (``"2"`` before ``"10"``), then names.

    The split of clients among peers follows this order, never the order in which they joined.
    """
    return (0, int(peer), "") if peer.isdecimal() else (1, 0, peer)
