"""``edgegov audit replay``: the agent's own windows re-run bit for bit from its evidence store.

The agent here is the real one (policy evaluator, onnxruntime, signer, SQLite store, spool
output); windows are handed to it directly so that many minutes of readings take a second.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from agent.audit.replay import replay
from agent.audit.trust import TrustedKey, TrustStore
from agent.cli import main
from agent.config import load_config
from agent.errors import Error
from agent.evidence.claims import parse_claims
from agent.evidence.cose import decode_sign1
from agent.identity.keys import generate_key, load_public_key
from agent.pipeline.runner import Agent
from agent.pipeline.window import Window
from agent.policy import load_policy
from agent.sources.reading import Reading
from tests import onnx_util
from tests.conftest import ROOT

POLICY = ROOT / "configs" / "policies" / "cold-chain.yaml"
FEATURES = ["delta(temperature, 1m)", "lag(temperature, 3)", "mean(humidity)"]
WINDOW_MS = 5000
HZ = 20


def make_site(
    tmp: Path, model: onnx.ModelProto | None = None, features: list[str] = FEATURES
) -> Path:
    """Cold-chain policy with one model ``trend``; by default one that looks back (1 min
    trend, lags) and carries training ranges."""
    (tmp / "models").mkdir(parents=True)
    (tmp / "policies").mkdir()
    if model is None:
        model = onnx_util.logistic(
            [2.0, 0.3, 0.2, 0.1, 0.01],
            -4.0,
            features=FEATURES,
            ranges=[(-1.0, 1.0), (2.0, 8.0), (2.0, 8.0), (2.0, 8.0), (40.0, 60.0)],
        )
    digest = onnx_util.save(model, tmp / "models" / "trend.onnx")
    text = POLICY.read_text()
    declaration = f"""models:
  - id: trend
    file: ../models/trend.onnx
    sha256: "{digest}"
    opset: 17
    features: {json.dumps(features)}
    output: probability
    meaning: test trend score
    threshold: 0.5
    goal: keep-cold
    card: {{training_data: none, intended_use: tests, limits: not a real model}}

