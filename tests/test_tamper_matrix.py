"""Every way of tampering with a device's stream is caught, with the right finding.

The stream is made by our own agent code with real keys; pycose (its own venv)
and PyNaCl (libsodium) are independent oracles that the pristine messages are
what COSE and Ed25519 say they are.
"""

from __future__ import annotations

import cbor2
import nacl.exceptions
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization

from agent.audit import verify_paths
from agent.evidence.claims import EDGEGOV
from agent.evidence.cose import decode_sign1, encode_sign1, sig_structure
from agent.identity.keys import generate_key
from tests.conftest import cose_oracle
from tests.evidence_util import make_stream, write


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("tamper")
    a = generate_key(d / "a.key")
    b = generate_key(d / "b.key")
    return {
        "a": a,
        "b": b,
        "stream": make_stream(d / "a.sqlite", a, device="gw-1", windows=6),
        "other": make_stream(d / "b.sqlite", b, device="gw-2", windows=6),
        "dir": d,
    }


def _reheader(msg: bytes, **changes: object) -> bytes:
    """Rewrite the protected header (alg / kid) and keep the old signature."""
    tag = cbor2.loads(msg)
    protected, unprotected, payload, sig = tag.value
    hdr = cbor2.loads(protected)
    if "alg" in changes:
        hdr[1] = changes["alg"]
    if "kid" in changes:
        hdr[4] = changes["kid"]
    return cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps(hdr), unprotected, payload, sig]))


def _flip(msg: bytes, offset_from_end: int) -> bytes:
    b = bytearray(msg)
    b[len(b) - offset_from_end] ^= 0x01
    return bytes(b)


def _resign_with_other_root(msg: bytes, signer) -> bytes:
    """The device itself signs a checkpoint whose root does not extend the previous one."""
    claims = cbor2.loads(decode_sign1(msg).payload)
    cp = claims[EDGEGOV][3]
    cp[3] = bytes(32 - len(b"forked history")) + b"forked history"
    return encode_sign1(cbor2.dumps(claims, canonical=True), signer)


def _payload_byte_flipped(msg: bytes) -> bytes:
    m = decode_sign1(msg)
    i = msg.index(m.payload) + len(m.payload) // 2
    b = bytearray(msg)
    b[i] ^= 0x01
    return bytes(b)


CASES = {
    "pristine": (lambda w, s: s, set()),
    "flipped payload byte": (
        lambda w, s: s[:2] + [_payload_byte_flipped(s[2])] + s[3:],
        {"BAD_SIGNATURE", "CHAIN_GAP"},
    ),
    "flipped signature byte": (
        lambda w, s: s[:2] + [_flip(s[2], 5)] + s[3:],
        {"BAD_SIGNATURE", "CHAIN_GAP"},
    ),
    "kid swapped to another trusted key": (
        lambda w, s: s[:2] + [_reheader(s[2], kid=w["b"].kid)] + s[3:],
        {"BAD_SIGNATURE", "CHAIN_GAP"},
    ),
    "kid swapped to an unknown key": (
        lambda w, s: s[:2] + [_reheader(s[2], kid=b"\x00" * 16)] + s[3:],
        {"UNKNOWN_KEY", "CHAIN_GAP"},
    ),
    "alg changed in the header": (
        lambda w, s: s[:2] + [_reheader(s[2], alg=-7)] + s[3:],
        {"ALG_MISMATCH", "CHAIN_GAP"},
    ),
    "one attestation deleted": (lambda w, s: s[:3] + s[4:], {"CHAIN_GAP"}),
    "two swapped": (lambda w, s: s[:2] + [s[3], s[2]] + s[4:], {"REORDER"}),
    "one delivered twice (redelivery, not a finding)": (
        lambda w, s: s[:4] + [s[3]] + s[4:],
        set(),
    ),
    "one delivered again after later ones (no REORDER)": (
        lambda w, s: s + [s[1], s[3]],
        set(),
    ),
    "one replayed from another device": (
        lambda w, s: s[:3] + [w["other"][3]] + s[3:],
        {"REPLAY"},
    ),
    "a fork": (
        lambda w, s: s + [_resign_with_other_root(s[3], w["a"])],
        {"FORK"},
    ),
    "checkpoint not consistent with the previous one": (
        lambda w, s: s[:-1] + [_resign_with_other_root(s[-1], w["a"])],
        {"CONSISTENCY"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tamper_matrix(world, tmp_path, case):
    make, expected = CASES[case]
    msgs = make(world, list(world["stream"]))
    res = verify_paths(
        [write(tmp_path / "s", msgs)], [world["a"].public, world["b"].public], device="gw-1"
    )
    kinds = {f.kind for f in res.findings}
    assert kinds == expected, [str(f) for f in res.findings]
    assert res.ok is (not expected)
    for f in res.findings:
        assert f.device in ("gw-1", "?") and f.detail
        if f.kind in ("CHAIN_GAP", "REORDER", "FORK", "CONSISTENCY", "REPLAY"):
            assert f.seq is not None
    assert res.redelivered == len(msgs) - len(set(msgs))


def test_pycose_verifies_the_pristine_stream_ed25519_and_p256(world, tmp_path):
    out = cose_oracle(world["stream"], world["a"].public.pem())
    assert out.count("signature valid") == len(world["stream"])
    p256 = generate_key(tmp_path / "p.key", "p256")
    msgs = make_stream(tmp_path / "p.sqlite", p256, windows=3)
    assert cose_oracle(msgs, p256.public.pem()).count("alg=-7") == 3
    assert verify_paths([write(tmp_path / "p", msgs)], [p256.public]).ok
    with pytest.raises(AssertionError, match="pycose rejected"):
        cose_oracle([_flip(msgs[1], 3)], p256.public.pem())


def test_pynacl_agrees_on_every_ed25519_signature(world):
    raw = world["a"].public.key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    vk = nacl.signing.VerifyKey(raw)
    for m in world["stream"]:
        msg = decode_sign1(m)
        vk.verify(sig_structure(msg.protected, msg.payload), msg.signature)
        bad = decode_sign1(_flip(m, 5))
        with pytest.raises(nacl.exceptions.BadSignatureError):
            vk.verify(sig_structure(bad.protected, bad.payload), bad.signature)
