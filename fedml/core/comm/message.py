"""``Message``: the one unit of communication between fedml processes, and the enum of its kinds."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from fedml.errors import TransportError

PROTOCOL_VERSION = 2
"""Version of the wire format; a receiver rejects messages of any other version (2: string peer ids)."""

MAX_PEER_ID = 128
"""Longest peer id, in characters."""

BROADCAST = "*"
"""The receiver of a message meant for every peer (a collective broadcast)."""


class MessageKind(enum.IntEnum):
    """What a message asks for or carries."""

    INIT = 1
    """A peer joins (or rejoins) the run (metadata: the clients it hosts and their sample counts)."""
    SYNC_MODEL = 2
    """The server sends the global state and the clients to train this round."""
    CLIENT_UPDATE = 3
    """A worker returns the updates of the clients it trained."""
    FINISH = 4
    """The server ends the run (metadata: the final metrics)."""
    ERROR = 5
    """A process failed; metadata ``error`` says why."""
    SECURE_AGGREGATION = 6
    """A stage of secure aggregation, both ways (metadata ``stage``; one part per client a peer hosts)."""
    GOSSIP = 7
    """Decentralized training: a peer's node models for its neighbours' gossip step (no server)."""


@dataclass
class Message:
    """One message: its kind, who sends it to whom, for which round, small metadata and named tensors.

    Attributes
    ----------
    kind
        The message kind.
    sender, receiver
        Peer ids of the two ends (an MPI rank as a decimal string, a silo's name, ``BROADCAST``).
    round_idx
        The 0-based round it belongs to; ``-1`` outside rounds.
    metadata
        JSON-able data (numbers, strings, lists, dicts); kept small, tensors go in ``tensors``.
    tensors
        Named tensors, sent as raw bytes with their dtype and shape.
    version
        Protocol version; set by the sender.

    """

    kind: MessageKind
    sender: str
    receiver: str
    round_idx: int = -1
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION

    def describe(self) -> str:
        """Return a short human-readable summary (for log lines)."""
        return (
            f"{self.kind.name} from {self.sender} to {self.receiver} "
            f"(round {self.round_idx}, {len(self.tensors)} tensors)"
        )


def rank_of(peer: str, world_size: int) -> int:
    """Return the rank that the peer id ``peer`` names in a world of ``world_size`` ranks.

    Raises
    ------
    TransportError
        If ``peer`` is not the decimal id of a rank in ``0 .. world_size - 1``.

    """
    # Only the canonical spelling ("3", not "03" or other Unicode digits): one rank, one peer id.
    if not (isinstance(peer, str) and peer.isascii() and peer.isdecimal() and str(int(peer)) == peer):
        raise TransportError(f"no rank {peer!r:.40} (world size {world_size})")
    if int(peer) >= world_size:
        raise TransportError(f"no rank {peer!r:.40} (world size {world_size})")
    return int(peer)
