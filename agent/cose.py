"""COSE_Sign1 (RFC 9052 §4.2) for attestations: create and verify.

Written here rather than taken from pycose because the structure is small, we
must sign and hash the exact bytes we send (never a re-encoding), and pycose
1.1 does not work with cbor2 6 (which decodes tagged arrays as tuples). pycose
is used in the tests as an independent oracle instead.

Wire shape::

    18([ bstr .cbor {1: alg, 4: kid,     ; protected: alg and kid, RFC 9052 §3.1
                     ? 33: x5chain},     ; and the device certificate chain, RFC 9360 §2
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

from agent.cbor_limits import MAX_DEPTH, MAX_ITEMS, check_cbor
from agent.errors import VerificationError
from agent.keys import ALG_ED25519, ALG_EDDSA, ALG_ES256, ALG_ESP256, PublicKey, SigningKey
from native.verify import loads, loads_claims, loads_claims_within, split_sign1
from native.verify import sig_structure as _sig_structure

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AlgorithmMismatch",
    "Sign1",
    "decode_sign1",
    "encode_sign1",
    "sig_structure",
]

TAG_SIGN1 = 18
HDR_ALG = 1
HDR_KID = 4
HDR_X5CHAIN = 33  # RFC 9360 §2: one certificate as bstr, or an array of them, leaf first
MAX_MESSAGE_BYTES = 64 * 1024  # checked before any CBOR of an untrusted message is decoded
_KNOWN_ALGS = {ALG_EDDSA, ALG_ES256, ALG_ED25519, ALG_ESP256}


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The exact bytes signed (RFC 9052 §4.4, Sig_structure for COSE_Sign1).

    Encoded by hand in ``native.verify`` (the same bytes as ``cbor2.dumps``;
    tests/test_cose.py checks it): the auditor builds one per attestation.
    """
    return _sig_structure(protected, payload)


def encode_sign1(payload: bytes, signer: SigningKey, x5chain: tuple[bytes, ...] = ()) -> bytes:
    """Sign ``payload`` (already-encoded CBOR) and return tagged COSE_Sign1 bytes.

    ``x5chain`` (DER certificates, leaf first) goes in the protected header, so
    the chain an auditor validates is the one the device signed.
    """
    hdr: dict[int, Any] = {HDR_ALG: signer.alg, HDR_KID: signer.kid}
    if x5chain:
        hdr[HDR_X5CHAIN] = x5chain[0] if len(x5chain) == 1 else list(x5chain)
    protected = cbor2.dumps(hdr, canonical=True)
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
    x5chain: tuple[bytes, ...] = ()

    def verify(self, key: PublicKey) -> None:
        """Raise VerificationError unless the signature is valid for ``key``.

        The key pins the algorithm (RFC 9052 §4.4 and cose-wg sign-fail-03/04): the
        message's ``alg`` must be one the key is for, whatever ``kid`` says.
        """
        if self.alg not in key.accepted_algs:
            raise AlgorithmMismatch(
                f"alg {self.alg} in the message is not allowed for the trusted key "
                f"(pinned to alg {key.alg})"
            )
        if not key.verify(self.signature, sig_structure(self.protected, self.payload)):
            raise VerificationError(f"signature does not verify with key kid={self.kid.hex()}")

    def claims(self, *, unread: bool = True) -> Mapping[Any, Any]:
        """Decode the payload (call only after :meth:`verify`), within the CBOR limits.

        ``unread=False`` leaves out the claims ``agent.attestation.parse_claims``
        never reads (ueid, measurements and their results, submodules other than
        ``agent``) once they have decoded: the audit verifier's way (issue 6).
        """
        if not unread:  # limits and decoding in one pass, where the compiled decoder can
            claims = loads_claims_within(self.payload, MAX_DEPTH, MAX_ITEMS)
            if claims is not None:
                return claims  # type: ignore[no-any-return]
        check_cbor(self.payload, "payload")
        try:
            # cbor2.loads, compiled for the common subset
            claims = loads(self.payload) if unread else loads_claims(self.payload)
        except (cbor2.CBORDecodeError, ValueError) as e:
            raise VerificationError(f"payload is not valid CBOR: {e}") from e
        if type(claims) is not dict and not isinstance(claims, Mapping):
            raise VerificationError("payload is not a CBOR map (CWT claims set)")
        return claims


def decode_sign1(raw: bytes) -> Sign1:
    """Parse tagged COSE_Sign1 bytes from an untrusted source (no verification yet)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise VerificationError(f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    parts = split_sign1(raw)  # the usual shape, without building a CBOR tree
    if parts is not None:
        protected, payload, signature = parts
        alg, kid, chain = _HEADERS.get(protected) or _protected_headers(protected, _NO_HEADERS)
        return _new_sign1(raw, protected, alg, kid, payload, signature, chain)
    check_cbor(raw, "COSE_Sign1", max_depth=4, max_items=64)
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
    alg, kid, chain = _protected_headers(protected, unprotected)
    return Sign1(raw, protected, alg, kid, payload, signature, chain)


_NO_HEADERS: Mapping[Any, Any] = {}
# Validated (alg, kid, x5chain) of protected headers seen with an empty unprotected
# header: a device signs every attestation with the same header bytes.
_HEADERS: dict[bytes, tuple[int, bytes, tuple[bytes, ...]]] = {}
_HEADERS_MAX = 256


def _protected_headers(
    protected: bytes, unprotected: Mapping[Any, Any]
) -> tuple[int, bytes, tuple[bytes, ...]]:
    """alg, kid and x5chain of a message, checked (RFC 9052 §3.1, RFC 9360 §2)."""
    try:
        check_cbor(protected or b"\xa0", "protected header", max_depth=3, max_items=64)
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
    chain = headers.get(HDR_X5CHAIN, unprotected.get(HDR_X5CHAIN, ()))
    if isinstance(chain, bytes):
        chain = (chain,)
    if not isinstance(chain, (list, tuple)) or not all(isinstance(c, bytes) for c in chain):
        raise VerificationError("x5chain must be a certificate (bstr) or an array of them")
    out = (alg, kid, tuple(chain))
    if unprotected is _NO_HEADERS and type(alg) is int and type(kid) is bytes:
        if len(_HEADERS) >= _HEADERS_MAX:
            _HEADERS.clear()
        _HEADERS[protected] = out
    return out


def _new_sign1(
    raw: bytes,
    protected: bytes,
    alg: int,
    kid: bytes,
    payload: bytes,
    signature: bytes,
    x5chain: tuple[bytes, ...],
) -> Sign1:
    """``Sign1(...)`` without the frozen dataclass's per-field ``object.__setattr__``."""
    msg = _new(Sign1)
    _set_dict(
        msg,
        "__dict__",
        {
            "raw": raw,
            "protected": protected,
            "alg": alg,
            "kid": kid,
            "payload": payload,
            "signature": signature,
            "x5chain": x5chain,
        },
    )
    return msg


_new = object.__new__
_set_dict = object.__setattr__  # a frozen dataclass refuses its own __setattr__


class AlgorithmMismatch(VerificationError):
    """The message names an algorithm its key is not pinned to."""
