"""What a fault run left behind, counted three ways and compared.

* **Signed** -- the agent's evidence store, opened read-only after the agent stopped
  (and copies of it read before a fault destroyed it): every attestation, and the
  readings of the log, checked against the last signed checkpoint root.
* **Delivered** -- our subscriber's deliveries, each one kept: by device, log (origin)
  and seq, duplicates counted, a different message under a signed seq a conflict.
* **Sent** -- the emulated device's ledger: every frame it numbered.

Readings lost are the DATA frames the device numbered whose reading is not in the signed
log; readings declared are those the signed evidence says were not recorded: the frames
inside a source's ``gaps`` (counted as ``frames_missed`` and ``frames_unrecorded``), and
samples withheld (``data_before_hello``, ``quarantined``). ``undeclared`` is what was lost
without a declaration; ``overdeclared`` what was declared lost and is in the log anyway.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.evidence.claims import Evidence, parse_claims
from agent.evidence.cose import decode_sign1
from agent.evidence.leaves import LeafRecord, decode_record, record_leaf_hashes
from agent.evidence.merkle import CompactRange
from agent.evidence.store_reader import stored_log, stored_records
from agent.tools.bench.faults.parts import Delivery
from firmware_bridge import MsgType
from firmware_bridge.emulator import SentFrame

__all__ = [
    "Attestations",
    "AuditView",
    "Readings",
    "SignedLog",
    "UnreadableStore",
    "account_readings",
    "audit_verify",
    "count_attestations",
    "parse_delivery",
    "read_store",
    "write_copies",
]


@dataclass
class SignedLog:
    """One evidence log as its store holds it."""

    origin: str
    evidence: list[Evidence]
    digests: dict[int, bytes]  # seq -> SHA-256 of the COSE bytes
    records: list[LeafRecord]
    log_matches: bool  # the stored readings rebuild the last checkpoint's root


class UnreadableStore(Exception):
    """A store that exists and cannot be read (a fault damaged it): the message says why."""


def read_store(path: Path) -> SignedLog | None:
    """The log in the store at ``path`` (read-only; the agent must be stopped), or None if
    there is none (no file, or no attestation in it).

    Raises:
        UnreadableStore: SQLite or an attestation in it does not read.
    """
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            rows = stored_log(db)[1]
            raw = stored_records(db)
        finally:
            db.close()
        if not rows:
            return None
        evidence = [parse_claims(decode_sign1(bytes(c)).claims()) for _, c in rows]
    except Exception as e:  # SQLite's errors, or ours for a damaged attestation
        raise UnreadableStore(f"{path}: {e}") from e
    digests = {int(s): hashlib.sha256(bytes(c)).digest() for s, c in rows}
    log = CompactRange()
    log.extend(record_leaf_hashes(raw))
    last = evidence[-1].checkpoint
    matches = (log.size, log.root()) == (last.size, last.root)
    return SignedLog(last.origin, evidence, digests, [decode_record(r) for r in raw], matches)


@dataclass
class Attestations:
    signed: int
    delivered: int  # distinct (device, log, seq) the subscriber got
    lost: int  # signed, never delivered
    duplicated: int  # deliveries beyond the first of each
    conflicting: int  # a delivered message that is not the one signed under its seq
    unreadable: int  # deliveries that do not parse


def parse_delivery(d: Delivery) -> Evidence | None:
    """The claims of a delivered attestation (not verified: ``audit verify`` does that),
    or None when it does not parse."""
    try:
        return parse_claims(decode_sign1(d.payload).claims())
    except Exception:  # any unreadable message is counted, not fatal here
        return None


def count_attestations(logs: Iterable[SignedLog], deliveries: Sequence[Delivery]) -> Attestations:
    signed = {(log.origin, s): d for log in logs for s, d in log.digests.items()}
    got: dict[tuple[str, int], set[bytes]] = {}
    unreadable = 0
    for d in deliveries:
        ev = parse_delivery(d)
        if ev is None:
            unreadable += 1
            continue
        got.setdefault((ev.checkpoint.origin, ev.seq), set()).add(
            hashlib.sha256(d.payload).digest()
        )
    conflicting = sum(
        1 for k, digests in got.items() for h in digests if k in signed and h != signed[k]
    )
    conflicting += sum(len(v) - 1 for k, v in got.items() if k not in signed)
    lost = sum(1 for k, h in signed.items() if h not in got.get(k, set()))
    return Attestations(
        signed=len(signed),
        delivered=len(got),
        lost=lost,
        duplicated=len(deliveries) - unreadable - len(got),
        conflicting=conflicting,
        unreadable=unreadable,
    )


def write_copies(deliveries: Sequence[Delivery], out: Path) -> Path:
    """Every delivery as a file, as a subscriber keeping them all would:
    ``out/<device>/<log id>/<seq>-<copy>.cose`` (unreadable ones beside)."""
    copies: Counter[tuple[str, str, int]] = Counter()
    for i, d in enumerate(deliveries):
        device = d.topic.split("/")[-2] if d.topic.count("/") >= 2 else "unknown"
        ev = parse_delivery(d)
        if ev is None:
            path = out / device / f"unreadable-{i:06d}.cose"
        else:
            tag = ev.checkpoint.origin.rsplit("/", 1)[-1]
            key = (device, tag, ev.seq)
            path = out / device / tag / f"{ev.seq:010d}-{copies[key]:03d}.cose"
            copies[key] += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(d.payload)
    return out


@dataclass
class Readings:
    """One framed source's readings: sent by the device, in the signed log, lost, declared."""

    sent: int
    recorded: int
    lost: int
    declared: int
    undeclared: int  # lost without a signed declaration
    overdeclared: int  # declared lost, yet in the log (or never sent)
    in_log_twice: int
    not_from_device: int  # readings in the log the device never sent
    counters_match_gaps: bool  # frames_missed + frames_unrecorded == frames in the gaps
    ranges_truncated: int
    frames_unaccounted: int  # frames numbered - received - missed - unrecorded

    def __add__(self, o: Readings) -> Readings:
        return Readings(
            *(
                (a and b) if isinstance(a, bool) else a + b
                for a, b in zip(vars(self).values(), vars(o).values(), strict=True)
            )
        )


