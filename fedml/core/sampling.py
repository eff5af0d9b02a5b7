"""Seeded randomness of a round: which clients take part and how each one shuffles its data.

Every draw comes from a generator derived from ``(seed, round, client)``, never from a global RNG, so
any process on any backend reproduces the same choices in any order.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch

_SAMPLING_STREAM = 0x5A3B1E
_SHUFFLE_STREAM = 0x5BF1E


def sample_clients(
    seed: int, round_idx: int, client_num_in_total: int, client_num_per_round: int
) -> list[int]:
    """Return the sorted client indices that take part in round ``round_idx``.

    All clients take part when ``client_num_per_round >= client_num_in_total``; otherwise the choice is
    uniform without replacement and depends only on ``(seed, round_idx)``.
    """
    if client_num_per_round >= client_num_in_total:
        return list(range(client_num_in_total))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SAMPLING_STREAM, round_idx]))
    chosen = rng.choice(client_num_in_total, size=client_num_per_round, replace=False)
    return sorted(int(c) for c in chosen)


def client_generator(seed: int, round_idx: int, client_idx: int) -> torch.Generator:
    """Return a CPU ``torch.Generator`` for client ``client_idx``'s data shuffling in round ``round_idx``.

    The seed is a BLAKE2b hash of ``(seed, round, client)``: well mixed like ``numpy.SeedSequence`` and
    ten times cheaper, which counts when a round trains thousands of clients.
    """
    return torch.Generator().manual_seed(client_seed(seed, round_idx, client_idx))


def client_seed(seed: int, round_idx: int, client_idx: int) -> int:
    """Return the seed of ``client_generator(seed, round_idx, client_idx)``.

    A caller shuffling many clients in a row seeds one generator with each in turn instead of making
    a generator per client.
    """
    words = (seed, _SHUFFLE_STREAM, round_idx, client_idx)
    key = struct.pack("<4Q", *(w & 0xFFFF_FFFF_FFFF_FFFF for w in words))
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
