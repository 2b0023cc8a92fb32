"""The agent as a fleet client, end to end: signed configs change what it checks, and
its attestations say which config produced each verdict."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from agent.audit import verify_paths
from agent.audit.collector import FileCollector
from agent.config import load_config
from agent.evidence.claims import parse_claims
from agent.evidence.cose import decode_sign1
from agent.identity.keys import generate_key, load_signer
from agent.pipeline.runner import Agent
from tests.conftest import ROOT, Listener
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
    assert all(e.config.changed[1] == e.window_start_ms for e in changes), [
        (e.seq, e.window_start_ms, e.window_end_ms, e.config.changed) for e in evs
    ]
    for a, b in zip(evs, evs[1:]):
        if b.config.config_version != a.config.config_version:
            assert b.config.changed is not None and a.window_end_ms == b.window_start_ms


def test_tuf_section_needs_mqtt_and_a_readable_trust_root(tmp_path):
    import pytest

    from agent.errors import ConfigError

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
    with pytest.raises(ConfigError, match=rf"^{cfg}: tuf\.root: {tmp_path}/missing.json: cannot"):
        load_config(cfg)
    # Not a TUF root signed by its own root keys: fail closed, no agent, nothing written.
    from agent.fleet.repository import FleetRepository

    meta = FleetRepository.init(tmp_path / "repo", "t").dir / "metadata"
    root = (meta / "1.root.json").read_text()
    for text in (
        "{}",
        (meta / "timestamp.json").read_text(),
        root.replace('"version":1', '"version":7'),
    ):
        (tmp_path / "bad-root.json").write_text(text)
        cfg.write_text(yaml.safe_dump({**base, "output": out, "tuf": {"root": "bad-root.json"}}))
        with pytest.raises(ConfigError, match=rf"^{cfg}: tuf\.root: .*fleet trust root unusable"):
            Agent(load_config(cfg))
        assert not (tmp_path / "state").exists()


def _gateway_config(site: Path, broker_url: str, root: Path, port: str, fleet: str) -> Path:
    """A fleet-managed gateway's config with no local policy: ``tuf:`` alone decides."""
    site.mkdir(parents=True, exist_ok=True)
    generate_key(site / "device.key")
    cfg = site / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "gw-1", "key": "device.key"},
                "fleet": fleet,
                "state_dir": "state",
                "sources": [{"port": port, "baud": 115200}],
                "output": {"mqtt": {"url": broker_url}},
                "tuf": {"root": str(root), "group": "cold-stores"},
            }
        )
    )
    return cfg


class _Gateway:
    """``edgegov run --config CFG`` in a subprocess; its log in ``site/agent.log``."""

    def __init__(self, cfg: Path) -> None:
        self.log = cfg.parent / "agent.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._out.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _json(listener: Listener, topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in list(listener.messages) if m.topic == topic]


