"""The cryptography of secure aggregation: X25519 key agreement, HKDF, ChaCha20 masks, sealed shares.

Every primitive comes from the ``cryptography`` package (OpenSSL): X25519 for key agreement,
HKDF-SHA256 to turn an agreed secret into a key for one purpose (the round's session id as the salt,
the purpose and the parties in the info), ChaCha20 to expand a key into a mask of any length (the
keystream viewed as ``uint64`` ring elements, so expansion is one OpenSSL call and a numpy view), and
ChaCha20-Poly1305 to seal Shamir shares, with the session, round, stage, sender and receiver as
associated data: a share that was altered, moved to another pair of clients or replayed from another
round fails to open.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedml.errors import SecAggError

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "secure aggregation needs the 'cryptography' package, which is not installed; install it "
        'with: pip install "fedml[grpc]" (or pip install cryptography)'
    ) from exc

RandomBytes = Callable[[int], bytes]
"""A source of random bytes: ``os.urandom`` in real rounds, a seeded generator's ``bytes`` in tests."""
KEY_BYTES = 32
"""Length of X25519 keys, seeds and symmetric keys."""
NONCE_BYTES = 12
"""Length of a ChaCha20-Poly1305 nonce, stored in front of each sealed share."""
SEAL_OVERHEAD = NONCE_BYTES + 16
"""Bytes a sealed share adds to its plaintext (nonce and tag)."""
_ZERO_NONCE = bytes(16)


def random_source(rng: np.random.Generator | None) -> RandomBytes:
    """Return ``os.urandom`` for ``None``, else ``rng.bytes`` (reproducible, for tests and benchmarks only).

    A seeded generator makes every key and mask reproducible by whoever knows the seed, so real
    rounds must leave it ``None``.
    """
    return os.urandom if rng is None else rng.bytes


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair: the raw 32-byte keys, and the private key parsed once for agreements."""

    private: bytes
    public: bytes
    key: X25519PrivateKey | None = None


def generate_keypair(random_bytes: RandomBytes) -> KeyPair:
    """Return a fresh X25519 key pair drawn from ``random_bytes``."""
    private = X25519PrivateKey.from_private_bytes(random_bytes(KEY_BYTES))
    return KeyPair(private.private_bytes_raw(), private.public_key().public_bytes_raw(), private)


def parse_private(private: bytes) -> tuple[X25519PrivateKey, bytes]:
    """Return a raw X25519 private key parsed, and its public key (to check a reconstructed key)."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key, key.public_key().public_bytes_raw()


def agree(private: bytes | X25519PrivateKey, public: bytes, peer: str) -> bytes:
    """Return the X25519 shared secret of ``private`` and ``peer``'s ``public`` key.

    Pass the parsed key (``KeyPair.key``) where one private key agrees with many peers: parsing a raw
    key costs as much as the agreement itself.

    Raises
    ------
    SecAggError
        If the public key is malformed or of low order (the agreed secret would be all zeros).

    """
    key = private if isinstance(private, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(private)
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise SecAggError(f"secure aggregation: client {peer} sent an invalid public key ({exc})") from exc


def derive_key(secret: bytes, session: bytes, purpose: str, context: Sequence[str | int]) -> bytes:
    """Return a 32-byte key for ``purpose`` and ``context`` from ``secret`` (HKDF-SHA256).

    The context items are length-prefixed, so no two different contexts share an encoding.
    """
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=session, info=_label(purpose, context)).derive(secret)


def associated_data(session: bytes, context: Sequence[str | int]) -> bytes:
    """Return the associated data that binds a sealed share to its session, round, stage and parties."""
    return _label("fedml-secagg/seal", context) + session


def expand(key: bytes, length: int) -> np.ndarray:
    """Return ``length`` ring elements (``uint64``) of the ChaCha20 keystream of ``key`` (nonce 0).

    Each key expands exactly one mask, so the fixed nonce is never reused with a key.
    """
    encryptor = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * length)), dtype=np.uint64)


def add_mask(accumulator: np.ndarray, key: bytes, sign: int) -> None:
    """Add (``sign=1``) or subtract (``sign=-1``) the mask of ``key`` to ``accumulator``, in place."""
    mask = expand(key, len(accumulator))
    if sign > 0:
        np.add(accumulator, mask, out=accumulator)
    else:
        np.subtract(accumulator, mask, out=accumulator)


def seal(key: bytes, plaintext: bytes, associated: bytes, random_bytes: RandomBytes) -> bytes:
    """Return ``plaintext`` sealed with ChaCha20-Poly1305 under ``key``: nonce, ciphertext and tag."""
    nonce = random_bytes(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes, what: str) -> bytes:
    """Return the plaintext of ``sealed``; ``what`` names it in the error.

    Raises
    ------
    SecAggError
        If it was altered, sealed for another session, round, stage or pair of clients, or truncated.

    """
    if len(sealed) < SEAL_OVERHEAD:
        raise SecAggError(f"secure aggregation: {what} is truncated ({len(sealed)} bytes)")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag as exc:
        raise SecAggError(
            f"secure aggregation: {what} fails authentication (altered, replayed or misdirected)"
        ) from exc


def _label(purpose: str, context: Sequence[str | int]) -> bytes:
    parts = [purpose.encode(), *(str(item).encode("utf-8") for item in context)]
    return b"".join(struct.pack("<H", len(part)) + part for part in parts)
