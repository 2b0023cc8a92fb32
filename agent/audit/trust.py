"""What an auditor trusts: device keys, fleet CAs, rotations, revocations, approved configs.

A trust file (YAML; paths relative to it)::

    keys:                       # device public keys (SubjectPublicKeyInfo PEM)
      - {key: gw-0001.pub.pem, device: gw-0001}   # device: optional binding
      - gw-0002.pub.pem
    fleet_ca: [fleet-ca.pem]    # device certificates (COSE x5chain) must chain to one
    rotations: [gw-0001-rotation.cbor]   # key rotation statements (old and new key sign)
    revoked:
      kids: [3f2a...]           # hex kids never to accept again
      crls: [fleet.crl.pem]     # CRLs issued by a fleet CA
    approved:                   # config digests (hex SHA-256) allowed to run
      policies: [ab12...]
      models: [cd34...]
    people: [...]               # who may sign explanations, labs: calibration
    labs: [...]                 # certificates, sites: devices per site; read by
    sites: {...}                # agent/governance/people.py (docs/governance.md)

``kid`` only selects candidate keys; the key (and so the algorithm) comes from
this file, a rotation statement it accepts, or a certificate that chains to a
fleet CA it lists. A key is bound to a device when the file says so or its
certificate names the device (subject CN).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent.errors import ConfigError, KeyFileError, VerificationError
from agent.evidence.claims import Evidence, parse_claims
from agent.evidence.cose import Sign1, decode_sign1
from agent.evidence.rotation import RotationStatement, verify_rotation
from agent.identity.keys import PublicKey, load_public_key, public_key_from_der

__all__ = ["TrustStore", "TrustedKey", "UnknownKey", "load_trust"]


class UnknownKey(VerificationError):
    """No trusted key (or valid certificate) matches the message's kid."""


class RevokedKey(VerificationError):
    """The signing key is on a revocation list."""


class CertificateError(VerificationError):
    """The message's x5chain does not chain to a trusted fleet CA."""


@dataclass(frozen=True)
class TrustedKey:
    key: PublicKey
    device: str | None  # None: not bound to a device id
    how: str  # "key file", "rotation from <kid>", "certificate serial N"
    revoked_at: dt.datetime | None = None


