"""The auditor's verifier against a hostile device (issue 13).

Everything a device signs is untrusted input. These tests take a real stream (our
Attester, real keys) and change it the ways issue 13 lists: envelopes with a second byte
form, payloads re-signed by the device itself with non-deterministic CBOR or claims out of
range, planted and swapped attestations. Each must be a finding naming the right file,
never a crash, never accepted. ``tests/test_fuzz.py`` runs the seeded mutation campaign;
these are the named cases, each with its expected finding.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import struct
import sys
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audit import verify_paths
from agent.audit.verify import Finding
from agent.errors import VerificationError
from agent.evidence.cbor_limits import check_cbor
from agent.evidence.claims import EDGEGOV
from agent.evidence.cose import decode_sign1, sig_structure
from agent.identity.keys import P256_N, ecdsa_high_s, generate_key
from native.verify import split_sign1
from tests.evidence_util import make_stream, write

# --- helpers: envelopes and payloads by hand ----------------------------------------


def _head(major: int, n: int, width: int | None = None) -> bytes:
    """A CBOR head; ``width`` forces a longer form than the shortest (bytes of argument)."""
    if width is None:
        width = 0 if n < 24 else 1 if n < 0x100 else 2 if n < 0x10000 else 4
    if width == 0:
        return bytes([major << 5 | n])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | ai]) + n.to_bytes(width, "big")


def _bstr(b: bytes, width: int | None = None) -> bytes:
    return _head(2, len(b), width) + b


def _envelope(protected: bytes, payload: bytes, sig: bytes, unprotected: bytes = b"\xa0") -> bytes:
    return b"\xd2\x84" + _bstr(protected) + unprotected + _bstr(payload) + _bstr(sig)


def _resign(msg: bytes, signer, payload: bytes) -> bytes:
    """``msg`` with ``payload`` (raw bytes, any encoding) signed by the device's own key."""
    m = decode_sign1(msg)
    return _envelope(m.protected, payload, signer.sign(sig_structure(m.protected, payload)))


def _claims(msg: bytes) -> dict:
    return cbor2.loads(decode_sign1(msg).payload)


def _with_claim(msg: bytes, signer, change) -> bytes:
    """Re-sign ``msg`` with its claims changed by ``change(claims)`` (canonical CBOR)."""
    c = _claims(msg)
    change(c)
    return _resign(msg, signer, cbor2.dumps(c, canonical=True))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    signer = generate_key(d / "dev.key")
    return {"signer": signer, "stream": make_stream(d / "e.sqlite", signer, windows=6)}


def _verify(tmp_path: Path, world, msgs: list[bytes]):
    return verify_paths([write(tmp_path / "s", msgs)], [world["signer"].public], device="gw-1")


def _named(findings: list[Finding], i: int) -> list[Finding]:
    return [f for f in findings if Path(f.file).name == f"{i:04d}.cose"]


# --- 1. one exact envelope ----------------------------------------------------------

