"""Per-source data quality reaches the signed evidence (claim -70001/8), through the real agent."""

from __future__ import annotations

import os
import threading
import time

import yaml

from agent.audit import verify_paths
from agent.evidence.claims import parse_claims
from agent.evidence.cose import decode_sign1
from firmware_bridge import open_pty
from tests.test_agent_e2e import Device, make_site, run_agent


def test_two_sources_each_get_a_quality_record_and_a_schema_mismatch_degrades(tmp_path):
    with Device("normal") as dev, open_pty() as text_pty:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        doc = yaml.safe_load(cfg.read_text())
        doc["sources"] = [
            # The emulator says Cel: a config expecting kelvin must not trust its numbers.
            {
                "name": "fridge",
                "port": dev.pty.slave_path,
                "expect": [{"name": "temperature", "unit": "K"}],
            },
            {
                "name": "probe",
                "protocol": "text",
                "port": text_pty.slave_path,
                "fields": [{"field": "t", "channel": "temperature"}],
            },
        ]
        cfg.write_text(yaml.safe_dump(doc))
        stop = threading.Event()

        def talk() -> None:
            while not stop.wait(0.05):
                os.write(text_pty.master_fd, b"t=4.5\nnot a reading\n")

        t = threading.Thread(target=talk, daemon=True)
        t.start()
        try:
            agent, stats = run_agent(cfg, 2.5)
        finally:
            stop.set()
            t.join(2)
    res = verify_paths([tmp_path / "spool"], [agent.signer.public])
    assert res.ok, res.findings
    evidence = [
        parse_claims(decode_sign1(f.read_bytes()).claims())
        for f in sorted((tmp_path / "spool").rglob("*.cose"))
    ]
    assert len(evidence) >= 2
    fridge = [r for ev in evidence for r in ev.source_health if r["source"] == "fridge"]
    probe = [r for ev in evidence for r in ev.source_health if r["source"] == "probe"]
    assert len(fridge) == len(probe) == len(evidence)
    # The fridge's readings were quarantined, said so, and the evidence is degraded.
    assert sum(r["quarantined"] for r in fridge) > 20 and sum(r["samples_ok"] for r in fridge) == 0
    assert any(
        any("source fridge: readings quarantined" in d for d in ev.degraded) for ev in evidence
    )
    # The text probe's lines arrived; its junk lines are counted, not dropped silently.
    lines_ok = sum(r["lines_ok"] for r in probe)
    assert lines_ok == stats.readings > 10
    assert sum(r["parse_errors"] for r in probe) >= lines_ok - 2
    # Window totals are the sums of the per-source records.
    for ev in evidence:
        assert ev.health["lines_ok"] == sum(
            r["lines_ok"] for r in ev.source_health if "lines_ok" in r
        )
        assert "sources" not in ev.health
    assert all(r["port"] and r["protocol"] in ("framed", "text") for r in fridge + probe)
    time.sleep(0)
