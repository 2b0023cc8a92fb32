"""COSE_Sign1 (RFC 9052 §4.2) for attestations: create and verify.

Written here rather than taken from pycose because the structure is small, we
must sign and hash the exact bytes we send (never a re-encoding), and pycose
1.1 does not work with cbor2 6 (which decodes tagged arrays as tuples). pycose
is used in the tests as an independent oracle instead.

Wire shape::

    18([ bstr .cbor {1: alg, 4: kid,     ; protected: alg and kid, RFC 9052 §3.1
                     ? 33: x5chain},     ; and the device certificate chain, RFC 9360 §2
         {},                             ; unprotected: empty (a0), always
         bstr .cbor ClaimsSet,           ; payload: deterministic CBOR (RFC 8949 §4.2.1)
         bstr ])                         ; signature (Ed25519: 64 B; ES256: raw r||s, low s)

One byte form only: shortest heads, nothing after the array. ``decode_sign1``
refuses anything else, so no byte of a stored attestation can change without
changing what was signed.

The signature covers ``["Signature1", protected, h'', payload]`` (§4.4), with
an empty external AAD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import Error, VerificationError
from agent.evidence.cbor_limits import check_cbor
from agent.identity.keys import (
    ALG_ED25519,
    ALG_EDDSA,
    ALG_ES256,
    ALG_ESP256,
    PublicKey,
    SigningKey,
    ecdsa_high_s,
)
from native.cbor_scan import scan
from native.verify import loads, loads_claims, split_sign1
from native.verify import sig_structure as _sig_structure

if TYPE_CHECKING:
    from nacl.signing import VerifyKey

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AlgorithmMismatch",
    "EnvelopeError",
    "HighS",
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
SIGNATURE_BYTES = 64  # Ed25519; ES256 as raw r || s (RFC 9053 §2.1)
KID_BYTES = 16  # agent.identity.keys: the first 16 bytes of SHA-256 over the SPKI
_KNOWN_ALGS = {ALG_EDDSA, ALG_ES256, ALG_ED25519, ALG_ESP256}
_ECDSA = {ALG_ES256, ALG_ESP256}


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
        message's ``alg`` must be one the key is for, whatever ``kid`` says. An ES256
        signature must have the low s (:class:`HighS` otherwise): ``(r, n - s)`` verifies
        too, and would be a second byte form of the same attestation. Ed25519 is checked by
        libsodium (:func:`_ed25519_verifies`), ES256 by ``cryptography``.
        """
        if self.alg not in key.accepted_algs:
            raise AlgorithmMismatch(
                f"alg {self.alg} in the message is not allowed for the trusted key "
                f"(pinned to alg {key.alg})"
            )
        if self.alg in _ECDSA and ecdsa_high_s(self.signature):
            raise HighS(
                "ES256 signature has the high s: (r, n - s) is the same signature in another "
                "byte form, and the profile accepts only the low s (s <= n/2)"
            )
        data = sig_structure(self.protected, self.payload)
        ok = (
            _ed25519_verifies(key, self.signature, data)
            if key.alg == ALG_EDDSA
            else key.verify(self.signature, data)
        )
        if not ok:
            raise VerificationError(f"signature does not verify with key kid={self.kid.hex()}")

    def claims(self, *, unread: bool = True) -> Mapping[Any, Any]:
        """Decode the payload (call only after :meth:`verify`), within the CBOR limits.

        The payload must be in the profile's deterministic encoding (RFC 8949 §4.2.1:
        shortest forms, sorted unique keys, no tags), checked on the bytes before they
        are decoded: a hostile device cannot sign two byte forms of one claims set, or a
        map whose duplicate keys mean one thing to us and another to someone else.
        ``unread=False`` leaves out the claims ``agent.evidence.claims.parse_claims``
        never reads (ueid, measurements and their results, submodules other than
        ``agent``) once they have decoded: the audit verifier's way (issue 6).
        """
        check_cbor(self.payload, "payload", strict=True)
        try:
            # cbor2.loads, compiled for the common subset
            claims = loads(self.payload) if unread else loads_claims(self.payload)
        except (cbor2.CBORDecodeError, ValueError) as e:
            raise VerificationError(f"payload is not valid CBOR: {e}") from e
        if type(claims) is not dict:
            raise VerificationError("payload is not a CBOR map (CWT claims set)")
        return claims


