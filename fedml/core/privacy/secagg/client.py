"""``SecAggClient``: one client's side of a secure-aggregation round, a state machine over four stages.

The client follows Bonawitz et al. (CCS 2017, the honest-but-curious variant): it advertises two
X25519 public keys; Shamir-shares its masking private key and a fresh self-mask seed among its
*holders* (itself and its neighbours: everyone for ``secagg``, ``k`` graph neighbours for
``secagg_plus``), sealing each neighbour's shares for that neighbour alone; sends its quantized update
plus a self mask and one pairwise mask per neighbour that shared (added if its id sorts first,
subtracted otherwise, so the pairwise masks cancel in the sum); and finally reveals, for each client
whose shares it holds, the self-mask share if that client's masked input arrived and the key share if
it did not -- never both, and each stage only once, so a server cannot collect both for one client.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedml.core.comm.message import Message
from fedml.core.privacy.secagg import crypto, field, shamir
from fedml.core.privacy.secagg.messages import (
    ADVERTISE,
    MASKED,
    SHARE,
    SHARE_CHUNKS,
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

_SHARE_BYTES = 4 * SHARE_CHUNKS


def share_key(secret: bytes, session: bytes, round_idx: int, sender: str, receiver: str) -> bytes:
    """Return the key that seals ``sender``'s shares for ``receiver`` (one per direction)."""
    return crypto.derive_key(secret, session, "fedml-secagg/share", [round_idx, sender, receiver])


def share_data(session: bytes, round_idx: int, sender: str, receiver: str) -> bytes:
    """Return the associated data of ``sender``'s sealed shares for ``receiver``."""
    return crypto.associated_data(session, [round_idx, SHARE, sender, receiver])


def pairwise_key(secret: bytes, session: bytes, round_idx: int, a: str, b: str) -> bytes:
    """Return the key of the pairwise mask of clients ``a`` and ``b`` (symmetric in them)."""
    low, high = sorted((a, b))
    return crypto.derive_key(secret, session, "fedml-secagg/pairwise-mask", [round_idx, low, high])


def self_mask_key(seed: bytes, session: bytes, round_idx: int, client: str) -> bytes:
    """Return the key of ``client``'s self mask from its seed."""
    return crypto.derive_key(seed, session, "fedml-secagg/self-mask", [round_idx, client])


def terms(settings: SecAggArgs, clients: int) -> str:
    """Return what both sides must agree on for a round of ``clients``: method, degree, threshold, encoding.

    A client whose settings differ from the server's would share with another threshold or quantize
    on another scale, and the sum would come out wrong without any error; comparing these first
    turns that into a clear one.
    """
    return (
        f"{settings.sa_method} k={settings.degree(clients)} t={settings.threshold(clients)} "
        f"bits={settings.sa_bit_width} clip={settings.sa_clip_range!r} max_weight={settings.sa_max_weight!r}"
    )


def holders_of(client: str, neighbours: Sequence[str]) -> tuple[str, ...]:
    """Return who holds ``client``'s shares, sorted; holder ``i`` has the Shamir point ``i + 1``."""
    return tuple(sorted({client, *neighbours}))