_P = 2  # the message changed in the middle of the stream
ENVELOPES = {
    "unprotected {'x': 'y'}": lambda m: _envelope(
        m.protected, m.payload, m.signature, cbor2.dumps({"x": "y"})
    ),
    "unprotected kid": lambda m: _envelope(
        m.protected, m.payload, m.signature, cbor2.dumps({4: b"\x00" * 16})
    ),
    "unprotected crit": lambda m: _envelope(
        m.protected, m.payload, m.signature, cbor2.dumps({2: [99]})
    ),
    "unprotected junk x5chain": lambda m: _envelope(
        m.protected, m.payload, m.signature, cbor2.dumps({33: b"junk"})
    ),
    "unprotected duplicate keys": lambda m: _envelope(
        m.protected, m.payload, m.signature, b"\xa2\x01\x01\x01\x01"
    ),
    "unprotected 63 KB padding": lambda m: _envelope(
        m.protected, m.payload, m.signature, cbor2.dumps({"pad": b"\x00" * 60_000})
    ),
    "tag 18 as d8 12": lambda m: b"\xd8\x12" + _envelope(m.protected, m.payload, m.signature)[1:],
    "array head 98 04": lambda m: (
        b"\xd2\x98\x04" + _envelope(m.protected, m.payload, m.signature)[2:]
    ),
    "unprotected as b8 00": lambda m: _envelope(m.protected, m.payload, m.signature, b"\xb8\x00"),
    "wide protected length": lambda m: (
        b"\xd2\x84" + _bstr(m.protected, 2) + b"\xa0" + _bstr(m.payload) + _bstr(m.signature)
    ),
    "wide payload length": lambda m: (
        b"\xd2\x84" + _bstr(m.protected) + b"\xa0" + _bstr(m.payload, 8) + _bstr(m.signature)
    ),
    "wide signature length": lambda m: (
        b"\xd2\x84" + _bstr(m.protected) + b"\xa0" + _bstr(m.payload) + _bstr(m.signature, 2)
    ),
    "trailing byte": lambda m: m.raw + b"\x00",
    "untagged": lambda m: m.raw[1:],
}


@pytest.mark.parametrize("case", list(ENVELOPES))
@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_second_byte_form_of_the_envelope_is_invalid_and_names_its_file(
    world, tmp_path, case, where
):
    msgs = list(world["stream"])
    i = _P if where == "middle" else len(msgs) - 1
    original = decode_sign1(msgs[i])
    msgs[i] = ENVELOPES[case](original)
    assert msgs[i] != original.raw
    res = _verify(tmp_path, world, msgs)
    assert not res.ok
    # INVALID names the file, labelled from its unsigned payload; in the middle of the
    # stream the gap it leaves names it too, not the next attestation (no PREV_MISMATCH)
    expected = ["INVALID", "CHAIN_GAP"] if where == "middle" else ["INVALID"]
    assert [f.kind for f in res.findings] == expected, [str(f) for f in res.findings]
    assert [f.kind for f in _named(res.findings, i)] == expected
    bad = res.findings[0]
    if case not in ("untagged", "tag 18 as d8 12", "array head 98 04"):
        assert (bad.device, bad.seq) == ("gw-1", i) and "unsigned payload" in bad.label_from


def test_the_signer_writes_only_the_one_byte_form(world):
    for msg in world["stream"]:
        assert split_sign1(msg) is not None
        m = decode_sign1(msg)
        check_cbor(m.protected, "protected", strict=True)
        check_cbor(m.payload, "payload", strict=True)


def test_es256_signatures_are_written_low_s_and_a_high_s_is_invalid(tmp_path):
    p256 = generate_key(tmp_path / "p.key", "p256")
    for i in range(64):  # about half of raw ECDSA signatures have the high s
        assert not ecdsa_high_s(p256.sign(i.to_bytes(2, "big")))
    msgs = make_stream(tmp_path / "p.sqlite", p256, windows=3)
    m = decode_sign1(msgs[1])
    s = int.from_bytes(m.signature[32:], "big")
    flipped = m.signature[:32] + (P256_N - s).to_bytes(32, "big")
    assert p256.public.verify(flipped, sig_structure(m.protected, m.payload))  # still valid
    msgs[1] = _envelope(m.protected, m.payload, flipped)
    res = verify_paths([write(tmp_path / "s", msgs)], [p256.public])
    mine = _named(res.findings, 1)
    assert [f.kind for f in mine] == ["INVALID", "CHAIN_GAP"] and "high s" in mine[0].detail


def test_protected_header_allows_only_alg_kid_and_x5chain(world, tmp_path):
    signer = world["signer"]
    msgs = list(world["stream"])
    m = decode_sign1(msgs[_P])
    hdr = cbor2.loads(m.protected)
    hdr[99] = "extra"
    protected = cbor2.dumps(hdr, canonical=True)
    msgs[_P] = _envelope(protected, m.payload, signer.sign(sig_structure(protected, m.payload)))
    res = _verify(tmp_path, world, msgs)
    mine = _named(res.findings, _P)
    assert [f.kind for f in mine] == ["INVALID", "CHAIN_GAP"] and "label(s) 99" in mine[0].detail