@dataclass
class TrustStore:
    keys: dict[bytes, list[TrustedKey]] = field(default_factory=dict)
    cas: list[x509.Certificate] = field(default_factory=list)
    revoked_kids: set[bytes] = field(default_factory=set)
    revoked_serials: dict[tuple[bytes, int], dt.datetime] = field(default_factory=dict)
    approved_policies: set[str] | None = None
    approved_models: set[str] | None = None
    rotations: list[RotationStatement] = field(default_factory=list)

    @classmethod
    def of_keys(cls, keys: Sequence[PublicKey]) -> TrustStore:
        t = cls()
        for k in keys:
            t.add(TrustedKey(k, None, f"key {k.source or k.kid.hex()}"))
        return t

    def add(self, tk: TrustedKey) -> None:
        self.keys.setdefault(tk.key.kid, []).append(tk)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as DER and plain values: ``audit verify --jobs`` hands the store to
        worker processes that are not always forks, and cryptography's key and certificate
        objects do not pickle. Keys keep their order (the first per kid is the one used)."""
        keys = [
            (tk.key.spki_der(), tk.key.source, tk.device, tk.how, tk.revoked_at)
            for tks in self.keys.values()
            for tk in tks
        ]
        return (
            _unpickle_trust,
            (
                keys,
                [ca.public_bytes(serialization.Encoding.DER) for ca in self.cas],
                set(self.revoked_kids),
                dict(self.revoked_serials),
                self.approved_policies,
                self.approved_models,
                [(r.old_msg, r.new_msg) for r in self.rotations],
            ),
        )

    @property
    def empty(self) -> bool:
        return not self.keys and not self.cas

    def apply_rotations(self) -> None:
        """Trust each rotation's new key if its old key is trusted (repeat for chains)."""
        pending = list(self.rotations)
        while pending:
            progressed = False
            for r in list(pending):
                olds = self.keys.get(r.old_kid, [])
                if not olds:
                    continue
                old = olds[0]
                if old.device is not None and old.device != r.device:
                    raise VerificationError(
                        f"rotation statement for {r.device} is signed by the key of {old.device}"
                    )
                verify_rotation(r, old.key)
                self.add(TrustedKey(r.new_key, r.device, f"rotation from {r.old_kid.hex()}"))
                pending.remove(r)
                progressed = True
            if not progressed:
                raise VerificationError(
                    "rotation statement(s) from untrusted key(s) "
                    + ", ".join(r.old_kid.hex() for r in pending)
                )

    def resolve(self, msg: Sign1) -> TrustedKey:
        """The key to verify ``msg`` with; raises if there is none or it is revoked."""
        if msg.kid in self.revoked_kids:
            raise RevokedKey(f"kid {msg.kid.hex()} is revoked")
        cands = self.keys.get(msg.kid, [])
        if cands:
            return cands[0]
        if msg.x5chain and self.cas:
            return self._from_chain(msg)
        raise UnknownKey(
            f"signed by kid {msg.kid.hex()}, which is not a trusted key "
            f"(trusted: {self.describe_keys()})"
        )

    def describe_keys(self, limit: int = 3) -> str:
        """The trusted kids and where each came from, for messages (``kid (key a.pub)``)."""
        keys = [tk for tks in self.keys.values() for tk in tks]
        out = [f"kid {tk.key.kid.hex()} ({tk.how})" for tk in keys[:limit]]
        if len(keys) > limit:
            out.append(f"and {len(keys) - limit} more key(s)")
        if self.cas:
            out.append(f"certificates of {len(self.cas)} fleet CA(s)")
        return ", ".join(out) or "none"

    def evidence(self, raw: bytes) -> Evidence:
        """The claims of one attestation whose signature verifies with a trusted key bound
        (if at all) to the device it names; raises VerificationError (or a subclass) otherwise.

        ``audit prove`` and ``audit replay`` check single messages this way; ``audit verify``
        makes each step a finding of its own instead.
        """
        msg = decode_sign1(raw)
        key = self.resolve(msg)
        msg.verify(key.key)
        ev = parse_claims(msg.claims())
        if key.device is not None and key.device != ev.device_id:
            raise VerificationError(f"attestation of {ev.device_id} signed by {key.device}'s key")
        self.check_validity(msg, ev.issued_at)
        return ev

    def _from_chain(self, msg: Sign1) -> TrustedKey:
        try:
            certs = [x509.load_der_x509_certificate(c) for c in msg.x5chain]
        except ValueError as e:
            raise CertificateError(f"x5chain holds a certificate that does not parse: {e}") from e
        leaf = certs[0]
        chain = certs + []
        issuer_ok = False
        for i, cert in enumerate(chain):
            for ca in self.cas:
                if _issued_by(cert, ca):
                    issuer_ok = True
                    break
            if issuer_ok:
                chain = chain[: i + 1]
                break
            if i + 1 < len(chain) and not _issued_by(cert, chain[i + 1]):
                raise CertificateError(f"x5chain certificate {i} is not issued by the next one")
        if not issuer_ok:
            raise CertificateError("x5chain does not chain to a trusted fleet CA")
        for cert in chain:
            rev = self.revoked_serials.get((cert.issuer.public_bytes(), cert.serial_number))
            if rev is not None:
                raise RevokedKey(f"certificate serial {cert.serial_number} was revoked at {rev}")
        try:
            key = PublicKey.from_key(leaf.public_key(), f"certificate serial {leaf.serial_number}")  # type: ignore[arg-type]
        except KeyFileError as e:
            raise CertificateError(str(e)) from e
        if key.kid != msg.kid:
            raise CertificateError("kid does not match the x5chain leaf certificate's key")
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        device = str(cns[0].value) if cns else None
        return TrustedKey(key, device, f"certificate serial {leaf.serial_number}")

    def check_validity(self, msg: Sign1, iat: int) -> None:
        """Certificates must be valid when the attestation was issued."""
        if not msg.x5chain or msg.kid in self.keys:
            return
        when = dt.datetime.fromtimestamp(iat, tz=dt.timezone.utc)
        for der in msg.x5chain:
            cert = x509.load_der_x509_certificate(der)
            if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
                raise CertificateError(
                    f"certificate serial {cert.serial_number} is not valid at iat {when:%Y-%m-%d}"
                )


