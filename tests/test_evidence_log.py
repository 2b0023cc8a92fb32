"""The device log of readings: salted leaves, consistency between checkpoints, proofs."""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import subprocess
import sys

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audit import verify_paths
from agent.audit.prove import check_proof, make_proof
from agent.errors import StorageError, VerificationError
from agent.evidence.claims import parse_claims
from agent.evidence.cose import decode_sign1
from agent.evidence.leaves import decode_record, encode_records
from agent.evidence.merkle import (
    CompactRange,
    ProofError,
    RangeHasher,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from agent.evidence.store import EvidenceStore
from tests.evidence_util import make_stream, readings, write

# transparency-dev/merkle testonly/constants.go: leaf inputs and roots for sizes 1..8
TD_LEAVES = [bytes.fromhex(x) for x in ("", "00", "10", "2021", "3031", "40414243",
             "5051525354555657", "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
TD_ROOTS = {
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


def _b(s: str) -> bytes:
    return base64.b64decode(s)


def test_roots_match_the_transparency_dev_reference_tree():
    hashes = [leaf_hash(x) for x in TD_LEAVES]
    for size, root in TD_ROOTS.items():
        r = CompactRange()
        r.extend(hashes[:size])
        assert r.root().hex() == root


def test_proofs_equal_the_transparency_dev_vectors_byte_for_byte():
    hashes = [leaf_hash(x) for x in TD_LEAVES]
    front = CompactRange()
    front.extend(hashes[:6])
    rh = RangeHasher(front, hashes[6:8])
    # testdata/consistency/2/happy-path.json: 6 -> 8
    want = ["DrxdNDf74tsVi58Sah0RjjCBgQMdCpSfje3t68VY72o=",
            "yoVOoSjtBQtBs1/8G4e46yveRh6eO1WW7Oa51ZdaCuA=",
            "037kGJdt2VdTwcc4Yrk5j6Kiz5tP8P3+izDNlSCWFLc="]  # fmt: skip
    assert rh.consistency_proof() == [_b(x) for x in want]
    root6 = _b("duZ9rbzfHhDht03cYIq9L5jfsW+851J3tSMqEn8gh+8=")
    root8 = _b("XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=")
    verify_consistency(6, 8, root6, root8, [_b(x) for x in want])
    with pytest.raises(ProofError):
        verify_consistency(6, 8, root8, root6, [_b(x) for x in want])  # swapped roots
    with pytest.raises(ProofError):
        verify_consistency(6, 8, root6, root8, [_b(x) for x in want[:2]])  # truncated
    with pytest.raises(ProofError):
        verify_consistency(0, 8, root6, root8, [])  # from size 0: always an error
    # testdata/inclusion/4/happy-path.json: leaf 1 of 5 (verified with our verifier)
    proof = [_b("bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0="),
             _b("Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4="),
             _b("vBoGQ7EuTS18d5GPROD095qDi2z57FtcKD4fTYhZnms=")]  # fmt: skip
    root5 = _b("Tju7H3tHjc/nH7YxYxUZo7yhLJrvyhYSv85ME6hiZNQ=")
    verify_inclusion(1, 5, hashes[1], proof, root5)
    for bad in (proof[:2], proof + [proof[0]], [proof[1], proof[0], proof[2]]):
        with pytest.raises(ProofError):
            verify_inclusion(1, 5, hashes[1], bad, root5)
    with pytest.raises(ProofError):
        verify_inclusion(5, 5, hashes[1], proof, root5)  # index >= size


def _independent_inclusion(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH, straight from the recursive definition (all leaves)."""
    n = len(leaves)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if index < k:
        return _independent_inclusion(index, leaves[:k]) + [root_of(leaves[k:])]
    return _independent_inclusion(index - k, leaves[k:]) + [root_of(leaves[:k])]


def _independent_consistency(m: int, leaves: list[bytes], complete: bool = True) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF from the recursive definition."""
    n = len(leaves)
    if m == n:
        return [] if complete else [root_of(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return _independent_consistency(m, leaves[:k], complete) + [root_of(leaves[k:])]
    return _independent_consistency(m - k, leaves[k:], False) + [root_of(leaves[:k])]


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=90), st.integers(min_value=0, max_value=90))
def test_window_proofs_from_the_frontier_equal_proofs_from_all_leaves(old, new):
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(old + new)]
    front = CompactRange()
    front.extend(leaves[:old])
    rh = RangeHasher(front, leaves[old:])  # O(log N) old state + the window only
    root = root_of(leaves)
    if 0 < old < old + new:
        proof = rh.consistency_proof()
        assert proof == _independent_consistency(old, leaves)
        verify_consistency(old, old + new, root_of(leaves[:old]), root, proof)
    for i in range(old, old + new):
        p = rh.inclusion_proof(i)
        assert p == _independent_inclusion(i, leaves)
        assert len(p) <= max(1, (old + new - 1).bit_length())  # ceil(log2 N)
        verify_inclusion(i, old + new, leaves[i], p, root)


def test_leaves_are_salted_per_window_and_records_round_trip():
    rs = readings(1000, 4)
    a = encode_records(10, b"s" * 32, rs)
    b = encode_records(10, b"t" * 32, rs)
    assert a != b  # same readings, another window secret: other leaves
    rec = decode_record(a[2])
    assert rec.index == 12 and rec.received_ms == rs[2].received_ms
    assert rec.values == rs[2].values and len(rec.salt) == 16
    assert len({decode_record(r).salt for r in a}) == 4  # every leaf has its own salt


def test_each_attestation_carries_a_consistency_proof_from_the_previous_checkpoint(
    tmp_path, signer
):
    msgs = make_stream(tmp_path / "e.sqlite", signer, windows=4)
    evs = [parse_claims(decode_sign1(m).claims()) for m in msgs]
    assert evs[0].checkpoint.prev_size == 0 and evs[0].checkpoint.consistency == ()
    for a, b in zip(evs, evs[1:]):
        assert b.checkpoint.prev_size == a.checkpoint.size
        verify_consistency(
            a.checkpoint.size, b.checkpoint.size, a.checkpoint.root, b.checkpoint.root,
            b.checkpoint.consistency,
        )  # fmt: skip
    assert verify_paths([write(tmp_path / "f", msgs)], [signer.public]).ok


def test_device_state_is_log_n_hashes_plus_the_window(tmp_path, signer):
    make_stream(tmp_path / "e.sqlite", signer, windows=6, per_window=40)
    st_ = EvidenceStore(tmp_path / "e.sqlite", "gw-1")
    size = st_.state.log.size
    assert len(st_.state.log.nodes) == bin(size).count("1") <= size.bit_length()


def test_prove_a_reading_and_check_it_offline(tmp_path, signer):
    db = tmp_path / "e.sqlite"
    make_stream(db, signer, windows=5)
    for index in (0, 9, 23):
        proof = make_proof(db, index)
        got = check_proof(proof, [signer.public])
        assert got.reading.index == index
        assert got.proof_hashes <= (got.evidence.checkpoint.size - 1).bit_length()
        # The proof reveals this reading, not its neighbours: only one record inside.
        p = cbor2.loads(proof)
        assert sorted(p) == [1, 2, 3, 4, 5] and decode_record(p[1]).index == index
    p = cbor2.loads(make_proof(db, 9))
    other = cbor2.loads(make_proof(db, 10))
    for forged in (
        {**p, 1: other[1]},  # another reading under this index
        {**p, 2: 10},  # the right reading, the wrong index
        {**p, 4: p[4][:-1]},  # a hash dropped from the path
    ):
        with pytest.raises(VerificationError):
            check_proof(cbor2.dumps(forged), [signer.public])


def test_retention_removes_old_readings_and_their_proofs_honestly(tmp_path, signer):
    db = tmp_path / "e.sqlite"
    make_stream(db, signer, windows=5, retention_ms=2500)
    with pytest.raises(StorageError, match="not retained"):
        make_proof(db, 0)
    last = EvidenceStore(db, "gw-1").state.log.size - 1
    assert check_proof(make_proof(db, last), [signer.public]).reading.index == last


def test_lost_state_starts_a_new_declared_log(tmp_path, signer):
    db = tmp_path / "e.sqlite"
    old = make_stream(db, signer, windows=2)
    for suffix in ("", "-wal", "-shm"):
        os.unlink(str(db) + suffix) if os.path.exists(str(db) + suffix) else None
    new = make_stream(db, signer, windows=2, start_ms=1_800_000_000_000)
    o = {parse_claims(decode_sign1(m).claims()).checkpoint.origin for m in old}
    n = {parse_claims(decode_sign1(m).claims()).checkpoint.origin for m in new}
    assert o.isdisjoint(n)
    ev = parse_claims(decode_sign1(new[0]).claims())
    assert ev.seq == 0 and ev.prev is None and ev.checkpoint.prev_size == 0


def test_restart_continues_the_log_with_a_higher_bootcount(tmp_path, signer):
    db = tmp_path / "e.sqlite"
    first = make_stream(db, signer, windows=2)
    second = make_stream(db, signer, windows=2, start_ms=1_700_000_100_000)
    evs = [parse_claims(decode_sign1(m).claims()) for m in first + second]
    assert [e.seq for e in evs] == [0, 1, 2, 3]
    assert evs[2].bootcount == evs[1].bootcount + 1
    assert verify_paths([write(tmp_path / "f", first + second)], [signer.public]).ok


# --- CBOR limits, compiled and pure ----------------------------------------------
SCANNERS = ["native._cbor_scan", "native._cbor_scan_py"]


@pytest.fixture(params=SCANNERS, ids=["cython", "pure-python"])
def scan(request):
    return importlib.import_module(request.param).scan


def test_cbor_limits_reject_deep_nesting_huge_counts_and_indefinite_lengths(scan):
    ok = cbor2.dumps({1: [1, 2, {"a": b"x"}]})
    assert scan(ok, 16, 100) == (0, len(ok))
    deep = b"\x81" * 40 + b"\x00"
    assert scan(deep, 16, 1000)[0] == 8
    assert scan(b"\x9b" + (2**40).to_bytes(8, "big"), 16, 1000)[0] == 7
    assert scan(b"\x9f\x01\xff", 16, 1000)[0] == 4
    assert scan(b"\x5a\xff\xff\xff\xff", 16, 1000)[0] == 6
    assert scan(cbor2.dumps(list(range(50))), 16, 20)[0] == 2
    assert scan(b"\x01\x02", 16, 10)[0] == 9


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_compiled_and_pure_cbor_scanners_agree(data):
    c = importlib.import_module("native._cbor_scan").scan
    p = importlib.import_module("native._cbor_scan_py").scan
    assert c(data, 8, 30) == p(data, 8, 30)


def test_edgegov_pure_forces_the_pure_cbor_scanner():
    code = "import native.cbor_scan as c; print(c.IMPLEMENTATION)"
    env = {**os.environ, "EDGEGOV_PURE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "python"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "EDGEGOV_PURE": "0"})  # fmt: skip
    assert out.stdout.strip() == "cython"


def test_a_deeply_nested_signed_payload_is_refused_before_decoding(signer):
    from agent.evidence.cose import encode_sign1

    bomb = b"\x81" * 200 + b"\x00"
    msg = decode_sign1(encode_sign1(bomb, signer))
    msg.verify(signer.public)
    with pytest.raises(VerificationError, match="nested deeper"):
        msg.claims()
    assert hashlib.sha256(bomb).digest()  # the bytes were never handed to cbor2
