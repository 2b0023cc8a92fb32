"""Merkle hashing in bulk (RFC 9162 §2.1): the pure-Python twin of ``native._hashing``.

It defines the semantics; the compiled module computes the same bytes with OpenSSL's
SHA-256 from C, without one Python call per hash (a window of 5,000 readings needs
~15,000 SHA-256 calls: its leaves, the log's new subtrees and the consistency proof).

* :func:`leaf_hashes`: ``SHA-256(0x00 || record)`` of each ``stride``-byte record of a
  blob, concatenated (32 bytes each).
* :func:`perfect_root`: the Merkle Tree Hash of a power-of-two number of leaf hashes
  (concatenated), level by level: ``node = SHA-256(0x01 || left || right)``.
"""

from __future__ import annotations

import hashlib

__all__ = ["leaf_hashes", "perfect_root"]


def leaf_hashes(blob: bytes, stride: int) -> bytes:
    """The leaf hashes of the records in ``blob`` (``stride`` bytes each), concatenated."""
    if stride <= 0 or len(blob) % stride:
        raise ValueError(f"a blob of {len(blob)} bytes is not records of {stride}")
    mv = memoryview(blob)
    prefix = hashlib.sha256(b"\x00")
    out = bytearray()
    for i in range(0, len(blob), stride):
        h = prefix.copy()
        h.update(mv[i : i + stride])
        out += h.digest()
    return bytes(out)


def perfect_root(hashes: bytes) -> bytes:
    """MTH of the 32-byte hashes in ``hashes``, a power of two of them."""
    n = len(hashes) // 32
    if n < 1 or len(hashes) % 32 or n & (n - 1):
        raise ValueError(f"{len(hashes)} bytes are not a power of two of 32-byte hashes")
    sha = hashlib.sha256
    level = [hashes[i : i + 32] for i in range(0, len(hashes), 32)]
    while len(level) > 1:
        level = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]
