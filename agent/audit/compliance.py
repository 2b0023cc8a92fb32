"""Compliance, judged apart from integrity: per goal (with the policy) or per rule.

A status, from worst to best (a goal takes its worst rule's; an item its worst device's):

``violated``
    a reading was in a violated state (a violation episode): that is shown, whatever
    the data quality was;
``not evaluable``
    too little data to judge: no reading evaluated (a dead or missing sensor), or less
    data completeness than the goal's ``min_completeness`` (``agent.audit.completeness``);
``not quality-assured``
    judged, but in windows whose evidence is degraded (claim -70001/11) or with readings
    the rules could not evaluate: no violation was seen in data that is known to be weak;
``met``
    evaluated, with enough data, good evidence, no violation.

Only windows signed under the policy given are judged (by digest); without a policy
every window is, per rule, with no completeness floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agent.audit.completeness import measure

if TYPE_CHECKING:
    from agent.audit.analysis import DeviceAnalysis
    from agent.policy.model import PolicyBundle

__all__ = [
    "STATUSES",
    "ComplianceItem",
    "DeviceVerdict",
    "RuleVerdict",
    "at_most",
    "judge_goals",
    "judge_rules",
]

#: best to worst
STATUSES = ("met", "not quality-assured", "not evaluable", "violated")
_RANK = {s: i for i, s in enumerate(STATUSES)}
_MAX_REASONS = 3


@dataclass(frozen=True)
class RuleVerdict:
    """One rule over one device's judged windows."""

    rule: str
    status: str
    reason: str
    evaluated: int
    violated: int
    errors: int
    episodes: int


@dataclass(frozen=True)
class DeviceVerdict:
    """One goal (or rule) on one device: its status, why, and the numbers behind it."""

    device: str
    status: str
    reason: str
    windows: int  # windows judged
    quality_windows: int  # of them degraded or with readings not evaluable
    completeness: float | None  # over the windows judged
    rules: tuple[RuleVerdict, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "status": self.status,
            "reason": self.reason,
            "windows": self.windows,
            "quality_windows": self.quality_windows,
            "completeness": None if self.completeness is None else round(self.completeness, 6),
            "rules": [vars(r) for r in self.rules],
        }


@dataclass(frozen=True)
class ComplianceItem:
    """A goal (``kind`` "goal": id, description, owner, clause, serving rules, data
    threshold) or, without a policy, a rule (``kind`` "rule"), with its status."""

    kind: str
    id: str
    status: str
    reason: str
    rules: tuple[str, ...]
    devices: tuple[DeviceVerdict, ...]
    description: str | None = None
    stakeholder: str | None = None
    source: str | None = None
    min_completeness: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "description": self.description,
            "stakeholder": self.stakeholder,
            "source": self.source,
            "rules": list(self.rules),
            "min_completeness": self.min_completeness,
            "devices": [d.to_json() for d in self.devices],
        }


def judge_rules(devices: Sequence[DeviceAnalysis]) -> list[ComplianceItem]:
    """Without a policy: one item per rule the evidence names, every window judged."""
    facts = [_Facts(d, None) for d in devices]
    ids = list(dict.fromkeys(rule for d in devices for rule in d.rules))  # as attested
    items = []
    for rid in ids:
        verdicts = tuple(f.verdict((rid,), None) for f in facts if rid in f.stats)
        items.append(ComplianceItem("rule", rid, *_worst(verdicts), (rid,), verdicts))
    return items


def judge_goals(devices: Sequence[DeviceAnalysis], policy: PolicyBundle) -> list[ComplianceItem]:
    """One item per goal of ``policy``, over the windows signed under its digest."""
    facts = [f for f in (_Facts(d, policy.digest) for d in devices) if f.windows]
    items = []
    for g in policy.goals:
        rules = tuple(r.id for r in policy.rules if r.goal == g.id)
        verdicts = tuple(f.verdict(rules, g.min_completeness) for f in facts)
        if not rules:
            status, reason = "not evaluable", "no rule of the policy serves this goal"
        else:
            status, reason = _worst(verdicts)
        items.append(
            ComplianceItem(
                "goal",
                g.id,
                status,
                reason,
                rules,
                verdicts,
                g.description,
                g.stakeholder,
                g.source,
                g.min_completeness,
            )
        )
    return items


