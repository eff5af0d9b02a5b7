"""``SecAggServer``: the server's side of a secure-aggregation round; it learns only the weighted sum.

The server relays keys and sealed shares it cannot read, collects masked inputs, and at the end asks
each survivor for the shares that remove what does not cancel: the self masks of the clients whose
masked input arrived, and the pairwise masks of those that dropped after sharing. Each stage is closed
with whoever replied; before any request goes out the server checks that every secret it will need
can still be rebuilt from at least ``threshold`` live holders, so a round that cannot finish fails with
``SecAggError`` before it asks for a single share. Clients that cannot reach the threshold of holders
while keys are exchanged are left out of the round, as if they had dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from fedml.core.comm.message import Message
from fedml.core.privacy.secagg import crypto, field, shamir
from fedml.core.privacy.secagg.client import holders_of, pairwise_key, self_mask_key, terms
from fedml.core.privacy.secagg.crypto import KEY_BYTES
from fedml.core.privacy.secagg.graph import neighbour_graph
from fedml.core.privacy.secagg.messages import (
    ADVERTISE,
    MASKED,
    SEALED_BYTES,
    SHARE,
    STAGES,
    UNMASK,
    AdvertiseKeys,
    AdvertiseRequest,
    MaskedInput,
    MaskedRequest,
    SecAggMessage,
    ShareKeys,
    ShareRequest,
    UnmaskRequest,
    UnmaskShares,
)
from fedml.core.privacy.secagg.settings import SecAggArgs
from fedml.errors import SecAggError

_REPLIES: dict[str, type[SecAggMessage]] = {
    ADVERTISE: AdvertiseKeys,
    SHARE: ShareKeys,
    MASKED: MaskedInput,
    UNMASK: UnmaskShares,
}
_SESSION_BYTES = 16


class SecAggServer:
    """The server's side of one secure-aggregation round among ``client_ids``.

    Parameters
    ----------
    settings
        ``secure_aggregation_args``.
    round_idx
        The round.
    client_ids
        The clients selected for the round.
    rng
        Source of the session id and of the SecAgg+ graph; ``None`` (the default) is the operating
        system's CSPRNG, a seeded generator is for reproducible tests and benchmarks.

    Use: for each stage, send ``requests()``, pass every reply to ``receive``, then ``close_stage()``
    (or all at once: ``collect(replies)``); after the unmask stage, ``result()`` is the sum.

    Raises
    ------
    SecAggError
        If the clients are fewer than two or repeat, or the settings cannot hold for this many.

    """

    def __init__(
        self,
        settings: SecAggArgs,
        round_idx: int,
        client_ids: Sequence[str],
        rng: np.random.Generator | None = None,
    ) -> None:
        ids = tuple(client_ids)
        if len(set(ids)) != len(ids):
            raise SecAggError(f"secure aggregation: round {round_idx} names a client twice")
        self.settings = settings
        self.round_idx = round_idx
        self.client_ids = ids
        self.threshold = settings.threshold(len(ids))
        self.terms = terms(settings, len(ids))
        random_bytes = crypto.random_source(rng)
        self.session = random_bytes(_SESSION_BYTES)
        if settings.degree(len(ids)) >= len(ids) - 1:
            self.neighbours = {c: tuple(sorted(set(ids) - {c})) for c in ids}
        else:
            graph_rng = np.random.default_rng(int.from_bytes(random_bytes(_SESSION_BYTES), "little"))
            self.neighbours = neighbour_graph(ids, settings.degree(len(ids)), graph_rng)
        self.holders = {c: holders_of(c, self.neighbours[c]) for c in ids}
        self._next = 0
        self._replies: dict[str, SecAggMessage] = {}
        self.survivors: list[frozenset[str]] = []
        """After each closed stage, the clients still in the round (U1 .. U4 of Bonawitz et al.)."""
        self._keys: dict[str, AdvertiseKeys] = {}
        self._sealed: dict[str, dict[str, np.ndarray]] = {}
        self._masked: dict[str, np.ndarray] = {}
        self._unmask: dict[str, UnmaskShares] = {}
        self._length: int | None = None
        self._failed = False

    @property
    def stage(self) -> str | None:
        """The stage being collected (``None`` once the unmask stage is closed)."""
        return STAGES[self._next] if self._next < len(STAGES) else None

    def alive(self) -> frozenset[str]:
        """Return the clients still in the round: those that replied to every closed stage."""
        return self.survivors[-1] if self.survivors else frozenset(self.client_ids)

    def requests(self) -> dict[str, SecAggMessage]:
        """Return the current stage's request for each client still in the round, by client id.

        Raises
        ------
        SecAggError
            If the round is over or has failed.

        """
        stage, alive = self.stage, self.alive()
        if self._failed:
            raise SecAggError(
                f"secure aggregation: round {self.round_idx} has failed; it requests nothing more"
            )
        head = (self.round_idx, self.session)
        out: dict[str, SecAggMessage] = {}
        for client in sorted(alive):
            peers = tuple(p for p in self.neighbours[client] if p in alive)
            if stage == ADVERTISE:
                out[client] = AdvertiseRequest(
                    *head, client, len(self.client_ids), self.terms, self.neighbours[client]
                )
            elif stage == SHARE:
                keys = (
                    np.stack([self._keys[p].keys for p in peers])
                    if peers
                    else np.empty((0, 2, KEY_BYTES), np.uint8)
                )
                out[client] = ShareRequest(*head, client, peers, keys)
            elif stage == MASKED:
                rows = [self._sealed[p][client] for p in peers]
                sealed = np.stack(rows) if rows else np.empty((0, SEALED_BYTES), np.uint8)
                out[client] = MaskedRequest(*head, client, peers, sealed)
            elif stage == UNMASK:
                out[client] = UnmaskRequest(
                    *head, client, tuple(h for h in self.holders[client] if h in alive)
                )
            else:
                raise SecAggError(f"secure aggregation: round {self.round_idx} has no stage left to request")
        return out

    def receive(self, message: Message) -> None:
        """Accept one client's reply to the current stage.

        Raises
        ------
        SecAggError
            If it is malformed, of another stage, round or session, from a client not (or no longer)
            in the round, a second reply of the same client, or inconsistent with the requests.

        """
        stage = self.stage
        if stage is None:
            raise SecAggError(f"secure aggregation: round {self.round_idx} is over; got {message.describe()}")
        reply = _REPLIES[stage].from_message(message)
        client = reply.client_id
        who = f"secure aggregation: {stage} reply of client {client}"
        if reply.round_idx != self.round_idx or reply.session != self.session:
            raise SecAggError(f"{who} belongs to another round or session (replayed)")
        if client not in self.alive():
            raise SecAggError(f"{who}: the client is not in round {self.round_idx} (or dropped earlier)")
        if client in self._replies:
            raise SecAggError(f"{who} arrived twice (replayed)")
        self._check(reply, client, who)
        self._replies[client] = reply

    def close_stage(self) -> None:
        """Close the current stage with the clients that replied, and check that the round can go on.

        Raises
        ------
        SecAggError
            If too few clients replied, or a secret needed later can no longer be rebuilt from
            ``threshold`` live holders; nothing further is requested then.

        """
        stage, replies = self.stage, self._replies
        if stage is None or self._failed:
            raise SecAggError(f"secure aggregation: round {self.round_idx} has no open stage to close")
        try:
            alive = self._close(stage, replies)
        except SecAggError:
            # Fail closed: a failed round requests nothing more, so no share is revealed after it.
            self._failed = True
            raise
        self.survivors.append(alive)
        self._replies = {}
        self._next += 1

    def _close(self, stage: str, replies: dict[str, SecAggMessage]) -> frozenset[str]:
        alive = frozenset(replies)
        self._require(len(alive), stage)
        if stage == ADVERTISE:
            self._keys = {c: r for c, r in replies.items() if isinstance(r, AdvertiseKeys)}
            alive = self._viable(alive)
        elif stage == SHARE:
            self._sealed = {
                c: dict(zip(r.receivers, r.sealed, strict=True))
                for c, r in replies.items()
                if isinstance(r, ShareKeys)
            }
            alive = self._viable(alive)
        elif stage == MASKED:
            self._masked = {c: r.elements() for c, r in replies.items() if isinstance(r, MaskedInput)}
            self._check_recoverable(alive, stage)
        elif stage == UNMASK:
            self._unmask = {c: r for c, r in replies.items() if isinstance(r, UnmaskShares)}
            self._check_recoverable(alive, stage)
        self._require(len(alive), stage)
        return alive

    def collect(self, replies: Iterable[Message]) -> None:
        """``receive`` every reply, then ``close_stage``."""
        for message in replies:
            self.receive(message)
        self.close_stage()

    def result(self) -> tuple[torch.Tensor, float]:
        """Return the weighted sum (float64) of the inputs whose masked input arrived, and their total weight.

        Raises
        ------
        SecAggError
            If the unmask stage is not closed, or a rebuilt masking key does not match its public key
            (a holder sent a wrong share).

        """
        if self.stage is not None:
            raise SecAggError(
                f"secure aggregation: round {self.round_idx} has no result before its unmask stage closes"
            )
        shared, masked, answered = self.survivors[1], self.survivors[2], self.survivors[3]
        total = np.zeros_like(next(iter(self._masked.values())))
        for vector in self._masked.values():
            np.add(total, vector, out=total)
        for client in sorted(masked):
            seed = self._rebuild(client, answered, "mask")
            crypto.add_mask(total, self_mask_key(seed, self.session, self.round_idx, client), -1)
        for client in sorted(shared - masked):
            partners = [p for p in self.neighbours[client] if p in masked]
            if not partners:
                continue
            private, public = crypto.parse_private(self._rebuild(client, answered, "key"))
            if public != bytes(self._keys[client].keys[1]):
                raise SecAggError(
                    f"secure aggregation: the masking key rebuilt for dropped client {client} does not "
                    "match its public key (a holder sent a wrong share)"
                )
            for partner in partners:
                secret = crypto.agree(private, bytes(self._keys[partner].keys[1]), partner)
                key = pairwise_key(secret, self.session, self.round_idx, client, partner)
                # The partner added this mask if its id sorts first, else subtracted it: undo that.
                crypto.add_mask(total, key, -1 if partner < client else 1)
        settings = self.settings
        return field.dequantize(total, settings.sa_clip_range, settings.sa_bit_width)

    def _check(self, reply: SecAggMessage, client: str, who: str) -> None:
        """Check a reply against what this client was asked."""
        alive = self.alive()
        peers = tuple(p for p in self.neighbours[client] if p in alive)
        if isinstance(reply, ShareKeys) and reply.receivers != peers:
            raise SecAggError(f"{who} does not seal shares for exactly its neighbours that advertised keys")
        if isinstance(reply, MaskedInput):
            if self._length is None:
                self._length = len(reply.masked)
            if len(reply.masked) != self._length:
                raise SecAggError(f"{who} has {len(reply.masked)} elements, the others {self._length}")
        if isinstance(reply, UnmaskShares):
            holders = [h for h in self.holders[client] if h in self.survivors[1]]
            mask_owners = tuple(h for h in holders if h in alive)
            key_owners = tuple(h for h in holders if h not in alive)
            if reply.mask_owners != mask_owners or reply.key_owners != key_owners:
                raise SecAggError(f"{who} does not reveal exactly the shares it was asked for")

    def _viable(self, alive: frozenset[str]) -> frozenset[str]:
        """Leave out, repeatedly, the clients with fewer than ``threshold`` live holders."""
        while True:
            short = {c for c in alive if sum(h in alive for h in self.holders[c]) < self.threshold}
            if not short:
                return alive
            alive = alive - short

    def _check_recoverable(self, alive: frozenset[str], stage: str) -> None:
        """Refuse to go on if a secret the result needs has fewer than ``threshold`` live holders."""
        shared = self.survivors[1]
        masked = alive if stage == MASKED else self.survivors[2]
        for client in sorted(shared):
            if client not in masked and not any(p in masked for p in self.neighbours[client]):
                continue
            live = sum(h in alive for h in self.holders[client])
            if live < self.threshold:
                raise SecAggError(
                    f"secure aggregation: round {self.round_idx} fails at {stage}: only {live} holders of "
                    f"client {client}'s shares are left, below the threshold {self.threshold}"
                )

    def _require(self, count: int, stage: str | None) -> None:
        if count < self.threshold:
            raise SecAggError(
                f"secure aggregation: round {self.round_idx} fails at {stage}: {count} of "
                f"{len(self.client_ids)} clients left (with enough live holders), below the threshold "
                f"{self.threshold}; nothing about individual inputs was revealed"
            )

    def _rebuild(self, client: str, answered: frozenset[str], kind: str) -> bytes:
        """Rebuild ``client``'s self-mask seed (``kind="mask"``) or masking key from ``threshold`` shares."""
        holders = self.holders[client]
        points, rows = [], []
        for point, holder in enumerate(holders, start=1):
            if holder not in answered:
                continue
            reply = self._unmask[holder]
            owners, shares = (
                (reply.mask_owners, reply.mask_shares)
                if kind == "mask"
                else (reply.key_owners, reply.key_shares)
            )
            points.append(point)
            rows.append(shares[owners.index(client)])
            if len(points) == self.threshold:
                return shamir.combine(points, np.stack(rows), crypto.KEY_BYTES)
        raise SecAggError(f"secure aggregation: too few shares of client {client} to rebuild it")
