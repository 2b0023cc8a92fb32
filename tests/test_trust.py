"""Who the auditor trusts: device keys, a fleet CA (x5chain), rotations, revocations."""

from __future__ import annotations

import json

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.audit import verify_paths
from agent.audit.trust import load_trust
from agent.errors import ConfigError
from agent.evidence.cose import decode_sign1
from agent.evidence.rotation import make_rotation
from agent.identity.fleet_ca import init_ca, issue_certificate, make_csr, revoke_certificate
from agent.identity.keys import generate_key, load_signer
from tests.evidence_util import MODEL_DIGEST, POLICY_DIGEST, make_stream, write


def _trust(tmp_path, **doc) -> object:
    f = tmp_path / "trust.yaml"
    f.write_text(yaml.safe_dump(doc))
    return load_trust(f)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def fleet(tmp_path):
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir)
    dev = generate_key(tmp_path / "gw.key", "p256")
    cert = issue_certificate(ca_dir, make_csr(dev, "gw-1"))
    return ca_dir, dev, cert


def test_device_certificates_from_the_fleet_ca_are_trusted_via_x5chain(tmp_path, fleet):
    ca_dir, dev, cert = fleet
    msgs = make_stream(tmp_path / "e.sqlite", dev, x5chain=(_der(cert),), windows=3)
    assert decode_sign1(msgs[0]).x5chain == (_der(cert),)
    trust = _trust(tmp_path, fleet_ca=[str(ca_dir / "ca.pem")])
    res = verify_paths([write(tmp_path / "f", msgs)], trust)
    assert res.ok, [str(f) for f in res.findings]
    assert "certificate serial" in res.devices[0].signer
    # Another CA's certificate for the same key is not trusted.
    init_ca(tmp_path / "rogue")
    rogue = issue_certificate(tmp_path / "rogue", make_csr(dev, "gw-1"))
    forged = make_stream(tmp_path / "r.sqlite", dev, x5chain=(_der(rogue),), windows=1)
    res = verify_paths([write(tmp_path / "r", forged)], trust)
    assert {f.kind for f in res.findings} == {"CERTIFICATE"}


def test_a_certificate_expired_when_the_attestation_was_issued_is_refused_everywhere(
    tmp_path, fleet
):
    """verify makes it a finding; prove and replay (TrustStore.evidence) refuse it too."""
    import time

    from agent.audit.trust import CertificateError

    ca_dir, dev, _ = fleet
    cert = issue_certificate(ca_dir, make_csr(dev, "gw-1"), days=0)  # ends now
    time.sleep(1.5)  # whole seconds: iat is now after not_valid_after
    msgs = make_stream(tmp_path / "e.sqlite", dev, x5chain=(_der(cert),), windows=1)
    trust = _trust(tmp_path, fleet_ca=[str(ca_dir / "ca.pem")])
    res = verify_paths([write(tmp_path / "f", msgs)], trust)
    assert {f.kind for f in res.findings} == {"CERTIFICATE"}
    with pytest.raises(CertificateError, match="is not valid at iat"):
        trust.evidence(msgs[0])


def test_a_certificate_binds_its_key_to_one_device(tmp_path, fleet):
    ca_dir, dev, cert = fleet
    msgs = make_stream(tmp_path / "e.sqlite", dev, device="gw-9", x5chain=(_der(cert),))
    trust = _trust(tmp_path, fleet_ca=[str(ca_dir / "ca.pem")])
    res = verify_paths([write(tmp_path / "f", msgs)], trust)
    assert {f.kind for f in res.findings} == {"KEY_DEVICE"}


def test_revoked_certificates_and_kids_are_honoured(tmp_path, fleet):
    ca_dir, dev, cert = fleet
    msgs = make_stream(tmp_path / "e.sqlite", dev, x5chain=(_der(cert),), windows=2)
    crl = revoke_certificate(ca_dir, cert)
    trust = _trust(tmp_path, fleet_ca=[str(ca_dir / "ca.pem")], revoked={"crls": [str(crl)]})
    res = verify_paths([write(tmp_path / "f", msgs)], trust)
    assert {f.kind for f in res.findings} == {"REVOKED_KEY"} and res.verified == 0
    key = generate_key(tmp_path / "k.key")
    (tmp_path / "k.pub").write_bytes(key.public.pem())
    plain = make_stream(tmp_path / "p.sqlite", key, windows=2)
    trust = _trust(tmp_path, keys=["k.pub"], revoked={"kids": [key.kid.hex()]})
    res = verify_paths([write(tmp_path / "p", plain)], trust)
    assert {f.kind for f in res.findings} == {"REVOKED_KEY"}


def test_a_crl_not_signed_by_the_fleet_ca_is_refused(tmp_path, fleet):
    ca_dir, _dev, cert = fleet
    init_ca(tmp_path / "other")
    bad = revoke_certificate(tmp_path / "other", cert)
    with pytest.raises(ConfigError, match="not signed by a listed fleet CA"):
        _trust(tmp_path, fleet_ca=[str(ca_dir / "ca.pem")], revoked={"crls": [str(bad)]})


