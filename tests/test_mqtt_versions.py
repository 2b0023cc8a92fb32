"""Any broker (issue 17): MQTT 3.1.1 beside 5, and a list of broker URLs with failover.

Real Mosquitto brokers on free loopback ports, the real agent, collectors and fleet
tools. Which protocol a client spoke is read from the broker's own log: Mosquitto logs
each connection as ``New client connected from … as ID (pN, cN, kN)``, where ``p2`` is
MQTT 3.1.1, ``p5`` MQTT 5, and ``c0`` a persistent session (clean session/start off).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from pathlib import Path

import pytest
import yaml

from agent.audit import verify_paths
from agent.audit.collector import FileCollector
from agent.config import MqttOutput, load_config
from agent.errors import ConfigError
from agent.evidence.store import OutboxItem
from agent.fleet._mqtt import FleetSession
from agent.fleet.client import FleetClient, FleetClientConfig
from agent.fleet.repository import FleetRepository
from agent.identity.keys import generate_key
from agent.pipeline.runner import Agent, AgentStats
from agent.tools.broker import MosquittoBroker, free_port
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher
from agent.transport.topics import DeviceTopics
from tests.agent_process import AgentProcess
from tests.evidence_util import make_stream
from tests.fleet_util import MODEL, MODEL_NAME, POLICY_NAME, policy_bytes
from tests.test_agent_e2e import Device, make_site, run_agent, wait_for

V311 = "3.1.1"
STATUS = "edgegov/t/gw-test/status"


def connections(broker: MosquittoBroker) -> dict[str, str]:
    """Client id -> ``pN, cN`` of its latest connection, from the broker's log."""
    text = broker.log_path.read_text()
    found = re.findall(r"New client connected from \S+ as (\S+) \((p\d), (c\d)", text)
    return {cid: f"{p}, {c}" for cid, p, c in found}


def seqs(*dirs: Path) -> list[int]:
    """The seq of every attestation file the collectors wrote, copies included."""
    return [int(f.name.split("-")[0]) for d in dirs for f in d.rglob("*.cose")]


@pytest.mark.slow
def test_agent_and_collector_in_mqtt_311_store_every_attestation_and_verify(tmp_path, broker):
    collected = tmp_path / "collected"
    collector = FileCollector(broker.url, collected, fleet="t", version=V311)
    collector.start()
    with Device("excursion") as dev:
        output = {"mqtt": {"url": broker.url, "version": V311}}
        cfg = make_site(tmp_path, output=output, port=dev.pty.slave_path)
        agent, stats = run_agent(cfg, 5.0)
    assert isinstance(stats, AgentStats) and stats.attestations >= 3
    assert wait_for(lambda: len(collector.stored) >= stats.attestations)
    collector.stop()
    res = verify_paths([collected], [agent.signer.public])
    assert res.ok, [str(f) for f in res.findings]
    assert res.verified == stats.attestations
    assert sorted(seqs(collected)) == list(range(stats.attestations))
    # Both spoke 3.1.1; the agent kept a persistent session (clean session off)
    seen = connections(broker)
    assert seen["edgegov-t-gw-test"] == "p2, c0", seen
    assert seen[collector.name].startswith("p2"), seen


@pytest.mark.slow
def test_retained_status_and_last_will_in_mqtt_311(tmp_path, broker):
    with Device("normal") as dev:
        output = {"mqtt": {"url": broker.url, "version": V311}}
        cfg = make_site(tmp_path, output=output, port=dev.pty.slave_path)
        proc = AgentProcess(cfg)
        try:
            proc.wait_log("connected to broker")
            with FleetSession(BrokerURL.parse(broker.url), "watcher", version=V311) as s:

                def status() -> dict | None:
                    raw = s.read_retained(STATUS)
                    return json.loads(raw) if raw else None

                assert wait_for(lambda: (status() or {}).get("state") == "online")
                assert "last_seq" in (status() or {})  # the agent's own status, retained
                os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker sends the will
                assert wait_for(lambda: status() == {"state": "offline", "device": "gw-test"})
        finally:
            proc.stop()
    assert connections(broker)["edgegov-t-gw-test"] == "p2, c0"


