"""SIGHUP reloads the whole config file: live fields are applied, restart-only fields are
refused by name, a broken file changes nothing. Through the real agent subprocess."""

from __future__ import annotations

import dataclasses
import time

import pytest
import yaml

from agent.audit import verify_paths
from agent.audit.collector import FileCollector
from agent.config import SerialSettings, load_config
from agent.identity.keys import load_public_key
from agent.pipeline.reload import plan_reload
from agent.policy import load_policy
from agent.tools.broker import free_port
from tests.agent_process import AgentProcess, agent_env, spool_evidence
from tests.test_agent_e2e import Device, make_site, wait_for


def _edit(cfg, change) -> None:
    data = yaml.safe_load(cfg.read_text())
    change(data)
    cfg.write_text(yaml.safe_dump(data))


def _hup(agent: AgentProcess, needle: str) -> str:
    """SIGHUP, wait for ``needle`` in what the agent logs after it; return that part."""
    mark = len(agent.text())
    agent.hup()
    return agent.wait_log(needle, after=mark)[mark:]


def test_plan_reload_applies_live_fields_and_names_each_restart_only_one(tmp_path):
    cfg = make_site(tmp_path, output={"mqtt": {"url": "mqtt://127.0.0.1:1883"}}, port="/dev/null")
    running = load_config(cfg)
    new_port = dataclasses.replace(running.sources[0], serial=SerialSettings("/dev/ttyUSB1"))
    new = dataclasses.replace(
        running,
        sources=(new_port,),
        device_id="gw-other",
        mqtt=dataclasses.replace(
            running.mqtt, urls=("mqtt://10.0.0.2:1883",), topic_prefix="other"
        ),
        evidence_max_mb=5.0,
        risk_threads=2,
        log_level="debug",
    )
    plan = plan_reload(running, new)
    assert sorted(plan.refused) == ["device.id", "output.mqtt.topic_prefix", "sources"]
    assert sorted(plan.changed) == ["evidence.max_mb", "log.level", "output.mqtt", "risk.threads"]
    c = plan.config  # restart-only fields keep their running values, the rest is new
    assert c.sources == running.sources and c.device_id == running.device_id
    assert c.mqtt is not None and c.mqtt.topic_prefix == "edgegov"
    assert c.mqtt.urls == ("mqtt://10.0.0.2:1883",) and c.evidence_max_mb == 5.0
    assert plan_reload(running, load_config(cfg)) == plan_reload(running, running)
    assert plan_reload(running, running).changed == plan_reload(running, running).refused == ()
    # with tuf: the fleet client shares the broker settings, so they need a restart too
    fleet = dataclasses.replace(running, tuf=object())
    assert (
        plan_reload(fleet, dataclasses.replace(new, tuf=fleet.tuf)).refused.count("output.mqtt")
        == 1
    )


@pytest.mark.slow
def test_sighup_applies_a_changed_policy_from_the_next_attestation(tmp_path):
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        policy = tmp_path / "policies" / "cold-chain.yaml"
        before = load_policy(policy)
        agent = AgentProcess(cfg, env=agent_env())
        try:
            agent.wait_log("attestation seq 1 signed")
            policy.write_text(policy.read_text().replace("  version: 1\n", "  version: 2\n", 1))
            after = load_policy(policy)
            assert after.version == 2 and after.digest != before.digest
            reloaded = _hup(agent, "config reloaded from")
            assert f"policy cold-chain-gdp v2 ({after.digest[:16]})" in reloaded
            mark = len(agent.text())
            agent.wait_log("signed:", after=mark)  # a window closed under the new policy
            assert agent.stop() == 0
        finally:
            agent.stop()
    evidence = spool_evidence(tmp_path / "spool")
    digests = [ev.config.policy_digest for ev in evidence]
    assert digests[0] == before.digest and digests[-1] == after.digest
    switch = digests.index(after.digest)  # one switch, never back
    assert set(digests[:switch]) == {before.digest} and set(digests[switch:]) == {after.digest}
    assert evidence[-1].config.policy_version == 2
    pub = load_public_key(tmp_path / "keys" / "device.pub.pem")
    res = verify_paths([tmp_path / "spool"], [pub])
    assert res.ok, [str(f) for f in res.findings]  # the chain runs through the reload


