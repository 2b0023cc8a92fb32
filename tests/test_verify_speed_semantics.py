"""Issue 15: a faster verifier with the one semantics it had.

Ed25519 signatures are now checked by libsodium (PyNaCl) instead of OpenSSL (through
``cryptography``), and ``audit verify --jobs N`` checks them ahead in worker processes.
Neither may change a verdict an honest or a tampered stream gets:

* the differential: every tamper case of tests/test_tamper_matrix.py and
  tests/test_verify_hostile.py (their builders), plus ES256 ones, gives the same findings,
  JSON and text on the new path as on the old one (OpenSSL's Ed25519 verify);
* where the two libraries *do* differ (small-order keys and ``R``: OpenSSL accepts what
  is a forgery or a second form, libsodium refuses), the new verdict is the closed one,
  a ``BAD_SIGNATURE``, and each such case is shown here;
* ``--jobs N`` prints what ``--jobs 1`` prints, to the byte, and a worker's verdict can
  only spare work, never decide a finding.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random

import cbor2
import nacl.exceptions
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.audit import format_result
from agent.audit import parallel as P
from agent.audit import verify as V
from agent.audit.trust import TrustStore, load_trust
from agent.evidence import cose
from agent.evidence.cose import decode_sign1, encode_sign1, sig_structure
from agent.evidence.rotation import make_rotation
from agent.identity.fleet_ca import init_ca, issue_certificate, make_csr, revoke_certificate
from agent.identity.keys import P256_N, PublicKey, generate_key
from tests.evidence_util import MODEL_DIGEST, POLICY_DIGEST, make_stream, write
from tests.test_tamper_matrix import CASES as TAMPER
from tests.test_verify_hostile import (
    _P,
    ENVELOPES,
    OUT_OF_RANGE,
    RAW_PAYLOADS,
    _claims,
    _envelope,
    _resign,
    _with_claim,
)

L = 2**252 + 27742317777372353535851937790883648493  # the order of the Ed25519 group
IDENTITY = (1).to_bytes(32, "little")  # the neutral point (x = 0, y = 1): order 1
ORDER_2 = (2**255 - 20).to_bytes(32, "little")  # (0, -1): order 2
IDENTITY_NON_CANONICAL = (1 + 2**255 - 19).to_bytes(32, "little")  # y = 1 + p


def _old_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier as it was before issue 15: Ed25519 by OpenSSL (``cryptography``)."""
    monkeypatch.setattr(cose, "_ed25519_verifies", lambda key, sig, data: key.verify(sig, data))


def _outcome(res: V.AuditResult) -> tuple[object, ...]:
    """Everything an auditor sees of a result: verdicts, counts, findings, JSON and text."""
    return (
        res.ok,
        res.files,
        res.verified,
        res.redelivered,
        [str(f) for f in res.findings],
        json.dumps(res.to_json(), indent=2, allow_nan=False),
        format_result(res.analysis),
    )


def _flip(msg: bytes, offset_from_end: int) -> bytes:
    b = bytearray(msg)
    b[len(b) - offset_from_end] ^= 0x01
    return bytes(b)


def _with_signature(msg: bytes, signature: bytes) -> bytes:
    m = decode_sign1(msg)
    return _envelope(m.protected, m.payload, signature)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed")
    a, b = generate_key(d / "a.key"), generate_key(d / "b.key")
    p256 = generate_key(d / "p.key", "p256")
    return {
        "a": a,
        "b": b,
        "stream": make_stream(d / "a.sqlite", a, device="gw-1", windows=6),
        "other": make_stream(d / "b.sqlite", b, device="gw-2", windows=6),
        "p256": p256,
        "p256_stream": make_stream(d / "p.sqlite", p256, device="gw-1", windows=5),
    }


