"""The faults: broker outages, ``kill -9``, serial faults, the clock stepped, a dead sensor.

Each function runs one fault through real processes in ``workdir`` and returns its
row(s); ``quick`` picks the short version (the default test suite runs those). Storage
faults (a full disk, corrupt state) are in :mod:`agent.tools.bench.faults.storage`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from agent.tools.bench.faults.clock import ClockStepper
from agent.tools.bench.faults.harness import Check, Harness, row
from agent.tools.bench.faults.measure import AuditView, SignedLog
from agent.tools.bench.faults.parts import WINDOW_S, wait_until
from agent.tools.bench.faults.table import FaultRow

__all__ = ["KILL_SEED", "broker_outage", "clock_step", "dead_sensor", "kill_9", "serial_faults"]

#: the seed of the kill moments (``edgegov bench faults --seed N`` picks another)
KILL_SEED = 12


def broker_outage(workdir: Path, quick: bool) -> list[FaultRow]:
    """Stop the broker (it saves its sessions), wait, start it on the same port; the agent
    keeps signing into its outbox and drains it once it reconnects."""
    outages = [1.0, 5.0] if quick else [1.0, 5.0, 20.0, 60.0]
    h = Harness(workdir, [("sensor", "normal")])
    try:
        agent = h.start_agent()
        agent.wait_signed(2)
        for seconds in outages:
            h.broker.outage(seconds)
            wanted = set(range(max(agent.signed()) + 1))
            # the agent reconnects (its backoff reaches 30 s) and drains the outbox
            if not wait_until(lambda w=wanted: w <= h.delivered_seqs(), 60):
                h.agent_notes.append(f"after the {seconds:g} s outage: not drained in 60 s")
            agent.wait_signed(len(agent.signed()) + 1)  # and a window live after it
        h.stop_agent(agent)
        label = ", ".join(f"{s:g}" for s in outages)
        return [h.finish("broker-outage", f"broker outage {label} s", len(outages))]
    finally:
        h.close()


def kill_9(workdir: Path, quick: bool, seed: int = KILL_SEED) -> list[FaultRow]:
    """SIGKILL the agent at random moments (seeded), leave it down a random while, start it
    again; the first attestation of each start must state the restart and the frames the
    device sent meanwhile."""
    kills = 5 if quick else 30
    rng = random.Random(seed)
    h = Harness(workdir, [("sensor", "normal")])
    try:
        agent = h.start_agent()
        agent.wait_signed(1)
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 2.5))
            agent.kill9()
            time.sleep(rng.uniform(0.1, 1.0))
            agent = h.start_agent()
        agent.wait_signed(len(agent.signed()) + 1)
        h.stop_agent(agent)

        def expect(audit: AuditView, logs: list[SignedLog]) -> list[str]:
            boots = [e.bootcount for log in logs for e in log.evidence]
            out = []
            if boots[-1] - boots[0] != kills:
                out.append(f"bootcount rose by {boots[-1] - boots[0]} for {kills} kills")
            # a start killed before it signed anything states nothing; the next one does
            starts = len(set(boots)) - 1
            got = (audit.restarts.get("count", 0), audit.restarts.get("unclean", 0))
            if got != (starts, starts):
                shown = f"audit verify shows {got[0]} restarts ({got[1]} unclean)"
                out.append(f"{shown}; the evidence has {starts} starts after a kill")
            return out

        return [h.finish("kill-9", f"kill -9 of the agent (seed {seed})", kills, expect)]
    finally:
        h.close()


#: source name -> (emulator scenario, what the table calls it)
_SERIAL = {
    "unplugged": ("unplug", "serial unplug (1 s every 3 s)"),
    "rebooting": ("reboot", "device reboot (every 4 s)"),
    "garbage": ("garbage", "garbage on the line (junk bytes, bit flips)"),
    "trickle": ("slow-trickle", "slow trickle (1 byte per write)"),
}


def serial_faults(workdir: Path, quick: bool) -> list[FaultRow]:
    """Four ports on one agent, each with its own fault (the emulator's scenarios): one row
    per port, its readings its own; the attestation counts are that one agent's.
    Iterations: unplugs and reboots counted; garbage and trickle run throughout (1)."""
    seconds = 6.5 if quick else 15.0
    h = Harness(workdir, [(name, scenario) for name, (scenario, _) in _SERIAL.items()])
    try:
        agent = h.start_agent()
        time.sleep(seconds)
        h.stop_agent(agent)
        devices = dict(h.devices)
        m = h.measure()
    finally:
        h.close()
    rows = []
    for name, (scenario, label) in _SERIAL.items():
        dev = devices[name]
        events = {
            "unplug": dev.counts.get("unplugs", 0),
            "reboot": max((f.boot for f in dev.ledger), default=1) - 1,
            "garbage": 1 if dev.counts.get("garbage_bytes", 0) else 0,
            "slow-trickle": 1 if dev.counts.get("frames", 0) else 0,
        }[scenario]
        rows.append(
            row(
                m,
                "serial",
                f"{label}, {seconds:g} s",
                events,
                [name],
                expect=_happened(scenario, events),
                extra=_completeness(name),
                visible=_seen_serial(name, scenario, m.per_source[name].declared, events),
            )
        )
    return rows


def _happened(scenario: str, events: int) -> Check:
    def check(audit: AuditView, logs: list[SignedLog]) -> list[str]:
        return [] if events else [f"the {scenario} fault did not happen"]

    return check


def _completeness(name: str) -> Check:
    def words(audit: AuditView, logs: list[SignedLog]) -> list[str]:
        ratio = audit.completeness.get(name)
        return [f"{name} completeness " + ("n/a" if ratio is None else f"{100 * ratio:.1f} %")]

    return words


def _seen_serial(name: str, scenario: str, declared: int, events: int) -> Check:
    """What the auditor must show of each serial fault."""

    def check(audit: AuditView, logs: list[SignedLog]) -> list[str]:
        ratio = audit.completeness.get(name)
        if declared and (ratio is None or ratio >= 1.0):
            return [f"{declared} readings declared lost; completeness of {name} is {ratio}"]
        shown = audit.health.get("reboots", 0)
        if scenario == "reboot" and shown < events:
            return [f"{events} device reboots; the health totals show {shown}"]
        if scenario == "garbage" and not audit.health.get("crc_errors", 0) + audit.health.get(
            "framing_errors", 0
        ):
            return ["garbage on the line; no CRC or framing errors in the health totals"]
        return []

    return check


def clock_step(workdir: Path, quick: bool) -> list[FaultRow]:
    """Step the agent's wall clock back, then forward past true time (an NTP step, an
    operator's ``date -s``), injected at the C library (:mod:`.clock`)."""
    back, forward = (10.0, 20.0) if quick else (30.0, 60.0)
    h = Harness(workdir, [("sensor", "normal")])
    try:
        clock = ClockStepper(workdir / "clock")
        agent = h.start_agent(env=clock.env())
        agent.wait_signed(2)
        clock.step(-back)
        time.sleep(3 * WINDOW_S)
        clock.step(forward)
        n = len(agent.signed())
        agent.wait_signed(n + 3)
        h.stop_agent(agent)
        fault = f"clock stepped back {back:g} s, then forward {forward:g} s"
        allowed = frozenset({"TIME_ORDER", "WINDOW_ORDER"})
        return [h.finish("clock", fault, 2, allowed_findings=allowed, visible=_clock_seen)]
    finally:
        h.close()


def _clock_seen(audit: AuditView, logs: list[SignedLog]) -> list[str]:
    """A step shows in the signed windows: time with no window (forward), or a window whose
    readings were stamped before it began (back). The agent states each step in the signed
    evidence (health ``clock_steps``, a degraded reason) and the auditor shows it."""
    if audit.findings or audit.health.get("clock_steps", 0) >= 2:  # back, then forward
        return []
    ev = [e for log in logs for e in log.evidence]
    jump = max((b.window_start_ms - a.window_end_ms for a, b in zip(ev, ev[1:])), default=0)
    early = 0
    for log in logs:
        starts = {e.seq: e.window_start_ms for e in log.evidence}
        bounds = [(e.checkpoint.prev_size, e.checkpoint.size, starts[e.seq]) for e in log.evidence]
        for lo, hi, start in bounds:
            early += sum(1 for r in log.records[lo:hi] if r.received_ms < start)
    out = []
    if jump > 1000 * WINDOW_S:
        out.append(f"{jump / 1000:.1f} s between two windows with no window (the step forward)")
    if early:
        out.append(f"{early} readings stamped before the start of their window (the step back)")
    return out


def dead_sensor(workdir: Path, quick: bool) -> list[FaultRow]:
    """A source on a port that never exists: the agent signs empty windows, and the
    auditor must call every goal "not evaluable", never "met"."""
    h = Harness(workdir, dead_ports=["probe"])
    try:
        agent = h.start_agent()
        agent.wait_signed(3)
        h.stop_agent(agent)

        def expect(audit: AuditView, logs: list[SignedLog]) -> list[str]:
            judged = sum(audit.compliance.values())
            if judged and audit.compliance.get("not evaluable") == judged:
                return []
            return [f"goals judged {dict(audit.compliance)}, not all 'not evaluable'"]

        def extra(audit: AuditView, logs: list[SignedLog]) -> list[str]:
            goals = ", ".join(f"{n} goal(s) {s}" for s, n in sorted(audit.compliance.items()))
            ratio = audit.completeness.get("probe")
            shown = "n/a" if ratio is None else f"{100 * ratio:.0f} %"
            return [goals, f"completeness {shown}"]

        fault = "dead sensor (its port never exists)"
        return [h.finish("dead-sensor", fault, 1, expect, extra=extra)]
    finally:
        h.close()