# --- 2. deterministic claims, types and ranges (payloads the device itself signed) --


def _seq_head_wide(c: dict) -> bytes:
    """The claims with seq written as an 8-byte integer (same value)."""
    seq = c[EDGEGOV][1]
    marker = 0x7FFF_0001
    c[EDGEGOV][1] = marker
    raw = cbor2.dumps(c, canonical=True)
    return raw.replace(b"\x1a" + marker.to_bytes(4, "big"), b"\x1b" + seq.to_bytes(8, "big"))


def _dup_key(c: dict) -> bytes:
    """A duplicate claim key: iat twice (a lax decoder keeps the last one)."""
    raw = cbor2.dumps(c, canonical=True)
    n = len(c)
    head = bytes([0xA0 | (n + 1)]) if n + 1 < 24 else b"\xb8" + bytes([n + 1])
    old = bytes([0xA0 | n]) if n < 24 else b"\xb8" + bytes([n])
    assert raw.startswith(old)
    return head + b"\x06\x00" + raw[len(old) :]


RAW_PAYLOADS = {
    "seq as an 8-byte integer": _seq_head_wide,
    "duplicate claim key": _dup_key,
    "seq as a bignum": lambda c: cbor2.dumps(c, canonical=True).replace(
        b"\x01" + cbor2.dumps(c[EDGEGOV][1]), b"\x01\xc2\x41" + bytes([c[EDGEGOV][1]]), 1
    ),
    "unsorted keys": lambda c: cbor2.dumps(dict(reversed(list(c.items())))),
    "score as a double": lambda c: cbor2.dumps(c, canonical=True).replace(
        b"\xf9\x38\x00", b"\xfb" + struct.pack(">d", 0.5)
    ),
}


@pytest.mark.parametrize("case", list(RAW_PAYLOADS))
def test_a_payload_not_in_deterministic_cbor_is_invalid(world, tmp_path, case):
    msgs = list(world["stream"])
    c = _claims(msgs[_P])
    c[EDGEGOV][7][0][2] = 0.5  # a score that canonical CBOR writes as f93800
    payload = RAW_PAYLOADS[case](c)
    assert payload != cbor2.dumps(c, canonical=True)
    msgs[_P] = _resign(msgs[_P], world["signer"], payload)
    res = _verify(tmp_path, world, msgs)
    assert [(f.kind, Path(f.file).name) for f in res.findings] == [
        ("INVALID", f"{_P:04d}.cose"),
        ("CHAIN_GAP", f"{_P:04d}.cose"),  # the gap it leaves: this file stands there
    ], [str(f) for f in res.findings]
    assert "CBOR" in res.findings[0].detail


def _set(path: tuple, value):
    def change(c: dict) -> None:
        node = c
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    return change


def _record(**fields) -> dict:
    rec = {"source": "s0", "protocol": "framed", "port": "/dev/ttyS0", "device": None}
    return {**rec, "frames_ok": 5, "gaps": [], "offline": [], "problems": [], **fields}