def _unpickle_trust(
    keys: list[tuple[bytes, str, str | None, str, dt.datetime | None]],
    cas: list[bytes],
    revoked_kids: set[bytes],
    revoked_serials: dict[tuple[bytes, int], dt.datetime],
    approved_policies: set[str] | None,
    approved_models: set[str] | None,
    rotations: list[tuple[bytes, bytes]],
) -> TrustStore:
    """The store :meth:`TrustStore.__reduce__` took apart (rotations already applied)."""
    from agent.evidence.rotation import load_rotation

    t = TrustStore(
        cas=[x509.load_der_x509_certificate(der) for der in cas],
        revoked_kids=revoked_kids,
        revoked_serials=revoked_serials,
        approved_policies=approved_policies,
        approved_models=approved_models,
        rotations=[load_rotation(cbor2.dumps([old, new])) for old, new in rotations],
    )
    for spki, source, device, how, revoked_at in keys:
        t.add(TrustedKey(public_key_from_der(spki, source), device, how, revoked_at))
    return t


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    return bool(bc.ca)


def _list(f: Mapping[str, Any], key: str, file: Path) -> list[Any]:
    v = f.get(key, [])
    if not isinstance(v, list):
        raise ConfigError(f"{file}: {key} must be a list")
    return v


def load_trust(path: Path) -> TrustStore:
    """Read a trust file (format above); ConfigError names the file and field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read trust file: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a trust file is a mapping (keys, fleet_ca, revoked, ...)")
    known = {"keys", "fleet_ca", "rotations", "revoked", "approved", "people", "labs", "sites"}
    extra = sorted(set(map(str, data)) - known)
    if extra:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(extra)}")
    base = path.parent
    t = TrustStore()
    for i, entry in enumerate(_list(data, "keys", path)):
        if isinstance(entry, str):
            entry = {"key": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("key"), str):
            raise ConfigError(f"{path}: keys[{i}] must be a path or {{key: PATH, device: ID}}")
        k = load_public_key(base / entry["key"])
        t.add(TrustedKey(k, entry.get("device"), f"key {entry['key']}"))
    for i, ca in enumerate(_list(data, "fleet_ca", path)):
        try:
            t.cas.append(x509.load_pem_x509_certificate((base / str(ca)).read_bytes()))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: fleet_ca[{i}]: cannot load {ca}: {e}") from e
    for i, rot in enumerate(_list(data, "rotations", path)):
        from agent.evidence.rotation import load_rotation

        try:
            t.rotations.append(load_rotation((base / str(rot)).read_bytes()))
        except OSError as e:
            raise ConfigError(f"{path}: rotations[{i}]: cannot read {rot}: {e.strerror}") from e
    rev = data.get("revoked") or {}
    if not isinstance(rev, Mapping):
        raise ConfigError(f"{path}: revoked must be a mapping (kids, crls)")
    for i, kid in enumerate(_list(rev, "kids", path)):
        try:
            t.revoked_kids.add(bytes.fromhex(str(kid)))
        except ValueError as e:
            raise ConfigError(f"{path}: revoked.kids[{i}] is not hex") from e
    for i, crl_path in enumerate(_list(rev, "crls", path)):
        try:
            crl = x509.load_pem_x509_crl((base / str(crl_path)).read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: revoked.crls[{i}]: cannot load {crl_path}: {e}") from e
        if not any(crl.is_signature_valid(ca.public_key()) for ca in t.cas):  # type: ignore[arg-type]
            raise ConfigError(f"{path}: revoked.crls[{i}] is not signed by a listed fleet CA")
        for r in crl:
            t.revoked_serials[(crl.issuer.public_bytes(), r.serial_number)] = r.revocation_date_utc
    appr = data.get("approved")
    if appr is not None:
        if not isinstance(appr, Mapping):
            raise ConfigError(f"{path}: approved must be a mapping (policies, models)")
        t.approved_policies = {str(x).lower() for x in _list(appr, "policies", path)}
        t.approved_models = {str(x).lower() for x in _list(appr, "models", path)}
    t.apply_rotations()
    return t
