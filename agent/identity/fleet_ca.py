"""A small fleet CA (cryptography's X.509 API): device certificates and revocation.

``edgegov fleet ca init`` makes the CA key (0600) and a self-signed CA
certificate; ``issue`` turns a device CSR (made by ``edgegov init``) into a
device certificate whose subject CN is the device id; ``revoke`` adds a
certificate to the CA's CRL (``fleet.crl.pem``). Attestations carry the device
certificate in COSE ``x5chain``; an auditor who trusts the CA certificate
(and its CRL) trusts every device key it certified, bound to its device id.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization

from agent.errors import KeyFileError
from agent.identity.keys import ALG_EDDSA, Signer, generate_key, load_signer

if TYPE_CHECKING:
    from cryptography import x509

# cryptography.x509 (~1 MB resident with its imports) is imported by the functions that use
# it: the running agent needs it only when device.cert is configured (load_x5chain).

__all__ = ["init_ca", "issue_certificate", "load_x5chain", "make_csr", "revoke_certificate"]

CA_KEY, CA_CERT, CRL = "ca.key", "ca.pem", "fleet.crl.pem"


def _hash_for(signer: Signer) -> hashes.SHA256 | None:
    return None if signer.alg == ALG_EDDSA else hashes.SHA256()  # Ed25519 signs without a prehash


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def init_ca(
    directory: Path, name: str = "edgegov fleet CA", key_type: str = "ed25519", days: int = 3650
) -> Path:
    """Create the CA key and certificate in ``directory``; returns the certificate path."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    signer = generate_key(directory / CA_KEY, key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    pub = signer.private_key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(signer.private_key, _hash_for(signer))
    )
    path = directory / CA_CERT
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_csr(signer: Signer, device_id: str) -> bytes:
    """A PEM CSR for the device key, subject CN = device id (``edgegov init``)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(signer.private_key, _hash_for(signer))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_x5chain(path: Path) -> tuple[bytes, ...]:
    """DER certificates (leaf first) from a PEM file, for COSE x5chain (RFC 9360)."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: cannot load the device certificate: {e}") from e
    return tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)


def _load_ca(directory: Path) -> tuple[Signer, x509.Certificate]:
    from cryptography import x509

    signer = load_signer(directory / CA_KEY)
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{directory / CA_CERT}: cannot load the CA certificate: {e}") from e
    return signer, cert


def issue_certificate(directory: Path, csr_pem: bytes, days: int = 825) -> bytes:
    """Issue a device certificate (PEM) for a CSR whose signature verifies."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    signer, ca = _load_ca(directory)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise KeyFileError(f"not a PEM certificate signing request: {e}") from e
    if not csr.is_signature_valid:
        raise KeyFileError("the CSR's signature does not verify (not made with its key)")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise KeyFileError("the CSR names no device (subject CN)")
    pub = csr.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(signer.private_key, _hash_for(signer))
    )
    issued = directory / "issued"
    issued.mkdir(exist_ok=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (issued / f"{cert.serial_number:x}.pem").write_bytes(pem)
    return pem


def revoke_certificate(directory: Path, cert_pem: bytes, days: int = 30) -> Path:
    """Add a certificate to the CA's CRL and re-sign it; returns the CRL path."""
    from cryptography import x509

    signer, ca = _load_ca(directory)
    cert = x509.load_pem_x509_certificate(cert_pem)
    crl_path = directory / CRL
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(_now())
        .next_update(_now() + dt.timedelta(days=days))
    )
    serials = {cert.serial_number: _now()}
    if crl_path.exists():
        for r in x509.load_pem_x509_crl(crl_path.read_bytes()):
            serials.setdefault(r.serial_number, r.revocation_date_utc)
    for serial, when in sorted(serials.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(signer.private_key, _hash_for(signer))
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return crl_path
