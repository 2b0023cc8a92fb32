"""Governance workflows (issue 16) through the real parts: the agent on a pty, a private
Mosquitto, the collector, the `edgegov` CLI, real signatures.

One agent run (module fixture) gives signed evidence with violation episodes under a
policy that sets explanation deadlines and requires calibration; every test reads it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.audit.collector import StoreCollector
from agent.audit.evidence_db import read_messages, read_statements
from agent.errors import PolicyError
from agent.governance.score import WEIGHTS
from agent.governance.statements import (
    CalibrationCertificate,
    Explanation,
    StatementError,
    read_statement,
    sign_statement,
)
from agent.identity.keys import generate_key
from agent.policy import load_policy
from agent.tools.broker import MosquittoBroker
from tests.test_agent_e2e import Device, make_site, run_agent, wait_for

DAY_MS = 86_400_000


def _govern(policy: Path) -> None:
    """The test policy: temp-2-8 explained within 10 min (the rule's own deadline), the
    rest of keep-cold within 1 h; temperature and humidity need a calibration."""
    text = policy.read_text()
    text = text.replace(
        "    explain_within: 72h\n", "    explain_within: 1h\n"
    )  # keep-cold's, as shipped
    text = text.replace(
        '    explain: "Temperature outside 2-8 °C since',
        '    explain_within: 10m\n    explain: "Temperature outside 2-8 °C since',
    )
    text = text.replace(
        "{name: temperature, unit: Cel, range: [-40, 85]}",
        "{name: temperature, unit: Cel, range: [-40, 85], calibration: required}",
    )
    text = text.replace(
        '{name: humidity, unit: "%RH", range: [0, 100]}',
        '{name: humidity, unit: "%RH", range: [0, 100], calibration: required}',
    )
    policy.write_text(text)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("governance")
    broker = MosquittoBroker(tmp / "broker").start()
    collector = StoreCollector(broker.url, str(tmp / "collected.sqlite"), fleet="t")
    collector.start()
    # a second collector, stopped after the run: the attestations alone, no statements
    plain = StoreCollector(broker.url, str(tmp / "plain.sqlite"), fleet="t")
    plain.start()
    try:
        with Device("excursion") as dev:
            cfg = make_site(tmp, output={"mqtt": {"url": broker.url}}, port=dev.pty.slave_path)
            policy = tmp / "policies" / "cold-chain.yaml"
            _govern(policy)
            _, stats = run_agent(cfg, 11.0)  # leaves 2-8 degC at 8 s
        assert wait_for(lambda: len(collector.stored) >= stats.attestations, 15)
        assert wait_for(lambda: len(plain.stored) >= stats.attestations, 15)
        plain.stop()
        keys = {}
        for who in ("alice", "mallory", "bob", "lab"):
            generate_key(tmp / "people" / f"{who}.key")
            keys[who] = tmp / "people" / f"{who}.key"
        trust = tmp / "trust.yaml"
        trust.write_text(
            yaml.safe_dump(
                {
                    "keys": [{"key": "keys/device.pub.pem", "device": "gw-test"}],
                    "people": [
                        {
                            "key": "people/alice.pub.pem",
                            "name": "Alice Operator",
                            "roles": ["operator"],
                            "sites": ["t"],
                        },
                        {  # trusted, but for another site only
                            "key": "people/bob.pub.pem",
                            "name": "Bob Elsewhere",
                            "roles": ["operator"],
                            "sites": ["other-site"],
                        },
                    ],
                    "labs": [{"key": "people/lab.pub.pem", "name": "ACME Calibration"}],
                    "sites": {"t": ["gw-test"]},
                }
            )
        )
        yield {
            "tmp": tmp,
            "broker": broker,
            "collector": collector,
            "store": str(tmp / "collected.sqlite"),
            "plain": str(tmp / "plain.sqlite"),
            "gateway": str(tmp / "state" / "evidence.sqlite"),
            "policy": policy,
            "trust": trust,
            "keys": keys,
            "attestations": stats.attestations,
        }
    finally:
        collector.stop()
        broker.stop()


def _verify(run_cli, site, *args: str, source: list[str] | None = None) -> tuple[int, dict]:
    src = source if source is not None else ["--store", site["store"]]
    r = run_cli(
        "audit", "verify", *src, "--trust", str(site["trust"]), "--policy", str(site["policy"]),
        "--json", *args,
    )  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def _deviation(doc: dict, rule: str) -> dict:
    return next(d for d in doc["governance"]["deviations"]["items"] if d["rule"] == rule)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _goal(doc: dict, goal: str) -> dict:
    return next(c for c in doc["compliance"]["items"] if c["id"] == goal)


def test_deadlines_decide_awaiting_or_unexplained(run_cli, site) -> None:
    """The gateway's own store, no statements: every deviation is unexplained or still
    within its deadline, as of the time given."""
    src = ["--store", site["gateway"]]
    _, doc = _verify(run_cli, site, source=src)
    temp = _deviation(doc, "temp-2-8")
    assert temp["id"] == f"gw-test/temp-2-8/{temp['start_ms']}"
    assert temp["due_ms"] == temp["start_ms"] + 600_000  # the rule's own 10 min
    assert temp["status"] == "awaiting explanation"  # as of the newest window: not due yet
    at = temp["start_ms"] + 599_000
    _, doc = _verify(run_cli, site, "--as-of", _iso(at), source=src)
    assert _deviation(doc, "temp-2-8")["status"] == "awaiting explanation"
    _, doc = _verify(run_cli, site, "--as-of", _iso(temp["start_ms"] + 600_001), source=src)
    assert _deviation(doc, "temp-2-8")["status"] == "unexplained"
    door = [d for d in doc["governance"]["deviations"]["items"] if d["goal"] == "door-discipline"]
    assert all(d["due_ms"] is None and d["status"] == "unexplained" for d in door)
    # No certificate: both required channels are missing their calibration, and a goal
    # met on its readings is not quality-assured (keep-cold stays violated).
    cal = {c["channel"]: c for c in doc["governance"]["calibration"]["channels"]}
    assert cal["temperature"]["status"] == cal["humidity"]["status"] == "missing"
    assert _goal(doc, "control-humidity")["status"] == "not quality-assured"
    assert "calibration of humidity" in _goal(doc, "control-humidity")["reason"]
    assert _goal(doc, "keep-cold")["status"] == "violated"


def test_an_explanation_and_a_certificate_travel_through_the_broker_to_the_report(
    run_cli, site
) -> None:
    tmp, keys = site["tmp"], site["keys"]
    _, before = _verify(run_cli, site)
    temp = _deviation(before, "temp-2-8")
    period = before["devices"][0]
    r = run_cli(
        "explain", temp["id"], "--cause", "door left open during loading", "--action",
        "crew retrained; door alarm set to 2 min", "--disposition", "quarantined", "--text",
        "QP decision pending stability data", "--name", "Alice Operator", "--role", "operator",
        "--key", str(keys["alice"]), "--broker", site["broker"].url, "--fleet", "t",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "published to edgegov/t/gw-test/explanation" in r.stdout
    for channel in ("temperature",):  # humidity stays without a certificate
        r = run_cli(
            "calibration", "issue", "--certificate", "CAL-2026-0042", "--device", "gw-test",
            "--channel", channel, "--sensor", "PT100-7781",
            "--valid-from", _iso(period["period_start_ms"] - DAY_MS),
            "--valid-until", _iso(period["period_end_ms"] + 365 * DAY_MS),
            "--unit", "Cel", "--uncertainty", "0.1", "--point", "0:0.02", "--point", "5:5.01",
            "--name", "ACME Calibration", "--key", str(keys["lab"]),
            "--broker", site["broker"].url, "--fleet", "t",
            "--out", str(tmp / "cal.calibration"),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    assert wait_for(lambda: len(read_statements(site["store"])) >= 2, 10)

    code, doc = _verify(run_cli, site)
    assert code == 0 and doc["evidence"] == "intact", doc["findings"]
    gov = doc["governance"]
    assert gov["statements"] == 2 and gov["statements_refused"] == 0
    ex = _deviation(doc, "temp-2-8")
    assert ex["status"] == "explained" and ex["explanations"] == 1 and not ex["late"]
    said = ex["explanation"]
    assert said["signer"] == "Alice Operator" and said["role"] == "operator"
    assert said["cause"] == "door left open during loading"
    assert said["disposition"] == "quarantined"
    cal = {c["channel"]: c for c in gov["calibration"]["channels"]}
    assert cal["temperature"]["status"] == "current"
    assert cal["temperature"]["certificates"] == ["CAL-2026-0042"]
    assert cal["temperature"]["covered"] == cal["temperature"]["windows"] == site["attestations"]
    assert cal["humidity"]["status"] == "missing"
    assert _goal(doc, "control-humidity")["status"] == "not quality-assured"

    text = run_cli(
        "audit", "verify", "--store", site["store"], "--trust", str(site["trust"]),
        "--policy", str(site["policy"]),
    ).stdout  # fmt: skip
    assert re.search(rf"EXPLAINED +{re.escape(temp['id'])}", text), text
    assert "by Alice Operator (operator)" in text and "product quarantined" in text
    assert re.search(r"gw-test humidity\s+MISSING", text)
    html = tmp / "report.html"
    r = run_cli(
        "audit", "report", "--store", site["store"], "--trust", str(site["trust"]),
        "--policy", str(site["policy"]), "--html", str(html),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    page = html.read_text()
    assert "<h2>Governance</h2>" in page and "door left open during loading" in page
    assert "CAL-2026-0042" in page


def _evidence_dir(site, name: str) -> Path:
    """The collected attestations as files (what a FileCollector writes)."""
    d = site["tmp"] / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for m in read_messages(site["gateway"]):
        (d / f"{m.seq_hint:06d}.cose").write_bytes(m.raw)
    return d


def test_refused_statements_are_findings_that_say_why(run_cli, site) -> None:
    from agent.identity.keys import load_signer

    d = _evidence_dir(site, "bad-statements")
    _, doc = _verify(run_cli, site, source=[str(d)])
    temp = _deviation(doc, "temp-2-8")
    keys = site["keys"]

    def explanation(
        start: int, name: str = "Alice Operator", role: str = "operator"
    ) -> Explanation:
        return Explanation(
            "gw-test", "temp-2-8", start, "c", "a", "released", "", name, role, 1
        )  # fmt: skip

    period = doc["devices"][0]
    alice, mallory = load_signer(keys["alice"]), load_signer(keys["mallory"])
    bob, lab = load_signer(keys["bob"]), load_signer(keys["lab"])
    good = sign_statement(explanation(temp["start_ms"]), alice)
    forged = bytearray(good)
    forged[-1] ^= 0x01
    cases = {
        "nowhere.explanation": (
            sign_statement(explanation(temp["start_ms"] + 1), alice),
            f"no violation episode of rule temp-2-8 on gw-test starts at {temp['start_ms'] + 1}",
        ),
        "untrusted.explanation": (
            sign_statement(explanation(temp["start_ms"], "Mallory"), mallory),
            "not the key of a person in",
        ),
        "other-site.explanation": (
            sign_statement(explanation(temp["start_ms"], "Bob Elsewhere"), bob),
            "Bob Elsewhere answers for site(s) other-site; device gw-test is at t",
        ),
        "impostor.explanation": (
            sign_statement(explanation(temp["start_ms"], "Carol Boss"), alice),
            "says it is signed by 'Carol Boss', but the key is 'Alice Operator'",
        ),
        "forged.explanation": (bytes(forged), "signature does not verify"),
        "not-a-lab.calibration": (
            sign_statement(
                CalibrationCertificate(
                    "FAKE-1",
                    "gw-test",
                    "humidity",
                    "H-1",
                    0,
                    2**41,
                    "%RH",
                    1.0,
                    ((50.0, 50.2),),
                    "ACME Calibration",
                    1,
                ),
                alice,
            ),
            "not the key of a calibration lab",
        ),
    }
    expired = CalibrationCertificate(
        "CAL-OLD", "gw-test", "humidity", "H-1", period["period_start_ms"] - 400 * DAY_MS,
        period["period_start_ms"] - 35 * DAY_MS, "%RH", 1.0, ((50.0, 50.2),),
        "ACME Calibration", 1,
    )  # fmt: skip
    (d / "expired.calibration").write_bytes(sign_statement(expired, lab))
    for name, (raw, _) in cases.items():
        (d / name).write_bytes(raw)
    code, doc = _verify(run_cli, site, source=[str(d)])
    assert code == 1 and doc["evidence"] == "findings"
    found = {Path(f["file"]).name: f for f in doc["findings"]}
    for name, (_, why) in cases.items():
        assert name in found, (name, doc["findings"])
        assert found[name]["kind"] == "statement" and why in found[name]["detail"], found[name]
    assert len(doc["findings"]) == len(cases)  # the expired one is valid, just not current
    assert doc["governance"]["statements"] == len(cases) + 1
    # Nothing refused explains anything; the expired certificate covers nothing.
    assert _deviation(doc, "temp-2-8")["status"] != "explained"
    cal = {c["channel"]: c for c in doc["governance"]["calibration"]["channels"]}
    assert cal["humidity"]["status"] == "not valid in the period"
    assert "CAL-OLD valid" in cal["humidity"]["detail"]
    assert _goal(doc, "control-humidity")["status"] == "not quality-assured"


def _score(run_cli, site, source: list[str], as_of: str) -> dict:
    r = run_cli(
        "audit", "score", *source, "--trust", str(site["trust"]), "--policy",
        str(site["policy"]), "--as-of", as_of, "--json",
    )  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def _expected(device: dict, gov: dict) -> float:
    """The score recomputed from the verify JSON's own numbers, by the documented formula."""
    c = device["completeness"]
    seqs = device["attestations"]
    span = device["last_seq"] - device["first_seq"] + 1
    devs = [x for x in gov["deviations"]["items"] if x["device"] == device["device"]]
    explained = sum(x["status"] == "explained" for x in devs)
    unexplained = sum(x["status"] == "unexplained" for x in devs)
    cover = [x for x in gov["calibration"]["channels"] if x["device"] == device["device"]]
    covered = min(x["covered"] for x in cover) if cover else 1
    judged = max(x["windows"] for x in cover) if cover else 1
    values = {
        "data availability": c["ratio"],
        "sequence completeness": seqs / span,
        "restarts": 1.0,
        "declared losses": 1.0,
        "calibration currency": covered / judged,
        "self-tests on time": 1.0,
        "explained deviations": explained / (explained + unexplained)
        if explained + unexplained
        else 1.0,
        "config freshness": 1.0,
    }
    return round(sum(WEIGHTS[k] * v for k, v in values.items()), 1)


def test_the_score_is_the_formula_and_a_gap_lowers_it_exactly(run_cli, site) -> None:
    d = _evidence_dir(site, "score")
    _, doc = _verify(run_cli, site, source=[str(d)])
    as_of = _iso(doc["governance"]["as_of_ms"] + 3600_000)  # every deadline passed
    full = _score(run_cli, site, [str(d)], as_of)["scores"][0]
    _, ver = _verify(run_cli, site, "--as-of", as_of, source=[str(d)])
    assert full["score"] == _expected(ver["devices"][0], ver["governance"])
    files = sorted(d.glob("*.cose"))
    n = len(files)
    files[n // 2].unlink()  # a gap in the middle of the chain
    code, ver = _verify(run_cli, site, "--as-of", as_of, source=[str(d)])
    assert code == 1  # the gap is a finding
    gap = _score(run_cli, site, [str(d)], as_of)["scores"][0]
    terms = {t["term"]: t for t in gap["terms"]}
    assert terms["sequence completeness"]["value"] == round((n - 1) / n, 6)
    assert terms["sequence completeness"]["basis"] == f"{n - 1} of {n} seqs (0..{n - 1})"
    assert gap["score"] == _expected(ver["devices"][0], ver["governance"]) < full["score"]


def test_the_gateway_and_the_collector_give_the_same_score(run_cli, site) -> None:
    as_of = "2030-01-01T00:00:00Z"  # every deadline passed
    gateway = _score(run_cli, site, ["--store", site["gateway"]], as_of)
    collector = _score(run_cli, site, ["--store", site["plain"]], as_of)
    assert gateway["scores"] == collector["scores"] and gateway["scores"][0]["score"] > 0
    # With statements: the collector's store, and the gateway's attestations as files
    # beside the same statements, score the same too.
    d = _evidence_dir(site, "with-statements")
    statements = read_statements(site["store"])
    for i, (raw, src) in enumerate(statements):
        kind = src.split("#", 1)[1].split("/", 1)[0]
        (d / f"{i}.{kind}").write_bytes(raw)
    files = _score(run_cli, site, [str(d)], as_of)
    assert files["scores"] == _score(run_cli, site, ["--store", site["store"]], as_of)["scores"]


def test_policy_governance_fields_are_checked_with_file_and_line(tmp_path) -> None:
    src = Path(__file__).resolve().parents[1] / "configs" / "policies" / "cold-chain.yaml"
    base = src.read_text().replace("../models/", str(src.parents[1] / "models") + "/")
    cases = {
        "explain_within: soon": (
            base.replace("explain_within: 72h", "explain_within: soon"),
            "goals[0].explain_within: 'soon' is not a duration",
        ),
        "explain_within: 0s": (
            base.replace("explain_within: 72h", "explain_within: 0s"),
            "goals[0].explain_within: must be > 0",
        ),
        "calibration: optional": (
            base.replace(
                '{name: humidity, unit: "%RH", range: [0, 100]}',
                '{name: humidity, unit: "%RH", range: [0, 100], calibration: optional}',
            ),
            "channels[1].calibration: the only value is 'required'",
        ),
    }
    for label, (text, why) in cases.items():
        p = tmp_path / "p.yaml"
        p.write_text(text)
        with pytest.raises(PolicyError) as e:
            load_policy(p)
        assert why in str(e.value) and re.search(r"p\.yaml:\d+", str(e.value)), (label, e.value)


def test_statements_are_strict_and_never_pass_for_one_another(site) -> None:
    import cbor2

    from agent.evidence.cose import encode_sign1
    from agent.identity.keys import load_signer

    alice = load_signer(site["keys"]["alice"])
    ex = Explanation("gw-test", "r", 1, "c", "a", "released", "", "Alice Operator", "operator", 1)
    st = read_statement(sign_statement(ex, alice), "x")
    assert st.kind == "explanation" and st.body == ex
    claims = ex.claims() | {"extra": 1}
    with pytest.raises(StatementError, match="unknown field"):
        read_statement(encode_sign1(cbor2.dumps(claims, canonical=True), alice), "x")
    with pytest.raises(StatementError, match="disposition 'lost'"):
        read_statement(
            encode_sign1(cbor2.dumps(ex.claims() | {"disposition": "lost"}, canonical=True), alice),
            "x",
        )
    attestation = read_messages(site["gateway"])[0].raw
    with pytest.raises(StatementError, match="not a governance statement"):
        read_statement(attestation, "an attestation")
