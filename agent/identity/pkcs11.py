"""A signing key that never leaves a PKCS#11 token (HSM, TPM via tpm2-pkcs11, SoftHSM2).

The private key stays in the token; we ask it to sign. Ed25519 uses
``CKM_EDDSA`` (PKCS#11 3.0), P-256 uses ``CKM_ECDSA`` over our SHA-256 of the
data, whose output is already the raw r||s that COSE wants (RFC 9053 §2.1).
The public key is read from the token to compute ``kid`` and to check every
signature once at start-up, so a wrong key or mechanism fails loudly there.

:func:`create_token_key` makes such a key pair inside a token (``edgegov key
create``): the private key is sensitive and never extractable. :func:`export_public`
reads the public key of one (``edgegov key export-pub``). The PIN always comes from
the caller (the CLI reads it from an environment variable); it is never in a message.
python-pkcs11 is the ``pkcs11`` extra: ``pip install 'edgegov[pkcs11]'``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.errors import KeyFileError
from agent.identity.keys import ALG_EDDSA, PublicKey, ecdsa_raw

__all__ = ["KEY_TYPES", "Pkcs11Signer", "create_token_key", "export_public", "pin_from_env"]

#: key types ``create_token_key`` makes (COSE alg -8 and -7)
KEY_TYPES = ("ed25519", "p256")
_EXTRA = "pip install 'edgegov[pkcs11]'"

# DER OIDs of the curves as CKA_EC_PARAMS holds them
_ED25519_OIDS = (bytes.fromhex("06032b6570"), b"\x13\x0cedwards25519")
_P256_OID = bytes.fromhex("06082a8648ce3d030107")


class Pkcs11Signer:
    """Signs with a key pair labelled ``label`` on the token ``token_label``."""

    def __init__(self, module: str, token_label: str, pin: str, label: str) -> None:
        pkcs11 = _pkcs11()
        from pkcs11 import ObjectClass

        self._pkcs11 = pkcs11
        self._lock = threading.Lock()
        self._session: Any = _open(module, token_label, pin)
        try:
            priv = self._session.get_key(ObjectClass.PRIVATE_KEY, label=label)
            pub = self._session.get_key(ObjectClass.PUBLIC_KEY, label=label)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as e:
            self._session.close()
            raise KeyFileError(
                f"PKCS#11 {module}, token {token_label!r}, key {label!r}: "
                f"{type(e).__name__} {e}".strip()
            ) from e
        self._priv = priv
        key, self._mech = _public_key(pub, label)
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
                sig = bytes(self._priv.sign(msg, mechanism=self._mech))
            except self._pkcs11.PKCS11Error as e:
                raise KeyFileError(f"PKCS#11 signing failed: {type(e).__name__} {e}") from e
        if self.alg == ALG_EDDSA or len(sig) != 64:
            return sig
        # CKM_ECDSA gives raw r || s; write the low s as the software signer does
        return ecdsa_raw(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def __repr__(self) -> str:
        return f"Pkcs11Signer(alg={self.alg}, kid={self.kid.hex()})"


def pin_from_env(var: str, where: str) -> str:
    """The token PIN from environment variable ``var`` (``where`` names the setting)."""
    pin = os.environ.get(var)
    if pin is None:
        raise KeyFileError(f"{where}: environment variable {var} with the token PIN is not set")
    return pin


def create_token_key(
    module: str, token_label: str, label: str, pin: str, key_type: str = "ed25519"
) -> Pkcs11Signer:
    """Generate a key pair labelled ``label`` inside the token and open it for signing.

    The private key is sensitive, never extractable and can only sign; the public key
    is a public object (``export_public`` reads it without the PIN). The returned
    signer has already signed and verified a probe with the new key.

    Raises:
        KeyFileError: no such module or token, wrong PIN, ``label`` already in use
            (nothing is created then), or the token cannot make this key type.
    """
    if key_type not in KEY_TYPES:
        raise ValueError(f"key_type must be one of {KEY_TYPES}, got {key_type!r}")
    pkcs11 = _pkcs11()
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag
    from pkcs11.util.ec import encode_named_curve_parameters

    session = _open(module, token_label, pin, rw=True)
    try:
        taken = list(session.get_objects({Attribute.LABEL: label}))
        if taken:
            raise KeyFileError(
                f"PKCS#11 token {token_label!r} already holds {len(taken)} object(s) labelled "
                f"{label!r}; nothing was created (choose another label)"
            )
        if key_type == "ed25519":  # RFC 8410 OID of Ed25519, as CKA_EC_PARAMS
            kind, curve, mech = KeyType.EC_EDWARDS, "1.3.101.112", Mechanism.EC_EDWARDS_KEY_PAIR_GEN
        else:
            kind, curve, mech = KeyType.EC, "secp256r1", Mechanism.EC_KEY_PAIR_GEN
        params = session.create_domain_parameters(
            kind, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
        )
        params.generate_keypair(
            store=True,
            label=label,
            mechanism=mech,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.PRIVATE: False},
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
    except (pkcs11.PKCS11Error, RuntimeError) as e:
        raise KeyFileError(
            f"PKCS#11 {module}, token {token_label!r}: cannot create a {key_type} key "
            f"{label!r}: {type(e).__name__} {e}".strip()
        ) from e
    finally:
        session.close()
    return Pkcs11Signer(module, token_label, pin, label)


def export_public(module: str, token_label: str, label: str, pin: str | None) -> PublicKey:
    """The public key of the key pair ``label`` in the token (``pin``: log in first)."""
    pkcs11 = _pkcs11()
    from pkcs11 import ObjectClass

    session = _open(module, token_label, pin)
    try:
        pub = session.get_key(ObjectClass.PUBLIC_KEY, label=label)
        key, _ = _public_key(pub, label)
    except (pkcs11.PKCS11Error, RuntimeError) as e:
        raise KeyFileError(
            f"PKCS#11 {module}, token {token_label!r}, key {label!r}: "
            f"{type(e).__name__} {e}".strip()
            + ("" if pin is not None else " (a public key kept private needs the PIN)")
        ) from e
    finally:
        session.close()
    return PublicKey.from_key(key, f"pkcs11:{token_label}/{label}")


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as e:
        raise KeyFileError(
            f"keys in a PKCS#11 token need python-pkcs11, which is not installed: {_EXTRA}"
        ) from e
    return pkcs11


def _open(module: str, token_label: str, pin: str | None, *, rw: bool = False) -> Any:
    """A session on the token (logged in when ``pin`` is given)."""
    pkcs11 = _pkcs11()
    try:
        token = pkcs11.lib(module).get_token(token_label=token_label)
        if pin is None:
            return token.open(rw=rw)
        try:
            return token.open(rw=rw, user_pin=pin)
        except pkcs11.exceptions.UserAlreadyLoggedIn:  # login is per process, not session
            return token.open(rw=rw)
    except (pkcs11.PKCS11Error, RuntimeError, OSError) as e:
        raise KeyFileError(
            f"PKCS#11 {module}, token {token_label!r}: {type(e).__name__} {e}".strip()
        ) from e


def _public_key(pub: Any, label: str) -> tuple[Any, Any]:
    """(cryptography public key, signing mechanism) of a token's public key object."""
    from pkcs11 import Attribute, KeyType, Mechanism

    params = bytes(pub[Attribute.EC_PARAMS])
    point = bytes(pub[Attribute.EC_POINT])
    if point[:1] == b"\x04" and len(point) in (34, 67):  # DER OCTET STRING wrapper
        point = point[2:]
    if pub.key_type == KeyType.EC_EDWARDS and params in _ED25519_OIDS:
        return ed25519.Ed25519PublicKey.from_public_bytes(point), Mechanism.EDDSA
    if pub.key_type == KeyType.EC and params == _P256_OID:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point), Mechanism.ECDSA
    raise KeyFileError(f"PKCS#11 key {label!r} is neither Ed25519 nor ECDSA P-256")
