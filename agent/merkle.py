"""The device's append-only Merkle log of readings (RFC 9162 §2.1 hashing).

leaf = SHA-256(0x00 || record), node = SHA-256(0x01 || left || right), the
empty tree hashes to SHA-256(""). The device keeps only a *compact range*: the
roots of the perfect subtrees that make up the tree, left to right, which is
O(log N) hashes and enough to append and to compute the root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = ["CompactRange", "leaf_hash", "node_hash", "root_of"]

_EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(record: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + record).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """Append-only Merkle tree state of O(log N) hashes."""

    __slots__ = ("_nodes", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if bin(size).count("1") != len(nodes):
            raise ValueError(f"a tree of size {size} has {bin(size).count('1')} subtree roots")
        self.size = size
        self._nodes = list(nodes)

    @property
    def nodes(self) -> tuple[bytes, ...]:
        return tuple(self._nodes)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash; merge equal-sized subtrees (binary carry)."""
        node = leaf
        size = self.size
        while size & 1:  # the rightmost subtree has the same size as the new one
            node = node_hash(self._nodes.pop(), node)
            size >>= 1
        self._nodes.append(node)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The RFC 9162 Merkle Tree Hash of all leaves appended so far."""
        if not self._nodes:
            return _EMPTY_ROOT
        root = self._nodes[-1]
        for node in reversed(self._nodes[:-1]):
            root = node_hash(node, root)
        return root


def root_of(leaves: Sequence[bytes]) -> bytes:
    """Reference MTH by the recursive definition (RFC 9162 §2.1.1); for tests."""
    n = len(leaves)
    if n == 0:
        return _EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two < n
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))