@pytest.mark.slow
def test_fleet_publish_update_and_status_in_mqtt_311(tmp_path, broker, run_cli):
    repo = FleetRepository.init(tmp_path / "repo", "site-a")
    repo.add_target(POLICY_NAME, policy_bytes(1), "policy")
    repo.add_target(MODEL_NAME, MODEL.read_bytes(), "model")
    repo.assign(POLICY_NAME, [MODEL_NAME], device="gw-1")
    repo.release()
    dead = f"mqtt://127.0.0.1:{free_port()}"
    brokers = ("--broker", dead, "--broker", broker.url, "--mqtt-version", V311)
    r = run_cli("fleet", "publish", "--repo", str(repo.dir), *brokers)
    assert r.returncode == 0 and "published" in r.stdout, r.stderr + r.stdout
    assert f"skipping broker {dead}" in r.stderr  # the dead node, named, then the next one

    url = BrokerURL.parse(broker.url)
    root = repo.dir / "metadata" / "1.root.json"
    client = FleetClient(
        FleetClientConfig("gw-1", "site-a", (url,), root, tmp_path / "gw-1", version=V311)
    )
    try:
        assert client.connect().update().state == "applied"
    finally:
        client.stop()
    r = run_cli("fleet", "status", "--fleet", "site-a", "--json", *brokers)
    assert r.returncode == 0, r.stderr + r.stdout
    rows = {row["device"]: row for row in json.loads(r.stdout)}
    assert rows["gw-1"]["config_version"] == 1 and rows["gw-1"]["last_ack"]["state"] == "applied"
    seen = connections(broker)
    fleet_ids = [c for c in seen if c.startswith("edgegov-")]
    assert len(fleet_ids) >= 4 and all(seen[c].startswith("p2") for c in fleet_ids), seen


@pytest.mark.slow
def test_audit_collect_cli_skips_a_dead_broker_and_collects_in_mqtt_311(tmp_path, broker, run_cli):
    store = tmp_path / "c.sqlite"
    dead = f"mqtt://127.0.0.1:{free_port()}"
    r = run_cli("audit", "collect", "--broker", dead, "--broker", broker.url,
                "--mqtt-version", V311, "--store", str(store), "--seconds", "0.5")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"skipping broker {dead}" in r.stderr and f"from {broker.url}" in r.stderr, r.stderr
    assert any(v.startswith("p2") for c, v in connections(broker).items() if "collector" in c)


