"""Scheduled self-tests (issue 16): declared in the policy, run by the real agent over an
emulated device on a pty, signed in the window they are due in (claim -70001/13),
reproduced by ``audit replay`` and judged by ``audit verify`` (failed, overdue)."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.errors import PolicyError, VerificationError
from agent.evidence.claims import SelfTestResult, parse_self_test_claim, self_test_claim
from agent.pipeline.self_tests import is_due, run_self_test
from agent.policy import load_policy
from agent.policy.model import SelfTest
from tests.conftest import ROOT
from tests.test_agent_e2e import Device, make_site, run_agent, wait_for
from tests.test_report_html import _check, _Scan

PROBES = ROOT / "configs" / "policies" / "cold-chain-probes.yaml"


# -- the due rule and the computation --------------------------------------------------


def test_a_self_test_is_due_once_per_period_in_the_window_holding_the_multiple() -> None:
    p = 2000
    # 1 s windows tiling 0..20 s: due exactly in those starting at a multiple of 2 s
    due = [s for s in range(0, 20_000, 1000) if is_due(p, s, s + 1000)]
    assert due == list(range(0, 20_000, 2000))
    # uneven windows (a stop cuts one short, a restart begins mid-period): once per multiple
    cuts = [0, 700, 1999, 2000, 2001, 3500, 5999, 6000, 9100, 9999]
    hits = [(a, b) for a, b in zip(cuts, cuts[1:]) if is_due(p, a, b)]
    # [6000, 9100) holds 6000 and 8000: one result (a window longer than the period)
    assert hits == [(0, 700), (2000, 2001), (3500, 5999), (6000, 9100)]
    assert not is_due(p, 2001, 3999) and is_due(p, 2001, 4001)
    assert not is_due(p, 5000, 5000)  # an empty window holds nothing
    with pytest.raises(ValueError):
        is_due(0, 0, 1000)


def _nan(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


def test_redundant_and_reference_errors_and_a_channel_without_readings() -> None:
    red = SelfTest("probes", "redundant", ("a", "b"), 0.5, 2000)
    ok = run_self_test(red, 4000, [_nan(5.0, 5.2, math.nan), _nan(5.5, 5.5)])
    assert (ok.observed, ok.reference, ok.readings) == (5.1, 5.5, (2, 2))
    assert ok.error == pytest.approx(0.4) and ok.passed and ok.reason == ""
    bad = run_self_test(red, 4000, [_nan(5.0), _nan(6.0)])
    assert bad.error == 1.0 and not bad.passed
    edge = run_self_test(red, 4000, [_nan(5.0), _nan(5.5)])
    assert edge.error == 0.5 and edge.passed  # error <= tolerance passes
    none = run_self_test(red, 4000, [_nan(5.0), _nan(math.nan)])
    assert (none.passed, none.error, none.reference, none.readings) == (False, None, None, (1, 0))
    assert none.reason == "no readings: b"
    ref = SelfTest("cell", "reference", ("c",), 0.1, 3_600_000, reference=0.01)
    r = run_self_test(ref, 7, [_nan(0.2, 0.2)])
    assert r.error == pytest.approx(0.19) and r.error > 0 and not r.passed  # signed
    low = run_self_test(ref, 7, [_nan(-0.05)])
    assert low.error == pytest.approx(-0.06) and low.passed
    empty = run_self_test(ref, 7, [_nan()])
    assert (empty.passed, empty.observed, empty.reason) == (False, None, "no readings")
    # the mean does not depend on the order the readings are summed in
    xs = np.array([1e16, 1.0, -1e16, 3.0])
    assert run_self_test(ref, 7, [xs]).observed == run_self_test(ref, 7, [xs[::-1]]).observed


def test_the_claim_round_trips_and_its_parse_is_strict() -> None:
    t = SelfTestResult(
        "probes", "redundant", ("a", "b"), 5.5, 5.1, 0.4, 0.5, True, 4000, (2, 2), 2000, ""
    )
    assert parse_self_test_claim([self_test_claim(t)]) == (t,)
    good = self_test_claim(t)
    for bad, why in (
        ({**good, 8: True, 6: 0.6}, "passed"),  # passed while the error exceeds the tolerance
        ({**good, 3: ["a"]}, "channels"),
        ({**good, 2: "other"}, "kind"),
        ({**good, 5: math.inf}, "observed"),
        ({**good, 10: [2]}, "readings"),
        ({k: v for k, v in good.items() if k != 12}, "keys 1 to 12"),
    ):
        with pytest.raises(VerificationError, match=why):
            parse_self_test_claim([bad])
    with pytest.raises(VerificationError, match="non-empty"):
        parse_self_test_claim([])


# -- the policy: validation, digest ----------------------------------------------------


def _site_policy(tmp: Path, text: str) -> Path:
    (tmp / "cold-chain.yaml").write_text((PROBES.parent / "cold-chain.yaml").read_text())
    (tmp / "models").mkdir(exist_ok=True)
    path = tmp / "probes.yaml"
    path.write_text(text)
    return path


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(
    ("old", "new", "where", "reason", "at"),
    [
        ("channels: [temperature, probe_b]", "channels: [temperature, probe_c]",
         "self_tests[0].channels[1]", "unknown channel 'probe_c'", "[temperature, probe_c]"),
        ("    tolerance: 1.5", "    tolerance: 0", "self_tests[0].tolerance", "must be > 0",
         "tolerance: 0\n"),
        ("    tolerance: 0.1", "    tolerance: -0.1", "self_tests[1].tolerance", "must be > 0",
         "tolerance: -0.1"),
        ("    every: 1h\n    goal: keep-cold\n  # A triple", "    goal: keep-cold\n  # A triple",
         "self_tests[0]", "missing required key 'every'", "- id: probes-agree"),
        ("id: ref-cell", "id: probes-agree", "self_tests[1].id",
         "duplicate self-test id 'probes-agree'", "probes-agree\n    kind: reference"),
        ("channels: [temperature, probe_b]", "channels: [temperature, humidity]",
         "self_tests[0].channels", "temperature is in Cel, humidity in %RH",
         "[temperature, humidity]"),
        ("channel: ref_cell", "channel: ref_cel", "self_tests[1].channel",
         "unknown channel 'ref_cel'", "channel: ref_cel\n"),
        ("    every: 1h\n    goal: keep-cold\n  # A triple", "    every: 60\n    goal: keep-cold\n"
         "  # A triple", "self_tests[0].every", "give a unit", "every: 60"),
        ("goal: keep-cold\n  # A triple", "goal: keep-warm\n  # A triple", "self_tests[0].goal",
         "unknown goal 'keep-warm'", "keep-warm"),
        ("kind: reference", "kind: calibration", "self_tests[1].kind",
         "'calibration' is not one of redundant, reference", "calibration"),
    ],
)  # fmt: skip
def test_policy_errors_name_file_line_and_field(tmp_path, old, new, where, reason, at) -> None:
    text = PROBES.read_text()
    assert text.count(old) == 1, old
    bad = text.replace(old, new)
    assert bad.count(at) == 1, at
    path = _site_policy(tmp_path, bad)
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    msg = str(e.value)
    m = re.match(rf"{re.escape(str(path))}:(\d+):\d+: {re.escape(where)}: (.*)", msg)
    assert m, msg
    assert reason in m[2], msg
    assert int(m[1]) == _line_of(bad, at), msg  # the line of the offending value


def test_self_tests_are_covered_by_the_policy_digest(tmp_path) -> None:
    text = PROBES.read_text()
    base = load_policy(_site_policy(tmp_path, text))
    assert [t.id for t in base.self_tests] == ["probes-agree", "ref-cell"]
    assert b'"self_tests"' in base.canonical_bytes()
    for old, new in (("tolerance: 1.5", "tolerance: 1.4"), ("every: 1h", "every: 2h")):
        changed = load_policy(_site_policy(tmp_path, text.replace(old, new, 1)))
        assert changed.digest != base.digest, old
    # reformatting is not a change; a bundle without self-tests keeps its canonical form
    same = load_policy(_site_policy(tmp_path, text.replace("tolerance: 1.5", "tolerance: 1.50")))
    assert same.digest == base.digest
    plain = load_policy(PROBES.parent / "cold-chain.yaml")
    assert plain.self_tests == () and b"self_tests" not in plain.canonical_bytes()


# -- the real agent ----------------------------------------------------------------------


def _probe_site(tmp: Path, port: str, every: str = "2s") -> tuple[Path, Path]:
    """make_site's cold store (1 s windows) under the probes policy, self-tests every
    ``every``; returns (agent config, policy)."""
    cfg = make_site(tmp, output={"spool": "spool"}, port=port)
    policy = tmp / "policies" / "cold-chain-probes.yaml"
    policy.write_text(PROBES.read_text().replace("every: 1h", f"every: {every}"))
    doc = yaml.safe_load(cfg.read_text())
    doc["policy"] = "policies/cold-chain-probes.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg, policy


def _windows(tmp: Path) -> list:
    from agent.evidence.claims import parse_claims
    from agent.evidence.cose import decode_sign1

    out = []
    for f in sorted((tmp / "spool").rglob("*.cose")):
        out.append(parse_claims(decode_sign1(f.read_bytes()).claims()))
    return sorted(out, key=lambda ev: ev.seq)


def _verify(run_cli, tmp: Path, pub: Path, policy: Path | None, *extra: str):
    args = ["audit", "verify", str(tmp / "spool"), "--key", str(pub)]
    if policy is not None:
        args += ["--policy", str(policy)]
    return run_cli(*args, *extra)


def test_agent_signs_passing_self_tests_and_replay_reproduces_them(tmp_path, run_cli) -> None:
    with Device("normal", probe_offset=0.1, reference=0.01) as dev:
        cfg, policy = _probe_site(tmp_path, dev.pty.slave_path)
        agent, _ = run_agent(cfg, 4.5)
    pub = tmp_path / "device.pub.pem"
    pub.write_bytes(agent.signer.public.pem())
    chain = _windows(tmp_path)
    due = [ev for ev in chain if ev.self_tests]
    # every window holding a multiple of 2 s carries both results, no other window any
    assert due and all(
        bool(ev.self_tests) == is_due(2000, ev.window_start_ms, ev.window_end_ms) for ev in chain
    )
    for ev in due:
        assert [t.test_id for t in ev.self_tests] == ["probes-agree", "ref-cell"]
        probes, cell = ev.self_tests
        assert probes.channels == ("temperature", "probe_b") and cell.channels == ("ref_cell",)
        assert all(t.time_ms == ev.window_end_ms and t.every_ms == 2000 for t in ev.self_tests)
        if ev.readings:
            assert probes.passed and 0.0 < probes.error < 0.3 and probes.readings[0] > 0
            assert cell.passed and abs(cell.error) < 0.02 and cell.reference == 0.01

    v = _verify(run_cli, tmp_path, pub, policy, "--json")
    assert v.returncode == 0, v.stderr
    doc = json.loads(v.stdout)
    st = doc["devices"][0]["self_tests"]
    assert st["source"] == "policy" and not st["overdue"]
    by_id = {t["id"]: t for t in st["tests"]}
    signed = [t for ev in due for t in ev.self_tests]
    for tid in ("probes-agree", "ref-cell"):
        got = by_id[tid]
        mine = [t for t in signed if t.test_id == tid]
        assert got["results"] == len(mine) and got["passed"] == sum(t.passed for t in mine)
        assert got["goal"] == "keep-cold" and got["every_ms"] == 2000
    keep_cold = next(c for c in doc["compliance"]["items"] if c["id"] == "keep-cold")
    assert "self-test" not in keep_cold["reason"]

    seq = next(ev.seq for ev in due if ev.readings)
    store = str(tmp_path / "state" / "evidence.sqlite")
    r = run_cli("audit", "replay", "--store", store, "--policy", str(policy), "--key", str(pub),
                "--seq", str(seq), "--json")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["verdict"] == "REPRODUCED" and rep["windows"][-1]["seq"] == seq
    assert not rep["windows"][-1]["mismatches"]


def test_a_drifted_probe_fails_and_a_stopped_agent_leaves_the_self_test_overdue(
    tmp_path, run_cli
) -> None:
    with Device("normal", probe_offset=2.0, reference=0.01) as dev:  # probe_b 2 degC high
        cfg, policy = _probe_site(tmp_path, dev.pty.slave_path)
        agent, _ = run_agent(cfg, 3.5)
        stopped = time.time() * 1000
        # stopped across more than a period and a window: a due time passes unattested
        assert wait_for(lambda: time.time() * 1000 > stopped + 3100, timeout=5)
        run_agent(cfg, 3.5)
    pub = tmp_path / "device.pub.pem"
    pub.write_bytes(agent.signer.public.pem())
    chain = _windows(tmp_path)
    failed = [(ev, t) for ev in chain for t in ev.self_tests if not t.passed]
    # the reference cell fails only where its window had no reading (a short window at a
    # stop or start, on a loaded machine): recorded as failed, with the reason
    assert all(t.test_id == "probes-agree" or t.reason.startswith("no readings")
               for _ev, t in failed)  # fmt: skip
    failed = [(ev, t) for ev, t in failed if t.test_id == "probes-agree"]
    assert failed and any(t.error is not None and t.error > 1.5 for _ev, t in failed)
    assert all(t.error is None or t.error > 1.5 for _ev, t in failed)

    v = _verify(run_cli, tmp_path, pub, policy, "--json")
    assert v.returncode == 0, v.stderr  # governance findings: the evidence stays intact
    doc = json.loads(v.stdout)
    assert doc["evidence"] == "intact" and not doc["findings"]
    st = doc["devices"][0]["self_tests"]
    probes = next(t for t in st["tests"] if t["id"] == "probes-agree")
    assert probes["failed"] == len(failed) and len(probes["failures"]) == len(failed)
    first = probes["failures"][0]
    ev, t = failed[0]
    assert (first["seq"], first["time_ms"], first["observed"], first["error"]) == (
        ev.seq, t.time_ms, t.observed, t.error,
    )  # fmt: skip
    # the gap of the stop: no result for longer than the period (2 s) plus a window (1 s)
    gaps = [o for o in st["overdue"] if not o["open"]]
    assert {o["test"] for o in gaps} == {"probes-agree", "ref-cell"}
    restart = next(ev for ev in chain if ev.restart is not None and ev.seq > 0)
    for o in gaps:
        assert o["span_ms"] > 3000 and o["from_ms"] <= stopped <= o["to_ms"]
        assert o["from_ms"] < restart.restart.started_ms < o["to_ms"]
    keep_cold = next(c for c in doc["compliance"]["items"] if c["id"] == "keep-cold")
    assert keep_cold["status"] in ("not quality-assured", "violated", "not evaluable")
    if keep_cold["status"] == "not quality-assured":
        assert "self-test probes-agree" in keep_cold["reason"]
    assert keep_cold["status"] != "met"
    # the other goals are not served by these self-tests
    humidity = next(c for c in doc["compliance"]["items"] if c["id"] == "control-humidity")
    assert "self-test" not in humidity["reason"]
    # the evidence-quality score's self-test term: results passed / due, each overdue span
    # counting the due times it skipped (docs/governance.md)
    score = next(
        t
        for t in doc["governance"]["scores"][0]["terms"]
        if t["term"] == "self-tests on time"
    )  # fmt: skip
    passed = sum(t["passed"] for t in st["tests"])
    due = (
        passed
        + sum(t["failed"] for t in st["tests"])
        + sum(max(1, o["span_ms"] // o["every_ms"]) for o in st["overdue"])
    )
    assert score["value"] == round(passed / due, 6) < 1.0

    text = _verify(run_cli, tmp_path, pub, policy)
    assert text.returncode == 0, text.stderr
    assert "self-test probes-agree: redundant temperature vs probe_b" in text.stdout
    assert "FAILED seq" in text.stdout and "OVERDUE" in text.stdout

    # without the policy: the self-tests the evidence shows, with their signed periods
    bare = json.loads(_verify(run_cli, tmp_path, pub, None, "--json").stdout)
    bst = bare["devices"][0]["self_tests"]
    assert bst["source"] == "evidence" and bst["note"]
    assert {o["test"] for o in bst["overdue"]} == {"probes-agree", "ref-cell"}

    # every number of the self-test section of the HTML report is the JSON's
    out = tmp_path / "report.html"
    r = run_cli("audit", "report", str(tmp_path / "spool"), "--key", str(pub), "--policy",
                str(policy), "--html", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    scan = _Scan()
    scan.feed(out.read_text())
    for pointer, f, shown in scan.values:
        _check(doc, pointer, f, shown)
    keys = {k for k, _, _ in scan.values}
    p = "/devices/0/self_tests"
    must = {f"{p}/overdue/{k}/{x}" for k in range(len(st["overdue"]))
            for x in ("test", "from_ms", "to_ms", "span_ms")}  # fmt: skip
    j = st["tests"].index(probes)
    must |= {f"{p}/tests/{j}/{x}" for x in ("id", "passed", "failed", "every_ms")}
    must |= {f"{p}/tests/{j}/failures/0/{x}" for x in ("time_ms", "observed", "error")}
    assert not must - keys, sorted(must - keys)


def test_a_reference_cell_off_by_more_than_its_tolerance_fails(tmp_path) -> None:
    with Device("normal", probe_offset=0.0, reference=0.5) as dev:  # the cell reads 0.5 degC
        cfg, _policy = _probe_site(tmp_path, dev.pty.slave_path, every="1s")
        run_agent(cfg, 2.5)
    cells = [
        t
        for ev in _windows(tmp_path)
        for t in ev.self_tests
        if t.test_id == "ref-cell" and t.readings[0]
    ]
    assert cells and all(not t.passed and t.error == pytest.approx(0.49, abs=0.02) for t in cells)
    assert all(t.observed is not None and t.reference == 0.01 for t in cells)


def test_a_held_window_keeps_its_self_test_results(tmp_path) -> None:
    """A window the store refused is signed at the next start with the results it had."""
    from agent.identity.keys import generate_key
    from agent.pipeline.evaluate import WindowVerdicts
    from agent.pipeline.held_windows import HeldWindows, decode_held, encode_held
    from agent.pipeline.window import Window
    from agent.policy.evaluator import BatchResult
    from agent.sources.reading import Reading

    signer = generate_key(tmp_path / "k.key")
    w = Window(2000, 3000, 2)
    w.add(Reading(2000, 7, 0, 1, (4.0, 9.0)))
    red = SelfTest("probes", "redundant", ("a", "b"), 0.5, 2000)
    result = run_self_test(red, 3000, [_nan(4.0), _nan(9.0)])
    codes = np.ones((0, 1), dtype=np.uint8)
    w.results = WindowVerdicts(BatchResult(codes, []), (), (), 0, None, None, (result,))
    data = encode_held(HeldWindows("gw", "o", "cd" * 32, b"s", [(w, {})]), signer)
    ((back, _health),) = decode_held(data, signer.public, 2, []).windows
    assert back.results is not None and back.results.self_tests == (result,)
    assert not result.passed and result.error == 5.0
