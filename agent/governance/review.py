"""The governance review of verified evidence: deviations and their explanations, the
calibration cover of required channels, and what that does to the goals.

Run after ``agent.audit.analysis.analyze``: it reads the analysis (episodes, windows,
goals judged) and the signed statements given beside the evidence, checks every
statement (signature, signer's role and site, a deviation that exists, a channel the
device has), and returns :class:`Governance`. A refused statement is a finding of its
own (the evidence verdict then says "findings"); nothing is dropped unsaid.

Deviation status, as of ``as_of_ms`` (``--as-of``; by default the end of the newest
window, so the same evidence always gives the same verdict):

``explained``
    a valid explanation names it (``late`` if it was signed after the deadline);
``awaiting explanation``
    none yet, and the deadline (the rule's ``explain_within``, else its goal's) has not
    passed;
``unexplained``
    none, and the deadline has passed, or the policy sets none (or none was given).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.audit.compliance import ComplianceItem, _worst
from agent.audit.verify import Finding
from agent.errors import VerificationError
from agent.governance.people import Authorities
from agent.governance.statements import (
    CalibrationCertificate,
    Explanation,
    Statement,
    deviation_id,
    read_statement,
)

if TYPE_CHECKING:
    from agent.audit.analysis import Analysis, DeviceAnalysis
    from agent.policy.model import PolicyBundle

__all__ = [
    "ChannelCalibration",
    "Deviation",
    "Governance",
    "RawStatement",
    "default_as_of",
    "review",
]


@dataclass(frozen=True)
class RawStatement:
    raw: bytes
    source: str  # file path or store row


@dataclass(frozen=True)
class Deviation:
    id: str
    device: str
    rule: str
    goal: str | None
    start_ms: int
    end_ms: int | None
    peak: float | None
    due_ms: int | None  # None: no deadline set
    status: str
    late: bool
    explanation: Explanation | None
    explanations: int  # valid explanations of it (the newest is shown)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device,
            "rule": self.rule,
            "goal": self.goal,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "peak": self.peak,
            "due_ms": self.due_ms,
            "status": self.status,
            "late": self.late,
            "explanations": self.explanations,
            "explanation": None if self.explanation is None else self.explanation.to_json(),
        }


@dataclass(frozen=True)
class ChannelCalibration:
    """One required channel of one device over the windows judged under the policy."""

    device: str
    channel: str
    windows: int
    covered: int
    certificates: tuple[str, ...]  # the valid certificates that cover some window
    status: str  # "current", "partly covered", "not valid in the period", "missing"
    detail: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"certificates": list(self.certificates)}


@dataclass
class Governance:
    as_of_ms: int
    policy_digest: str | None = None  # the policy judged under (--policy)
    deviations: list[Deviation] = field(default_factory=list)
    calibration: list[ChannelCalibration] = field(default_factory=list)
    certificates: list[CalibrationCertificate] = field(default_factory=list)
    statements: int = 0  # given
    findings: list[Finding] = field(default_factory=list)  # statements refused

    def counts(self) -> dict[str, int]:
        out = {"explained": 0, "awaiting explanation": 0, "unexplained": 0}
        for d in self.deviations:
            out[d.status] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of_ms": self.as_of_ms,
            "statements": self.statements,
            "statements_refused": len(self.findings),
            "deviations": {
                "counts": self.counts(),
                "items": [d.to_json() for d in self.deviations],
            },
            "calibration": {
                "channels": [c.to_json() for c in self.calibration],
                "certificates": [c.to_json() for c in self.certificates],
            },
        }


def default_as_of(an: Analysis) -> int:
    """The end of the newest window: the same evidence always gives the same verdict."""
    ends = [d.period_end_ms for d in an.devices if d.period_end_ms is not None]
    return max(ends) if ends else int(time.time() * 1000)


def review(
    an: Analysis,
    statements: Iterable[RawStatement],
    authorities: Authorities,
    policy: PolicyBundle | None,
    as_of_ms: int,
) -> Governance:
    """Check the statements, list the deviations, judge calibration cover; with a policy,
    turn *met* into *not quality-assured* where a required calibration is missing. The
    refused statements are added to ``an.findings``."""
    g = Governance(as_of_ms, policy.digest if policy is not None else None)
    explanations: list[tuple[Statement, Explanation]] = []
    seen: set[bytes] = set()
    for s in statements:
        if s.raw in seen:  # the same signed bytes twice (two copies of a file): once
            continue
        seen.add(s.raw)
        g.statements += 1
        try:
            st = read_statement(s.raw, s.source)
            authorities.check(st)
        except VerificationError as e:
            g.findings.append(_finding("statement", str(e), s.source))
            continue
        if isinstance(st.body, Explanation):
            explanations.append((st, st.body))
        else:
            g.certificates.append(st.body)
    g.deviations = _deviations(an, explanations, policy, as_of_ms, g.findings)
    g.certificates = _known_channels(an, g.certificates, policy, g.findings)
    if policy is not None:
        g.calibration = _calibration(an.devices, g.certificates, policy)
        an.compliance = [_with_calibration(c, g.calibration, policy) for c in an.compliance]
    an.findings.extend(g.findings)
    return g


def _finding(kind: str, detail: str, source: str, device: str = "") -> Finding:
    return Finding(device, None, kind, detail, source)


def _deadline(policy: PolicyBundle | None, rule: str) -> int | None:
    if policy is None:
        return None
    r = next((r for r in policy.rules if r.id == rule), None)
    if r is None:
        return None
    if r.explain_within_ms is not None:
        return r.explain_within_ms
    goal = next((g for g in policy.goals if g.id == r.goal), None)
    return goal.explain_within_ms if goal else None


def _deviations(
    an: Analysis,
    explanations: Sequence[tuple[Statement, Explanation]],
    policy: PolicyBundle | None,
    as_of_ms: int,
    findings: list[Finding],
) -> list[Deviation]:
    episodes = {
        deviation_id(d.device, e.rule, e.start_ms): (d, e) for d in an.devices for e in d.episodes
    }
    by_dev: dict[str, list[Explanation]] = {}
    for st, ex in explanations:
        if ex.deviation not in episodes:
            starts = sorted(
                e.start_ms
                for d in an.devices
                if d.device == ex.device
                for e in d.episodes
                if e.rule == ex.rule
            )
            known = ", ".join(map(str, starts[:5])) or "none"
            findings.append(
                _finding(
                    "statement",
                    f"explains deviation {ex.deviation}, which is not in the evidence given: "
                    f"no violation episode of rule {ex.rule} on {ex.device} starts at "
                    f"{ex.start_ms} (its episodes there start at: {known})",
                    st.source,
                    ex.device,
                )
            )
            continue
        by_dev.setdefault(ex.deviation, []).append(ex)
    out = []
    for dev_id, (d, e) in episodes.items():
        within = _deadline(policy, e.rule)
        due = None if within is None else e.start_ms + within
        given = sorted(by_dev.get(dev_id, ()), key=lambda x: (x.signed_ms, x.signer))
        newest = given[-1] if given else None
        if newest is not None:
            status = "explained"
        elif due is not None and due > as_of_ms:
            status = "awaiting explanation"
        else:
            status = "unexplained"
        late = newest is not None and due is not None and given[0].signed_ms > due
        out.append(
            Deviation(
                dev_id, d.device, e.rule, e.goal, e.start_ms, e.end_ms, e.peak, due, status,
                late, newest, len(given),
            )
        )  # fmt: skip
    out.sort(key=lambda x: (x.start_ms, x.device, x.rule))
    return out


def _known_channels(
    an: Analysis,
    certs: list[CalibrationCertificate],
    policy: PolicyBundle | None,
    findings: list[Finding],
) -> list[CalibrationCertificate]:
    """Certificates for a device in the evidence and (with a policy) one of its channels."""
    devices = {d.device for d in an.devices}
    channels = {c.name for c in policy.channels} if policy is not None else None
    out = []
    for c in sorted(certs, key=lambda c: (c.device, c.channel, c.valid_from_ms, c.certificate)):
        if c.device not in devices:
            continue  # another device's certificate: not this evidence's business
        if channels is not None and c.channel not in channels:
            findings.append(
                _finding(
                    "statement",
                    f"calibration certificate {c.certificate} is for channel {c.channel!r}, "
                    f"which policy {policy.id if policy else ''} does not have (channels: "
                    f"{', '.join(sorted(channels))})",
                    f"certificate {c.certificate}",
                    c.device,
                )
            )
            continue
        out.append(c)
    return out


def _calibration(
    devices: Sequence[DeviceAnalysis],
    certs: Sequence[CalibrationCertificate],
    policy: PolicyBundle,
) -> list[ChannelCalibration]:
    required = [c.name for c in policy.channels if c.calibration_required]
    out = []
    for d in devices:
        windows = [w for w in d.windows if w.policy_digest == policy.digest]
        if not windows:
            continue
        for ch in required:
            mine = [c for c in certs if c.device == d.device and c.channel == ch]
            covered, used = 0, set()
            for w in windows:
                c = next((c for c in mine if c.covers(w.start_ms, w.end_ms)), None)
                if c is not None:
                    covered += 1
                    used.add(c.certificate)
            n = len(windows)
            valid = ", ".join(
                f"{c.certificate} valid {_day(c.valid_from_ms)}..{_day(c.valid_until_ms)}"
                for c in mine
            )
            if covered == n:
                status, detail = "current", f"all {n} window(s) covered"
            elif not mine:
                status, detail = "missing", f"no valid certificate for {ch} on {d.device}"
            elif covered == 0:
                status = "not valid in the period"
                detail = f"none of the {n} window(s) lies within a certificate's validity ({valid})"
            else:
                status = "partly covered"
                detail = f"{n - covered} of {n} window(s) outside every certificate ({valid})"
            out.append(
                ChannelCalibration(d.device, ch, n, covered, tuple(sorted(used)), status, detail)
            )
    return out


def _with_calibration(
    item: ComplianceItem, cover: Sequence[ChannelCalibration], policy: PolicyBundle
) -> ComplianceItem:
    """A goal whose channels lack calibration cover is at best not quality-assured."""
    if item.kind != "goal":
        return item
    channels = {ch for r in policy.rules if r.goal == item.id for ch in r.channels}
    devices = []
    for dv in item.devices:
        gaps = [
            c
            for c in cover
            if c.device == dv.device and c.channel in channels and c.status != "current"
        ]
        if gaps and dv.status == "met":
            why = "; ".join(f"calibration of {c.channel}: {c.detail}" for c in gaps)
            dv = dataclasses.replace(dv, status="not quality-assured", reason=why)
        devices.append(dv)
    if not devices:
        return item
    status, reason = _worst(tuple(devices))
    return dataclasses.replace(item, status=status, reason=reason, devices=tuple(devices))


def _day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))