def _ed25519_verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``data`` under ``key``, by
    libsodium (PyNaCl): about twice the rate of OpenSSL's Ed25519 verify (issue 15), and
    stricter.

    OpenSSL, behind ``cryptography``, verifies cofactorless and refuses ``S >= L``, but takes
    any 32 bytes that decode as a point for the key and for ``R``. libsodium (built without
    ``ED25519_COMPAT``, as PyNaCl's is) also refuses a small-order public key (the identity,
    points of order 2, 4 or 8), a non-canonical key encoding and a small-order ``R``. Under a
    small-order key, ``(R = identity, S = 0)`` "verifies" for *every* message with OpenSSL:
    were such a key ever in a trust file (planted, or a broken device), anyone could forge
    its attestations. No standard key generation makes such a key, and no honest signer
    such an ``R``, so every honestly signed attestation gets the verdict it had before; the
    forgeries are now ``BAD_SIGNATURE`` (tests/test_verify_speed_semantics.py shows each).

    Fails closed: a key or signature libsodium will not take (wrong length or type) is
    ``False``, the finding of any other bad signature, never an exception.
    """
    if not isinstance(key.key, Ed25519PublicKey):
        return False  # a key object that is not what its alg says: verifies nothing
    verify_key, errors = _sodium or _libsodium()
    try:
        verify_key(key.key.public_bytes_raw()).verify(data, signature)
    except errors:
        return False
    return True


# nacl.signing.VerifyKey and what it raises for a bad signature, key or length
_sodium: tuple[type[VerifyKey], tuple[type[Exception], ...]] | None = None


def _libsodium() -> tuple[type[VerifyKey], tuple[type[Exception], ...]]:
    """PyNaCl, imported on the first Ed25519 verify: loading libsodium takes about 13 ms,
    which a process that only signs need never pay."""
    global _sodium
    if _sodium is None:
        try:
            import nacl.exceptions
            import nacl.signing
        except ImportError as e:  # a declared dependency; no fallback with other semantics
            raise Error(
                "PyNaCl is not installed, and Ed25519 signatures are verified with it "
                "(libsodium): pip install 'PyNaCl>=1.5'"
            ) from e
        # CryptoError: BadSignatureError and nacl's ValueError / TypeError (bad lengths)
        _sodium = (nacl.signing.VerifyKey, (nacl.exceptions.CryptoError, ValueError, TypeError))
    return _sodium


def decode_sign1(raw: bytes) -> Sign1:
    """Parse tagged COSE_Sign1 bytes from an untrusted source (no verification yet).

    Only the profile's envelope is accepted, in its one byte form
    (``docs/attestation-profile.md``, *Envelope*): tag 18, an array of four, the
    protected header with exactly ``alg``, ``kid`` and optionally ``x5chain`` in
    deterministic CBOR, an empty unprotected header, a 64-byte signature (ES256 with
    the low s), shortest heads, nothing after it. The published bytes are the signed
    bytes and ``prev`` hashes them, so any other form would be a second byte form of
    the same signed content: a change nobody signed.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise VerificationError(f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    parts = split_sign1(raw)
    if parts is None:
        obj = _lenient(raw)
        raise EnvelopeError(_envelope_problem(raw, obj), _payload_in(obj))
    protected, payload, signature = parts
    alg, kid, chain = _HEADERS.get(protected) or _protected_headers(protected)
    if len(signature) != SIGNATURE_BYTES:
        raise VerificationError(
            f"COSE_Sign1 signature is {len(signature)} bytes; the profile's algorithms "
            f"(Ed25519, ES256 as r || s) make {SIGNATURE_BYTES}"
        )
    return _new_sign1(raw, protected, alg, kid, payload, signature, chain)


def _lenient(raw: bytes) -> Any:
    """``raw`` decoded as cbor2 would, within the envelope's limits (bytes after the item
    ignored), or None: what a refused message seems to be, for its wording and a label."""
    if scan(raw, 4, 64)[0] not in (0, 9):  # 9: bytes after the item
        return None
    try:
        return cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, RecursionError):
        return None


