"""The PKCS#11 signing backend against a real SoftHSM2 token (Debian's softhsm2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.audit import verify_paths
from agent.errors import KeyFileError
from tests.conftest import cose_oracle
from tests.evidence_util import make_stream, write

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
           "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")  # fmt: skip


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """A fresh SoftHSM2 token with an Ed25519 and a P-256 key pair generated inside it."""
    module = next((m for m in MODULES if Path(m).exists()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        pytest.fail("SoftHSM2 is not installed; run 'make test' (it installs Debian's softhsm2)")
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d}/tokens\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")  # fmt: skip
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run([util, "--init-token", "--free", "--label", "edgegov", "--pin", "1234",
                    "--so-pin", "5678"], check=True, capture_output=True)  # fmt: skip
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.util.ec import encode_named_curve_parameters

    tok = pkcs11.lib(module).get_token(token_label="edgegov")
    with tok.open(rw=True, user_pin="1234") as s:
        s.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        ).generate_keypair(store=True, label="p256")  # fmt: skip
        s.create_domain_parameters(
            KeyType.EC_EDWARDS,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")},
            local=True,
        ).generate_keypair(store=True, label="ed25519", mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN)
    yield module
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


@pytest.mark.parametrize(("label", "alg"), [("ed25519", -8), ("p256", -7)])
def test_attestations_signed_inside_softhsm_verify_with_us_and_pycose(token, tmp_path, label, alg):
    from agent.identity.pkcs11 import Pkcs11Signer

    signer = Pkcs11Signer(token, "edgegov", "1234", label)
    assert signer.alg == alg
    msgs = make_stream(tmp_path / "e.sqlite", signer, windows=3)
    res = verify_paths([write(tmp_path / "f", msgs)], [signer.public])
    assert res.ok, [str(f) for f in res.findings]
    assert cose_oracle(msgs, signer.public.pem()).count(f"alg={alg}") == 3


def test_a_missing_key_label_is_a_clear_key_error(token):
    from agent.identity.pkcs11 import Pkcs11Signer

    with pytest.raises(KeyFileError, match="no-such-key"):
        Pkcs11Signer(token, "edgegov", "1234", "no-such-key")


def test_the_agent_signs_inside_the_token_when_configured(token, tmp_path, monkeypatch):
    """device.pkcs11 in the agent config: a real run, every attestation signed in SoftHSM2."""
    import yaml

    from agent.audit import verify_paths
    from agent.config import load_config
    from agent.identity.pkcs11 import Pkcs11Signer
    from tests.test_agent_e2e import Device, make_site, run_agent

    monkeypatch.setenv("TEST_TOKEN_PIN", "1234")
    with Device("normal") as dev:
        cfg_path = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["device"] = {
            "id": "gw-test",
            "pkcs11": {
                "module": token,
                "token": "edgegov",
                "key": "ed25519",
                "pin_env": "TEST_TOKEN_PIN",
            },
        }
        cfg_path.write_text(yaml.safe_dump(cfg))
        assert load_config(cfg_path).key_path is None
        agent, stats = run_agent(cfg_path, 2.2)
    pub = Pkcs11Signer(token, "edgegov", "1234", "ed25519").public
    res = verify_paths([tmp_path / "spool"], [pub])
    assert res.ok, [str(f) for f in res.findings]
    assert res.verified == stats.attestations >= 2
    assert agent.signer.kid == pub.kid


def test_a_missing_pin_variable_is_named(token, tmp_path, monkeypatch):
    import yaml

    from agent.config import load_config
    from agent.errors import KeyFileError
    from agent.pipeline.runner import Agent
    from tests.test_agent_e2e import make_site

    monkeypatch.delenv("NO_SUCH_PIN", raising=False)
    cfg_path = make_site(tmp_path, output={"spool": "spool"}, port="/dev/null")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["device"] = {
        "id": "gw-test",
        "pkcs11": {"module": token, "token": "edgegov", "key": "ed25519", "pin_env": "NO_SUCH_PIN"},
    }
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(KeyFileError, match="NO_SUCH_PIN"):
        Agent(load_config(cfg_path))


def test_fleet_targets_signed_inside_the_token_are_applied_by_a_gateway(
    token, tmp_path, broker, monkeypatch
):
    """Issue 7: fleet metadata signed with a PKCS#11 key, through a real broker and python-tuf."""
    import json

    from agent.fleet.hsm import load_pkcs11_reference
    from tests.fleet_util import Fleet
    from tests.test_fleet_tuf import _applied

    monkeypatch.setenv("FLEET_HSM_PIN", "1234")
    fleet = Fleet(tmp_path, broker)
    try:
        fleet.release()
        client = fleet.client()
        _applied(fleet, client, 1)
        ref = fleet.repo.dir / "keys" / "targets-hsm.pkcs11"
        ref.write_text(
            json.dumps(
                {"module": token, "token": "edgegov", "key": "ed25519", "pin_env": "FLEET_HSM_PIN"}
            )
        )
        hsm_keyid = load_pkcs11_reference(ref).public_key.keyid
        fleet.repo.rotate("targets", add=["targets-hsm"], remove=["targets-1"], threshold=1)
        fleet.release(policy_version=2)
        targets = fleet.metadata("targets.json")
        assert [s for s in targets.signatures] == [hsm_keyid]  # signed in the token only
        _applied(fleet, client, 2)
    finally:
        fleet.close()


