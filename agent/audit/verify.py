"""Offline verification of attestation streams with only trust anchors.

Checks, per device log (PRODUCT.md §6, docs/attestation-profile.md):
1. every message is a well-formed COSE_Sign1 within the size and CBOR limits;
   its ``kid`` selects a trusted key (a listed key, a key a rotation statement
   hands over to, or the key of an ``x5chain`` certificate that chains to a fleet
   CA), the key pins the algorithm, the key is not revoked, and the signature
   verifies; nothing is read from a payload before that;
2. the chain: seq starts at 0 and has no gap, duplicate, fork or reordering,
   and each ``prev`` is the SHA-256 of the previous attestation's exact bytes;
3. the Merkle log: each checkpoint grows by exactly the window's readings and
   its consistency proof links it to the previous checkpoint (RFC 9162 §2.1.4);
4. time: windows and ``iat`` move forward, ``bootcount`` never drops;
5. config: policy and model digests are on the approved list (when given);
6. identity: the device a key or certificate is bound to is the one that speaks,
   and (with ``device=``) every attestation is from the device being audited.

Every problem is a :class:`Finding` naming device, seq, kind and detail; the
verifier never stops at the first one, so an auditor sees the whole picture.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from agent.attestation import ConfigInForce, Evidence, parse_claims
from agent.audit.trust import CertificateError, RevokedKey, TrustStore, UnknownKey
from agent.cose import AlgorithmMismatch, decode_sign1
from agent.errors import VerificationError
from agent.keys import PublicKey
from agent.merkle import ProofError, verify_consistency

__all__ = [
    "AuditResult",
    "DeviceReport",
    "Finding",
    "collect_files",
    "verify_messages",
    "verify_paths",
]

_sha256 = hashlib.sha256


@dataclass(frozen=True)
class Finding:
    """One problem: which device and seq, what kind, in words, and where it came from."""

    device: str
    seq: int | None
    kind: str
    detail: str
    file: str = ""

    @property
    def code(self) -> str:  # the name the first version of the JSON used
        return self.kind

    @property
    def message(self) -> str:
        return self.detail

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "code": self.kind, "message": self.detail}

    def __str__(self) -> str:
        where = f"{self.device} seq {self.seq}" if self.seq is not None else self.device
        return f"[{self.kind}] {where}: {self.detail}" + (f" ({self.file})" if self.file else "")


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
    open_episodes: dict[str, int] = field(default_factory=dict)  # rule -> violated since (ms)
    risk: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    degraded_windows: int = 0
    health: dict[str, int] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)  # one entry per window


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
        d = asdict(self)
        d["findings"] = [f.to_json() for f in self.findings]
        return {"verdict": "pass" if self.ok else "fail", **d}


class _Entry(NamedTuple):  # a tuple: built once per attestation (issue 6 measures it)
    ev: Evidence
    raw: bytes
    file: str
    signer: str
    order: int  # position in the input (delivery order)


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to the ``*.cose`` files below them, sorted by name."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(p.rglob("*.cose")))
        elif p.exists():
            out.append(p)
        else:
            raise VerificationError(f"{p}: no such file or directory")
    return out


def _as_trust(anchors: Sequence[PublicKey] | TrustStore) -> TrustStore:
    trust = anchors if isinstance(anchors, TrustStore) else TrustStore.of_keys(anchors)
    if trust.empty:
        raise VerificationError(
            "no trust anchors given: pass --trust FILE or at least one --key PUBLIC_KEY.pem"
        )
    return trust


def _files(paths: Sequence[Path]) -> Iterator[tuple[bytes, str, str | None]]:
    for f in collect_files(paths):
        yield f.read_bytes(), str(f), None


def verify_paths(
    paths: Sequence[Path],
    anchors: Sequence[PublicKey] | TrustStore,
    device: str | None = None,
) -> AuditResult:
    """Verify every attestation below ``paths`` (in name order) against ``anchors``."""
    return verify_messages(_files(paths), anchors, device)


def verify_messages(
    messages: Iterable[tuple[bytes, str, str | None]],
    anchors: Sequence[PublicKey] | TrustStore,
    device: str | None = None,
) -> AuditResult:
    """Verify ``(bytes, source name, transport device or None)`` in delivery order.

    ``transport device`` is the device the message arrived for (its MQTT topic);
    a message claiming another device is a replay. ``device`` restricts the audit
    to one device: attestations of any other are findings too.
    """
    trust = _as_trust(anchors)
    res = AuditResult()
    logs: dict[str, list[_Entry]] = defaultdict(list)
    for order, (raw, src, via) in enumerate(messages):
        res.files += 1
        entry = _verify_one(raw, src, order, trust, res.findings)
        if entry is None:
            continue
        res.verified += 1
        ev = entry.ev
        expected = device or via
        if expected is not None and ev.device_id != expected:
            res.findings.append(
                Finding(
                    expected,
                    ev.seq,
                    "REPLAY",
                    f"attestation of device {ev.device_id} (log {ev.checkpoint.origin}, "
                    f"seq {ev.seq}) in the stream of {expected}",
                    src,
                )
            )
            continue
        logs[ev.checkpoint.origin].append(entry)
    for origin, entries in sorted(logs.items()):
        res.devices.append(_check_log(origin, entries, res.findings, trust))
    return res


def _verify_one(
    raw: bytes, src: str, order: int, trust: TrustStore, findings: list[Finding]
) -> _Entry | None:
    try:
        msg = decode_sign1(raw)
    except VerificationError as e:
        _bad(findings, src, "INVALID", str(e))
        return None
    try:
        tk = trust.resolve(msg)
    except RevokedKey as e:
        _bad(findings, src, "REVOKED_KEY", str(e))
        return None
    except CertificateError as e:
        _bad(findings, src, "CERTIFICATE", str(e))
        return None
    except UnknownKey as e:
        _bad(findings, src, "UNKNOWN_KEY", str(e))
        return None
    try:
        msg.verify(tk.key)
    except AlgorithmMismatch as e:
        _bad(findings, src, "ALG_MISMATCH", str(e))
        return None
    except VerificationError as e:
        _bad(findings, src, "BAD_SIGNATURE", str(e))
        return None
    try:
        ev = parse_claims(msg.claims(unread=False))
    except VerificationError as e:
        _bad(findings, src, "INVALID", f"signed payload: {e}")
        return None
    if tk.device is not None and tk.device != ev.device_id:
        findings.append(
            Finding(
                ev.device_id,
                ev.seq,
                "KEY_DEVICE",
                f"signed by the key of {tk.device} ({tk.how}) but claims device {ev.device_id}",
                src,
            )
        )
        return None
    try:
        trust.check_validity(msg, ev.issued_at)
    except CertificateError as e:
        findings.append(Finding(ev.device_id, ev.seq, "CERTIFICATE", str(e), src))
        return None
    return _Entry(ev, raw, src, tk.how, order)


def _bad(findings: list[Finding], src: str, kind: str, detail: str) -> None:
    """Record a message rejected before its device is known."""
    findings.append(Finding("?", None, kind, detail, src))


def _check_log(
    origin: str, entries: list[_Entry], findings: list[Finding], trust: TrustStore
) -> DeviceReport:
    entries.sort(key=_order)  # delivery order (verify_messages appends in it already)
    dev = entries[0].ev.device_id
    # Reordering: seq numbers that arrived after a higher one of the same log.
    high = -1
    seen: set[int] = set()
    for e in entries:
        seq = e.ev.seq
        if seq < high and seq not in seen:  # a repeat is a duplicate or fork
            findings.append(
                Finding(dev, seq, "REORDER", f"delivered after seq {high} of this log", e.file)
            )
        if seq > high:
            high = seq
        seen.add(seq)
    entries.sort(key=_seq)  # stable: equal seqs stay in delivery order
    first = entries[0].ev
    rep = DeviceReport(first.device_id, origin, entries[0].signer)
    dev = first.device_id
    prev_ev: Evidence | None = None
    prev_raw = b""
    last_cfg: ConfigInForce | None = None
    seen_configs: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
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

        def add(kind: str, msg: str) -> None:
            findings.append(Finding(dev, ev.seq, kind, msg, file))  # noqa: B023

        if ev.device_id != dev:
            add("DEVICE_MISMATCH", f"log {origin} mixes devices {dev} and {ev.device_id}")
        if prev_ev is not None and ev.seq == prev_ev.seq:
            if raw == prev_raw:
                add("DUPLICATE", "the same attestation appears twice")
            else:
                add("FORK", "two different attestations carry this seq")
            continue
        cfg = ev.config
        same_config = last_cfg is not None and _same_config(cfg, last_cfg)
        if not same_config:
            _check_config(ev, trust, seen_configs, add)
        last_cfg = cfg
        cp = ev.checkpoint
        if cp.size != cp.prev_size + ev.readings:
            add(
                "CHECKPOINT",
                f"log size {cp.size} != previous size {cp.prev_size} + "
                f"{ev.readings} readings in this window",
            )
        if prev_ev is not None:
            if ev.seq != prev_ev.seq + 1:
                add("CHAIN_GAP", f"seq {prev_ev.seq + 1}..{ev.seq - 1} are missing")
            else:
                if ev.prev != _sha256(prev_raw).digest():
                    add("PREV_MISMATCH", f"prev does not hash the attestation seq {prev_ev.seq}")
                if cp.prev_size != prev_ev.checkpoint.size:
                    add(
                        "CHECKPOINT",
                        f"previous size {cp.prev_size} != size {prev_ev.checkpoint.size} "
                        f"at seq {prev_ev.seq}",
                    )
                else:
                    _check_consistency(prev_ev, ev, add)
            if ev.window_start_ms < prev_ev.window_end_ms:
                add(
                    "WINDOW_ORDER",
                    f"window starts at {ev.window_start_ms}, before the previous "
                    f"one ended ({prev_ev.window_end_ms})",
                )
            if ev.issued_at < prev_ev.issued_at:
                add("TIME_ORDER", f"iat {ev.issued_at} is before seq {prev_ev.seq}'s")
            if ev.bootcount < prev_ev.bootcount:
                add(
                    "BOOTCOUNT",
                    f"bootcount dropped from {prev_ev.bootcount} to {ev.bootcount}",
                )
        elif ev.seq == 0:
            if ev.prev is not None:
                add("PREV_MISMATCH", "seq 0 must have no prev")
            if cp.prev_size != 0:
                add("CHECKPOINT", f"seq 0 continues a log of size {cp.prev_size}")
        if ev.window_end_ms <= ev.window_start_ms:
            add("WINDOW_ORDER", "window ends before it starts")
        _accumulate(rep, ev, same_config)
        _timeline(rep, ev)
        prev_ev, prev_raw = ev, raw
    return rep


def _order(e: _Entry) -> int:
    return e.order


def _seq(e: _Entry) -> int:
    return e.ev.seq


def _same_config(a: ConfigInForce, b: ConfigInForce) -> bool:
    """What the config checks and the report's policy list read is the same in both."""
    return (
        a.policy_digest == b.policy_digest
        and a.model_digests == b.model_digests
        and a.policy_id == b.policy_id
        and a.policy_version == b.policy_version
    )