@pytest.mark.slow
def test_agent_fails_over_along_its_broker_list_and_nothing_is_lost(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edgegov.transport")
    dead = f"mqtt://127.0.0.1:{free_port()}"
    refusing = MosquittoBroker(tmp_path / "r", "allow_anonymous false\n").start()
    a = MosquittoBroker(tmp_path / "a").start()
    b = MosquittoBroker(tmp_path / "b").start()
    col_a = FileCollector(a.url, tmp_path / "col-a", fleet="t")
    col_b = FileCollector(b.url, tmp_path / "col-b", fleet="t")
    col_a.start()
    col_b.start()
    result: list[AgentStats] = []
    try:
        with Device("excursion") as dev:
            urls = [dead, refusing.url, a.url, b.url]
            cfg = make_site(tmp_path, output={"mqtt": {"url": urls}}, port=dev.pty.slave_path)
            agent = Agent(load_config(cfg))
            runner = threading.Thread(target=lambda: result.append(agent.run()))
            runner.start()
            try:
                # past the dead node and the one that refuses us, to A
                assert wait_for(lambda: len(col_a.stored) >= 2, 20)
                # stop A right after an attestation reached its collector: the next one is
                # a window (1 s) away, so none is acknowledged by A and then lost with it
                n = len(col_a.stored)
                assert wait_for(lambda: len(col_a.stored) > n)
                a.stop()
                assert wait_for(lambda: len(col_b.stored) >= 2, 20)  # it goes on, on B
            finally:
                agent.stop()
                runner.join(30)
        stats = result[0]
        assert wait_for(lambda: len(set(seqs(col_a.out_dir, col_b.out_dir))) >= stats.attestations)
    finally:
        for c in (col_a, col_b):
            c.stop()
        for br in (refusing, a, b):
            br.stop()
    assert sorted(set(seqs(col_a.out_dir, col_b.out_dir))) == list(range(stats.attestations))
    # The union verifies: a copy that both nodes got is counted as redelivered, not a finding
    res = verify_paths([col_a.out_dir, col_b.out_dir], [agent.signer.public])
    assert res.ok, [str(f) for f in res.findings]
    assert res.verified == len(seqs(col_a.out_dir, col_b.out_dir))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"broker {dead}: unreachable" in logged, logged
    assert f"broker {refusing.url}: refused us (Not authorized)" in logged, logged
    assert f"failed over from broker {a.url} to broker {b.url}" in logged, logged


def test_a_broker_list_entry_that_is_not_a_url_is_a_config_error_naming_its_index(tmp_path):
    cfg = make_site(tmp_path, output={"spool": "spool"}, port="/dev/null")
    site = yaml.safe_load(cfg.read_text())

    def load(mqtt: dict) -> MqttOutput | None:
        cfg.write_text(yaml.safe_dump({**site, "output": {"mqtt": mqtt}}))
        return load_config(cfg).mqtt

    ok = "mqtt://127.0.0.1:1883"
    with pytest.raises(ConfigError, match=r"agent\.yaml: output\.mqtt\.url\[1\]: .*mqtt://"):
        load({"url": [ok, "broker-2:1883"]})
    with pytest.raises(ConfigError, match=r"url\[1\]: expected a broker URL, got int"):
        load({"url": [ok, 1883]})
    with pytest.raises(ConfigError, match=r"output\.mqtt\.url\[1\]: .* differ in TLS"):
        load({"url": [ok, "mqtts://127.0.0.1:8883"]})
    with pytest.raises(ConfigError, match=r"output\.mqtt\.url\[1\]: .* listed twice"):
        load({"url": [ok, ok]})
    with pytest.raises(ConfigError, match=r"output\.mqtt\.url: expected a broker URL or a non"):
        load({"url": []})
    with pytest.raises(ConfigError, match=r"output\.mqtt\.version: must be 5 or 3\.1\.1"):
        load({"url": ok, "version": "3.1"})
    assert load({"url": [ok, "mqtt://b:1883"], "version": 5}) == MqttOutput(
        (ok, "mqtt://b:1883"), version="5"
    )
    assert load({"url": ok, "version": V311}) == MqttOutput((ok,), version=V311)
    assert load({"url": ok}) == MqttOutput((ok,), version="5")  # the default


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_node_that_stops_acknowledging_is_left_and_the_attestation_sent_again(
    tmp_path, caplog, version
):
    """A broker that keeps the connection open but never sends the PUBACK (a NATS cluster
    electing a stream leader does; here a Mosquitto frozen with SIGSTOP): after
    ``puback_timeout_s`` the publisher leaves the node and paho sends the attestation
    again, on the next node of the list, where it is acknowledged."""
    caplog.set_level(logging.WARNING, logger="edgegov.transport")
    a = MosquittoBroker(tmp_path / "a").start()
    b = MosquittoBroker(tmp_path / "b").start()
    col_b = FileCollector(b.url, tmp_path / "col-b", fleet="t", version=version)
    col_b.start()
    acked: list[int] = []
    topics = DeviceTopics("edgegov", "t", "gw-stall")
    pub = MqttPublisher(
        BrokerURL.parse_all([a.url, b.url]), topics, acked.append, version=version,
        puback_timeout_s=2.0,
    )  # fmt: skip
    frozen = False
    try:
        pub.start([])
        assert pub.wait_connected(10) and str(pub.url) == a.url
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGSTOP)  # connection open, nothing answered
        frozen = True
        payload = make_stream(tmp_path / "s.sqlite", generate_key(tmp_path / "k.key"),
                              device="gw-stall", windows=1)[0]  # fmt: skip
        pub.publish(OutboxItem(0, topics.attestation, payload))
        assert wait_for(lambda: acked == [0], 20), caplog.text
        assert str(pub.url) == b.url
        assert "no PUBACK for attestation seq 0 within 2 s" in caplog.text
        assert wait_for(lambda: len(col_b.stored) == 1, 10)
    finally:
        if frozen and a.proc is not None:
            os.kill(a.proc.pid, signal.SIGCONT)
        pub.stop(2.0)
        col_b.stop()
        a.stop()
        b.stop()
