"""Merkle hashing in bulk: compiled module or pure twin (``native._hashing_py`` defines
the semantics). ``IMPLEMENTATION`` says which one is in use (``native._select``)."""

from __future__ import annotations

from native._select import compiled_available

__all__ = ["IMPLEMENTATION", "leaf_hashes", "perfect_root"]

_PURE = not compiled_available("_hashing")

if not _PURE:
    from native._hashing import leaf_hashes, perfect_root
else:
    from native._hashing_py import leaf_hashes, perfect_root

IMPLEMENTATION: str = "python" if _PURE else "cython"
