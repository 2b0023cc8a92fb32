"""The agent and its policy: last good policy kept on a bad reload, evaluator state persisted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import load_config
from agent.pipeline.runner import Agent
from tests.test_agent_e2e import make_site

BAD_LAYERS = [
    "rules:\n  - id: [unclosed\n",  # YAML syntax
    "policy: " + "[" * 20_000 + "]" * 20_000 + "\n",  # nesting
    "x" * (10 * 1024 * 1024),  # 10 MB
]


def test_a_bad_policy_on_reload_keeps_the_last_good_one(tmp_path: Path) -> None:
    cfg = make_site(tmp_path, output={"spool": "spool"}, port="/dev/null")
    agent = Agent(load_config(cfg))
    try:
        good = agent.policy
        evaluator = agent.evaluator
        policy_file = tmp_path / "policies" / "cold-chain.yaml"
        original = policy_file.read_text()
        tightened = original.replace("humidity <= 65.0", "humidity <= 60.0")
        broken = [
            original.replace("temperature >= 2.0 && temperature <= 8.0", "temperature >= ", 1),
            original.replace("temperature >= 2.0", "mean(temprature, 10m) >= 2.0", 1),
            original.replace("door < 0.5", "door < '0.5'", 1),
            original + "\nextend: cold-chain.yaml\n",
            *BAD_LAYERS,
        ]
        for text in broken:
            policy_file.write_text(text)
            agent._reload_config()
            assert agent.policy is good and agent.evaluator is evaluator
        policy_file.write_text(tightened)
        agent._reload_config()
        assert agent.policy.digest != good.digest
    finally:
        agent.store.close()


def test_window_and_duration_state_survive_an_agent_restart(tmp_path: Path) -> None:
    cfg = make_site(tmp_path, output={"spool": "spool"}, port="/dev/null")
    agent = Agent(load_config(cfg))
    try:
        ts = np.arange(100, dtype=np.int64) * 1000
        cols = np.vstack([np.full(100, 9.0), np.full(100, 50.0), np.zeros(100)])
        agent.evaluator.run(ts, cols)  # 100 s above 8 °C: pending towards the 10 min excursion
        agent._checkpoint_now(int(ts[-1]))
        saved = agent.evaluator.state_digest()
    finally:
        agent.store.close()
    again = Agent(load_config(cfg))
    try:
        assert again.evaluator.state_digest() == saved
        ts2 = ts + 600_000  # 10 min after the excursion began: now it is reportable
        res = again.evaluator.run(ts2, cols)
        k = [r.id for r in again.policy.rules].index("excursion-over-10min")
        assert res.codes[k][0] == 0
        assert res.episodes[k][0].start_ms == 0
    finally:
        again.store.close()


def test_rule_episodes_round_trip_through_the_claims() -> None:
    import cbor2

    from agent.errors import VerificationError
    from agent.evidence.claims import (
        Checkpoint,
        ConfigInForce,
        Evidence,
        RuleEpisode,
        RuleResult,
        encode_claims,
        parse_claims,
    )

    rules = (
        RuleResult(
            "temp-2-8", 10, 4, 1, 11000, 14000,
            (RuleEpisode(5000, 12000, 11.5), RuleEpisode(13000, None, None)),
        ),  # the first episode began before the window [10000, 15000)
        RuleResult("door", 10, 0, 0),
    )  # fmt: skip
    ev = Evidence(
        "gw", 0, None, 10000, 15000, 10, Checkpoint("o", 10, bytes(32)),
        ConfigInForce("p", 1, "00" * 32, {}), rules, (), {"frames_ok": 10}, cti=bytes(16),
    )  # fmt: skip
    claims = cbor2.loads(encode_claims(ev))
    assert parse_claims(claims).rules == rules
    for bad in ([1, "x", None], [-1, None, None], [1, None, float("nan")]):
        claims[-70001][6][0][7] = [bad]
        with pytest.raises(VerificationError, match="episode"):
            parse_claims(claims)
