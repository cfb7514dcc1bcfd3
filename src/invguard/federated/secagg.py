"""Secure aggregation with pairwise masks that cancel (Bonawitz et al., "Practical Secure
Aggregation for Privacy-Preserving Machine Learning", CCS 2017).

Each pair of clients (i, j) agrees on a shared secret by X25519 Diffie-Hellman key agreement over
their public keys, derives a seed from it (HKDF-SHA256) and expands the seed with a PRG into a
mask vector. Client i sends ``y_i = enc(x_i) + sum_{j > i} m_ij - sum_{j < i} m_ji`` (mod 2**64),
where ``enc`` is a fixed-point encoding of its update; every mask enters the sum once with each
sign, so ``sum_i y_i = sum_i enc(x_i)`` exactly, and the server, which sees only the ``y_i``,
learns the sum and nothing else about any single update (each ``y_i`` alone is uniformly
distributed). What the simulation leaves out: client dropouts, and with them the protocol's
second (self) mask and the Shamir shares of the seeds that let the server unmask the survivors'
sum. Every simulated client reports, so the pairwise masks alone already cancel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

U64 = NDArray[np.uint64]

#: fractional bits of the fixed-point encoding (resolution 2**-24, range +-2**39 per coordinate)
FRACTION_BITS = 24


def encode(x: NDArray[np.floating], bits: int = FRACTION_BITS) -> U64:
    """Fixed-point encode real values into the ring Z/2**64 (two's complement)."""
    q = np.round(np.asarray(x, dtype=np.float64) * float(2**bits)).astype(np.int64)
    return q.view(np.uint64)


def decode(v: U64, bits: int = FRACTION_BITS) -> NDArray[np.float64]:
    """Inverse of :func:`encode` (for a sum of encodings: the sum of the values)."""
    out: NDArray[np.float64] = np.asarray(v, dtype=np.uint64).view(np.int64).astype(np.float64) / float(
        2**bits
    )
    return out


@dataclass
class SecAggClient:
    """One client's key pair and its side of the protocol."""

    index: int
    private_key: bytes

    @property
    def public_key(self) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        pk = X25519PrivateKey.from_private_bytes(self.private_key).public_key()
        return pk.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def _mask(self, peer_public: bytes, size: int, round: int) -> U64:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        shared = X25519PrivateKey.from_private_bytes(self.private_key).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
        seed = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"invguard-secagg-round-%d" % round
        ).derive(shared)
        prg = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "little")))
        mask: U64 = prg.integers(0, 2**64, size=size, dtype=np.uint64, endpoint=False)
        return mask

    def masked(self, update: NDArray[np.floating], peers: Sequence[bytes], round: int) -> U64:
        """``enc(update)`` plus the masks shared with every other client (``peers[j]`` is client j's
        public key; ``peers[self.index]`` is skipped)."""
        flat = np.asarray(update, dtype=np.float64).ravel()
        y = encode(flat)
        with np.errstate(over="ignore"):
            for j, pk in enumerate(peers):
                if j == self.index:
                    continue
                m = self._mask(pk, flat.size, round)
                y = y + m if self.index < j else y - m  # uint64 arithmetic wraps: the ring Z/2**64
        return y


def make_clients(n: int, rng: np.random.Generator) -> list[SecAggClient]:
    """``n`` clients with X25519 private keys drawn from ``rng`` (seeded runs reproduce)."""
    return [SecAggClient(i, rng.bytes(32)) for i in range(n)]


def unmask_sum(masked: Sequence[U64]) -> NDArray[np.float64]:
    """The server's side: add the masked vectors (mod 2**64); the masks cancel, the sum is decoded."""
    with np.errstate(over="ignore"):
        total = np.zeros_like(masked[0])
        for y in masked:
            total = total + y
    return decode(total)
