"""Key rotation statements: the old key and the new key both sign the hand-over.

Wire format (CBOR)::

    rotation = [ old: COSE_Sign1, new: COSE_Sign1 ]   ; same payload in both
    payload  = { 1: device tstr, 2: old kid bstr, 3: new key SPKI DER bstr, 4: iat uint }

The old key's signature says "I hand over to this key"; the new key's says "I
hold it" (proof of possession). A verifier that trusts the old key for the
device then trusts the new one for it too (``agent.audit.trust``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cbor2

from agent.errors import KeyFileError, VerificationError
from agent.evidence.cbor_limits import check_cbor
from agent.evidence.cose import decode_sign1, encode_sign1
from agent.identity.keys import PublicKey, SigningKey, public_key_from_der

__all__ = ["RotationStatement", "load_rotation", "make_rotation", "verify_rotation"]


@dataclass(frozen=True)
class RotationStatement:
    device: str
    old_kid: bytes
    new_key: PublicKey
    issued_at: int
    old_msg: bytes
    new_msg: bytes


def make_rotation(device: str, old: SigningKey, new: SigningKey) -> bytes:
    payload = cbor2.dumps(
        {1: device, 2: old.kid, 3: new.public.spki_der(), 4: int(time.time())}, canonical=True
    )
    return cbor2.dumps([encode_sign1(payload, old), encode_sign1(payload, new)])


def load_rotation(data: bytes) -> RotationStatement:
    """Parse (not yet verify) a rotation statement."""
    check_cbor(data, "rotation statement", max_depth=6, max_items=64)
    try:
        parts = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError) as e:
        raise VerificationError(f"rotation statement is not valid CBOR: {e}") from e
    if not isinstance(parts, (list, tuple)) or len(parts) != 2:
        raise VerificationError("rotation statement must be [old COSE_Sign1, new COSE_Sign1]")
    if not all(isinstance(p, bytes) for p in parts):
        raise VerificationError("rotation statement entries must be COSE_Sign1 bytes")
    old, new = decode_sign1(parts[0]), decode_sign1(parts[1])
    if old.payload != new.payload:
        raise VerificationError("the two signatures of a rotation statement cover different text")
    check_cbor(old.payload, "rotation payload", max_depth=2, max_items=16)
    body = cbor2.loads(old.payload)
    if not isinstance(body, dict) or not isinstance(body.get(1), str):
        raise VerificationError("rotation payload must be {1: device, 2: kid, 3: key, 4: iat}")
    if not isinstance(body.get(2), bytes) or not isinstance(body.get(3), bytes):
        raise VerificationError("rotation payload must carry the old kid and the new key")
    try:
        new_key = public_key_from_der(body[3], f"rotated-in key of {body[1]}")
    except KeyFileError as e:
        raise VerificationError(str(e)) from e
    if old.kid != body[2] or new.kid != new_key.kid:
        raise VerificationError("rotation statement kids do not match its keys")
    return RotationStatement(body[1], body[2], new_key, int(body.get(4, 0)), parts[0], parts[1])


def verify_rotation(r: RotationStatement, old_key: PublicKey) -> None:
    """Both signatures must verify: the old key with the trusted key, the new with its own."""
    decode_sign1(r.old_msg).verify(old_key)
    decode_sign1(r.new_msg).verify(r.new_key)