def _payload_in(obj: Any) -> bytes | None:
    parts = obj.value if isinstance(obj, cbor2.CBORTag) else obj
    if isinstance(parts, (list, tuple)) and len(parts) == 4 and isinstance(parts[2], bytes):
        return parts[2]
    return None


def _envelope_problem(raw: bytes, obj: Any) -> str:
    """Why ``raw`` is not the profile's envelope (``split_sign1`` refused it), in words
    (``obj``: :func:`_lenient`'s reading of it)."""
    if not raw:
        return "empty message"
    if raw[0] != 0xD2:
        if isinstance(obj, cbor2.CBORTag) and obj.tag == TAG_SIGN1:
            return "COSE_Sign1: tag 18 is not in its shortest head (d2)"
        return "not a tagged COSE_Sign1 (CBOR tag 18, d2)"
    body = raw[1:]
    try:
        check_cbor(body, "COSE_Sign1", max_depth=3, max_items=63, strict=True, offset=1)
        parts = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as e:
        return f"COSE_Sign1 is not valid CBOR: {e}"
    except VerificationError as e:
        return str(e)
    if not isinstance(parts, list) or len(parts) != 4:
        return "COSE_Sign1 must be an array of 4 elements"
    protected, unprotected, payload, signature = parts
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        return "COSE_Sign1 protected header, payload and signature must be byte strings"
    if not isinstance(unprotected, dict):
        return "COSE_Sign1 unprotected header must be a map"
    if unprotected:
        labels = ", ".join(repr(k) for k in list(unprotected)[:8])
        return (
            f"COSE_Sign1 unprotected header must be empty, found label(s) {labels}: the "
            "profile puts everything in the signed protected header"
        )
    return "COSE_Sign1 is not in the profile's byte form"  # every case above is worded


# Validated (alg, kid, x5chain) of protected headers seen: a device signs every
# attestation with the same header bytes.
_HEADERS: dict[bytes, tuple[int, bytes, tuple[bytes, ...]]] = {}
_HEADERS_MAX = 256
_ALLOWED_LABELS = frozenset({HDR_ALG, HDR_KID, HDR_X5CHAIN})


def _protected_headers(protected: bytes) -> tuple[int, bytes, tuple[bytes, ...]]:
    """alg, kid and x5chain of a message, checked (RFC 9052 §3.1, RFC 9360 §2)."""
    try:
        check_cbor(protected, "protected header", max_depth=3, max_items=64, strict=True)
        headers = cbor2.loads(protected)
    except (cbor2.CBORDecodeError, ValueError) as e:
        raise VerificationError(f"protected header is not valid CBOR: {e}") from e
    if not isinstance(headers, dict):
        raise VerificationError("protected header is not a map")
    extra = [k for k in headers if k not in _ALLOWED_LABELS]
    if extra:
        raise VerificationError(
            f"protected header has label(s) {', '.join(repr(k) for k in extra)}; the profile "
            "allows only 1 (alg), 4 (kid) and 33 (x5chain)"
        )
    alg = headers.get(HDR_ALG)
    if type(alg) is not int or alg not in _KNOWN_ALGS:
        raise VerificationError(
            f"unsupported or missing alg {alg!r} (expected -8 EdDSA or -7 ES256)"
        )
    kid = headers.get(HDR_KID)
    if type(kid) is not bytes:
        raise VerificationError("kid missing from the protected header")
    if len(kid) != KID_BYTES:
        raise VerificationError(f"kid is {len(kid)} bytes; the profile's kid is {KID_BYTES}")
    chain = headers.get(HDR_X5CHAIN, ())
    if type(chain) is bytes:
        chain = (chain,)
    elif type(chain) is list and len(chain) < 2:
        raise VerificationError("x5chain as an array must hold at least 2 certificates")
    if not isinstance(chain, (list, tuple)) or not all(type(c) is bytes for c in chain):
        raise VerificationError("x5chain must be a certificate (bstr) or an array of them")
    out = (alg, kid, tuple(chain))
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


class EnvelopeError(VerificationError):
    """Not the profile's envelope. ``payload``: what it seems to carry, read leniently and
    unverified, so a finding about it can still be labelled (never used as evidence)."""

    def __init__(self, message: str, payload: bytes | None = None) -> None:
        super().__init__(message)
        self.payload = payload


class HighS(VerificationError):
    """An ES256 signature in its high-s form: valid, but the other byte form of one."""
