"""COSE_Sign1 (RFC 9052 §4.2) for attestations: create and verify.

Written here rather than taken from pycose because the structure is small, we
must sign and hash the exact bytes we send (never a re-encoding), and pycose
1.1 does not work with cbor2 6 (which decodes tagged arrays as tuples). pycose
is used in the tests as an independent oracle instead.

Wire shape::

    18([ bstr .cbor {1: alg, 4: kid},    ; protected: alg and kid, RFC 9052 §3.1
         {},                             ; unprotected: empty
         bstr .cbor ClaimsSet,           ; payload
         bstr ])                         ; signature (Ed25519: 64 B; ES256: raw r||s)

The signature covers ``["Signature1", protected, h'', payload]`` (§4.4), with
an empty external AAD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from agent.errors import VerificationError
from agent.keys import ALG_EDDSA, ALG_ES256, PublicKey, Signer

__all__ = ["MAX_MESSAGE_BYTES", "Sign1", "decode_sign1", "encode_sign1", "sig_structure"]

TAG_SIGN1 = 18
HDR_ALG = 1
HDR_KID = 4
MAX_MESSAGE_BYTES = 64 * 1024  # checked before any CBOR of an untrusted message is decoded
_KNOWN_ALGS = {ALG_EDDSA, ALG_ES256}


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The exact bytes signed (RFC 9052 §4.4, Sig_structure for COSE_Sign1)."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def encode_sign1(payload: bytes, signer: Signer) -> bytes:
    """Sign ``payload`` (already-encoded CBOR) and return tagged COSE_Sign1 bytes."""
    protected = cbor2.dumps({HDR_ALG: signer.alg, HDR_KID: signer.kid}, canonical=True)
    signature = signer.sign(sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, [protected, {}, payload, signature]))


@dataclass(frozen=True)
class Sign1:
    """A parsed but not yet verified COSE_Sign1 message."""

    raw: bytes
    protected: bytes
    alg: int
    kid: bytes
    payload: bytes
    signature: bytes

    def verify(self, key: PublicKey) -> None:
        """Raise VerificationError unless the signature is valid for ``key``."""
        if key.alg != self.alg:
            raise VerificationError(
                f"alg {self.alg} in the message does not match the trusted key's alg {key.alg}"
            )
        if not key.verify(self.signature, sig_structure(self.protected, self.payload)):
            raise VerificationError(f"signature does not verify with key kid={self.kid.hex()}")

    def claims(self) -> Mapping[Any, Any]:
        """Decode the payload (call only after :meth:`verify`)."""
        claims = cbor2.loads(self.payload)
        if not isinstance(claims, Mapping):
            raise VerificationError("payload is not a CBOR map (CWT claims set)")
        return claims


def decode_sign1(raw: bytes) -> Sign1:
    """Parse tagged COSE_Sign1 bytes from an untrusted source (no verification yet)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise VerificationError(f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        obj = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as e:
        raise VerificationError(f"not valid CBOR: {e}") from e
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != TAG_SIGN1:
        raise VerificationError("not a tagged COSE_Sign1 (CBOR tag 18)")
    parts = obj.value
    if not isinstance(parts, (list, tuple)) or len(parts) != 4:
        raise VerificationError("COSE_Sign1 must be an array of 4 elements")
    protected, unprotected, payload, signature = parts
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        raise VerificationError(
            "COSE_Sign1 protected header, payload and signature must be byte strings"
        )
    if not isinstance(unprotected, Mapping):
        raise VerificationError("COSE_Sign1 unprotected header must be a map")
    try:
        headers = cbor2.loads(protected) if protected else {}
    except (cbor2.CBORDecodeError, ValueError) as e:
        raise VerificationError(f"protected header is not valid CBOR: {e}") from e
    if not isinstance(headers, Mapping):
        raise VerificationError("protected header is not a map")
    if HDR_ALG in unprotected:
        raise VerificationError("alg must be in the protected header, found it unprotected")
    alg = headers.get(HDR_ALG)
    if alg not in _KNOWN_ALGS:
        raise VerificationError(
            f"unsupported or missing alg {alg!r} (expected -8 EdDSA or -7 ES256)"
        )
    kid = headers.get(HDR_KID)
    if not isinstance(kid, bytes):
        raise VerificationError("kid missing from the protected header")
    return Sign1(raw, protected, alg, kid, payload, signature)
