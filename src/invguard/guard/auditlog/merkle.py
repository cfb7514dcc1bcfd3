"""RFC 6962 (section 2.1) Merkle tree hashes over the log's record lines.

Leaf hash ``SHA-256(0x00 || line)``, interior node ``SHA-256(0x01 || left || right)``, a tree of n
leaves split at the largest power of two smaller than n; the empty tree hashes to ``SHA-256("")``.
A checkpoint signs the root of every record so far, so a signed tree of size m is consistent with
a log (in the sense of RFC 6962 section 2.1.2) exactly when the log's first m record lines hash to
that root: the verifier, which reads every line, checks that directly.
"""

from __future__ import annotations

import hashlib
from typing import Any

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 section 2.1 defines it (recursive; the reference for tests)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two < n
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


class MerkleAccumulator:
    """Incremental RFC 6962 tree hash: keeps one root per perfect subtree (O(log n) state).

    A tree of size n splits into perfect subtrees of the sizes of n's binary digits, largest
    first; the RFC's recursive split makes the root the right fold of those subtree roots.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        h, height = leaf_hash(data), 0
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            h, height = node_hash(left, h), height + 1
        self._stack.append((height, h))
        self.size += 1

    def frontier(self) -> list[list[Any]]:
        return [[h, r.hex()] for h, r in self._stack]

    @classmethod
    def from_frontier(cls, frontier: Any, size: int) -> MerkleAccumulator:
        """Rebuild the state from a checkpoint's ``frontier`` (raises ValueError if malformed)."""
        acc = cls()
        if not isinstance(frontier, list):
            raise ValueError("frontier is not a list")
        for item in frontier:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
                raise ValueError("frontier entries must be [height, hash]")
            acc._stack.append((int(item[0]), bytes.fromhex(str(item[1]))))
        if sum(1 << h for h, _ in acc._stack) != size:
            raise ValueError("frontier does not describe a tree of the checkpoint's size")
        acc.size = size
        return acc

    def copy(self) -> MerkleAccumulator:
        acc = MerkleAccumulator()
        acc._stack = list(self._stack)
        acc.size = self.size
        return acc

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        r = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            r = node_hash(h, r)
        return r