def _health(evidence: Iterable[Evidence], source: str) -> list[dict[str, Any]]:
    return [dict(h) for ev in evidence for h in ev.source_health if h.get("source") == source]


def account_readings(
    ledger: Sequence[SentFrame], logs: Sequence[SignedLog], source: str, index: int
) -> Readings:
    """Compare a device's ledger with the signed logs (in the order they were written) for
    the source named ``source`` (config index ``index``)."""
    by_key = {(f.t_ms, f.seq): f for f in ledger}
    by_boot: dict[int, dict[int, SentFrame]] = {}
    for f in ledger:
        by_boot.setdefault(f.boot, {})[f.seq] = f
    data = {(f.boot, f.seq) for f in ledger if f.kind == MsgType.DATA}
    in_log: Counter[tuple[int, int]] = Counter()
    not_from_device = 0
    first = min((f.t_ms for f in ledger), default=0)
    last = max((f.t_ms for f in ledger), default=-1)
    for log in logs:
        for r in log.records:
            if r.source != index or not first <= r.device_ms <= last:
                continue  # another device's, before or after this one ran
            sent = by_key.get((r.device_ms, r.frame_seq))
            if sent is None:
                not_from_device += 1
            else:
                in_log[(sent.boot, sent.seq)] += 1
    recorded = set(in_log) & data
    lost = data - recorded

    declared_frames: set[tuple[int, int]] = set()
    gap_total = withheld = truncated = counted = received = unknown_gaps = 0
    boot = min(by_boot, default=1)
    for log in logs:
        for h in _health(log.evidence, source):
            reboots = int(h.get("reboots", 0))
            for a, b in h.get("gaps", []):
                seqs = range(int(a), int(b) + 1)
                gap_total += len(seqs)
                candidates = [
                    k
                    for k in range(boot, boot + reboots + 1)
                    if k in by_boot and all(s in by_boot[k] for s in seqs)
                ]
                # the boot in which these frames were not recorded (reboot scenarios repeat seqs)
                fit = [
                    k for k in candidates if not any((k, s) in in_log for s in seqs)
                ] or candidates
                if fit:
                    declared_frames.update((fit[0], s) for s in seqs)
                else:
                    unknown_gaps += len(seqs)  # declared lost, never numbered by the device
            boot += reboots
            withheld += int(h.get("data_before_hello", 0)) + int(h.get("quarantined", 0))
            truncated += int(h.get("ranges_truncated", 0))
            counted += int(h.get("frames_missed", 0)) + int(h.get("frames_unrecorded", 0))
            received += int(h.get("frames_ok", 0)) - int(h.get("duplicates", 0))
    declared = len(declared_frames & data) + withheld
    outside_gaps = len(lost - declared_frames)  # must be the withheld samples, no more
    return Readings(
        sent=len(data),
        recorded=len(recorded),
        lost=len(lost),
        declared=declared,
        undeclared=max(0, outside_gaps - withheld),
        overdeclared=len(declared_frames & recorded)
        + max(0, withheld - outside_gaps)
        + unknown_gaps,
        in_log_twice=sum(c - 1 for c in in_log.values()),
        not_from_device=not_from_device,
        counters_match_gaps=gap_total == counted,
        ranges_truncated=truncated,
        frames_unaccounted=len(ledger) - received - counted,
    )


