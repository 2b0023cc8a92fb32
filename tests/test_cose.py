"""COSE_Sign1 signing/verification, checked against an independent implementation (pycose)."""

from __future__ import annotations

import cbor2
import pytest

from agent.errors import VerificationError
from agent.evidence.cose import MAX_MESSAGE_BYTES, decode_sign1, encode_sign1
from agent.identity.keys import ALG_EDDSA, ALG_ES256, generate_key
from tests.conftest import cose_oracle

PAYLOAD = cbor2.dumps({6: 1700000000, -70001: {1: 0}}, canonical=True)


@pytest.mark.parametrize("key_type,alg", [("ed25519", ALG_EDDSA), ("p256", ALG_ES256)])
def test_signed_message_verifies_here_and_in_pycose(tmp_path, key_type, alg):
    signer = generate_key(tmp_path / "k.key", key_type)
    raw = encode_sign1(PAYLOAD, signer)
    msg = decode_sign1(raw)
    assert (msg.alg, msg.kid, msg.payload) == (alg, signer.kid, PAYLOAD)
    msg.verify(signer.public)
    out = cose_oracle(raw, signer.public.pem())
    assert f"alg={alg}" in out


def test_pycose_oracle_rejects_a_tampered_message(signer):
    raw = bytearray(encode_sign1(PAYLOAD, signer))
    raw[-1] ^= 1
    with pytest.raises(AssertionError, match="pycose rejected"):
        cose_oracle(bytes(raw), signer.public.pem())


def test_any_flipped_payload_bit_fails_verification(signer):
    raw = encode_sign1(PAYLOAD, signer)
    msg = decode_sign1(raw)
    for i in range(len(PAYLOAD)):
        bad = bytearray(PAYLOAD)
        bad[i] ^= 0x01
        forged = type(msg)(raw, msg.protected, msg.alg, msg.kid, bytes(bad), msg.signature)
        with pytest.raises(VerificationError, match="does not verify"):
            forged.verify(signer.public)


def test_wrong_key_is_refused(tmp_path, signer):
    other = generate_key(tmp_path / "other.key")
    with pytest.raises(VerificationError):
        decode_sign1(encode_sign1(PAYLOAD, signer)).verify(other.public)


def test_alg_in_unprotected_header_is_refused(signer):
    protected = cbor2.dumps({4: signer.kid})
    raw = cbor2.dumps(cbor2.CBORTag(18, [protected, {1: -8}, PAYLOAD, b"\0" * 64]))
    with pytest.raises(VerificationError, match="protected"):
        decode_sign1(raw)


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"\xff\x00", "CBOR"),
        (cbor2.dumps([b"", {}, b"", b""]), "tag 18"),
        (cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"", b""])), "tag 18"),
        (cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])), "4 elements"),
        (cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -999, 4: b"k"}), {}, b"", b""])), "alg"),
        (cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), {}, b"", b""])), "kid"),
        (b"\x00" * (MAX_MESSAGE_BYTES + 1), "limit"),
    ],
)
def test_malformed_messages_get_a_precise_error(raw, reason):
    with pytest.raises(VerificationError, match=reason):
        decode_sign1(raw)