class SecAggClient:
    """One client's side of a secure-aggregation round.

    Parameters
    ----------
    client_id
        The client's id, as the server's round names it.
    settings
        ``secure_aggregation_args``.
    round_idx
        The round.
    rng
        Source of keys, seeds and nonces. ``None`` (the default) is the operating system's CSPRNG; a
        seeded generator makes the round reproducible for tests and benchmarks and must not be used
        otherwise (whoever knows the seed knows the keys).

    Each stage method takes the server's request and returns the reply to send; a request of another
    round, session, client or stage (replayed, or out of order) raises ``SecAggError``.

    """

    def __init__(
        self, client_id: str, settings: SecAggArgs, round_idx: int, rng: np.random.Generator | None = None
    ) -> None:
        self.client_id = client_id
        self.settings = settings
        self.round_idx = round_idx
        self._random = crypto.random_source(rng)
        self._next = 0
        self._session = b""
        self._threshold = 0
        self._holders: tuple[str, ...] = ()
        self._cipher = crypto.KeyPair(b"", b"")
        self._mask = crypto.KeyPair(b"", b"")
        self._peer_keys: dict[str, tuple[bytes, bytes]] = {}
        self._seed = b""
        self._agreed: dict[str, bytes] = {}
        self._shares: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._sharers: tuple[str, ...] = ()
        self._input: tuple[torch.Tensor, float] | None = None

    @property
    def stage(self) -> str | None:
        """The stage whose request the client expects next (``None`` once the round is done)."""
        return STAGES[self._next] if self._next < len(STAGES) else None

    def set_input(self, vector: torch.Tensor, weight: float) -> None:
        """Give the flat update and its weight for ``respond`` to mask at the masked-input stage."""
        self._input = (vector, weight)

    def respond(self, message: Message) -> SecAggMessage:
        """Return the reply to the request in ``message``, whichever stage it is of.

        Raises
        ------
        SecAggError
            If the request is malformed, replayed or out of stage, or the masked-input stage comes
            before ``set_input``.

        """
        stage = message.metadata.get("stage")
        if stage == ADVERTISE:
            return self.advertise(AdvertiseRequest.from_message(message))
        if stage == SHARE:
            return self.share_keys(ShareRequest.from_message(message))
        if stage == MASKED:
            if self._input is None:
                raise SecAggError(f"secure aggregation: client {self.client_id} has no input to mask yet")
            return self.masked_input(MaskedRequest.from_message(message), *self._input)
        if stage == UNMASK:
            return self.unmask(UnmaskRequest.from_message(message))
        raise SecAggError(
            f"secure aggregation: client {self.client_id} got a message of unknown stage {stage!r:.40}"
        )

    def advertise(self, request: AdvertiseRequest) -> AdvertiseKeys:
        """Stage 1: check the round's size and neighbours, and return two fresh public keys."""
        self._enter(request, ADVERTISE)
        neighbours = request.neighbours
        expected = self.settings.degree(request.clients)
        if (
            len(set(neighbours)) != len(neighbours)
            or self.client_id in neighbours
            or len(neighbours) != expected
        ):
            raise SecAggError(
                f"secure aggregation: client {self.client_id} was given {len(neighbours)} neighbours; "
                f"{self.settings.sa_method} with {request.clients} clients needs {expected} distinct others"
            )
        self._session = request.session
        self._threshold = self.settings.threshold(request.clients)
        if request.terms != terms(self.settings, request.clients):
            raise SecAggError(
                f"secure aggregation: client {self.client_id} and the server disagree on the round's "
                f"terms ({terms(self.settings, request.clients)} here, {request.terms} there)"
            )
        self._holders = holders_of(self.client_id, neighbours)
        self._cipher = crypto.generate_keypair(self._random)
        self._mask = crypto.generate_keypair(self._random)
        keys = np.frombuffer(self._cipher.public + self._mask.public, dtype=np.uint8).reshape(2, -1)
        return AdvertiseKeys(self.round_idx, self._session, self.client_id, keys.copy())

    def share_keys(self, request: ShareRequest) -> ShareKeys:
        """Stage 2: share the masking key and a new self-mask seed, sealed for each neighbour."""
        self._enter(request, SHARE)
        peers = request.peers
        if len(set(peers)) != len(peers) or not set(peers) <= set(self._holders) - {self.client_id}:
            raise SecAggError(
                f"secure aggregation: client {self.client_id} was sent keys of clients it does not neighbour"
            )
        self._check_enough(len(peers) + 1, SHARE, "advertised keys")
        self._peer_keys = {
            peer: (bytes(pair[0]), bytes(pair[1])) for peer, pair in zip(peers, request.keys, strict=True)
        }
        seed = self._random(crypto.KEY_BYTES)
        holders, threshold = len(self._holders), self._threshold
        key_shares = shamir.split(self._mask.private, holders, threshold, self._random)
        mask_shares = shamir.split(seed, holders, threshold, self._random)
        position = {holder: i for i, holder in enumerate(self._holders)}
        sealed = np.empty((len(peers), crypto.SEAL_OVERHEAD + 2 * _SHARE_BYTES), dtype=np.uint8)
        for row, peer in enumerate(peers):
            at = position[peer]
            plaintext = _pack(key_shares[at]) + _pack(mask_shares[at])
            secret = self._agree_cipher(peer)
            sealed[row] = np.frombuffer(
                crypto.seal(
                    share_key(secret, self._session, self.round_idx, self.client_id, peer),
                    plaintext,
                    share_data(self._session, self.round_idx, self.client_id, peer),
                    self._random,
                ),
                dtype=np.uint8,
            )
        own = position[self.client_id]
        self._shares = {self.client_id: (key_shares[own], mask_shares[own])}
        self._seed = seed
        return ShareKeys(self.round_idx, self._session, self.client_id, tuple(peers), sealed)

    def masked_input(self, request: MaskedRequest, vector: torch.Tensor, weight: float) -> MaskedInput:
        """Stage 3: open the neighbours' shares, then return ``weight * vector`` quantized and masked."""
        self._enter(request, MASKED)
        senders = request.senders
        if len(set(senders)) != len(senders) or not set(senders) <= set(self._peer_keys):
            raise SecAggError(
                f"secure aggregation: client {self.client_id} got shares from clients that did not "
                "advertise keys to it"
            )
        self._check_enough(len(senders) + 1, MASKED, "shared keys")
        for sender, sealed in zip(senders, request.sealed, strict=True):
            secret = self._agree_cipher(sender)
            plaintext = crypto.open_sealed(
                share_key(secret, self._session, self.round_idx, sender, self.client_id),
                bytes(sealed),
                share_data(self._session, self.round_idx, sender, self.client_id),
                f"the share from client {sender} to client {self.client_id}",
            )
            self._shares[sender] = (_unpack(plaintext[:_SHARE_BYTES]), _unpack(plaintext[_SHARE_BYTES:]))
        self._sharers = (*senders, self.client_id)
        settings = self.settings
        values = field.quantize(
            vector, weight, settings.sa_clip_range, settings.sa_bit_width, settings.sa_max_weight
        )
        crypto.add_mask(values, self_mask_key(self._seed, self._session, self.round_idx, self.client_id), 1)
        for peer in senders:
            secret = crypto.agree(self._mask.key or self._mask.private, self._peer_keys[peer][1], peer)
            key = pairwise_key(secret, self._session, self.round_idx, self.client_id, peer)
            crypto.add_mask(values, key, 1 if self.client_id < peer else -1)
        return MaskedInput(self.round_idx, self._session, self.client_id, values.view(np.int64))

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """Stage 4: reveal self-mask shares of the survivors and key shares of the others who shared."""
        self._enter(request, UNMASK)
        survivors = set(request.survivors)
        if len(survivors) != len(request.survivors) or not survivors <= set(self._sharers):
            raise SecAggError(
                f"secure aggregation: client {self.client_id} was told of survivors that never shared "
                "keys with it"
            )
        if self.client_id not in survivors:
            raise SecAggError(
                f"secure aggregation: client {self.client_id} sent its masked input but is not among "
                "the survivors"
            )
        self._check_enough(len(survivors), UNMASK, "sent their masked input")
        alive = tuple(sorted(survivors))
        dropped = tuple(sorted(set(self._sharers) - survivors))
        shares, self._shares = self._shares, {}
        self._mask = crypto.KeyPair(b"", b"")
        self._agreed = {}
        return UnmaskShares(
            self.round_idx,
            self._session,
            self.client_id,
            alive,
            _rows([shares[owner][1] for owner in alive]),
            dropped,
            _rows([shares[owner][0] for owner in dropped]),
        )

    def _enter(self, request: SecAggMessage, stage: str) -> None:
        """Accept ``request`` as the next stage's, or refuse a replayed or misdirected one."""
        who = f"secure aggregation: client {self.client_id}"
        if request.client_id != self.client_id or request.round_idx != self.round_idx:
            raise SecAggError(
                f"{who} got a {stage} request for client {request.client_id} in round {request.round_idx}"
            )
        if self.stage != stage:
            raise SecAggError(
                f"{who} got a {stage} request while expecting {self.stage}: replayed or out of stage"
            )
        if stage != ADVERTISE and request.session != self._session:
            raise SecAggError(f"{who} got a {stage} request of another session (replayed)")
        self._next += 1

    def _check_enough(self, count: int, stage: str, what: str) -> None:
        if count < self._threshold:
            raise SecAggError(
                f"secure aggregation: client {self.client_id} aborts at {stage}: only {count} of its "
                f"{len(self._holders)} holders {what}, below the threshold {self._threshold}"
            )

    def _agree_cipher(self, peer: str) -> bytes:
        # The same agreed secret seals the client's shares for ``peer`` and opens ``peer``'s for it.
        if peer not in self._agreed:
            private = self._cipher.key or self._cipher.private
            self._agreed[peer] = crypto.agree(private, self._peer_keys[peer][0], peer)
        return self._agreed[peer]


def _pack(share: np.ndarray) -> bytes:
    return share.astype("<u4").tobytes()


def _unpack(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<u4").astype(np.int64)


def _rows(shares: list[np.ndarray]) -> np.ndarray:
    return np.stack(shares) if shares else np.empty((0, SHARE_CHUNKS), dtype=np.int64)