@pytest.fixture(scope="module")
def corpus(world):
    """(name, messages, anchors, device) for every tamper case the two test files build."""
    a, s = world["a"], list(world["stream"])
    anchors = [a.public, world["b"].public]
    out = [
        (f"tamper: {k}", make(world, list(s)), anchors, "gw-1") for k, (make, _) in TAMPER.items()
    ]
    for k, env in ENVELOPES.items():
        out.append(
            (f"envelope: {k}", [*s[:_P], env(decode_sign1(s[_P])), *s[_P + 1 :]], anchors, "gw-1")
        )
    for k, raw in RAW_PAYLOADS.items():
        c = _claims(s[_P])
        payload = raw(c)
        out.append(
            (f"payload: {k}", [*s[:_P], _resign(s[_P], a, payload), *s[_P + 1 :]], anchors, None)
        )
    for k, change in OUT_OF_RANGE.items():
        out.append(
            (f"claim: {k}", [*s[:_P], _with_claim(s[_P], a, change), *s[_P + 1 :]], anchors, None)
        )
    sig = decode_sign1(s[_P]).signature
    big_s = (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
    out.append(
        (
            "ed25519 S + L",
            [*s[:_P], _with_signature(s[_P], sig[:32] + big_s), *s[_P + 1 :]],
            anchors,
            None,
        )
    )
    out.append(
        (
            "ed25519 R zeroed",
            [*s[:_P], _with_signature(s[_P], bytes(32) + sig[32:]), *s[_P + 1 :]],
            anchors,
            None,
        )
    )
    p, ps = world["p256"], list(world["p256_stream"])
    r, s_ = decode_sign1(ps[1]).signature[:32], decode_sign1(ps[1]).signature[32:]
    high = r + (P256_N - int.from_bytes(s_, "big")).to_bytes(32, "big")
    out.append(("es256 high s", [ps[0], _with_signature(ps[1], high), *ps[2:]], [p.public], None))
    out.append(("es256 flipped", [ps[0], _flip(ps[1], 5), *ps[2:]], [p.public], None))
    out.append(("es256 pristine", ps, [p.public], None))
    out.append(("ed25519 key for an es256 stream", ps, [a.public], None))
    return out


def test_libsodium_gives_every_tamper_case_the_findings_openssl_gave(corpus, monkeypatch):
    assert len(corpus) > 60
    for name, msgs, anchors, device in corpus:
        new = _outcome(
            V.verify_messages(
                [(m, f"{i:04d}.cose", None) for i, m in enumerate(msgs)], anchors, device
            )
        )
        with monkeypatch.context() as mp:
            _old_path(mp)
            old = _outcome(
                V.verify_messages(
                    [(m, f"{i:04d}.cose", None) for i, m in enumerate(msgs)], anchors, device
                )
            )
        assert new == old, name


def test_honest_signatures_and_their_one_bit_changes_agree_in_both_libraries():
    """A property over fresh keys and messages: libsodium and OpenSSL say the same."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rng = random.Random(15)
    for _ in range(200):
        sk = Ed25519PrivateKey.generate()
        pub = PublicKey.from_key(sk.public_key())
        data = rng.randbytes(rng.randrange(0, 2000))
        sig = sk.sign(data)
        bad = bytearray(sig)
        bad[rng.randrange(64)] ^= 1 << rng.randrange(8)
        for s in (sig, bytes(bad)):
            assert cose._ed25519_verifies(pub, s, data) is pub.verify(s, data)


# --- where libsodium and OpenSSL differ: each one, and the closed verdict -------------


def _forged(world, key: PublicKey, raw_key: bytes) -> bytes:
    """An attestation of gw-1 (a real payload) under ``key``'s kid, "signed" without any
    private key: ``S = 0`` and ``R`` the identity or the key itself, whichever OpenSSL takes
    (a small-order key's multiples are few: ``R + k A`` is the identity for one of them)."""
    protected = cbor2.dumps({1: -8, 4: key.kid}, canonical=True)
    for msg in world["stream"]:
        payload = decode_sign1(msg).payload
        for r in (IDENTITY, raw_key):
            if key.verify(r + bytes(32), sig_structure(protected, payload)):
                return _envelope(protected, payload, r + bytes(32))
    raise AssertionError("no forgery found")  # pragma: no cover - (1/4)^6 for order 2


@pytest.mark.parametrize(
    "raw_key",
    [IDENTITY, ORDER_2, IDENTITY_NON_CANONICAL],
    ids=["identity", "order 2", "identity, y + p"],
)
def test_a_small_order_key_in_the_trust_store_forges_nothing(world, monkeypatch, raw_key):
    """OpenSSL verifies ``(R, S = 0)`` under a small-order key for any message (with ``R``
    the identity or the key): a key like that in a trust file (planted, or a broken device)
    would let anyone sign for it. cryptography loads such keys; libsodium refuses them."""
    key = PublicKey.from_key(Ed25519PublicKey.from_public_bytes(raw_key), "planted.pub.pem")
    forgery = _forged(world, key, raw_key)  # OpenSSL says "valid"
    res = V.verify_messages([(forgery, "0000.cose", None)], [key])
    assert [f.kind for f in res.findings] == ["BAD_SIGNATURE"] and res.verified == 0
    with monkeypatch.context() as mp:  # the old path accepted the forgery
        _old_path(mp)
        assert V.verify_messages([(forgery, "0000.cose", None)], [key]).verified == 1


def test_a_small_order_r_from_the_key_holder_is_a_bad_signature(world, monkeypatch):
    """The holder of an honest key can sign with ``R = identity`` (``S = k * a``): OpenSSL
    accepts it, libsodium refuses it. No honest signer makes one (``R = r * B``), and it
    would be a second signature form of the same claims: refusing it is the closed side."""
    a = world["a"]
    seed = a.private_key.private_bytes_raw()
    h = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(h[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    last = world["stream"][-1]  # the last: no later prev hashes its bytes
    msg = decode_sign1(last)
    data = sig_structure(msg.protected, msg.payload)
    pub = a.public.key.public_bytes_raw()
    k = int.from_bytes(hashlib.sha512(IDENTITY + pub + data).digest(), "little") % L
    odd = IDENTITY + (k * scalar % L).to_bytes(32, "little")
    assert a.public.verify(odd, data)  # OpenSSL: valid
    assert not cose._ed25519_verifies(a.public, odd, data)
    msgs = [*world["stream"][:-1], _with_signature(last, odd)]
    framed = [(m, f"{i:04d}.cose", None) for i, m in enumerate(msgs)]
    res = V.verify_messages(framed, [a.public])
    assert [f.kind for f in res.findings] == ["BAD_SIGNATURE"]
    with monkeypatch.context() as mp:
        _old_path(mp)
        assert V.verify_messages(framed, [a.public]).ok


def test_whatever_libsodium_raises_is_a_bad_signature_never_a_crash(world, monkeypatch):
    """A key or signature libsodium will not take: the finding of a bad signature."""

    class Refuses:
        def __init__(self, key: bytes) -> None:
            raise nacl.exceptions.ValueError("The key must be exactly 32 bytes long")

    flipped = [*world["stream"][:2], _flip(world["stream"][2], 5), *world["stream"][3:]]
    framed = [(m, f"{i:04d}.cose", None) for i, m in enumerate(world["stream"])]
    monkeypatch.setattr(cose, "_sodium", (Refuses, cose._libsodium()[1]))
    res = V.verify_messages(framed, [world["a"].public])
    assert {f.kind for f in res.findings} == {"BAD_SIGNATURE"} and res.verified == 0
    monkeypatch.undo()
    res = V.verify_messages(
        [(m, f, None) for (_, f, _), m in zip(framed, flipped)], [world["a"].public]
    )
    assert res.findings[0].kind == "BAD_SIGNATURE"
    assert (
        res.findings[0].detail == f"signature does not verify with key kid={world['a'].kid.hex()}"
    )


# --- --jobs: the same result, to the byte ------------------------------------------------


def test_jobs_give_the_result_of_one_job_on_every_tamper_case(corpus, monkeypatch):
    monkeypatch.setattr(P, "_PARALLEL_MIN", 1)  # the corpus's streams are short
    used: list[list[bytes | None] | None] = []  # each chunk's verdicts, as handed back
    verdicts = P._verdicts

    def spy(chunk):
        used.append(verdicts(chunk))
        return used[-1]

    monkeypatch.setattr(P, "_verdicts", spy)
    picked = [c for c in corpus if c[0].startswith(("tamper", "es256", "ed25519"))]
    picked += [c for c in corpus if c[0] in ("envelope: trailing byte", "claim: score NaN")]
    for name, msgs, anchors, device in picked:
        framed = [(m, f"{i:04d}.cose", None) for i, m in enumerate(msgs)]
        one = _outcome(V.verify_messages(framed, anchors, device))
        for jobs in (2, 3):
            assert _outcome(V.verify_messages(framed, anchors, device, jobs=jobs)) == one, name
    assert any(kids is not None and any(kids) for kids in used)  # workers did check some


def test_a_worker_verdict_spares_only_the_arithmetic_it_did(world):
    s = world["stream"]
    trust = TrustStore.of_keys([world["a"].public])
    P._start_worker(trust)
    try:
        unknown = encode_sign1(decode_sign1(s[1]).payload, world["b"])
        kids = P._checked_kids([s[0], _flip(s[1], 5), b"\x00garbage", unknown])
    finally:
        P._start_worker(None)  # type: ignore[arg-type]
    assert kids == [world["a"].kid, None, None, None]
    assert P._checked_kids([s[0]]) == [None]  # no trust store: nothing is vouched for
    # a verdict for another key than the one resolved here is ignored: checked again
    findings: list[V.Finding] = []
    bad = (_flip(s[1], 5), "0001.cose", None)
    assert V._verify_one(bad, 0, trust, findings, checked_kid=world["b"].kid) is None
    assert [f.kind for f in findings] == ["BAD_SIGNATURE"]


def test_too_few_messages_for_workers_stay_in_one_process(world):
    framed = [(m, f"{i}.cose", None) for i, m in enumerate(world["stream"])]
    trust = TrustStore.of_keys([world["a"].public])
    assert P.SignatureChecks.start(world["stream"], trust, 2) is None
    assert V.verify_messages(framed, trust, jobs=4).ok
    with pytest.raises(ValueError, match="at least 1"):
        V.verify_messages(framed, trust, jobs=0)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def test_a_trust_store_pickles_to_one_that_decides_the_same(tmp_path, monkeypatch):
    """Workers that are not forks get the store pickled: keys (their order and binding),
    fleet CAs, CRLs, revoked kids, rotations and approved configs all survive."""
    ca = tmp_path / "ca"
    init_ca(ca)
    dev = generate_key(tmp_path / "gw.key", "p256")
    cert = issue_certificate(ca, make_csr(dev, "gw-1"))
    gone = issue_certificate(ca, make_csr(generate_key(tmp_path / "x.key", "p256"), "gw-x"))
    old, new = generate_key(tmp_path / "old.key"), generate_key(tmp_path / "new.key")
    (tmp_path / "old.pub").write_bytes(old.public.pem())
    (tmp_path / "rot.cbor").write_bytes(make_rotation("gw-2", old, new))
    doc = {
        "keys": [{"key": "old.pub", "device": "gw-2"}],
        "fleet_ca": [str(ca / "ca.pem")],
        "rotations": ["rot.cbor"],
        "revoked": {"kids": ["00" * 16], "crls": [str(revoke_certificate(ca, gone))]},
        "approved": {"policies": [POLICY_DIGEST], "models": [MODEL_DIGEST]},
    }
    (tmp_path / "trust.yaml").write_text(yaml.safe_dump(doc))
    trust = load_trust(tmp_path / "trust.yaml")
    copy = pickle.loads(pickle.dumps(trust))
    assert copy.describe_keys(9) == trust.describe_keys(9)
    assert [tk.device for tks in copy.keys.values() for tk in tks] == ["gw-2", "gw-2"]
    assert copy.revoked_kids == trust.revoked_kids
    assert copy.revoked_serials == trust.revoked_serials
    assert (copy.approved_policies, copy.approved_models) == (
        trust.approved_policies,
        trust.approved_models,
    )
    assert [r.new_key.kid for r in copy.rotations] == [new.kid]
    msgs = make_stream(tmp_path / "c.sqlite", dev, x5chain=(_der(cert),), windows=3)
    msgs += make_stream(tmp_path / "n.sqlite", new, device="gw-2", windows=3)
    msgs += make_stream(tmp_path / "o.sqlite", old, device="gw-3", windows=2)  # KEY_DEVICE
    files = write(tmp_path / "f", msgs)
    one = _outcome(V.verify_paths([files], trust))
    assert _outcome(V.verify_paths([files], copy)) == one
    monkeypatch.setattr(P, "_PARALLEL_MIN", 1)
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")  # the store travels pickled
    monkeypatch.setattr(P, "_pool_context", lambda: ctx)
    assert _outcome(V.verify_paths([files], trust, jobs=2)) == one


# --- the CLI --------------------------------------------------------------------------


def test_cli_jobs_prints_what_one_job_prints_and_refuses_zero(tmp_path, run_cli):
    signer = generate_key(tmp_path / "dev.key")
    pub = tmp_path / "dev.pub.pem"
    pub.write_bytes(signer.public.pem())
    msgs = make_stream(tmp_path / "e.sqlite", signer, windows=P._PARALLEL_MIN + 40)
    msgs[100] = _flip(msgs[100], 5)  # a bad signature, and the gap it leaves
    del msgs[300]
    msgs.insert(200, msgs[10])  # a redelivery out of order
    d = write(tmp_path / "s", msgs)
    for extra in ([], ["--json"]):
        one = run_cli("audit", "verify", str(d), "--key", str(pub), *extra)
        two = run_cli("audit", "verify", str(d), "--key", str(pub), "--jobs", "2", *extra)
        assert one.returncode == two.returncode == 1, two.stderr[-2000:]
        assert two.stdout == one.stdout and "BAD_SIGNATURE" in one.stdout
    r = run_cli("audit", "verify", str(d), "--key", str(pub), "--jobs", "0")
    assert r.returncode == 2 and "--jobs 0: give the number of processes" in r.stderr
    assert "Traceback" not in r.stderr