def test_without_a_local_policy_nothing_is_signed_until_the_first_signed_config(tmp_path, broker):
    fleet = Fleet(tmp_path, broker, name="t")
    collector = FileCollector(broker.url, tmp_path / "collected", fleet="t")
    collector.start()
    listener = Listener(broker.url, "edgegov/t/gw-1/#")
    status, attestation = "edgegov/t/gw-1/status", "edgegov/t/gw-1/attestation"
    fleet.publish()  # a fleet with no assignment for this gateway yet
    try:
        with Device("normal") as dev:
            site, port = tmp_path / "site", dev.pty.slave_path
            gw = _Gateway(_gateway_config(site, broker.url, fleet.root_v1, port, "t"))
            try:

                def told() -> list[dict[str, Any]]:
                    """Retained statuses saying: waiting, because the fleet has no
                    assignment for this gateway yet."""
                    return [
                        s
                        for s in _json(listener, status)
                        if "waiting" in s and "no assignment" in s["fleet"]["last_error"]
                    ]

                assert wait_for(lambda: told(), 20), gw.text()
                waiting = told()[-1]
                assert waiting["state"] == "online" and waiting["policy"] is None
                assert "waiting for signed fleet config" in waiting["waiting"]
                assert waiting["sources"] == [] and waiting["fleet"]["config_version"] == 0
                time.sleep(2.5)  # more than two windows of the fleet's policy: nothing signed
                assert not [m for m in listener.messages if m.topic == attestation]
                assert gw.proc.poll() is None, gw.text()

                _release(fleet, 1)  # the first signed config: 1 s windows
                assert wait_for(
                    lambda: sum(m.topic == attestation for m in listener.messages) >= 2, 30
                ), gw.text()
                now = _json(listener, status)[-1]
                assert "waiting" not in now and now["fleet"]["config_version"] == 1
                assert now["policy"]["version"] == 1 and now["sources"][0]["name"] == "source0"
                assert fleet.ack()["state"] == "applied"
            finally:
                code = gw.stop()
        assert code == 0, gw.text()
        log = gw.text()
        assert log.count("waiting for signed fleet config") == 1, log  # said once
        assert wait_for(
            lambda: len(collector.stored) >= sum(m.topic == attestation for m in listener.messages),
            10,
        )
    finally:
        listener.close()
        collector.stop()
        fleet.close()

    signer = load_signer(tmp_path / "site" / "device.key")
    res = verify_paths([tmp_path / "collected"], [signer.public])
    assert res.ok, [str(f) for f in res.findings]
    evs = sorted(
        (parse_claims(decode_sign1(p.read_bytes()).claims())
         for p in (tmp_path / "collected").rglob("*.cose")),
        key=lambda e: e.seq,
    )  # fmt: skip
    assert len(evs) >= 2 and evs[0].seq == 0
    # Every attestation is attributed to the signed config; the first declares the switch.
    assert all(e.config.config_version == 1 and e.config.tuf is not None for e in evs)
    assert evs[0].config.changed is not None and evs[0].config.changed[0] == 0
    # ... inside its window, however long the sources took to open after the switch
    assert evs[0].window_start_ms <= evs[0].config.changed[1] < evs[0].window_end_ms
    assert not any("no fleet-signed config" in d for e in evs for d in e.degraded)


def _readme_fleet_commands() -> list[list[str]]:
    """The shell block of the README's "Fleet configuration (TUF over MQTT)" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Fleet configuration (TUF over MQTT)", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(c, comments=True) for c in block.replace("\\\n", " ").splitlines()]
    return [c for c in commands if c]


def test_the_readme_fleet_example_as_written_is_applied_by_a_gateway(tmp_path, broker, run_cli):
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the README runs from the repo root
    commands = _readme_fleet_commands()
    assert [c[:3] for c in commands][-2:] == [["edgegov", "fleet", "publish"],
                                              ["edgegov", "fleet", "status"]]  # fmt: skip
    for argv in commands:
        assert argv[0] == "edgegov", argv
        args = [broker.url if a == "mqtt://localhost:1883" else a for a in argv[1:]]
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 0, f"{shlex.join(argv)}: {r.stderr}{r.stdout}"
    with Device("normal") as dev:
        root = tmp_path / "fleet-repo" / "metadata" / "1.root.json"
        cfg = _gateway_config(tmp_path / "gw", broker.url, root, dev.pty.slave_path, "site-a")
        gw = _Gateway(cfg)
        try:
            with_acks = Listener(broker.url, "edgegov/site-a/gw-1/config/ack")
            try:
                assert wait_for(
                    lambda: any(a["state"] == "applied" for a in with_acks.json()), 60
                ), [a.get("reason") for a in with_acks.json()] or gw.text()
                ack = [a for a in with_acks.json() if a["state"] == "applied"][-1]
            finally:
                with_acks.close()
        finally:
            code = gw.stop()
    assert code == 0, gw.text()
    assert ack["config_version"] == 1 and set(ack["targets"]) == {
        "policies/cold-chain.yaml",
        "models/excursion-v1.onnx",
        "models/drift-v1.onnx",
    }
    status = [broker.url if a == "mqtt://localhost:1883" else a for a in commands[-1][1:]]
    r = run_cli(*status, cwd=tmp_path)
    assert r.returncode == 0 and "applied v1" in r.stdout, r.stdout + r.stderr
