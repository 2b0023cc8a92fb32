"""A signing key that never leaves a PKCS#11 token (HSM, TPM via tpm2-pkcs11, SoftHSM2).

The private key stays in the token; we ask it to sign. Ed25519 uses
``CKM_EDDSA`` (PKCS#11 3.0), P-256 uses ``CKM_ECDSA`` over our SHA-256 of the
data, whose output is already the raw r||s that COSE wants (RFC 9053 §2.1).
The public key is read from the token to compute ``kid`` and to check every
signature once at start-up, so a wrong key or mechanism fails loudly there.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.errors import KeyFileError
from agent.keys import ALG_EDDSA, PublicKey

__all__ = ["Pkcs11Signer"]

# DER OIDs of the curves as CKA_EC_PARAMS holds them
_ED25519_OIDS = (bytes.fromhex("06032b6570"), b"\x13\x0cedwards25519")
_P256_OID = bytes.fromhex("06082a8648ce3d030107")


class Pkcs11Signer:
    """Signs with a key pair labelled ``label`` on the token ``token_label``."""

    def __init__(self, module: str, token_label: str, pin: str, label: str) -> None:
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

        self._pkcs11 = pkcs11
        self._lock = threading.Lock()
        try:
            lib = pkcs11.lib(module)
            token = lib.get_token(token_label=token_label)
            try:
                self._session: Any = token.open(user_pin=pin)
            except pkcs11.exceptions.UserAlreadyLoggedIn:  # login is per process, not session
                self._session = token.open()
            priv = self._session.get_key(ObjectClass.PRIVATE_KEY, label=label)
            pub = self._session.get_key(ObjectClass.PUBLIC_KEY, label=label)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as e:
            raise KeyFileError(
                f"PKCS#11 {module}, token {token_label!r}, key {label!r}: "
                f"{type(e).__name__} {e}".strip()
            ) from e
        self._priv = priv
        params = bytes(pub[Attribute.EC_PARAMS])
        point = bytes(pub[Attribute.EC_POINT])
        if point[:1] == b"\x04" and len(point) in (34, 67):  # DER OCTET STRING wrapper
            point = point[2:]
        if priv.key_type == KeyType.EC_EDWARDS and params in _ED25519_OIDS:
            key: Any = ed25519.Ed25519PublicKey.from_public_bytes(point)
            self._mech = Mechanism.EDDSA
        elif priv.key_type == KeyType.EC and params == _P256_OID:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            self._mech = Mechanism.ECDSA
        else:
            raise KeyFileError(f"PKCS#11 key {label!r} is neither Ed25519 nor ECDSA P-256")
        self.public = PublicKey.from_key(key, f"pkcs11:{token_label}/{label}")
        self.alg = self.public.alg
        self.kid = self.public.kid
        probe = b"edgegov pkcs11 self-test"
        if not self.public.verify(self.sign(probe), probe):
            raise KeyFileError(f"PKCS#11 key {label!r}: its signature does not verify")

    def sign(self, data: bytes) -> bytes:
        msg = data if self.alg == ALG_EDDSA else hashlib.sha256(data).digest()
        with self._lock:
            try:
                return bytes(self._priv.sign(msg, mechanism=self._mech))
            except self._pkcs11.PKCS11Error as e:
                raise KeyFileError(f"PKCS#11 signing failed: {type(e).__name__} {e}") from e

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def __repr__(self) -> str:
        return f"Pkcs11Signer(alg={self.alg}, kid={self.kid.hex()})"