class _Facts:
    """What one device's judged windows say, per rule."""

    def __init__(self, d: DeviceAnalysis, digest: str | None) -> None:
        self.device = d.device
        judged = [
            i
            for i, ev in enumerate(d.evidence)
            if digest is None or ev.config.policy_digest == digest
        ]
        self.windows = len(judged)
        if self.windows == len(d.evidence):
            self.completeness = d.completeness.ratio
        else:
            self.completeness = measure([d.window_sources[i] for i in judged])[1].ratio
        seqs = set()
        # rule -> evaluated, violated, errors, windows with quality problems
        self.stats: dict[str, list[int]] = {}
        self.reasons: dict[str, list[str]] = {}
        for i in judged:
            ev = d.evidence[i]
            seqs.add(ev.seq)
            for r in ev.rules:
                st = self.stats.get(r.rule_id)
                if st is None:
                    st = self.stats[r.rule_id] = [0, 0, 0, 0]
                    self.reasons[r.rule_id] = []
                st[0] += r.evaluated
                st[1] += r.violated
                st[2] += r.errors
                if ev.degraded or r.errors:
                    st[3] += 1
                    why = self.reasons[r.rule_id]
                    for reason in ev.degraded:
                        if reason not in why and len(why) < _MAX_REASONS:
                            why.append(reason)
        self.episodes: dict[str, int] = {}
        for e in d.episodes:
            if e.first_seq in seqs or e.last_seq in seqs:
                self.episodes[e.rule] = self.episodes.get(e.rule, 0) + 1

    def verdict(self, rules: Sequence[str], floor: float | None) -> DeviceVerdict:
        per = tuple(self._rule(rid, floor) for rid in rules)
        status, reason = _worst(per) if per else ("not evaluable", "no rule serves it")
        quality = max((self.stats.get(rid, [0, 0, 0, 0])[3] for rid in rules), default=0)
        return DeviceVerdict(
            self.device, status, reason, self.windows, quality, self.completeness, per
        )

    def _rule(self, rid: str, floor: float | None) -> RuleVerdict:
        evaluated, violated, errors, quality = self.stats.get(rid, [0, 0, 0, 0])
        episodes = self.episodes.get(rid, 0)
        ratio = self.completeness
        if violated or episodes:
            status = "violated"
            reason = f"{violated} reading(s) in a violated state, {episodes} episode(s)"
        elif evaluated == 0:
            status = "not evaluable"
            reason = f"no reading evaluated in {self.windows} window(s)" + (
                f" ({errors} not evaluable)" if errors else " (no data: sensor silent or absent)"
            )
        elif floor is not None and (ratio is None or ratio < floor):
            status = "not evaluable"
            shown = "unknown" if ratio is None else f"{ratio:.1%}"
            reason = f"data completeness {shown} is below the goal's minimum {floor:.1%}"
        elif quality:
            status = "not quality-assured"
            why = list(self.reasons.get(rid, ()))
            if errors:
                why.append(f"{errors} reading(s) not evaluable")
            reason = f"{quality} of {self.windows} window(s) with weak evidence: " + "; ".join(why)
        else:
            status = "met"
            reason = f"{evaluated} reading(s) evaluated, none violated"
        return RuleVerdict(rid, status, reason, evaluated, violated, errors, episodes)


def at_most(item: ComplianceItem, device: str, status: str, reason: str) -> ComplianceItem:
    """``item`` with ``device``'s verdict no better than ``status`` (for ``reason``; a worse
    one stays as it is), and the item's status the worst of its devices' again. Used for
    findings beside the rules, such as failed or overdue self-tests (``self_tests.py``)."""
    devices = tuple(
        replace(dv, status=status, reason=reason)
        if dv.device == device and _RANK[dv.status] < _RANK[status]
        else dv
        for dv in item.devices
    )
    if devices == item.devices:
        return item
    worst, why = _worst(devices)
    return replace(item, devices=devices, status=worst, reason=why)


def _worst(verdicts: Sequence[RuleVerdict | DeviceVerdict]) -> tuple[str, str]:
    """The worst status and its reason, naming the rule or device it comes from."""
    if not verdicts:
        return "not evaluable", "no verified evidence under this policy"
    worst = max(verdicts, key=lambda v: _RANK[v.status])
    if len(verdicts) == 1:
        return worst.status, worst.reason
    name = f"rule {worst.rule}" if isinstance(worst, RuleVerdict) else f"device {worst.device}"
    return worst.status, f"{name}: {worst.reason}"
