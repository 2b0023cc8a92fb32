"""A device that sends faster than the agent can process, through a real pty (issue 15).

A capture of the flood emulator is replayed as fast as the pty takes it (over a million
frames a second; the live flood encodes frames in Python, ~50k/s, which the agent keeps up
with); the agent (a real ``edgegov run`` process) reads, decodes, evaluates, signs and
stores what it can, about 200k readings a second here.
Windows must still close on time, memory must stay bounded, and every reading the
emulator sent must be either in a signed window or counted as shed in one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml

from agent.audit import verify_paths
from agent.identity.keys import load_public_key
from agent.tools.bench.pipeline import _readings_in
from firmware_bridge import Emulator, open_pty
from firmware_bridge.line import replay
from tests.agent_process import AgentProcess, agent_env, spool_evidence
from tests.test_agent_e2e import make_site

SOURCE = "flooded"
FLOOD_S = 4.0
FRAMES = 700_000  # more than the agent takes in FLOOD_S
INTAKE = 1000


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_a_flood_closes_windows_on_time_stays_bounded_and_counts_every_shed_reading(
    tmp_path: Path,
) -> None:
    with open_pty() as pty:
        cfg = make_site(tmp_path, window_s=1.0, output={"spool": "spool"}, port=pty.slave_path)
        doc = yaml.safe_load(cfg.read_text())
        doc["sources"][0]["name"] = SOURCE
        # a small intake: the ~50 ms the main loop spends closing a window overflows it
        doc["evidence"] = {"intake_readings": INTAKE}
        cfg.write_text(yaml.safe_dump(doc))
        capture = tmp_path / "flood.bin"
        Emulator(rate_hz=1000.0, seed=5).capture(capture, FRAMES)
        agent = AgentProcess(cfg, env=agent_env())
        try:
            agent.wait_log(f"source {SOURCE}: ", timeout=60)  # the port is open
            stop = threading.Event()
            sent: dict[str, int] = {}
            writer = threading.Thread(
                target=lambda: sent.update(replay(pty.master_fd, capture, stop, seconds=FLOOD_S))
            )
            t0 = time.time()
            writer.start()
            writer.join(FLOOD_S + 30)
            assert not writer.is_alive()
            peak_mb = _peak_rss_mb(agent.pid)
            time.sleep(1.5)  # the reader takes what the pty still holds
            assert agent.stop() == 0, agent.text()
        finally:
            if agent.proc.poll() is None:
                agent.proc.kill()
    sent["readings"] = _readings_in(capture.read_bytes()[: sent["bytes"]])  # DATA on the line
    evs = spool_evidence(tmp_path / "spool")
    print(
        f"\nflood: {sent['readings']} readings sent in {sent['wall_ms'] / 1000:.1f} s "
        f"({sent['frames_per_s']} frames/s); agent peak RSS {peak_mb:.0f} MB"
    )
    # every reading sent is signed or counted as shed, in the signed evidence
    signed = sum(ev.readings for ev in evs)
    shed = sum(int(rec.get("readings_shed_overload", 0)) for ev in evs for rec in ev.source_health)
    print(f"signed {signed}, shed {shed} (counted in {sum(1 for ev in evs if ev.degraded)} "
          f"degraded window(s)), {len(evs)} windows")  # fmt: skip
    assert signed + shed == sent["readings"]
    assert signed > 0 and shed > 0  # both paths taken
    for ev in evs:
        if any(rec.get("readings_shed_overload") for rec in ev.source_health):
            assert any("could not keep up" in d for d in ev.degraded), ev.degraded
    # windows close on time: 1 s each (the last one ends at the stop), none swallowing the flood
    during = [ev for ev in evs if t0 * 1000 <= ev.window_start_ms <= (t0 + FLOOD_S) * 1000]
    assert len(during) >= FLOOD_S - 1
    for ev in evs[:-1]:
        assert ev.window_end_ms - ev.window_start_ms <= 1500, (ev.seq, ev.window_start_ms)
    # bounded: the intake holds at most INTAKE readings; unbounded, a flood grew it by GBs
    assert peak_mb < 400
    res = verify_paths([tmp_path / "spool"], [load_public_key(tmp_path / "keys/device.pub.pem")])
    assert res.ok, [str(f) for f in res.findings]
