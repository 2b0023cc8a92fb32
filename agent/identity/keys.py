"""Device signing keys: create (0600), load (permission-checked), identify (kid).

Key files are PKCS#8 PEM (private, mode 0600, never logged) with the public
key beside them as SubjectPublicKeyInfo PEM (``<name>.pub.pem``), which is all
an auditor needs. Ed25519 is the default (COSE alg -8); ECDSA P-256 (alg -7)
is there for secure elements and TPMs, which mostly hold P-256 keys.

The key id (COSE ``kid``) is the first 16 bytes of SHA-256 over the DER
SubjectPublicKeyInfo, so it is derivable from the public key alone and never
needs to be trusted: it only helps a verifier find the key.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from agent.errors import KeyFileError

__all__ = [
    "ALG_ED25519",
    "ALG_EDDSA",
    "ALG_ES256",
    "P256_N",
    "PublicKey",
    "Signer",
    "SigningKey",
    "ecdsa_high_s",
    "ecdsa_raw",
    "generate_key",
    "load_public_key",
    "load_signer",
    "public_key_from_der",
    "public_key_path",
]

ALG_EDDSA = -8  # RFC 9053 §2.2 (EdDSA, here always Ed25519)
ALG_ES256 = -7  # RFC 9053 §2.1 (ECDSA w/ SHA-256, signature is raw r||s)
ALG_ED25519 = -19  # RFC 9864 fully-specified Ed25519; accepted on verify as -8's twin
ALG_ESP256 = -9  # RFC 9864 fully-specified ECDSA P-256; accepted on verify as -7's twin

# what accepted_algs returns (built once: the auditor asks for every message)
_EDDSA_ALGS = frozenset({ALG_EDDSA, ALG_ED25519})
_ECDSA_ALGS = frozenset({ALG_ES256, ALG_ESP256})
# The order of the P-256 group. (r, s) and (r, n - s) are both valid ECDSA signatures of one
# message, so anyone could change the bytes of a stored attestation without the key; our
# signers always write the low s (s <= n/2) and the verifier accepts only that form.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def ecdsa_raw(r: int, s: int) -> bytes:
    """Raw ``r || s`` (RFC 9053 §2.1) with s in its low form: one byte form per signature."""
    if s > P256_N // 2:
        s = P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def ecdsa_high_s(signature: bytes) -> bool:
    """Whether a raw P-256 ``r || s`` has the high s (the malleable twin of a low-s one)."""
    return int.from_bytes(signature[32:64], "big") > P256_N // 2


_PrivateKey = Union[ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey]
_PubKey = Union[ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey]


def _spki_der(pub: _PubKey) -> bytes:
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _kid(pub: _PubKey) -> bytes:
    return hashlib.sha256(_spki_der(pub)).digest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A verification key as an auditor holds it."""

    key: _PubKey
    alg: int
    kid: bytes
    source: str = ""

    @classmethod
    def from_key(cls, key: _PubKey, source: str = "") -> PublicKey:
        if isinstance(key, ed25519.Ed25519PublicKey):
            return cls(key, ALG_EDDSA, _kid(key), source)
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(key, ALG_ES256, _kid(key), source)
        raise KeyFileError(f"{source or 'key'}: only Ed25519 and ECDSA P-256 keys are supported")

    @property
    def accepted_algs(self) -> frozenset[int]:
        """COSE algs a message may name for this key: the key pins its algorithm."""
        return _EDDSA_ALGS if self.alg == ALG_EDDSA else _ECDSA_ALGS

    def spki_der(self) -> bytes:
        return _spki_der(self.key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` over ``data`` is valid for this key."""
        if len(signature) != 64:  # Ed25519, and raw r||s for P-256
            return False
        try:
            if self.alg == ALG_EDDSA:
                self.key.verify(signature, data)  # type: ignore[call-arg]
            else:
                der = encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
                self.key.verify(der, data, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class SigningKey(Protocol):
    """What the attester needs from a key: a file key (:class:`Signer`) or an HSM key."""

    alg: int
    kid: bytes
    public: PublicKey

    def sign(self, data: bytes) -> bytes: ...


class Signer:
    """Signs with a device private key. The key object never leaves this class."""

    def __init__(self, key: _PrivateKey, source: str = "") -> None:
        self._key = key
        self.public = PublicKey.from_key(key.public_key(), source)
        self.alg = self.public.alg
        self.kid = self.public.kid

    @property
    def private_key(self) -> _PrivateKey:
        """For CSRs and rotation statements made on the device; never serialised by us."""
        return self._key

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        return ecdsa_raw(*decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256()))))

    def __repr__(self) -> str:  # never show key material
        return f"Signer(alg={self.alg}, kid={self.kid.hex()})"


def public_key_path(key_path: Path) -> Path:
    """Where the public key of ``key_path`` lives: ``device.key`` -> ``device.pub.pem``."""
    return key_path.with_name(key_path.stem + ".pub.pem")


def generate_key(path: Path, key_type: str = "ed25519") -> Signer:
    """Create a new private key at ``path`` (mode 0600, refuses to overwrite)."""
    if key_type == "ed25519":
        key: _PrivateKey = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "p256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise KeyFileError(f"unknown key type {key_type!r}: expected 'ed25519' or 'p256'")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise KeyFileError(f"{path}: a key already exists; refusing to overwrite it") from e
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    signer = Signer(key, str(path))
    public_key_path(path).write_bytes(signer.public.pem())
    return signer


def load_signer(path: Path) -> Signer:
    """Load a device private key, refusing one that others can read."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise KeyFileError(
            f"{path}: device key not found (create one with 'edgegov init --device-id ID')"
        ) from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: private key has mode {stat.S_IMODE(st.st_mode):04o}; it must not be "
            f"readable by group or others (chmod 600 {path})"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PKCS#8 PEM private key") from e
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyFileError(f"{path}: only Ed25519 and ECDSA P-256 keys are supported")
    return Signer(key, str(path))


def public_key_from_der(der: bytes, source: str = "") -> PublicKey:
    """A verification key from DER SubjectPublicKeyInfo (rotation statements, certificates)."""
    try:
        key = serialization.load_der_public_key(der)
    except ValueError as e:
        raise KeyFileError(f"{source or 'key'}: not a DER SubjectPublicKeyInfo") from e
    return PublicKey.from_key(key, source)  # type: ignore[arg-type]


def load_public_key(path: Path) -> PublicKey:
    """Load a trust anchor: a SubjectPublicKeyInfo PEM file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read public key: {e.strerror}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeyFileError(f"{path}: not a PEM public key (SubjectPublicKeyInfo)") from e
    return PublicKey.from_key(key, str(path))  # type: ignore[arg-type]