def test_fleet_key_reference_without_its_pin_is_named(tmp_path, monkeypatch):
    import json

    from agent.errors import FleetError
    from agent.fleet.hsm import load_pkcs11_reference

    monkeypatch.delenv("NOPE_PIN", raising=False)
    ref = tmp_path / "k.pkcs11"
    ref.write_text(json.dumps({"module": "/x.so", "token": "t", "key": "k", "pin_env": "NOPE_PIN"}))
    with pytest.raises(FleetError, match="NOPE_PIN is not set"):
        load_pkcs11_reference(ref)


# -- edgegov key create / export-pub (issue 11) ------------------------------------------


def _session(module: str):
    """A logged-in session in this process (login is per process: maybe already done)."""
    import pkcs11

    tok = pkcs11.lib(module).get_token(token_label="edgegov")
    try:
        return tok.open(user_pin="1234")
    except pkcs11.exceptions.UserAlreadyLoggedIn:
        return tok.open()


def _key_cli(run_cli, token, *args: str, pin: str | None = "1234"):
    env = {k: v for k, v in os.environ.items() if k != "TEST_TOKEN_PIN"}
    if pin is not None:
        env["TEST_TOKEN_PIN"] = pin
    return run_cli(*args, "--pkcs11-module", token, "--token", "edgegov", env=env)


@pytest.mark.parametrize(("key_type", "alg"), [("ed25519", -8), ("p256", -7)])
def test_key_create_makes_a_token_key_whose_exported_public_key_verifies_its_attestations(
    token, tmp_path, run_cli, key_type, alg
):
    from pkcs11 import Attribute, ObjectClass

    from agent.identity.keys import load_public_key
    from agent.identity.pkcs11 import Pkcs11Signer

    label, pub = f"made-{key_type}", tmp_path / "device.pub.pem"
    r = _key_cli(run_cli, token, "key", "create", "--label", label, "--pin-env",
                 "TEST_TOKEN_PIN", "--key-type", key_type, "--pub-out", str(pub))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "1234" not in r.stdout + r.stderr  # the PIN is never printed
    exported = load_public_key(pub)
    assert f"kid {exported.kid.hex()}" in r.stdout and str(pub) in r.stdout

    # the agent's signer finds it in the token; what it signs verifies with the exported key
    signer = Pkcs11Signer(token, "edgegov", "1234", label)
    assert signer.alg == alg == exported.alg and signer.kid == exported.kid
    msgs = make_stream(tmp_path / "e.sqlite", signer, windows=3)
    res = verify_paths([write(tmp_path / "f", msgs)], [exported])
    assert res.ok and res.verified == 3, [str(f) for f in res.findings]
    assert cose_oracle(msgs, pub.read_bytes()).count(f"alg={alg}") == 3

    # the private key is sensitive and cannot be taken out of the token
    with _session(token) as s:
        priv = s.get_key(ObjectClass.PRIVATE_KEY, label=label)
        assert priv[Attribute.SENSITIVE] is True and priv[Attribute.EXTRACTABLE] is False

    # export-pub, without the PIN (the public key is a public object): the same key
    again = tmp_path / "again.pub.pem"
    r = _key_cli(run_cli, token, "key", "export-pub", "--label", label, "--pin-env",
                 "TEST_TOKEN_PIN", "--pub-out", str(again), pin=None)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert again.read_bytes() == pub.read_bytes()


def test_key_create_refuses_a_label_in_use_and_creates_nothing(token, tmp_path, run_cli):
    pub = tmp_path / "x.pub.pem"
    with _session(token) as s:
        before = len(list(s.get_objects()))
    r = _key_cli(run_cli, token, "key", "create", "--label", "ed25519", "--pin-env",
                 "TEST_TOKEN_PIN", "--pub-out", str(pub))  # fmt: skip
    assert r.returncode == 2
    assert "already holds 2 object(s) labelled 'ed25519'; nothing was created" in r.stderr
    assert "Traceback" not in r.stderr and not pub.exists()
    with _session(token) as s:
        assert len(list(s.get_objects())) == before


def test_key_create_names_a_missing_pin_variable_and_a_wrong_pin(token, tmp_path, run_cli):
    pub = tmp_path / "x.pub.pem"
    args = ("key", "create", "--label", "new", "--pin-env", "TEST_TOKEN_PIN", "--pub-out", str(pub))
    r = _key_cli(run_cli, token, *args, pin=None)
    assert r.returncode == 2
    assert "--pin-env: environment variable TEST_TOKEN_PIN with the token PIN is not set" in (
        r.stderr
    )
    r = _key_cli(run_cli, token, *args, pin="999999")
    assert r.returncode == 2 and "PinIncorrect" in r.stderr and "999999" not in r.stderr
    assert not pub.exists()


def test_without_python_pkcs11_the_error_names_the_extra(token, tmp_path):
    """python-pkcs11 absent (an import that fails, as in an install without the extra)."""
    code = ("import sys; sys.modules['pkcs11'] = None\n"
            "from agent.cli import main\nsys.exit(main(sys.argv[1:]))")  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-c", code, "key", "create", "--pkcs11-module", token, "--token",
         "edgegov", "--label", "new", "--pub-out", str(tmp_path / "p.pem")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "EDGEGOV_PKCS11_PIN": "1"},
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "python-pkcs11, which is not installed: pip install 'edgegov[pkcs11]'" in r.stderr