def test_key_rotation_signed_by_old_and_new_key_moves_trust(tmp_path):
    old = generate_key(tmp_path / "old.key")
    new = generate_key(tmp_path / "new.key", "p256")
    (tmp_path / "old.pub").write_bytes(old.public.pem())
    (tmp_path / "rot.cbor").write_bytes(make_rotation("gw-1", old, new))
    before = make_stream(tmp_path / "a.sqlite", old, windows=2)
    after = make_stream(tmp_path / "b.sqlite", new, windows=2, start_ms=1_800_000_000_000)
    files = write(tmp_path / "f", before + after)
    assert not verify_paths([files], _trust(tmp_path, keys=["old.pub"])).ok  # new key unknown
    trust = _trust(tmp_path, keys=[{"key": "old.pub", "device": "gw-1"}], rotations=["rot.cbor"])
    res = verify_paths([files], trust)
    assert res.ok, [str(f) for f in res.findings]
    # A statement signed by the new key only (the old key never agreed) is refused.
    thief = generate_key(tmp_path / "thief.key")
    (tmp_path / "bad.cbor").write_bytes(make_rotation("gw-1", thief, thief))
    with pytest.raises(Exception, match="untrusted key"):
        _trust(tmp_path, keys=["old.pub"], rotations=["bad.cbor"])


def test_configs_not_on_the_approved_list_are_findings(tmp_path, signer):
    (tmp_path / "d.pub").write_bytes(signer.public.pem())
    msgs = make_stream(tmp_path / "e.sqlite", signer, windows=2)
    ok = _trust(tmp_path, keys=["d.pub"],
                approved={"policies": [POLICY_DIGEST], "models": [MODEL_DIGEST]})  # fmt: skip
    assert verify_paths([write(tmp_path / "f", msgs)], ok).ok
    strict = _trust(tmp_path, keys=["d.pub"], approved={"policies": ["00" * 32], "models": []})
    res = verify_paths([tmp_path / "f"], strict)
    assert {f.kind for f in res.findings} == {"CONFIG_UNAPPROVED"}
    assert len(res.findings) == 2  # the policy and the model, reported once each


def test_cli_verify_with_trust_file_json_and_exit_codes(tmp_path, signer, run_cli):
    (tmp_path / "d.pub").write_bytes(signer.public.pem())
    (tmp_path / "trust.yaml").write_text("keys: [{key: d.pub, device: gw-1}]\n")
    msgs = make_stream(tmp_path / "e.sqlite", signer, windows=3)
    good = write(tmp_path / "good", msgs)
    r = run_cli("audit", "verify", str(good), "--trust", str(tmp_path / "trust.yaml"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["evidence"] == "intact"
    bad = write(tmp_path / "bad", msgs[:1] + msgs[2:])
    r = run_cli("audit", "verify", str(bad), "--trust", str(tmp_path / "trust.yaml"), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["findings"][0]["kind"] == "CHAIN_GAP"
    assert {"device", "seq", "kind", "detail"} <= set(doc["findings"][0])
    r = run_cli("audit", "verify", str(good), "--key", str(tmp_path / "d.pub"))
    assert r.returncode == 0 and "evidence:   INTACT" in r.stdout
    r = run_cli("audit", "verify", str(good))
    assert r.returncode == 2 and "no trust anchors" in r.stderr


def test_cli_init_ca_issue_revoke_and_prove(tmp_path, run_cli):
    r = run_cli("init", "--device-id", "gw-7", "--dir", str(tmp_path / "gw"))
    assert r.returncode == 0, r.stderr
    csr = x509.load_pem_x509_csr((tmp_path / "gw/keys/device.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=gw-7"
    assert run_cli("fleet", "ca", "init", "--dir", str(tmp_path / "ca")).returncode == 0
    r = run_cli("fleet", "ca", "issue", str(tmp_path / "gw/keys/device.csr"),
                "--dir", str(tmp_path / "ca"), "--out", str(tmp_path / "gw.pem"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "gw.pem").read_bytes())
    signer = load_signer(tmp_path / "gw/keys/device.key")
    assert (
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == signer.public.spki_der()
    )
    r = run_cli("fleet", "ca", "revoke", str(tmp_path / "gw.pem"), "--dir", str(tmp_path / "ca"))
    assert r.returncode == 0 and (tmp_path / "ca/fleet.crl.pem").exists()
    db = tmp_path / "gw/state.sqlite"
    make_stream(db, signer, device="gw-7", windows=3)
    proof = tmp_path / "r5.proof"
    r = run_cli("audit", "prove", "--store", str(db), "--index", "5", "--out", str(proof))
    assert r.returncode == 0, r.stderr
    r = run_cli("audit", "prove", "--check", str(proof), "--key",
                str(tmp_path / "gw/keys/device.pub.pem"))  # fmt: skip
    assert r.returncode == 0 and "reading 5 of gw-7 is in the log" in r.stdout
    other = generate_key(tmp_path / "o.key")
    (tmp_path / "o.pub").write_bytes(other.public.pem())
    r = run_cli("audit", "prove", "--check", str(proof), "--key", str(tmp_path / "o.pub"))
    assert r.returncode == 1 and "not a trusted key" in r.stderr
