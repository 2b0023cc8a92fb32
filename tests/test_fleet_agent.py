"""The agent as a fleet client, end to end: signed configs change what it checks, and
its attestations say which config produced each verdict."""

from __future__ import annotations

import json
import re
import threading

import yaml

from agent.attestation import parse_claims
from agent.audit import verify_paths
from agent.audit.collector import FileCollector
from agent.config import load_config
from agent.cose import decode_sign1
from agent.keys import generate_key
from agent.runner import Agent
from tests.fleet_util import MODEL, MODEL_NAME, POLICY_NAME, Fleet, policy_bytes
from tests.test_agent_e2e import Device, wait_for


def _short_windows(data: bytes) -> bytes:
    return re.sub(rb"(?m)^(\s*seconds:\s*)[\d.]+", rb"\g<1>1", data)


def _release(fleet: Fleet, version: int) -> None:
    fleet.repo.add_target(POLICY_NAME, _short_windows(policy_bytes(version)), "policy")
    fleet.repo.add_target(MODEL_NAME, MODEL.read_bytes(), "model")
    fleet.repo.assign(POLICY_NAME, [MODEL_NAME], group="cold-stores")
    fleet.repo.release()
    fleet.publish()


def test_agent_applies_signed_configs_and_attests_which_one_was_in_force(tmp_path, broker):
    fleet = Fleet(tmp_path, broker, name="t")
    collector = FileCollector(broker.url, tmp_path / "collected", fleet="t")
    collector.start()
    try:
        (tmp_path / "site" / "policies").mkdir(parents=True)
        (tmp_path / "site" / "policies" / "local.yaml").write_bytes(
            _short_windows(policy_bytes(1)).replace(b"../models/", b"../../models/")
        )
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / MODEL.name).write_bytes(MODEL.read_bytes())
        generate_key(tmp_path / "site" / "device.key")
        _release(fleet, 1)
        with Device("normal") as dev:
            cfg = tmp_path / "site" / "agent.yaml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "device": {"id": "gw-1", "key": "device.key"},
                        "fleet": "t",
                        "policy": "policies/local.yaml",
                        "state_dir": "state",
                        "sources": [{"port": dev.pty.slave_path, "baud": 115200}],
                        "output": {"mqtt": {"url": broker.url}},
                        "tuf": {"root": str(fleet.root_v1), "group": "cold-stores"},
                    }
                )
            )
            agent = Agent(load_config(cfg))
            runner = threading.Thread(target=agent.run)
            runner.start()
            try:
                assert wait_for(lambda: agent.fleet.in_force is not None, 15)
                assert wait_for(lambda: (agent.stats.attestations or 0) >= 3, 15)
                _release(fleet, 2)  # a new timestamp: the agent refreshes at once
                assert wait_for(
                    lambda: agent.fleet.in_force and agent.fleet.in_force.config_version == 2, 15
                )
                n = agent.stats.attestations
                assert wait_for(lambda: agent.stats.attestations >= n + 2, 15)
            finally:
                agent.stop()
                runner.join(timeout=20)
        assert wait_for(lambda: len(collector.stored) >= agent.stats.attestations, 10)
        ack = fleet.ack()
        assert ack["state"] == "applied" and ack["config_version"] == 2
        status = json.loads(fleet.session.read_retained(fleet.repo.topics.status("gw-1")) or b"")
        assert status["fleet"]["config_version"] == 2
    finally:
        collector.stop()
        fleet.close()

    res = verify_paths([tmp_path / "collected"], [agent.signer.public])
    assert res.ok, [str(f) for f in res.findings]
    evs = sorted(
        (parse_claims(decode_sign1(p.read_bytes()).claims())
         for p in (tmp_path / "collected").rglob("*.cose")),
        key=lambda e: e.seq,
    )  # fmt: skip
    versions = [e.config.config_version for e in evs]
    assert versions == sorted(versions) and {1, 2} <= set(versions)
    for e in evs:
        c = e.config
        if c.config_version == 0:  # before the first fleet config: the local policy, flagged
            assert any("no fleet-signed config" in d for d in e.degraded)
            assert c.tuf is None
            continue
        # The policy that produced the verdicts is the one the fleet config names.
        assert c.policy_version == c.config_version
        assert c.tuf is not None and c.tuf["root"] == 1
        assert c.targets is not None and set(c.targets) == {POLICY_NAME, MODEL_NAME}
        assert c.model_digests["excursion-risk"] == c.targets[MODEL_NAME]
        assert e.health["fleet_potential_freeze"] == 0
    # Each change is declared by the first window after it, which starts at the switch.
    changes = [e for e in evs if e.config.changed is not None]
    assert [e.config.changed[0] for e in changes] == [0, 1]
    assert all(e.config.changed[1] == e.window_start_ms for e in changes)
    for a, b in zip(evs, evs[1:]):
        if b.config.config_version != a.config.config_version:
            assert b.config.changed is not None and a.window_end_ms == b.window_start_ms


def test_tuf_section_needs_mqtt_and_a_readable_trust_root(tmp_path):
    import pytest

    from agent.errors import ConfigError, Error

    base = {
        "device": {"id": "gw-1", "key": "device.key"},
        "fleet": "t",
        "policy": "p.yaml",
        "state_dir": "state",
        "sources": [{"port": "/dev/null"}],
    }
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({**base, "output": {"spool": "s"}, "tuf": {"root": "r.json"}}))
    with pytest.raises(ConfigError, match=r"tuf\.root: fleet configuration arrives over MQTT"):
        load_config(cfg)
    (tmp_path / "p.yaml").write_bytes(policy_bytes(1).replace(b"../models/", b"models/"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / MODEL.name).write_bytes(MODEL.read_bytes())
    generate_key(tmp_path / "device.key")
    out = {"mqtt": {"url": "mqtt://127.0.0.1:1"}}
    cfg.write_text(yaml.safe_dump({**base, "output": out, "tuf": {"root": "missing.json"}}))
    with pytest.raises(Error, match="fleet trust root unusable"):  # fail closed: no agent
        Agent(load_config(cfg))