@dataclass
class AuditView:
    """What ``edgegov audit verify --json`` said, in the terms of the fault table.

    ``missing`` names the JSON keys the auditor did not produce (reported, not guessed).
    """

    exit_code: int
    evidence: str | None = None
    findings: Counter[str] = field(default_factory=Counter)
    redelivered: int | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    new_logs: int = 0
    degraded_windows: int = 0
    compliance: Counter[str] = field(default_factory=Counter)
    completeness: dict[str, float | None] = field(default_factory=dict)  # per source
    health: Counter[str] = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "evidence": self.evidence,
            "findings": dict(self.findings),
            "redelivered": self.redelivered,
            "restarts": self.restarts,
            "new_logs": self.new_logs,
            "degraded_windows": self.degraded_windows,
            "compliance": dict(self.compliance),
            "completeness": self.completeness,
            "missing_keys": self.missing,
            "error": self.error,
        }


_RESTART_SUMS = ("count", "unclean", "down_ms", "frames_unrecorded", "recovered_readings")


def audit_verify(copies: Path, public_key: Path, policy: Path | None) -> AuditView:
    """Run ``edgegov audit verify COPIES --key PUB [--policy POLICY] --json``; read it."""
    judge = ["--policy", str(policy)] if policy is not None else []
    r = subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", str(copies)]
        + ["--key", str(public_key), *judge, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    view = AuditView(r.returncode)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        view.error = (r.stderr or r.stdout).strip()[-500:] or f"exit {r.returncode}, no output"
        return view

    def get(obj: dict[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            if f"{where}{key}" not in view.missing:
                view.missing.append(f"{where}{key}")
            return None
        return obj[key]

    view.evidence = get(out, "evidence", "")
    view.redelivered = get(out, "redelivered", "")
    for f in get(out, "findings", "") or []:
        view.findings[str(f.get("kind"))] += 1
    comp = get(out, "compliance", "") or {}
    for item in get(comp, "items", "compliance.") or []:
        view.compliance[str(item.get("status"))] += 1
    for dev in get(out, "devices", "") or []:
        rs = get(dev, "restarts", "devices[].") or {}
        for k in _RESTART_SUMS:
            v = get(rs, k, "devices[].restarts.")
            view.restarts[k] = view.restarts.get(k, 0) + int(v or 0)
        view.new_logs += sum(1 for e in rs.get("events", []) if e.get("new_log"))
        deg = get(dev, "degraded", "devices[].") or {}
        view.degraded_windows += int(deg.get("windows", 0))
        for k, v in (get(dev, "health", "devices[].") or {}).items():
            if isinstance(v, int):
                view.health[k] += v
        comp_dev = get(dev, "completeness", "devices[].") or {}
        for name, s in (comp_dev.get("sources") or {}).items():
            view.completeness[name] = s.get("ratio")
    return view
