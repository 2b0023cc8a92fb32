"""One fault run's parts wired together, and the row it ends with.

A :class:`Harness` starts a broker with persistence, our subscriber, the emulated devices
and writes the agent's config; :meth:`Harness.start_agent` starts (or restarts) the agent
and lets the devices talk once it has their ports open; :meth:`Harness.stop_agent` quiets
the devices first (so the agent reads everything they sent) and stops the agent cleanly;
:meth:`Harness.measure` waits for the subscriber to catch up and counts, and :func:`row`
turns the counts into a table row with the promise checked.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.tools.bench.faults.measure import (
    Attestations,
    AuditView,
    Readings,
    SignedLog,
    UnreadableStore,
    account_readings,
    audit_verify,
    count_attestations,
    parse_delivery,
    read_store,
    write_copies,
)
from agent.tools.bench.faults.parts import (
    AgentProc,
    Broker,
    Delivery,
    Device,
    Site,
    Subscriber,
    wait_until,
)
from agent.tools.bench.faults.table import FaultRow
from agent.transport.topics import DeviceTopics

__all__ = [
    "Check",
    "Harness",
    "Measured",
    "attestation_problems",
    "describe",
    "reading_problems",
    "row",
]


class Harness:
    """One fault run in ``workdir``. ``devices``: (source name, emulator scenario) per
    framed source; ``dead_ports``: sources on ports that never exist (a dead sensor).
    Use ``try: ... finally: h.close()``."""

    def __init__(
        self,
        workdir: Path,
        devices: Sequence[tuple[str, str]] = (),
        dead_ports: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.started = time.monotonic()
        self._cleanup: list[Callable[[], Any]] = []
        self.devices: list[tuple[str, Device]] = []
        self.ledgers: list[tuple[str, int, Device]] = []  # (source, config index, device)
        self.logs_before: list[SignedLog] = []  # logs a fault destroyed, read before it
        self.agent_notes: list[str] = []
        self._talking = False
        try:
            self.broker = Broker(workdir / "broker").start()
            self._cleanup.append(self.broker.stop)
            self.site = Site(workdir / "site")
            topic = DeviceTopics("edgegov", self.site.fleet, self.site.device_id).attestation
            client = f"faults-{workdir.name}-{os.getpid()}"
            self.subscriber = Subscriber(self.broker.url, topic, client)
            self._cleanup.append(self.subscriber.close)
            self.configure(devices, dead_ports)
        except BaseException:
            self.close()
            raise

    # -- setup ------------------------------------------------------------------------
    def configure(self, devices: Sequence[tuple[str, str]], dead_ports: Sequence[str] = ()) -> None:
        """(Re)write the agent's config with new devices (their frames start at the next
        :meth:`start_agent`)."""
        self.devices = []
        sources: list[dict[str, Any]] = []
        for i, (name, scenario) in enumerate(devices):
            dev = Device(self.workdir / "dev", scenario, serial=f"EMU-{name}", seed=i + 1).start()
            self._cleanup.append(dev.close)
            self.devices.append((name, dev))
            self.ledgers.append((name, len(sources), dev))
            sources.append({"name": name, "port": dev.link})
        for name in dead_ports:
            sources.append({"name": name, "port": str(self.workdir / f"no-such-port-{name}")})
        self.site.configure(sources, self.broker.url)
        self._talking = False

    def start_agent(self, env: dict[str, str] | None = None, wait: bool = True) -> AgentProc:
        """Start the agent; with ``wait``, until its evidence store is open and (first
        time) its ports are, then let the devices talk."""
        agent = AgentProc(self.site, env)
        self._cleanup.append(agent.stop)  # a no-op once it stopped; after a failure, a stop
        if not wait:
            return agent
        agent.wait_log("evidence log", timeout=60)
        if not self._talking:
            for name, dev in self.devices:
                agent.wait_log(f"source {name}: {dev.link} open", timeout=30)
                dev.go()
            self._talking = True
        return agent

    def delivered_seqs(self) -> set[int]:
        """Seqs the subscriber has (any log)."""
        deliveries = self.subscriber.snapshot()
        return {ev.seq for d in deliveries if (ev := parse_delivery(d)) is not None}

    def snapshot_store(self) -> None:
        """Read the store before a fault destroys it (the agent must be stopped)."""
        log = read_store(self.site.store)
        if log is not None:
            self.logs_before.append(log)

    # -- the end ----------------------------------------------------------------------
    def stop_agent(self, agent: AgentProc) -> int:
        """Quiet the devices, let the agent read what they sent, SIGTERM it; its exit."""
        for _, dev in self.devices:
            dev.quiet()  # first: the agent reads all the devices sent
        time.sleep(0.5)
        rc = agent.stop()
        self.agent_notes.append(f"stopped with exit {rc}")
        return rc

    def measure(self) -> Measured:
        """Measure, the agent stopped: the store read-only, the subscriber's deliveries
        once it has every signed attestation (or after 20 s), the devices' ledgers, and
        ``audit verify`` on the subscriber's copies. Stops the broker and the devices."""
        try:
            final = read_store(self.site.store)
        except UnreadableStore as e:
            final = None
            self.agent_notes.append(f"the store does not read after the run: {e}")
        logs = _merge(self.logs_before + ([final] if final is not None else []))
        signed = {(log.origin, s) for log in logs for s in log.digests}
        wait_until(lambda: signed <= _keys(self.subscriber.snapshot()), timeout=20)
        time.sleep(0.3)  # a redelivery in flight lands too
        deliveries = self.subscriber.snapshot()
        self.close()
        per_source = {
            name: account_readings(dev.ledger, logs, name, index)
            for name, index, dev in self.ledgers
        }
        copies = write_copies(deliveries, self.workdir / "copies")
        return Measured(
            attestations=count_attestations(logs, deliveries),
            logs=logs,
            per_source=per_source,
            audit=audit_verify(copies, self.site.public_key, self.site.policy),
            agent=list(self.agent_notes),
            seconds=time.monotonic() - self.started,
        )

    def finish(
        self,
        scenario: str,
        fault: str,
        iterations: int,
        expect: Check | None = None,
        allowed_findings: frozenset[str] = frozenset(),
        extra: Check | None = None,
        visible: Check | None = None,
    ) -> FaultRow:
        """Measure and make the row: every source's readings together."""
        m = self.measure()
        return row(m, scenario, fault, iterations, None, expect, allowed_findings, extra, visible)

    def close(self) -> None:
        """Stop whatever is still running (after a failure)."""
        for fn in self._cleanup[::-1]:
            with contextlib.suppress(Exception):
                fn()
        self._cleanup.clear()

    def on_close(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` at :meth:`close`, after every part (last registered, last run)."""
        self._cleanup.insert(0, fn)


def _merge(logs: list[SignedLog]) -> list[SignedLog]:
    """One entry per log: a later read of a log (its store kept growing) replaces an
    earlier one, in the order logs first appeared."""
    by_origin: dict[str, SignedLog] = {}
    for log in logs:
        old = by_origin.get(log.origin)
        if old is None or len(log.digests) >= len(old.digests):
            by_origin[log.origin] = log
    return list(by_origin.values())


def _keys(deliveries: list[Delivery]) -> set[tuple[str, int]]:
    return {
        (ev.checkpoint.origin, ev.seq) for d in deliveries if (ev := parse_delivery(d)) is not None
    }


@dataclass
class Measured:
    """A fault run's numbers, before they are cut into rows."""

    attestations: Attestations
    logs: list[SignedLog]
    per_source: dict[str, Readings]  # framed sources with a device ledger
    audit: AuditView
    agent: list[str]
    seconds: float


#: a check of a run: what it should have shown and did not (or words for the row)
Check = Callable[[AuditView, list[SignedLog]], list[str]]


def row(
    m: Measured,
    scenario: str,
    fault: str,
    iterations: int,
    sources: list[str] | None = None,
    expect: Check | None = None,
    allowed_findings: frozenset[str] = frozenset(),
    extra: Check | None = None,
    visible: Check | None = None,
) -> FaultRow:
    """A row of ``m``: the readings of ``sources`` (default: all), the promise checked
    (:func:`attestation_problems`, :func:`reading_problems`) and ``expect``; ``visible``
    says what of the fault the auditor failed to show."""
    names = list(m.per_source) if sources is None else sources
    readings: Readings | None = None
    for name in names:
        r = m.per_source[name]
        readings = r if readings is None else readings + r
    problems = attestation_problems(m.attestations, m.logs, m.audit, allowed_findings)
    if readings is not None:
        problems += reading_problems(readings)
    if expect is not None:
        problems += expect(m.audit, m.logs)
    words = describe(m.audit) + (extra(m.audit, m.logs) if extra is not None else [])
    return FaultRow(
        scenario=scenario,
        fault=fault,
        iterations=iterations,
        attestations=m.attestations,
        readings=readings,
        audit=m.audit,
        detected="; ".join(words),
        agent=m.agent,
        problems=problems,
        unseen=visible(m.audit, m.logs) if visible is not None else [],
        seconds=m.seconds,
    )


def attestation_problems(
    att: Attestations, logs: list[SignedLog], audit: AuditView, allowed: frozenset[str]
) -> list[str]:
    """Where the attestations or the auditor's view break the promise."""
    out = []
    if not logs:
        out.append("no evidence log to measure")
    if att.lost:
        out.append(f"{att.lost} attestation(s) signed and never delivered")
    if att.conflicting:
        out.append(f"{att.conflicting} delivered message(s) differ from the one signed")
    if att.unreadable:
        out.append(f"{att.unreadable} delivery(ies) unreadable")
    for log in logs:
        if not log.log_matches:
            out.append(f"log {log.origin}: the stored readings do not rebuild the signed root")
    if audit.error is not None:
        out.append(f"audit verify failed: {audit.error}")
    if audit.findings.get("DUPLICATE"):
        out.append(f"{audit.findings['DUPLICATE']} redelivery(ies) reported as DUPLICATE findings")
    unexpected = {k: n for k, n in audit.findings.items() if k not in allowed}
    if unexpected:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(unexpected.items()))
        out.append(f"audit verify findings on evidence that should be intact: {kinds}")
    if audit.missing:
        out.append(f"audit verify --json lacks {', '.join(audit.missing)}")
    return out


def reading_problems(r: Readings) -> list[str]:
    """Where a device's readings break the promise: lost == declared, exactly."""
    out = []
    if r.undeclared:
        out.append(f"{r.undeclared} reading(s) lost without a signed declaration")
    if r.lost != r.declared:
        out.append(f"readings lost {r.lost} != declared {r.declared}")
    if r.overdeclared:
        out.append(f"{r.overdeclared} reading(s) declared lost that are in the log")
    if r.in_log_twice:
        out.append(f"{r.in_log_twice} reading(s) in the log twice")
    if r.not_from_device:
        out.append(f"{r.not_from_device} reading(s) in the log the device never sent")
    if not r.counters_match_gaps:
        out.append("frames_missed + frames_unrecorded disagree with the gap ranges")
    if r.ranges_truncated:
        out.append(f"{r.ranges_truncated} gap range(s) truncated: loss not checkable")
    if r.frames_unaccounted:
        out.append(f"{r.frames_unaccounted} frame(s) neither received nor declared missing")
    return out


def describe(audit: AuditView) -> list[str]:
    """The "detected by audit verify" words every row shares."""
    if audit.error is not None:
        return [f"audit verify failed (exit {audit.exit_code})"]
    words = [f"evidence {audit.evidence}"]
    if audit.findings:
        words.append(
            "findings " + ", ".join(f"{k} x{n}" for k, n in sorted(audit.findings.items()))
        )
    rs = audit.restarts
    if rs.get("count"):
        frames = rs.get("frames_unrecorded", 0)
        words.append(
            f"{rs['count']} restart(s) ({rs.get('unclean', 0)} unclean), "
            f"{rs.get('down_ms', 0) / 1000:.1f} s down"
            + (f", {frames} frames unrecorded" if frames else "")
        )
    if audit.new_logs:
        words.append(f"{audit.new_logs} new log(s) declared")
    if audit.degraded_windows:
        words.append(f"{audit.degraded_windows} degraded window(s)")
    if audit.redelivered:
        words.append(f"{audit.redelivered} redelivered")
    return words
