"""`audit verify`: integrity and compliance are separate verdicts, judged from evidence the
real agent signed, with exit codes a script can use and labels an auditor can trust."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
from pathlib import Path

import yaml

from agent.audit.evidence_db import open_db
from agent.identity.keys import generate_key
from agent.policy import load_policy
from firmware_bridge import open_pty
from tests.evidence_util import make_stream, write
from tests.test_agent_e2e import make_site, run_agent

GOALS = {"keep-cold", "control-humidity", "door-discipline"}


def _site(tmp: Path, port: str, **kw) -> tuple[Path, Path, Path]:
    """An agent site spooling to ``tmp/spool``: (config, policy, public key)."""
    cfg = make_site(tmp, output={"spool": "spool"}, port=port, **kw)
    pub = tmp / "device.pub.pem"
    return cfg, tmp / "policies" / "cold-chain.yaml", pub


def _run(cfg: Path, pub: Path, seconds: float) -> None:
    agent, stats = run_agent(cfg, seconds)
    pub.write_bytes(agent.signer.public.pem())
    assert stats.attestations >= 2


def _verify(run_cli, *args: str) -> tuple[int, dict]:
    r = run_cli("audit", "verify", *args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_a_dead_sensor_is_intact_evidence_whose_goals_are_not_evaluable(tmp_path, run_cli):
    """Observation 3: a port that never exists gave 0-reading attestations and PASS."""
    cfg, policy, pub = _site(tmp_path, str(tmp_path / "no-such-port"))
    _run(cfg, pub, 2.2)
    spool = str(tmp_path / "spool")

    rc, doc = _verify(run_cli, spool, "--key", str(pub), "--policy", str(policy))
    assert rc == 0 and doc["evidence"] == "intact"  # the signatures and chain are fine...
    items = {c["id"]: c for c in doc["compliance"]["items"]}
    assert set(items) == GOALS and doc["compliance"]["scope"] == "goals"
    for goal in items.values():  # ...but nothing was measured: no goal is met
        assert goal["status"] == "not evaluable", goal
        assert "no reading evaluated" in goal["reason"]
    dev = doc["devices"][0]
    assert dev["readings"] == 0 and dev["completeness"]["ratio"] == 0.0  # offline all along
    kc = items["keep-cold"]
    assert kc["stakeholder"].startswith("Responsible Person") and "GDP" in kc["source"]
    assert kc["rules"] == ["temp-2-8", "excursion-over-10min", "mean-10min-in-range"]

    # For scripts: --require-compliance turns "not met" into exit 1 and says which.
    r = run_cli("audit", "verify", spool, "--key", str(pub), "--policy", str(policy),
                "--require-compliance")  # fmt: skip
    assert r.returncode == 1
    assert all(f"goal {g} not evaluable" in r.stderr for g in GOALS), r.stderr
    # The text leads with the verdicts (no findings here), never a bare PASS.
    out = r.stdout
    assert out.index("evidence:   INTACT") < out.index("goal keep-cold") < out.index("device ")
    assert "NOT EVALUABLE" in out and "PASS" not in out

    # Without the policy: per rule, and it says that goals need it.
    rc, doc = _verify(run_cli, spool, "--key", str(pub))
    assert rc == 0 and doc["compliance"]["scope"] == "rules"
    assert {c["status"] for c in doc["compliance"]["items"]} == {"not evaluable"}
    assert "--policy" in doc["compliance"]["note"]
    r = run_cli("audit", "verify", spool, "--key", str(pub))
    assert "need --policy" in r.stdout


def test_a_goal_below_its_minimum_completeness_is_not_evaluable(tmp_path, run_cli):
    """Data thresholds come from the policy: goals[].min_completeness."""
    with open_pty() as pty:
        cfg, policy, pub = _site(tmp_path, pty.slave_path)
        text = policy.read_text()
        # keep-cold needs 75 % of the data; a second goal, served by the same condition,
        # is content with 40 %.
        text = text.replace(
            "  - id: control-humidity\n",
            "    min_completeness: 0.75\n"
            "  - id: keep-cold-lenient\n"
            "    description: Product mostly held at 2-8 °C\n"
            "    stakeholder: Site quality\n"
            "    source: site SOP 12\n"
            "    min_completeness: 0.4\n"
            "  - id: control-humidity\n",
        )
        text = text.replace(
            "rules:\n",
            "rules:\n  - id: temp-lenient\n    goal: keep-cold-lenient\n    severity: info\n"
            "    condition: temperature >= 2.0 && temperature <= 8.0\n    explain: out\n",
            1,
        )
        policy.write_text(text)
        doc = yaml.safe_load(cfg.read_text())
        doc["sources"] = [{"name": "probe", "protocol": "text", "port": pty.slave_path,
                           "fields": [{"field": "t", "channel": "temperature"}]}]  # fmt: skip
        cfg.write_text(yaml.safe_dump(doc))
        stop = threading.Event()

        def talk() -> None:  # every other line is garbage: 50 % of the lines arrive usable
            while not stop.wait(0.02):
                os.write(pty.master_fd, b"t=4.5\nnot a reading\n")

        t = threading.Thread(target=talk, daemon=True)
        t.start()
        try:
            _run(cfg, pub, 2.5)
        finally:
            stop.set()
            t.join(2)
    assert load_policy(policy).goals[0].min_completeness == 0.75
    rc, doc = _verify(run_cli, str(tmp_path / "spool"), "--key", str(pub), "--policy", str(policy))
    assert rc == 0 and doc["evidence"] == "intact"
    ratio = doc["devices"][0]["completeness"]["ratio"]
    assert 0.4 < ratio < 0.55, doc["devices"][0]["completeness"]
    items = {c["id"]: c for c in doc["compliance"]["items"]}
    strict, lenient = items["keep-cold"], items["keep-cold-lenient"]
    assert strict["status"] == "not evaluable" and strict["min_completeness"] == 0.75
    assert "below the goal's minimum 75.0%" in strict["reason"]
    assert lenient["status"] in ("met", "not quality-assured"), lenient  # judged: 4.5 °C
    assert lenient["devices"][0]["completeness"] == ratio


def test_a_policy_that_was_not_attested_is_an_input_error(tmp_path, signer, run_cli):
    (tmp_path / "k.pub").write_bytes(signer.public.pem())
    files = write(tmp_path / "f", make_stream(tmp_path / "e.sqlite", signer, windows=3))
    policy = Path(__file__).parent.parent / "configs" / "policies" / "cold-chain.yaml"
    r = run_cli("audit", "verify", str(files), "--key", str(tmp_path / "k.pub"),
                "--policy", str(policy))  # fmt: skip
    assert r.returncode == 2 and "is not the policy the evidence was signed under" in r.stderr
    assert "abababababababab" in r.stderr  # the digest the evidence does name


def test_missing_inputs_are_input_errors_and_create_nothing(tmp_path, signer, run_cli):
    (tmp_path / "k.pub").write_bytes(signer.public.pem())
    key = ("--key", str(tmp_path / "k.pub"))
    missing = tmp_path / "missing.sqlite"
    for url in (f"sqlite:///{missing}", str(missing)):
        r = run_cli("audit", "verify", "--store", url, *key)
        assert r.returncode == 2 and "no evidence store there" in r.stderr, r.stderr
        assert not missing.exists() and not list(tmp_path.glob("missing.sqlite*"))
    r = run_cli("audit", "verify", str(tmp_path / "no-such-dir"), *key)
    assert r.returncode == 2 and "no such file or directory" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("audit", "verify", str(tmp_path / "empty"), *key)
    assert r.returncode == 2 and "no attestations there" in r.stderr
    r = run_cli("audit", "report", str(tmp_path / "no-such-dir"), *key, "--html",
                str(tmp_path / "r.html"))  # fmt: skip
    assert r.returncode == 2 and not (tmp_path / "r.html").exists()


def _bad_signature(msg: bytes) -> bytes:
    b = bytearray(msg)
    b[-5] ^= 0x01
    return bytes(b)


def test_findings_about_rejected_messages_name_device_and_seq_marked_unverified(
    tmp_path, signer, run_cli
):
    (tmp_path / "k.pub").write_bytes(signer.public.pem())
    msgs = make_stream(tmp_path / "e.sqlite", signer, windows=4)
    stream = msgs[:2] + [_bad_signature(msgs[2])] + msgs[3:]
    # A collector store knows the device (topic) and the seq each row was filed under.
    db = open_db(f"sqlite:///{tmp_path / 'c.sqlite'}")
    for seq, m in enumerate(stream):
        db.put("gw-1", seq, hashlib.sha256(m).digest(), m, "test")
    db.close()
    rc, doc = _verify(run_cli, "--store", f"sqlite:///{tmp_path / 'c.sqlite'}",
                      "--key", str(tmp_path / "k.pub"))  # fmt: skip
    bad = next(f for f in doc["findings"] if f["kind"] == "BAD_SIGNATURE")
    assert rc == 1 and bad["device"] == "gw-1" and bad["seq"] == 2
    assert bad["label_verified"] is False and "collector" in bad["label_from"]
    gap = next(f for f in doc["findings"] if f["kind"] == "CHAIN_GAP")
    assert gap["label_verified"] is True and gap["seq"] == 3

    # Files carry no label: the device and seq the unsigned payload claims, said so.
    files = write(tmp_path / "f", stream)
    r = run_cli("audit", "verify", str(files), "--key", str(tmp_path / "k.pub"))
    line = next(x for x in r.stdout.splitlines() if "[BAD_SIGNATURE]" in x)
    assert "gw-1 seq 2 (unverified, the unsigned payload)" in line, line
    assert r.stdout.index("FINDINGS (2)") < r.stdout.index("evidence:   FINDINGS")

    # The wrong key: the finding names the kid the message wants and the key(s) given.
    other = generate_key(tmp_path / "other.key")
    (tmp_path / "other.pub").write_bytes(other.public.pem())
    rc, doc = _verify(run_cli, str(files), "--key", str(tmp_path / "other.pub"))
    unknown = doc["findings"][0]
    assert rc == 1 and unknown["kind"] == "UNKNOWN_KEY" and unknown["device"] == "gw-1"
    assert signer.kid.hex() in unknown["detail"] and other.kid.hex() in unknown["detail"]
    assert f"key {tmp_path / 'other.pub'}" in unknown["detail"]
    assert {f["seq"] for f in doc["findings"]} == {0, 1, 2, 3}


def test_verify_reads_the_gateways_own_evidence_store_without_changing_it(tmp_path, run_cli):
    cfg, _, pub = _site(tmp_path, str(tmp_path / "no-such-port"))
    _run(cfg, pub, 1.5)
    state = tmp_path / "state"
    store = state / "evidence.sqlite"
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    rc, doc = _verify(run_cli, "--store", str(store), "--key", str(pub))
    spooled = len(list((tmp_path / "spool").rglob("*.cose")))
    assert rc == 0 and doc["evidence"] == "intact" and doc["attestations"] == spooled >= 2
    assert doc["devices"][0]["device"] == "gw-test"
    after = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    assert after == before  # read-only: no -wal/-shm left behind, not a byte changed

    # A row of that store that fails is labelled with the store's seq and log's device.
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(store.read_bytes())
    with sqlite3.connect(copy) as db:
        (cose,) = db.execute("SELECT cose FROM attestations WHERE seq = 1").fetchone()
        db.execute("UPDATE attestations SET cose = ? WHERE seq = 1", (_bad_signature(cose),))
    db.close()
    rc, doc = _verify(run_cli, "--store", f"sqlite:///{copy}", "--key", str(pub))
    bad = next(f for f in doc["findings"] if f["kind"] == "BAD_SIGNATURE")
    assert (bad["device"], bad["seq"]) == ("gw-test", 1) and "store row" in bad["label_from"]
    assert re.search(r"#seq=1$", bad["file"])


def test_min_completeness_is_signed_with_the_policy_and_checked_at_its_line(tmp_path):
    from agent.errors import PolicyError

    src = (Path(__file__).parent.parent / "configs" / "policies" / "cold-chain.yaml").read_text()
    anchor = '(temperature during transport/storage)"\n'
    assert src.count(anchor) == 1
    line = src[: src.index(anchor)].count("\n") + 2  # the line the new key goes on
    (tmp_path / "p").mkdir()

    def load(extra: str):
        f = tmp_path / "p" / "cold-chain.yaml"
        f.write_text(src.replace(anchor, anchor + extra))
        return f, load_policy(f)

    _, base = load("")
    _, strict = load("    min_completeness: 0.75\n")
    assert base.goals[0].min_completeness is None and strict.goals[0].min_completeness == 0.75
    assert strict.digest != base.digest  # signed: changing the threshold changes the digest
    assert b'"min_completeness":0.75' in strict.canonical_bytes()
    assert b'"format":"edgegov-policy/4"' in strict.canonical_bytes()
    for bad, why in (("1.5", "between 0 and 1"), ("high", "expected a number")):
        try:
            load(f"    min_completeness: {bad}\n")
        except PolicyError as e:
            assert f"cold-chain.yaml:{line}:" in str(e) and why in str(e), str(e)
            assert "goals[0].min_completeness" in str(e)
        else:
            raise AssertionError(f"min_completeness {bad} was accepted")