@pytest.mark.slow
def test_sighup_refuses_a_changed_source_by_name_and_survives_broken_yaml(tmp_path):
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        agent = AgentProcess(cfg, "--log-format", "json", env=agent_env())
        try:
            agent.wait_log("attestation seq 0 signed")

            def new_port_and_quota(d: dict) -> None:
                d["sources"][0]["port"] = "/dev/ttyUSB7"
                d["evidence"] = {"max_mb": 50}

            _edit(cfg, new_port_and_quota)
            out = _hup(agent, "config reloaded from")
            assert "config reload: sources changed; restart the agent to apply it" in out
            assert "changed: evidence.max_mb" in out  # the rest was applied
            refused = next(d for d in agent.json_lines() if d.get("field") == "sources")
            assert refused["level"] == "error" and refused["file"] == str(cfg.resolve())

            good = cfg.read_text()
            bad = good + "sources: [{port: /dev/ttyS0\n"
            with pytest.raises(yaml.YAMLError) as e:
                yaml.safe_load(bad)
            line = e.value.problem_mark.line + 1
            cfg.write_text(bad)
            out = _hup(agent, "config reload refused")
            assert f"{cfg.resolve()}:{line}:" in out and "not valid YAML" in out

            # still running on the last good config, still reading the same port
            mark = len(agent.text())
            agent.wait_log("signed:", after=mark)
            agent.wait_log("signed:", after=len(agent.text()))
            assert agent.proc.poll() is None

            cfg.write_text(good)  # log.level applies live: info lines stop
            _edit(cfg, lambda d: d.update(log={"level": "error"}))
            assert "changed: log.level" in _hup(agent, "config reloaded from")
            mark, signed = len(agent.text()), len(spool_evidence(tmp_path / "spool"))
            assert wait_for(lambda: len(spool_evidence(tmp_path / "spool")) >= signed + 2)
            assert "signed:" not in agent.text()[mark:]
            assert agent.stop() == 0
        finally:
            agent.stop()
    evidence = spool_evidence(tmp_path / "spool")
    assert evidence[-2].readings > 0  # the source kept its port: readings kept coming
    assert {s["port"] for ev in evidence for s in ev.source_health} == {dev.pty.slave_path}
    res = verify_paths([tmp_path / "spool"], [load_public_key(tmp_path / "keys/device.pub.pem")])
    assert res.ok, [str(f) for f in res.findings]


@pytest.mark.slow
def test_sighup_with_a_new_broker_url_reconnects_and_delivers_the_outbox_in_order(tmp_path, broker):
    nowhere = f"mqtt://127.0.0.1:{free_port()}"
    collector = FileCollector(broker.url, tmp_path / "collected", fleet="t")
    collector.start()
    try:
        with Device("normal") as dev:
            cfg = make_site(tmp_path, output={"mqtt": {"url": nowhere}}, port=dev.pty.slave_path)
            agent = AgentProcess(cfg, env=agent_env())
            try:
                agent.wait_log("attestation seq 1 signed")  # two waiting in the outbox
                assert not collector.stored

                def to_broker(d: dict) -> None:
                    d["output"]["mqtt"]["url"] = broker.url

                _edit(cfg, to_broker)
                out = _hup(agent, "config reloaded from")
                assert "changed: output.mqtt" in out
                agent.wait_log(f"connected to broker {broker.url}")
                time.sleep(1.2)  # one more window, published directly
                assert agent.stop() == 0
            finally:
                agent.stop()
        signed = agent.text().count(" signed: ")
        assert wait_for(lambda: len(collector.stored) >= signed), (len(collector.stored), signed)
    finally:
        collector.stop()
    res = verify_paths(
        [tmp_path / "collected"], [load_public_key(tmp_path / "keys/device.pub.pem")]
    )
    assert res.ok, [str(f) for f in res.findings]
    assert res.verified == signed >= 3  # the outbox from before the reload, none lost