SCORE = (EDGEGOV, 7, 0, 2)
OUT_OF_RANGE = {
    "score text": _set(SCORE, "high"),
    "score list": _set(SCORE, [0.5]),
    "score NaN": _set(SCORE, math.nan),
    "score an int": _set(SCORE, 1),
    "score infinity": _set(SCORE, math.inf),
    "score true": _set(SCORE, True),
    "score 2**70": _set(SCORE, 2**70),
    "score 1.5": _set(SCORE, 1.5),
    "score -0.25": _set(SCORE, -0.25),
    "window end 2**64-1": _set((EDGEGOV, 4, 1), 2**64 - 1),
    "window start -2**63": _set((EDGEGOV, 4, 0), -(2**63)),
    "iat 2**63": _set((6,), 2**63),
    "seq 2**64-1": _set((EDGEGOV, 1), 2**64 - 1),
    "health counter 2**64-1": _set((EDGEGOV, 8, "frames_ok"), 2**64 - 1),
    "source offline not a list": _set((EDGEGOV, 8, "sources"), [_record(offline="never")]),
    "source offline strings": _set((EDGEGOV, 8, "sources"), [_record(offline=[["a", "b"]])]),
    "source offline backwards": _set((EDGEGOV, 8, "sources"), [_record(offline=[[9, 1]])]),
    "source gaps out of range": _set((EDGEGOV, 8, "sources"), [_record(gaps=[[0, 2**40]])]),
    "source counter a float": _set((EDGEGOV, 8, "sources"), [_record(frames_ok=1.5)]),
    "episode start text": _set((EDGEGOV, 6, 0, 7), [["t", None, None]]),
    "episode peak NaN": _set((EDGEGOV, 6, 0, 7), [[1, None, math.nan]]),
    "rule violated negative": _set((EDGEGOV, 6, 0, 3), -1),
    "risk reason a list": _set((EDGEGOV, 7, 0, 4), ["x"]),
    "config version text": _set((EDGEGOV, 5, 5), "v9"),
    # found by tests/atheris_verify.py: sorting int and text keys raised TypeError (exit 70)
    "tuf versions with a text key": _set((EDGEGOV, 5, 6), {1: 0, "a": 0}),
    "cti 3 bytes": _set((7,), b"abc"),
    "restart started 2**64-1": _set(
        (EDGEGOV, 12), {1: 2**64 - 1, 2: None, 3: True, 4: [], 5: 0, 6: 0}
    ),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_a_claim_out_of_type_or_range_is_invalid_naming_the_claim(world, tmp_path, case):
    msgs = list(world["stream"])
    msgs[_P] = _with_claim(msgs[_P], world["signer"], OUT_OF_RANGE[case])
    res = _verify(tmp_path, world, msgs)
    assert [(f.kind, Path(f.file).name) for f in res.findings] == [
        ("INVALID", f"{_P:04d}.cose"),
        ("CHAIN_GAP", f"{_P:04d}.cose"),
    ], [str(f) for f in res.findings]
    bad = res.findings[0]
    # integers past 64 bits are bignums in CBOR: refused as a tag before any claim is read
    assert ("CBOR tag" if case == "score 2**70" else "claim") in bad.detail
    assert bad.seq == (None if case == "seq 2**64-1" else _P)  # a label is never out of range


# the same hostile files through the CLI: text, JSON and HTML; exit codes 0/1/2 only
def test_hostile_files_through_every_output_never_crash_and_json_is_strict(
    world, tmp_path, run_cli
):
    signer = world["signer"]
    pub = tmp_path / "dev.pub.pem"
    pub.write_bytes(signer.public.pem())
    base = list(world["stream"])
    corpora = [
        [*base[:_P], _with_claim(base[_P], signer, change), *base[_P + 1 :]]
        for change in (OUT_OF_RANGE["score NaN"], OUT_OF_RANGE["window end 2**64-1"])
    ]
    corpora.append([*base[:_P], ENVELOPES["tag 18 as d8 12"](decode_sign1(base[_P]))])
    corpora.append([b"\x81" * 5000 + b"\x00", *base])  # a CBOR bomb in front

    def strict(s: str) -> None:
        raise ValueError(f"not JSON: {s}")

    for k, msgs in enumerate(corpora):
        d = write(tmp_path / f"c{k}", msgs)
        for args in (["--json"], [], ["--html", str(tmp_path / f"r{k}.html")]):
            cmd = "report" if args[:1] == ["--html"] else "verify"
            r = run_cli("audit", cmd, "--key", str(pub), str(d), *args)
            assert r.returncode == 1, (cmd, args, r.stdout[-500:], r.stderr[-2000:])
            assert "Traceback" not in r.stderr
            if args == ["--json"]:
                doc = json.loads(r.stdout, parse_constant=strict)
                assert doc["evidence"] == "findings"


# --- 3. the right file ----------------------------------------------------------------


def test_a_planted_copy_is_named_in_the_gap_it_fills(world, tmp_path):
    msgs = list(world["stream"])
    msgs[3] = msgs[1]  # file 0003 now holds a copy of seq 1; seq 3 is gone
    res = _verify(tmp_path, world, msgs)
    gap = [f for f in res.findings if f.kind == "CHAIN_GAP"]
    assert len(gap) == 1 and Path(gap[0].file).name == "0003.cose"
    assert Path(gap[0].related).name == "0004.cose" and "copy of seq 1" in gap[0].detail


def test_a_swap_names_both_files(world, tmp_path):
    msgs = list(world["stream"])
    msgs[2], msgs[3] = msgs[3], msgs[2]
    res = _verify(tmp_path, world, msgs)
    (f,) = res.findings
    assert f.kind == "REORDER"
    assert {Path(f.file).name, Path(f.related).name} == {"0002.cose", "0003.cose"}
    assert "see also" in str(f) and f.to_json()["related_file"] == f.related


def test_an_attestation_signed_out_of_turn_is_blamed_not_its_honest_neighbour(world, tmp_path):
    """The device signs a seq 3 that does not link (another history): the links on both its
    sides fail, the ones beyond hold, so seq 3 is named, seq 4 only as related."""
    msgs = list(world["stream"])
    msgs[3] = _with_claim(msgs[3], world["signer"], _set((EDGEGOV, 2), b"\x11" * 32))
    msgs[3] = _with_claim(msgs[3], world["signer"], _set((6,), 4_000_000_000))  # iat ahead
    res = _verify(tmp_path, world, msgs)
    kinds = {(f.kind, Path(f.file).name, Path(f.related).name) for f in res.findings}
    assert ("PREV_MISMATCH", "0003.cose", "0002.cose") in kinds
    assert ("TIME_ORDER", "0003.cose", "0004.cose") in kinds
    # seq 4's prev is the hash of the genuine seq 3, not of this one: seq 3 is blamed
    assert ("PREV_MISMATCH", "0003.cose", "0004.cose") in kinds
    assert not [f for f in res.findings if Path(f.file).name != "0003.cose"]


@pytest.mark.parametrize("i", [1, 3, 4])
def test_an_iat_ahead_of_both_neighbours_is_blamed_on_its_own_file(world, tmp_path, i):
    """The device re-signs one attestation with its iat moved ahead. Its own prev still
    links; the next one's prev no longer hashes it and its iat goes back. Only the link
    after it breaks, so the order of iat decides: it fits neither between its neighbours."""
    msgs = list(world["stream"])
    msgs[i] = _with_claim(msgs[i], world["signer"], _set((6,), 4_000_000_000))
    res = _verify(tmp_path, world, msgs)
    got = {(f.kind, Path(f.file).name, Path(f.related).name) for f in res.findings}
    assert got == {
        ("PREV_MISMATCH", f"{i:04d}.cose", f"{i + 1:04d}.cose"),
        ("TIME_ORDER", f"{i:04d}.cose", f"{i + 1:04d}.cose"),
    }, [str(f) for f in res.findings]
    assert all("out of order with both its neighbours" in f.detail for f in res.findings)


def test_an_iat_behind_both_neighbours_is_blamed_on_its_own_file(world, tmp_path):
    msgs = list(world["stream"])
    msgs[3] = _with_claim(msgs[3], world["signer"], _set((6,), 1))  # iat back to 1970
    msgs[4] = _with_claim(  # and re-chained, so only the iat is out of line
        msgs[4], world["signer"], _set((EDGEGOV, 2), hashlib.sha256(msgs[3]).digest())
    )
    msgs[5] = _with_claim(
        msgs[5], world["signer"], _set((EDGEGOV, 2), hashlib.sha256(msgs[4]).digest())
    )
    res = _verify(tmp_path, world, msgs)
    got = {(f.kind, Path(f.file).name, Path(f.related).name) for f in res.findings}
    assert got == {("TIME_ORDER", "0003.cose", "0002.cose")}, [str(f) for f in res.findings]


# --- 4. strict CBOR scanner: twins agree, and its rules ----------------------------


def test_strict_scan_refuses_every_second_byte_form():
    p = importlib.import_module("native._cbor_scan_py").scan
    assert p(cbor2.dumps({1: [1.5, "a", None]}, canonical=True), 16, 100, True)[0] == 0
    assert p(b"\x18\x05", 16, 100, True) == (10, 0)  # 5 in two bytes
    assert p(b"\xfa\x3f\x80\x00\x00", 16, 100, True) == (11, 0)  # 1.0 as single
    assert p(b"\xf9\x7e\x01", 16, 100, True) == (11, 0)  # a NaN other than f97e00
    assert p(b"\xa2\x02\x00\x01\x00", 16, 100, True) == (12, 3)  # keys 2, 1
    assert p(b"\xa2\x01\x00\x01\x00", 16, 100, True) == (13, 3)  # key 1 twice
    assert p(b"\xa1\x41\x61\x00", 16, 100, True) == (14, 1)  # a bytes key
    assert p(b"\xc2\x41\x05", 16, 100, True) == (15, 0)  # bignum 5
    assert p(b"\xf7", 16, 100, True) == (16, 0)  # undefined
    assert p(b"\x18\x05", 16, 100) == (0, 2)  # not strict: well-formed is enough


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=48))
def test_strict_scanners_agree_on_arbitrary_bytes(data):
    c = importlib.import_module("native._cbor_scan").scan
    p = importlib.import_module("native._cbor_scan_py").scan
    assert c(data, 8, 30, True) == p(data, 8, 30, True)


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=False) | st.floats(width=32) | st.floats(width=16))
def test_strict_float_rule_is_cbor2_canonical(x):
    c = importlib.import_module("native._cbor_scan").scan
    for fmt, ai in (("e", 25), ("f", 26), ("d", 27)):
        try:
            data = bytes([0xE0 | ai]) + struct.pack(">" + fmt, x)
        except OverflowError:
            continue
        if struct.unpack(">" + fmt, data[1:])[0] != x:
            continue  # not exact in this width
        assert (c(data, 1, 1, True)[0] == 0) == (cbor2.dumps(x, canonical=True) == data)


# --- 5. an internal error is a bug, never a verdict -------------------------------


def test_an_internal_error_exits_70_and_says_it_is_a_bug(world, tmp_path):
    import subprocess

    pub = tmp_path / "dev.pub.pem"
    pub.write_bytes(world["signer"].public.pem())
    d = write(tmp_path / "s", list(world["stream"]))
    code = (
        "import sys, agent.audit.analysis as a\n"
        "def boom(*_a, **_k): raise KeyError('injected')\n"
        "a.analyze = boom\n"
        "from agent.cli import main\n"
        f"sys.exit(main(['audit', 'verify', '--key', {str(pub)!r}, {str(d)!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 70, r.stderr
    assert "internal error: KeyError" in r.stderr and "bug in edgegov" in r.stderr


def test_decode_refuses_a_non_profile_kid(world):
    m = decode_sign1(world["stream"][0])
    hdr = cbor2.loads(m.protected)
    hdr[4] = b"short"
    protected = cbor2.dumps(hdr, canonical=True)
    with pytest.raises(VerificationError, match="kid is 5 bytes"):
        decode_sign1(_envelope(protected, m.payload, m.signature))
