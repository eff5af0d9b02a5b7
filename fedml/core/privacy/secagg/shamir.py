"""Shamir secret sharing of byte strings over the prime field ``GF(2**31 - 1)``, vectorized with numpy.

A secret of ``L`` bytes is cut into ``ceil(L / 3)`` chunks of 24 bits, each below the prime, and every
chunk is shared with its own random polynomial of degree ``threshold - 1``; the ``m``-th holder's share
is the vector of the polynomials' values at ``x = m`` (``1 <= m < 2**31 - 1``). Any ``threshold`` shares
give the secret back by Lagrange interpolation at 0; fewer reveal nothing about it (each chunk is
shared independently, so the information-theoretic argument holds chunk by chunk). Field elements are
kept in ``int64``: the product of two is below ``2**62``, so no step can overflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from fedml.errors import SecAggError

PRIME = (1 << 31) - 1
"""The Mersenne prime ``2**31 - 1``: the field Shamir shares live in."""
CHUNK_BYTES = 3
"""Bytes of the secret per field element (24 bits, below ``PRIME``)."""


def chunks(length: int) -> int:
    """Return how many field elements a share of a ``length``-byte secret has."""
    return -(-length // CHUNK_BYTES)


def split(secret: bytes, holders: int, threshold: int, random_bytes: Callable[[int], bytes]) -> np.ndarray:
    """Share ``secret`` among ``holders`` so that any ``threshold`` of the shares recover it.

    Parameters
    ----------
    secret
        The bytes to share.
    holders
        How many shares to make; share ``m`` (0-based row) belongs to the point ``x = m + 1``.
    threshold
        How many shares recover the secret (``1 <= threshold <= holders``).
    random_bytes
        Source of the polynomials' coefficients (``os.urandom`` outside tests). Each coefficient is
        64 random bits reduced modulo the prime, a bias below ``2**-32``.

    Returns
    -------
    numpy.ndarray
        ``int64`` of shape ``(holders, chunks(len(secret)))``.

    Raises
    ------
    SecAggError
        If the threshold is not in ``1 .. holders`` or there are more holders than field points.

    """
    if not 1 <= threshold <= holders < PRIME:
        raise SecAggError(f"Shamir sharing needs 1 <= threshold ({threshold}) <= holders ({holders})")
    padded = secret + bytes(-len(secret) % CHUNK_BYTES)
    raw = np.frombuffer(padded, dtype=np.uint8).reshape(-1, CHUNK_BYTES).astype(np.int64)
    values = (raw[:, 0] << 16) | (raw[:, 1] << 8) | raw[:, 2]
    count = (threshold - 1) * len(values)
    noise = np.frombuffer(random_bytes(8 * count), dtype=np.uint64) % np.uint64(PRIME)
    coefficients = noise.astype(np.int64).reshape(threshold - 1, len(values))
    xs = np.arange(1, holders + 1, dtype=np.int64)[:, None]
    # Horner's rule from the highest coefficient down; the constant term is the secret.
    shares = np.zeros((holders, len(values)), dtype=np.int64)
    for coefficient in coefficients[::-1]:
        shares = (shares + coefficient) * xs % PRIME
    return (shares + values) % PRIME


def combine(points: Sequence[int], shares: np.ndarray, length: int) -> bytes:
    """Return the ``length``-byte secret whose shares at ``points`` are the rows of ``shares``.

    Every share given is used, so pass exactly ``threshold`` of them: more would still interpolate
    (a polynomial of higher degree through them) but say nothing more, fewer give a wrong secret.

    Raises
    ------
    SecAggError
        If the points repeat or lie outside the field, or the shares do not have one row per point
        and ``chunks(length)`` columns of field elements.

    Examples
    --------
    >>> import os
    >>> shares = split(b"secret", holders=5, threshold=3, random_bytes=os.urandom)
    >>> combine([2, 4, 5], shares[[1, 3, 4]], 6)
    b'secret'

    """
    shares = np.asarray(shares)
    if shares.shape != (len(points), chunks(length)) or shares.dtype != np.int64:
        raise SecAggError(
            f"Shamir shares of shape {shares.shape} ({shares.dtype}) do not fit {len(points)} points "
            f"of a {length}-byte secret"
        )
    if len(set(points)) != len(points) or not all(0 < x < PRIME for x in points):
        raise SecAggError(f"Shamir points must be distinct and in 1 .. {PRIME - 1}")
    if ((shares < 0) | (shares >= PRIME)).any():
        raise SecAggError("a Shamir share is not a field element")
    weights = np.asarray(_lagrange_at_zero(tuple(points)), dtype=np.int64)
    # Each product of two field elements is below 2**62 and each reduced term below 2**31, so the
    # column sums of fewer than 2**32 terms stay exact in int64.
    total = (weights[:, None] * shares % PRIME).sum(axis=0) % PRIME
    if (total >= 1 << 24).any():
        raise SecAggError("Shamir shares are inconsistent (a recovered chunk is out of range)")
    raw = np.stack([total >> 16, (total >> 8) & 0xFF, total & 0xFF], axis=1).astype(np.uint8)
    return raw.tobytes()[:length]


@lru_cache(maxsize=256)
def _lagrange_at_zero(points: tuple[int, ...]) -> tuple[int, ...]:
    """Return the Lagrange basis values at 0 for ``points``; cached, as many secrets share one set."""
    weights = []
    for j, xj in enumerate(points):
        numerator, denominator = 1, 1
        for m, xm in enumerate(points):
            if m != j:
                numerator = numerator * xm % PRIME
                denominator = denominator * (xm - xj) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)
