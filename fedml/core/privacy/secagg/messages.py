"""The messages of secure aggregation: one dataclass per request and reply of its four stages.

Each converts to and from a ``Message`` that uses only JSON metadata and tensors (bytes as ``uint8``,
ring elements as ``int64``), so it travels through the pickle-free codec over any transport. The
server's requests are ``REQUEST_KIND`` messages and the clients' replies ``REPLY_KIND`` ones; the
metadata names the stage (``sa_advertise``, ``sa_share``, ``sa_masked``, ``sa_unmask``), the round's
session id and the secure-aggregation client (which need not be the transport peer: a worker may
host several clients). ``from_message`` checks the shape of everything and raises ``SecAggError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch

from fedml.core.comm.message import MAX_PEER_ID, Message, MessageKind
from fedml.core.privacy.secagg import field
from fedml.core.privacy.secagg.crypto import KEY_BYTES, SEAL_OVERHEAD
from fedml.core.privacy.secagg.shamir import chunks
from fedml.errors import SecAggError

REQUEST_KIND = MessageKind.SYNC_MODEL
"""Kind of the server's requests (the stage is in the metadata)."""
REPLY_KIND = MessageKind.CLIENT_UPDATE
"""Kind of the clients' replies."""
ADVERTISE, SHARE, MASKED, UNMASK = "sa_advertise", "sa_share", "sa_masked", "sa_unmask"
STAGES = (ADVERTISE, SHARE, MASKED, UNMASK)
"""The four stages of a secure-aggregation round, in order."""
SHARE_CHUNKS = chunks(KEY_BYTES)
"""Field elements in a Shamir share of a 32-byte secret."""
SEALED_BYTES = SEAL_OVERHEAD + 2 * SHARE_CHUNKS * 4
"""Length of one sealed pair of shares (key share and self-mask share, 4 bytes per element)."""
_SESSION = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, eq=False)
class SecAggMessage:
    """What every message of the protocol carries: its round, the round's session id and the client."""

    stage: ClassVar[str]
    kind: ClassVar[MessageKind]
    round_idx: int
    session: bytes
    client_id: str

    def to_message(self, sender: str, receiver: str) -> Message:
        """Return this as a ``Message`` from transport peer ``sender`` to ``receiver``."""
        metadata, tensors = self.payload()
        return Message(self.kind, sender, receiver, self.round_idx, metadata, tensors)

    def payload(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Return the metadata and tensors of ``to_message`` (to put in a transport's own message)."""
        metadata: dict[str, Any] = {
            "stage": self.stage,
            "session": self.session.hex(),
            "client": self.client_id,
        }
        tensors: dict[str, torch.Tensor] = {}
        for spec in fields(self):
            if spec.name in {"round_idx", "session", "client_id"}:
                continue
            value = getattr(self, spec.name)
            if isinstance(value, np.ndarray):
                tensors[spec.name] = torch.from_numpy(np.ascontiguousarray(value))
            elif isinstance(value, tuple):
                metadata[spec.name] = list(value)
            else:
                metadata[spec.name] = value
        return metadata, tensors

    @classmethod
    def from_message(cls, message: Message) -> Any:
        """Rebuild the message from a ``Message``, checking its kind, stage and every field.

        Raises
        ------
        SecAggError
            Naming the stage and sender, if anything is missing or malformed.

        """
        meta, where = message.metadata, f"{cls.stage} message from {message.sender}"
        if message.kind != cls.kind or meta.get("stage") != cls.stage:
            raise SecAggError(
                f"secure aggregation: expected a {cls.stage} {cls.kind.name}, got stage "
                f"{meta.get('stage')!r:.40} ({message.kind.name}) from {message.sender}"
            )
        session, client = meta.get("session"), meta.get("client")
        if not isinstance(session, str) or not _SESSION.fullmatch(session):
            raise SecAggError(f"secure aggregation: {where} has no valid session id")
        values: dict[str, Any] = {
            "round_idx": message.round_idx,
            "session": bytes.fromhex(session),
            "client_id": _client(client, where),
        }
        for spec in fields(cls):
            if spec.name not in values:
                values[spec.name] = cls._read(spec.name, message, where)
        result = cls(**values)
        result.check(where)
        return result

    @classmethod
    def _read(cls, name: str, message: Message, where: str) -> Any:
        kinds = _FIELDS[name]
        if kinds == "ids":
            ids = message.metadata.get(name)
            if not isinstance(ids, list):
                raise SecAggError(f"secure aggregation: {where} lacks the list {name!r}")
            return tuple(_client(i, where) for i in ids)
        if kinds == "str":
            text = message.metadata.get(name)
            if not isinstance(text, str):
                raise SecAggError(f"secure aggregation: {where} lacks the text {name!r}")
            return text
        if kinds == "int":
            value = message.metadata.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SecAggError(f"secure aggregation: {where} lacks the count {name!r}")
            return value
        tensor = message.tensors.get(name)
        if tensor is None or tensor.dtype != kinds:
            raise SecAggError(f"secure aggregation: {where} lacks the {kinds} tensor {name!r}")
        return tensor.detach().to("cpu").contiguous().numpy()

    def check(self, where: str) -> None:
        """Raise ``SecAggError`` if the fields do not fit together (each message checks its own)."""


@dataclass(frozen=True, eq=False)
class AdvertiseRequest(SecAggMessage):
    """Server -> client: start the round; ``clients`` take part, on these ``terms``, with these neighbours."""

    stage = ADVERTISE
    kind = REQUEST_KIND
    clients: int
    terms: str
    neighbours: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class AdvertiseKeys(SecAggMessage):
    """Client -> server: the client's two public keys, ``keys[0]`` to seal shares, ``keys[1]`` to mask."""

    stage = ADVERTISE
    kind = REPLY_KIND
    keys: np.ndarray

    def check(self, where: str) -> None:
        """Check that there are two 32-byte keys."""
        _shape(self.keys, (2, KEY_BYTES), where)


@dataclass(frozen=True, eq=False)
class ShareRequest(SecAggMessage):
    """Server -> client: the public keys (``keys[i]``: two rows) of its neighbours that advertised."""

    stage = SHARE
    kind = REQUEST_KIND
    peers: tuple[str, ...]
    keys: np.ndarray

    def check(self, where: str) -> None:
        """Check one pair of keys per peer."""
        _shape(self.keys, (len(self.peers), 2, KEY_BYTES), where)


@dataclass(frozen=True, eq=False)
class ShareKeys(SecAggMessage):
    """Client -> server: its shares for each receiver, sealed so that only that receiver can read them."""

    stage = SHARE
    kind = REPLY_KIND
    receivers: tuple[str, ...]
    sealed: np.ndarray

    def check(self, where: str) -> None:
        """Check one sealed pair of shares per receiver."""
        _shape(self.sealed, (len(self.receivers), SEALED_BYTES), where)


@dataclass(frozen=True, eq=False)
class MaskedRequest(SecAggMessage):
    """Server -> client: the sealed shares the client's neighbours made for it, by sender."""

    stage = MASKED
    kind = REQUEST_KIND
    senders: tuple[str, ...]
    sealed: np.ndarray

    def check(self, where: str) -> None:
        """Check one sealed pair of shares per sender."""
        _shape(self.sealed, (len(self.senders), SEALED_BYTES), where)


@dataclass(frozen=True, eq=False)
class MaskedInput(SecAggMessage):
    """Client -> server: its quantized, weighted update with the weight appended, masked (ring elements)."""

    stage = MASKED
    kind = REPLY_KIND
    masked: np.ndarray

    def check(self, where: str) -> None:
        """Check that it is a non-empty vector."""
        if self.masked.ndim != 1 or len(self.masked) < 2:
            raise SecAggError(f"secure aggregation: {where} has a masked input of shape {self.masked.shape}")

    def elements(self) -> np.ndarray:
        """Return the masked vector as ring elements (``uint64``)."""
        return field.from_tensor(torch.from_numpy(self.masked))


@dataclass(frozen=True, eq=False)
class UnmaskRequest(SecAggMessage):
    """Server -> client: which of the clients whose shares it holds sent their masked input."""

    stage = UNMASK
    kind = REQUEST_KIND
    survivors: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class UnmaskShares(SecAggMessage):
    """Client -> server: self-mask shares of survivors and key shares of dropouts, never both for one."""

    stage = UNMASK
    kind = REPLY_KIND
    mask_owners: tuple[str, ...]
    mask_shares: np.ndarray
    key_owners: tuple[str, ...]
    key_shares: np.ndarray

    def check(self, where: str) -> None:
        """Check one share per owner and that no owner gets both kinds."""
        _shape(self.mask_shares, (len(self.mask_owners), SHARE_CHUNKS), where)
        _shape(self.key_shares, (len(self.key_owners), SHARE_CHUNKS), where)
        both = set(self.mask_owners) & set(self.key_owners)
        if both:
            raise SecAggError(f"secure aggregation: {where} reveals both shares of client {min(both)}")


_FIELDS: dict[str, Any] = {
    "clients": "int",
    "terms": "str",
    "neighbours": "ids",
    "peers": "ids",
    "receivers": "ids",
    "senders": "ids",
    "survivors": "ids",
    "mask_owners": "ids",
    "key_owners": "ids",
    "keys": torch.uint8,
    "sealed": torch.uint8,
    "masked": torch.int64,
    "mask_shares": torch.int64,
    "key_shares": torch.int64,
}


def _client(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PEER_ID:
        raise SecAggError(f"secure aggregation: {where} names an invalid client {value!r:.40}")
    return value


def _shape(array: np.ndarray, shape: tuple[int, ...], where: str) -> None:
    if array.shape != shape:
        raise SecAggError(
            f"secure aggregation: {where} has a tensor of shape {array.shape}, expected {shape}"
        )
