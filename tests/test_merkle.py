"""The compact-range Merkle log agrees with RFC 9162's recursive definition."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from agent.evidence.merkle import CompactRange, leaf_hash, node_hash, root_of


def test_empty_and_small_trees_match_rfc9162_definitions():
    assert CompactRange().root() == hashlib.sha256(b"").digest()
    a, b, c = (leaf_hash(bytes([i])) for i in range(3))
    assert a == hashlib.sha256(b"\x00\x00").digest()
    r = CompactRange()
    r.extend([a, b, c])
    assert r.root() == node_hash(node_hash(a, b), c)
    assert len(r.nodes) == 2  # subtrees of size 2 and 1


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=300))
def test_compact_range_root_equals_reference_and_survives_a_restart(n, m):
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n + m)]
    r = CompactRange()
    r.extend(leaves[:n])
    restored = CompactRange(r.size, r.nodes)  # what the store persists
    restored.extend(leaves[n:])
    assert restored.size == n + m
    assert len(restored.nodes) == bin(n + m).count("1")
    assert restored.root() == root_of(leaves)
