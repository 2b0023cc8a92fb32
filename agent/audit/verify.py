"""Offline verification of attestation streams with only trust anchors (public keys).

Checks, per device log (PRODUCT.md §6):
1. every message is a well-formed COSE_Sign1 whose ``kid`` names a trusted key
   and whose signature verifies (nothing is read from an unverified payload);
2. the chain: seq starts at 0 and has no gap, duplicate or fork, and each
   ``prev`` is the SHA-256 of the previous attestation's exact bytes;
3. windows move forward in time and do not overlap;
4. the Merkle checkpoint grows by exactly the readings each window declares.

Every problem is a :class:`Finding` naming device, seq, file and reason; the
verifier never stops at the first one, so an auditor sees the whole picture.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.attestation import Evidence, parse_claims
from agent.cose import decode_sign1
from agent.errors import VerificationError
from agent.keys import PublicKey

__all__ = ["AuditResult", "DeviceReport", "Finding", "collect_files", "verify_paths"]


@dataclass(frozen=True)
class Finding:
    device: str
    seq: int | None
    code: str
    message: str
    file: str = ""

    def __str__(self) -> str:
        where = f"{self.device} seq {self.seq}" if self.seq is not None else self.device
        return f"[{self.code}] {where}: {self.message}" + (f" ({self.file})" if self.file else "")


@dataclass
class DeviceReport:
    device: str
    origin: str
    signer: str
    attestations: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    period_start_ms: int | None = None
    period_end_ms: int | None = None
    readings: int = 0
    log_size: int = 0
    rules: dict[str, dict[str, int]] = field(default_factory=dict)
    risk: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    degraded_windows: int = 0
    health: dict[str, int] = field(default_factory=dict)


@dataclass
class AuditResult:
    files: int = 0
    verified: int = 0
    devices: list[DeviceReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings and self.verified > 0

    def to_json(self) -> dict[str, Any]:
        return {"verdict": "pass" if self.ok else "fail", **asdict(self)}


@dataclass(frozen=True)
class _Entry:
    ev: Evidence
    raw: bytes
    file: str
    signer: str


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to the ``*.cose`` files below them, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(p.rglob("*.cose")))
        elif p.exists():
            out.append(p)
        else:
            raise VerificationError(f"{p}: no such file or directory")
    return out


def verify_paths(paths: Sequence[Path], anchors: Sequence[PublicKey]) -> AuditResult:
    """Verify every attestation below ``paths`` against ``anchors``."""
    if not anchors:
        raise VerificationError("no trust anchors given: pass at least one --key PUBLIC_KEY.pem")
    keys = {k.kid: k for k in anchors}
    res = AuditResult()
    logs: dict[str, list[_Entry]] = defaultdict(list)
    for f in collect_files(paths):
        res.files += 1
        raw = f.read_bytes()
        try:
            msg = decode_sign1(raw)
            key = keys.get(msg.kid)
            if key is None:
                raise VerificationError(
                    f"signed by kid {msg.kid.hex()}, which is not a trusted key"
                )
            msg.verify(key)
            ev = parse_claims(msg.claims())
        except VerificationError as e:
            res.findings.append(Finding("?", None, "INVALID", str(e), str(f)))
            continue
        res.verified += 1
        logs[ev.checkpoint.origin].append(_Entry(ev, raw, str(f), key.source or msg.kid.hex()))
    for origin, entries in sorted(logs.items()):
        res.devices.append(_check_log(origin, entries, res.findings))
    return res


def _check_log(origin: str, entries: list[_Entry], findings: list[Finding]) -> DeviceReport:
    entries.sort(key=lambda e: e.ev.seq)
    first = entries[0].ev
    rep = DeviceReport(first.device_id, origin, entries[0].signer)
    dev = first.device_id
    prev_ev: Evidence | None = None
    prev_raw = b""
    if first.seq != 0:
        findings.append(
            Finding(
                dev,
                first.seq,
                "CHAIN_START",
                f"log {origin} starts at seq {first.seq}: seq 0..{first.seq - 1} are missing",
                entries[0].file,
            )
        )
    for entry in entries:
        ev, raw, file = entry.ev, entry.raw, entry.file

        def add(code: str, msg: str) -> None:
            findings.append(Finding(dev, ev.seq, code, msg, file))  # noqa: B023

        if ev.device_id != dev:
            add("DEVICE_MISMATCH", f"log {origin} mixes devices {dev} and {ev.device_id}")
        if prev_ev is not None:
            if ev.seq == prev_ev.seq:
                if raw == prev_raw:
                    add("DUPLICATE", "the same attestation appears twice")
                else:
                    add("FORK", "two different attestations carry this seq")
                continue
            if ev.seq != prev_ev.seq + 1:
                add("CHAIN_GAP", f"seq {prev_ev.seq + 1}..{ev.seq - 1} are missing")
            elif ev.prev != hashlib.sha256(prev_raw).digest():
                add("PREV_MISMATCH", f"prev does not hash the attestation seq {prev_ev.seq}")
            if ev.window_start_ms < prev_ev.window_end_ms:
                add(
                    "WINDOW_ORDER",
                    f"window starts at {ev.window_start_ms}, before the previous "
                    f"one ended ({prev_ev.window_end_ms})",
                )
            if (
                ev.seq == prev_ev.seq + 1
                and ev.checkpoint.size != prev_ev.checkpoint.size + ev.readings
            ):
                add(
                    "CHECKPOINT",
                    f"log size {ev.checkpoint.size} != previous "
                    f"{prev_ev.checkpoint.size} + {ev.readings} readings in this window",
                )
        elif ev.seq == 0:
            if ev.prev is not None:
                add("PREV_MISMATCH", "seq 0 must have no prev")
            if ev.checkpoint.size != ev.readings:
                add("CHECKPOINT", f"log size {ev.checkpoint.size} != {ev.readings} readings")
        if ev.window_end_ms <= ev.window_start_ms:
            add("WINDOW_ORDER", "window ends before it starts")
        _accumulate(rep, ev)
        prev_ev, prev_raw = ev, raw
    return rep


def _accumulate(rep: DeviceReport, ev: Evidence) -> None:
    rep.attestations += 1
    rep.first_seq = ev.seq if rep.first_seq is None else min(rep.first_seq, ev.seq)
    rep.last_seq = ev.seq if rep.last_seq is None else max(rep.last_seq, ev.seq)
    rep.period_start_ms = (
        ev.window_start_ms
        if rep.period_start_ms is None
        else min(rep.period_start_ms, ev.window_start_ms)
    )
    rep.period_end_ms = (
        ev.window_end_ms if rep.period_end_ms is None else max(rep.period_end_ms, ev.window_end_ms)
    )
    rep.readings += ev.readings
    rep.log_size = max(rep.log_size, ev.checkpoint.size)
    pol = f"{ev.config.policy_id} v{ev.config.policy_version} ({ev.config.policy_digest[:16]})"
    if pol not in rep.policies:
        rep.policies.append(pol)
    if ev.degraded:
        rep.degraded_windows += 1
    for r in ev.rules:
        agg = rep.rules.setdefault(
            r.rule_id, {"evaluated": 0, "violated": 0, "errors": 0, "windows_violated": 0}
        )
        agg["evaluated"] += r.evaluated
        agg["violated"] += r.violated
        agg["errors"] += r.errors
        agg["windows_violated"] += 1 if r.violated else 0
    for k in ev.risk:
        agg2 = rep.risk.setdefault(
            k.model_id, {"scored_windows": 0, "max": None, "mean": None, "providers": []}
        )
        if k.score is not None:
            n = agg2["scored_windows"]
            agg2["mean"] = k.score if n == 0 else (agg2["mean"] * n + k.score) / (n + 1)
            agg2["max"] = k.score if agg2["max"] is None else max(agg2["max"], k.score)
            agg2["scored_windows"] = n + 1
        if k.provider not in agg2["providers"]:
            agg2["providers"].append(k.provider)
    for key, v in ev.health.items():
        rep.health[key] = rep.health.get(key, 0) + v
