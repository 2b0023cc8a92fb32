"""The whole path through real parts: pty -> pyserial -> Cython evaluator -> onnxruntime ->
Ed25519 COSE -> SQLite outbox -> paho -> Mosquitto -> collector -> audit (+ pycose oracle)."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from agent.audit import verify_paths
from agent.audit.collector import FileCollector
from agent.config import load_config
from agent.evidence.claims import parse_claims
from agent.evidence.cose import decode_sign1
from agent.identity.keys import generate_key
from agent.pipeline.runner import Agent
from agent.tools.broker import MosquittoBroker, free_port
from firmware_bridge import Emulator, open_pty
from tests.conftest import ROOT, Listener, cose_oracle

POLICY = ROOT / "configs" / "policies" / "cold-chain.yaml"
MODEL = ROOT / "configs" / "models" / "excursion-v1.onnx"


def make_site(
    tmp: Path, *, window_s: float = 1.0, output: dict, model_sha: str | None = None, port: str
) -> Path:
    """Key, policy (short windows), model and agent config in ``tmp``; returns the config."""
    (tmp / "models").mkdir(parents=True, exist_ok=True)
    (tmp / "policies").mkdir(exist_ok=True)
    for model in MODEL.parent.glob("*.onnx"):  # every model the policy may name
        shutil.copy(model, tmp / "models" / model.name)
    text = POLICY.read_text()
    text = re.sub(r"(?m)^(\s*seconds:\s*)[\d.]+", rf"\g<1>{window_s}", text)
    if model_sha is not None:
        text = re.sub(r'sha256:\s*"?[0-9a-f]{64}"?', f'sha256: "{model_sha}"', text)
    (tmp / "policies" / "cold-chain.yaml").write_text(text)
    generate_key(tmp / "keys" / "device.key")
    cfg = tmp / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "gw-test", "key": "keys/device.key"},
                "fleet": "t",
                "policy": "policies/cold-chain.yaml",
                "state_dir": "state",
                "sources": [{"port": port, "baud": 115200}],
                "output": output,
            }
        )
    )
    return cfg


class Device:
    """An emulated device on a real pty, in a thread."""

    def __init__(self, scenario: str = "excursion", rate_hz: float = 50.0, **extra: float) -> None:
        self.pty = open_pty()
        self.stop = threading.Event()
        # extra: the emulator's optional channels (probe_offset, reference)
        self.emu = Emulator(scenario=scenario, rate_hz=rate_hz, seed=1, **extra)
        self.thread = threading.Thread(
            target=self.emu.run, args=(self.pty.master_fd, self.stop), daemon=True
        )

    def __enter__(self) -> Device:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.pty.close()


def run_agent(cfg: Path, seconds: float) -> tuple[Agent, object]:
    agent = Agent(load_config(cfg))
    timer = threading.Timer(seconds, agent.stop)
    timer.start()
    try:
        stats = agent.run()
    finally:
        timer.cancel()
    return agent, stats


def wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.slow
def test_emulated_excursion_becomes_verified_evidence_through_a_real_broker(tmp_path, broker):
    collected = tmp_path / "collected"
    collector = FileCollector(broker.url, collected, fleet="t")
    collector.start()
    alert_listener = Listener(broker.url, "edgegov/t/gw-test/alert")
    with Device("excursion") as dev:
        cfg = make_site(tmp_path, output={"mqtt": {"url": broker.url}}, port=dev.pty.slave_path)
        agent, stats = run_agent(cfg, 11.0)  # the excursion scenario leaves 2-8 degC at 8-17 s
    assert wait_for(lambda: len(collector.stored) >= stats.attestations)
    collector.stop()
    alert_listener.close()
    alerts = alert_listener.json()

    pub = agent.signer.public
    res = verify_paths([collected], [pub])
    assert res.ok, [str(f) for f in res.findings]
    assert res.verified == stats.attestations >= 10
    dev_rep = res.devices[0]
    # Every reading the agent received is in the evidence: counted and in the Merkle log.
    assert dev_rep.readings == stats.readings == dev_rep.log_size > 400
    # The excursion is in the evidence, rule by rule.
    assert dev_rep.rules["temp-2-8"]["violated"] > 0
    assert dev_rep.rules["temp-2-8"]["evaluated"] == stats.readings
    assert dev_rep.health["crc_errors"] == 0 and dev_rep.health["frames_ok"] > 400
    # Risk was scored by onnxruntime on the CPU provider in every window with readings.
    risk = dev_rep.risk["excursion-risk"]
    assert risk["providers"] == ["CPUExecutionProvider"] and risk["scored_windows"] >= 10
    # Nothing remains in the outbox: every attestation was PUBACKed.
    assert not list((tmp_path / "state").glob("*.tmp"))
    # An independent COSE implementation verifies every message with the public key alone.
    files = sorted(collected.rglob("*.cose"))
    out = cose_oracle([f.read_bytes() for f in files], pub.pem())
    assert out.count("signature valid") == len(files) == stats.attestations
    # People on call got an alert naming the rule and the attestation that proves it.
    starts = [a for a in alerts if a["event"] == "violation_start" and a["rule"] == "temp-2-8"]
    assert starts and starts[0]["severity"] == "critical"
    assert 0 <= starts[0]["evidence"]["seq"] < stats.attestations
    assert "outside 2-8" in starts[0]["message"]


@pytest.mark.slow
def test_broker_outage_loses_nothing_and_delivers_in_order(tmp_path):
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"mqtt": {"url": url}}, port=dev.pty.slave_path)
        agent = Agent(load_config(cfg))
        worker = threading.Thread(target=agent.run)
        worker.start()
        try:
            time.sleep(3.2)  # ~3 windows with no broker at all
            waiting = len(agent.store.pending())
            assert waiting >= 2, f"attestations must wait in the outbox; {waiting} there, " + (
                f"{agent.stats.windows} window(s) closed"
            )
            with MosquittoBroker(tmp_path / "broker", port=port) as broker:
                collector = FileCollector(broker.url, tmp_path / "collected", fleet="t")
                collector.start()
                # paho reconnects with backoff; the outbox drains once it is back.
                drained = wait_for(lambda: not agent.store.pending(), timeout=20)
                assert drained, f"{len(agent.store.pending())} still in the outbox after 20 s"
                # and a few more windows with the broker up (1 s windows: at least 5 in all)
                assert wait_for(lambda: agent.stats.attestations >= 5, timeout=10)
                agent.stop()
                worker.join(timeout=15)
                assert wait_for(lambda: len(collector.stored) >= agent.stats.attestations), (
                    f"collected {len(collector.stored)} of {agent.stats.attestations}"
                )
                collector.stop()
        finally:
            agent.stop()
            worker.join(timeout=15)
    res = verify_paths([tmp_path / "collected"], [agent.signer.public])
    assert res.ok, [str(f) for f in res.findings]
    assert res.verified == agent.stats.attestations >= 5, (res.verified, agent.stats)
    from agent.evidence.store import EvidenceStore

    assert EvidenceStore(tmp_path / "state" / "evidence.sqlite", "gw-test").pending() == []


def test_model_with_wrong_digest_is_refused_and_evidence_says_degraded(tmp_path):
    with Device("normal") as dev:
        cfg = make_site(
            tmp_path, output={"spool": "spool"}, model_sha="0" * 64, port=dev.pty.slave_path
        )
        agent, stats = run_agent(cfg, 2.2)
    assert agent.models == []  # refused, the rules still ran
    res = verify_paths([tmp_path / "spool"], [agent.signer.public])
    assert res.ok and res.verified == stats.attestations >= 2
    evidence = [
        parse_claims(decode_sign1(f.read_bytes()).claims())
        for f in sorted((tmp_path / "spool").rglob("*.cose"))
    ]
    for ev in evidence:  # every window says it, empty or not, for each model
        for model in ("excursion-risk", "drift-anomaly"):
            assert any(f"{model} refused" in d and "SHA-256" in d for d in ev.degraded)
        assert [r.model_id for r in ev.risk] == []
    assert sum(ev.rules[0].evaluated for ev in evidence) == stats.readings > 0
    # One alert when the evidence became degraded, not one per window.
    import json

    alerts = [
        json.loads(x)
        for x in (tmp_path / "spool" / "gw-test" / "alerts.jsonl").read_text().splitlines()
    ]
    degraded = [a for a in alerts if a["event"] == "degraded"]
    assert len(degraded) == 2  # one per reason (each model refused), not one per window
    assert sorted(a["reason"].split(" refused")[0] for a in degraded) == [
        "model drift-anomaly",
        "model excursion-risk",
    ]
    assert {a["evidence"]["seq"] for a in degraded} == {0}


def test_garbage_on_the_line_is_counted_and_good_frames_still_arrive(tmp_path):
    with Device("garbage") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        agent, stats = run_agent(cfg, 3.2)
    res = verify_paths([tmp_path / "spool"], [agent.signer.public])
    assert res.ok
    h = res.devices[0].health
    assert h["frames_ok"] > 100 and stats.readings > 100
    assert h["crc_errors"] + h["framing_errors"] > 0  # counted, never hidden


def test_restart_continues_the_chain(tmp_path):
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        a1, s1 = run_agent(cfg, 1.5)
        _, s2 = run_agent(cfg, 1.5)
    res = verify_paths([tmp_path / "spool"], [a1.signer.public])
    assert res.ok, [str(f) for f in res.findings]
    assert len(res.devices) == 1 and res.verified == s1.attestations + s2.attestations


def test_disk_quota_sheds_raw_readings_before_evidence_and_says_so(tmp_path):
    import json

    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        data = yaml.safe_load(cfg.read_text())
        data["evidence"] = {"max_mb": 0.001}  # far below what even the attestations need
        cfg.write_text(yaml.safe_dump(data))
        agent, stats = run_agent(cfg, 3.3)
    res = verify_paths([tmp_path / "spool"], [agent.signer.public])
    assert res.ok, [str(f) for f in res.findings]  # every attestation kept and chained
    assert res.verified == stats.attestations >= 3
    evidence = [
        parse_claims(decode_sign1(f.read_bytes()).claims())
        for f in sorted((tmp_path / "spool").rglob("*.cose"))
    ]
    assert sum(ev.health.get("readings_shed", 0) for ev in evidence) > 0
    later = evidence[-1].degraded
    assert any("shed" in d for d in later) or any(
        "shed" in d for ev in evidence for d in ev.degraded
    )
    assert any("over its disk quota" in d for d in later)
    alerts = [
        json.loads(x)
        for x in (tmp_path / "spool" / "gw-test" / "alerts.jsonl").read_text().splitlines()
    ]
    assert any(a["event"] == "degraded" and "disk quota" in a["reason"] for a in alerts)


def test_a_full_disk_holds_windows_in_memory_and_loses_nothing(tmp_path):
    """SQLite reports the disk full (SQLITE_FULL, forced with max_page_count): the agent
    keeps running, holds the windows, alerts, and signs them all once it can write again."""
    import json

    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        agent = Agent(load_config(cfg))
        worker = threading.Thread(target=agent.run)
        worker.start()
        try:
            time.sleep(1.5)
            db = agent.store._db  # test-only: make the database "full" from outside
            with agent.store._lock:
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {pages}")
            assert wait_for(lambda: agent._status()["storage_error"] is not None, timeout=10)
            src = agent._status()["sources"][0]  # what the retained status tells the fleet
            assert src["connected"] and src["protocol"] == "framed"
            assert (
                src["last_window"]["frames_ok"] > 0 and src["last_window"]["device"] == "EMU-0001"
            )
            held_at = agent.stats.attestations
            time.sleep(2.2)  # windows keep closing while nothing can be written
            assert agent.stats.attestations == held_at
            with agent.store._lock:
                db.execute("PRAGMA max_page_count = 1073741823")
            assert wait_for(lambda: agent.stats.attestations >= held_at + 2, timeout=10)
        finally:
            agent.stop()
            worker.join(timeout=15)
    res = verify_paths([tmp_path / "spool"], [agent.signer.public])
    assert res.ok, [str(f) for f in res.findings]  # no gap, windows contiguous
    assert res.verified == agent.stats.attestations == agent.stats.windows
    assert res.devices[0].readings == agent.stats.readings  # every reading signed
    evidence = [
        parse_claims(decode_sign1(f.read_bytes()).claims())
        for f in sorted((tmp_path / "spool").rglob("*.cose"))
    ]
    assert any("could not be written" in d for ev in evidence for d in ev.degraded)
    alerts = [
        json.loads(x)
        for x in (tmp_path / "spool" / "gw-test" / "alerts.jsonl").read_text().splitlines()
    ]
    assert [a["event"] for a in alerts].count("storage_error") == 1
    assert "full" in next(a for a in alerts if a["event"] == "storage_error")["reason"]
