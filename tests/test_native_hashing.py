"""native.hashing: the compiled module (OpenSSL's SHA-256 from C) against its pure twin,
and both against the RFC 9162 definitions written out with hashlib."""

from __future__ import annotations

import hashlib
import importlib
import random

import pytest

import native._hashing_py as pure

# a build failure is a test failure (`make` installs libssl-dev where it is missing)
compiled = importlib.import_module("native._hashing")
TWINS = [pure, compiled]


@pytest.mark.parametrize("mod", TWINS, ids=lambda m: m.__name__)
def test_leaf_hashes_are_sha256_of_zero_and_each_record(mod: object) -> None:
    rnd = random.Random(7)
    for stride in (1, 16, 63, 64, 65, 83, 200):
        for n in (0, 1, 2, 7, 64, 129):
            blob = rnd.randbytes(stride * n)
            want = b"".join(
                hashlib.sha256(b"\x00" + blob[i : i + stride]).digest()
                for i in range(0, len(blob), stride)
            )
            assert mod.leaf_hashes(blob, stride) == want  # type: ignore[attr-defined]


@pytest.mark.parametrize("mod", TWINS, ids=lambda m: m.__name__)
def test_perfect_root_is_the_recursive_merkle_tree_hash(mod: object) -> None:
    def mth(hs: list[bytes]) -> bytes:
        if len(hs) == 1:
            return hs[0]
        k = len(hs) // 2
        return hashlib.sha256(b"\x01" + mth(hs[:k]) + mth(hs[k:])).digest()

    rnd = random.Random(8)
    for k in range(0, 11):
        hs = [rnd.randbytes(32) for _ in range(1 << k)]
        assert mod.perfect_root(b"".join(hs)) == mth(hs)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mod", TWINS, ids=lambda m: m.__name__)
def test_bad_sizes_are_refused_by_both(mod: object) -> None:
    with pytest.raises(ValueError, match="not records of 10"):
        mod.leaf_hashes(b"x" * 25, 10)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="not records of 0"):
        mod.leaf_hashes(b"", 0)  # type: ignore[attr-defined]
    for size in (0, 31, 96):
        with pytest.raises(ValueError, match="not a power of two"):
            mod.perfect_root(b"\x00" * size)  # type: ignore[attr-defined]