def _check_consistency(prev: Evidence, ev: Evidence, add: Any) -> None:
    a, b = prev.checkpoint, ev.checkpoint
    if a.size == 0:  # every tree extends the empty one; RFC 9162 has no proof for it
        if b.consistency:
            add("CONSISTENCY", "a consistency proof from an empty log must be empty")
        return
    try:
        verify_consistency(a.size, b.size, a.root, b.root, b.consistency)
    except ProofError as e:
        add("CONSISTENCY", f"checkpoint is not consistent with seq {prev.seq}'s: {e}")


def _check_config(
    ev: Evidence,
    trust: TrustStore,
    seen: set[tuple[str, tuple[tuple[str, str], ...]]],
    add: Any,
) -> None:
    key = (ev.config.policy_digest, tuple(sorted(ev.config.model_digests.items())))
    if key in seen:
        return
    seen.add(key)
    if trust.approved_policies is not None and ev.config.policy_digest not in (
        trust.approved_policies
    ):
        add(
            "CONFIG_UNAPPROVED",
            f"policy {ev.config.policy_id} v{ev.config.policy_version} digest "
            f"{ev.config.policy_digest[:16]}... is not on the approved list",
        )
    if trust.approved_models is not None:
        for model, digest in sorted(ev.config.model_digests.items()):
            if digest not in trust.approved_models:
                add(
                    "CONFIG_UNAPPROVED",
                    f"model {model} digest {digest[:16]}... is not on the approved list",
                )