"""
    text = re.sub(r"(?s)\nmodels:\n.*?\nwindow:", "\n" + declaration + "window:", text)
    (tmp / "policies" / "cold-chain.yaml").write_text(text)
    generate_key(tmp / "keys" / "device.key")
    cfg = tmp / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "gw-replay", "key": "keys/device.key"},
                "fleet": "t",
                "policy": "policies/cold-chain.yaml",
                "state_dir": "state",
                "sources": [{"port": "/dev/null", "baud": 115200}],
                "output": {"spool": "spool"},
            }
        )
    )
    return cfg


def feed(agent: Agent, first: int, count: int, seed: int = 3) -> None:
    """``count`` 5 s windows of 20 Hz readings: a slow warming with an excursion and gaps."""
    rng = np.random.default_rng(seed + first)
    agent.publisher.start(agent.store.pending())
    for w in range(first, first + count):
        start = 1_700_000_000_000 + w * WINDOW_MS
        window = Window(start, start + WINDOW_MS, 3)
        for k in range(WINDOW_MS * HZ // 1000):
            t_ms = start + k * 1000 // HZ
            temp = 5.0 + 0.02 * w + rng.normal(0, 0.05) + (4.0 if 30 <= w < 34 else 0.0)
            hum = 50.0 + rng.normal(0, 0.4)
            values = (np.nan if rng.random() < 0.01 else temp, hum, float(w % 9 == 0))
            window.add(Reading(t_ms, t_ms, 0, k, values))
        agent._close(window)


def trust(tmp: Path) -> TrustStore:
    store = TrustStore()
    store.add(TrustedKey(load_public_key(tmp / "keys" / "device.pub.pem"), None, "test key"))
    return store


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    cfg = make_site(tmp_path)
    agent = Agent(load_config(cfg))
    try:
        feed(agent, 0, 25)
        agent._checkpoint_now(agent.store.last_window_end())  # what a stop does
    finally:
        agent.store.close()
    # a restart: the evaluator state comes back from its file, the feature history from the store
    agent = Agent(load_config(cfg))
    try:
        feed(agent, 25, 20)
    finally:
        agent.store.close()
    return tmp_path


def test_every_window_replays_bit_for_bit_across_a_restart(site: Path) -> None:
    bundle = load_policy(site / "policies" / "cold-chain.yaml")
    res = replay(site / "state" / "evidence.sqlite", bundle, trust(site), range(45))
    assert res.ok, res.text()
    assert res.start_seq == 0 and len(res.windows) == 45
    assert all(w.state_ok for w in res.windows)
    scores = [w.risk[0].score for w in res.windows]
    assert all(s is not None for s in scores[1:])
    assert len(set(scores)) > 20  # real, varying scores were compared, not a constant
    flagged = [w.seq for w in res.windows if w.risk[0].ood]
    assert flagged and set(range(30, 34)) & set(flagged)  # the excursion is outside training
    violated = {r.rule_id for w in res.windows for r in w.rules if r.violated}
    assert {"temp-2-8", "mean-10min-in-range"} <= violated or "temp-2-8" in violated


def test_one_late_window_rebuilds_its_state_from_the_start_and_matches(site: Path) -> None:
    bundle = load_policy(site / "policies" / "cold-chain.yaml")
    res = replay(site / "state" / "evidence.sqlite", bundle, trust(site), [40])
    assert res.ok
    assert [w.seq for w in res.windows if w.target] == [40]
    assert res.windows[0].seq == 0  # the only fresh-state window: the state is rebuilt
    assert "REPRODUCED - every rule result and risk score as attested" in res.text()


def test_a_changed_stored_reading_is_caught_by_the_signed_checkpoint(site: Path) -> None:
    db = sqlite3.connect(site / "state" / "evidence.sqlite")
    stride, blob = db.execute(
        "SELECT stride, records FROM window_readings WHERE seq = 20"
    ).fetchone()
    record = blob[:stride]  # the window's first reading
    altered = record[:-24] + struct.pack(">d", 4.0) + record[-16:]  # temperature := 4.0
    db.execute("UPDATE window_readings SET records = ? WHERE seq = 20", (altered + blob[stride:],))
    db.commit()
    db.close()
    bundle = load_policy(site / "policies" / "cold-chain.yaml")
    res = replay(site / "state" / "evidence.sqlite", bundle, trust(site), [22])
    assert not res.ok
    bad = next(w for w in res.windows if w.seq == 20)
    assert any("signed Merkle checkpoint" in m for m in bad.mismatches)
    assert "seq 20" in res.text() and "NOT REPRODUCED" in res.text()


def test_another_policy_or_model_file_is_refused_naming_both_digests(site: Path) -> None:
    policy = site / "policies" / "cold-chain.yaml"
    other = site / "policies" / "other.yaml"
    other.write_text(policy.read_text().replace("humidity <= 65.0", "humidity <= 60.0"))
    with pytest.raises(Error, match=r"seq 44 was produced by policy cold-chain-gdp v1 .* the "):
        replay(site / "state" / "evidence.sqlite", load_policy(other), trust(site), [44])
    (site / "models" / "trend.onnx").write_bytes(b"\x08\x08")
    with pytest.raises(Error, match=r"cannot replay: model trend: file .* has SHA-256"):
        replay(site / "state" / "evidence.sqlite", load_policy(policy), trust(site), [44])


def test_a_foreign_key_cannot_vouch_for_the_store(site: Path, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path_factory.mktemp("k")
    generate_key(other / "k.key")
    foreign = TrustStore()
    foreign.add(TrustedKey(load_public_key(other / "k.pub.pem"), None, "foreign"))
    bundle = load_policy(site / "policies" / "cold-chain.yaml")
    with pytest.raises(Exception, match=r"(?i)key|signature|kid"):
        replay(site / "state" / "evidence.sqlite", bundle, foreign, [3])


def test_cli_prints_the_verdict_and_exits_0_or_1(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "audit",
        "replay",
        "--store",
        str(site / "state" / "evidence.sqlite"),
        "--policy",
        str(site / "policies" / "cold-chain.yaml"),
        "--key",
        str(site / "keys" / "device.pub.pem"),
        "--seq",
        "31",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "seq 31: 100 reading(s) - REPRODUCED" in out
    assert "risk trend:" in out and "out of training range: mean(temperature)" not in out
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "REPRODUCED" and doc["windows"][-1]["seq"] == 31
    assert doc["windows"][-1]["risk"][0]["ood"] is not None
    db = sqlite3.connect(site / "state" / "evidence.sqlite")
    db.execute(  # the window's blob holds only its first 50 readings
        "UPDATE window_readings SET n = 50, records = substr(records, 1, 50 * stride) "
        "WHERE seq = 31"
    )
    db.commit()
    db.close()
    assert main(args) == 1
    assert "cannot be replayed" in capsys.readouterr().out
    assert main([*args[:-1], "999"]) == 2
    assert "seq 999 is not in" in capsys.readouterr().err


def test_a_model_failing_at_run_time_costs_its_score_not_the_rules_nor_any_window(
    tmp_path: Path,
) -> None:
    """Every window: no score, the reason, degraded evidence; rules, signatures and the
    chain as always; and replay reproduces exactly that."""
    cfg = make_site(tmp_path, onnx_util.throws_above(4), ["max(temperature)"])
    agent = Agent(load_config(cfg))  # loads: the trial run on zeros passes
    try:
        assert [m.id for m in agent.models] == ["trend"]
        feed(agent, 0, 6)  # temperatures of ~5 degC index past the model's table of 4
    finally:
        agent.store.close()
    evidence = [
        parse_claims(decode_sign1(f.read_bytes()).claims())
        for f in sorted((tmp_path / "spool" / "gw-replay").glob("*.cose"))
    ]
    assert [ev.seq for ev in evidence] == list(range(6))
    for ev in evidence:
        (risk,) = ev.risk
        assert risk.score is None and "model trend: onnxruntime failed to score" in risk.reason
        assert any(d.startswith("risk trend: model trend: onnxruntime failed") for d in ev.degraded)
        assert ev.rules[0].rule_id == "temp-2-8" and ev.rules[0].evaluated > 90
    res = replay(tmp_path / "state" / "evidence.sqlite", load_policy(
        tmp_path / "policies" / "cold-chain.yaml"), trust(tmp_path), [5])  # fmt: skip
    assert res.ok and res.windows[-1].risk[0].score is None


def test_windows_scored_without_a_refused_model_replay_without_it(tmp_path: Path) -> None:
    """The model file was missing for the first windows (refused, rules alone), then put
    back: replay, with the file present, scores only the windows the agent scored."""
    cfg = make_site(tmp_path)
    model = tmp_path / "models" / "trend.onnx"
    kept = model.read_bytes()
    model.unlink()
    agent = Agent(load_config(cfg))
    try:
        assert agent.models == []
        feed(agent, 0, 5)
        agent._checkpoint_now(agent.store.last_window_end())  # what a stop does
    finally:
        agent.store.close()
    model.write_bytes(kept)
    agent = Agent(load_config(cfg))
    try:
        feed(agent, 5, 5)
    finally:
        agent.store.close()
    bundle = load_policy(tmp_path / "policies" / "cold-chain.yaml")
    res = replay(tmp_path / "state" / "evidence.sqlite", bundle, trust(tmp_path), range(10))
    assert res.ok, res.text()
    assert [len(w.risk) for w in res.windows] == [0] * 5 + [1] * 5


def test_a_crash_rebuilds_the_state_from_the_last_checkpoint_and_the_stored_windows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed 24 windows after its last checkpoint (the first window), a start evaluates
    those windows again from the store and reaches the digest the last commit recorded;
    a window the store no longer holds whole makes it say so instead."""
    cfg = make_site(tmp_path)
    agent = Agent(load_config(cfg))
    try:
        feed(agent, 0, 25)  # checkpointed after window 0 only (every 5 min of windows)
        signed = agent.evaluator.state_digest()
    finally:
        agent.store.close()  # no stop: no checkpoint
    db = sqlite3.connect(tmp_path / "state" / "evidence.sqlite")
    assert db.execute("SELECT COUNT(*) FROM attestations").fetchone()[0] == 25
    db.close()
    again = Agent(load_config(cfg))
    try:
        assert again.evaluator.state_digest() != signed  # the checkpoint is 24 windows back
        with caplog.at_level("WARNING", "edgegov.agent"):
            again._continue_signed_state(signed)
        assert again.evaluator.state_digest() == signed
        assert "policy-state.bin, then 24 signed window(s) evaluated again" in caplog.text
    finally:
        again.store.close()
    caplog.clear()
    db = sqlite3.connect(tmp_path / "state" / "evidence.sqlite")
    db.execute("DELETE FROM window_readings WHERE seq = 20")  # one window's readings pruned
    db.commit()
    db.close()
    (tmp_path / "state" / "policy-state.bin").unlink()  # the rebuilt checkpoint
    os.replace(
        tmp_path / "state" / "policy-state.prev.bin", tmp_path / "state" / "policy-state.bin"
    )
    third = Agent(load_config(cfg))
    try:
        with caplog.at_level("WARNING", "edgegov.agent"):
            third._continue_signed_state(signed)
        assert third.evaluator.state_digest() != signed
        assert "is not the one after the last signed window" in caplog.text
    finally:
        third.store.close()