def _timeline(rep: DeviceReport, ev: Evidence) -> None:
    health = ev.health
    problems = 0
    for k, v in health.items():
        if not k.endswith("_ok") and k not in _NOT_FRAME_PROBLEMS:
            problems += v
    violated = {}
    for r in ev.rules:
        if r.violated:
            violated[r.rule_id] = r.violated
    risk: dict[str, float | None] = {}
    for m in ev.risk:
        risk[m.model_id] = m.score
    cfg = ev.config
    rep.timeline.append(
        {
            "seq": ev.seq,
            "start_ms": ev.window_start_ms,
            "end_ms": ev.window_end_ms,
            "readings": ev.readings,
            "violated": violated,
            "risk": risk,
            "frames_ok": health.get("frames_ok", 0),
            "frame_problems": problems,
            "offline_ms": health.get("offline_ms", 0),
            "policy": f"{cfg.policy_id} v{cfg.policy_version}",
            "policy_digest": cfg.policy_digest,
            "degraded": list(ev.degraded),
        }
    )


_NOT_FRAME_PROBLEMS = frozenset({"offline_ms", "unknown_channels"})


def _accumulate(rep: DeviceReport, ev: Evidence, same_config: bool = False) -> None:
    """Add one window to the report; ``same_config``: the previous window's config is in force.

    Written for speed (once per attestation, issue 6): no throw-away dicts or f-strings.
    """
    rep.attestations += 1
    seq, start, end = ev.seq, ev.window_start_ms, ev.window_end_ms
    if rep.first_seq is None or seq < rep.first_seq:
        rep.first_seq = seq
    if rep.last_seq is None or seq > rep.last_seq:
        rep.last_seq = seq
    if rep.period_start_ms is None or start < rep.period_start_ms:
        rep.period_start_ms = start
    if rep.period_end_ms is None or end > rep.period_end_ms:
        rep.period_end_ms = end
    rep.readings += ev.readings
    if ev.checkpoint.size > rep.log_size:
        rep.log_size = ev.checkpoint.size
    if not same_config:
        cfg = ev.config
        pol = f"{cfg.policy_id} v{cfg.policy_version} ({cfg.policy_digest[:16]})"
        if pol not in rep.policies:
            rep.policies.append(pol)
    if ev.degraded:
        rep.degraded_windows += 1
    rules = rep.rules
    for r in ev.rules:
        agg = rules.get(r.rule_id)
        if agg is None:
            agg = rules[r.rule_id] = dict(_RULE_AGG)
        agg["evaluated"] += r.evaluated
        agg["violated"] += r.violated
        agg["errors"] += r.errors
        if r.violated:
            agg["windows_violated"] += 1
        # An episode spanning windows is listed in each; count it in the window it ends in,
        # and remember one still open at the end of the stream.
        rep.open_episodes.pop(r.rule_id, None)
        for e in r.episodes:
            if e.end_ms is not None:
                agg["episodes"] += 1
                agg["longest_episode_ms"] = max(agg["longest_episode_ms"], e.end_ms - e.start_ms)
            else:
                rep.open_episodes[r.rule_id] = e.start_ms
    for k in ev.risk:
        agg2 = rep.risk.get(k.model_id)
        if agg2 is None:
            agg2 = rep.risk[k.model_id] = {
                "scored_windows": 0,
                "max": None,
                "mean": None,
                "providers": [],
                "out_of_distribution_windows": 0,
                "ood_not_assessed_windows": 0,
            }
        if k.score is not None:
            n = agg2["scored_windows"]
            agg2["mean"] = k.score if n == 0 else (agg2["mean"] * n + k.score) / (n + 1)
            agg2["max"] = k.score if agg2["max"] is None else max(agg2["max"], k.score)
            agg2["scored_windows"] = n + 1
            if k.ood is None:
                agg2["ood_not_assessed_windows"] += 1
            elif k.ood:
                agg2["out_of_distribution_windows"] += 1
        if k.provider not in agg2["providers"]:
            agg2["providers"].append(k.provider)
    health = rep.health
    for key, v in ev.health.items():
        health[key] = health.get(key, 0) + v


_RULE_AGG = {
    "evaluated": 0,
    "violated": 0,
    "errors": 0,
    "windows_violated": 0,
    "episodes": 0,
    "longest_episode_ms": 0,
}
