"""What verified evidence says of the scheduled self-tests (claim -70001/13).

Per device: each self-test's results (passed, failed; each failure with its time,
observed value and error) and the spans in which it was **overdue**: a stretch of the
device's verified evidence longer than the test's period plus one window (the longest
window in the evidence: the grace the due rule needs, ``docs/self-tests.md``) without a
result. The evidence begins and ends a span too, so a self-test that never ran in a long
enough period is overdue from its start.

Which self-tests are checked: with ``--policy``, those the policy declares (with their
goals), and any other the evidence shows (another policy version); without, only those
the evidence shows at least once (each result carries its period, claim key 11): a
declared self-test that never ran at all needs the policy to be noticed, and the JSON's
``note`` says so.

These are governance findings, not integrity ones: they never make the evidence
``findings``. With ``--policy`` a failed or overdue self-test makes the goal it serves
(``goal:``) *not quality-assured* at best (a violated or not evaluable goal stays so),
through :func:`agent.audit.compliance.at_most`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.audit.compliance import ComplianceItem, at_most
from agent.evidence.claims import Evidence

if TYPE_CHECKING:
    from agent.policy.model import PolicyBundle

__all__ = [
    "DeviceSelfTests",
    "Overdue",
    "SelfTestFailure",
    "SelfTestSummary",
    "judge_self_tests",
    "summarise_self_tests",
]

NEEDS_POLICY = (
    "self-tests found in the evidence only (their period is in each result); one the "
    "policy declares that never ran shows with --policy BUNDLE.yaml"
)


@dataclass(frozen=True)
class SelfTestFailure:
    seq: int
    time_ms: int
    observed: float | None
    reference: float | None
    error: float | None
    tolerance: float
    readings: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class Overdue:
    """No result for ``test`` from ``from_ms`` to ``to_ms`` (``open``: to the evidence's end)."""

    test: str
    goal: str | None
    every_ms: int
    from_ms: int
    to_ms: int
    span_ms: int
    open: bool


@dataclass
class SelfTestSummary:
    id: str
    kind: str
    channels: tuple[str, ...]
    goal: str | None
    every_ms: int
    declared: bool  # by the policy given (False: seen in the evidence only)
    passed: int = 0
    failed: int = 0
    last_ms: int | None = None
    failures: list[SelfTestFailure] = field(default_factory=list)
    times: list[int] = field(default_factory=list, repr=False)


@dataclass
class DeviceSelfTests:
    source: str  # "policy" or "evidence": where the list of self-tests comes from
    grace_ms: int
    tests: list[SelfTestSummary] = field(default_factory=list)
    overdue: list[Overdue] = field(default_factory=list)

    def problems(self, goal: str) -> str | None:
        """Why ``goal``'s evidence quality is not assured by its self-tests, or None."""
        why = []
        for t in self.tests:
            if t.goal != goal:
                continue
            late = sum(1 for o in self.overdue if o.test == t.id)
            if t.failed or late:
                what = [f"{t.failed} failed"] * bool(t.failed) + [f"{late} overdue"] * bool(late)
                why.append(f"self-test {t.id}: {', '.join(what)}")
        return "; ".join(why) or None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "note": NEEDS_POLICY if self.source == "evidence" else None,
            "grace_ms": self.grace_ms,
            "tests": [
                {
                    "id": t.id,
                    "kind": t.kind,
                    "channels": list(t.channels),
                    "goal": t.goal,
                    "every_ms": t.every_ms,
                    "declared": t.declared,
                    "results": t.passed + t.failed,
                    "passed": t.passed,
                    "failed": t.failed,
                    "last_ms": t.last_ms,
                    "failures": [{**vars(f), "readings": list(f.readings)} for f in t.failures],
                }
                for t in self.tests
            ],
            "overdue": [vars(o) for o in self.overdue],
        }


def summarise_self_tests(chain: Sequence[Evidence], policy: PolicyBundle | None) -> DeviceSelfTests:
    """The self-tests of one device's verified chain (in seq order)."""
    grace = max((ev.window_end_ms - ev.window_start_ms for ev in chain), default=0)
    out = DeviceSelfTests("policy" if policy is not None else "evidence", grace)
    by_id: dict[str, SelfTestSummary] = {}
    for t in policy.self_tests if policy is not None else ():
        by_id[t.id] = SelfTestSummary(t.id, t.kind, t.channels, t.goal, t.every_ms, True)
    for ev in chain:
        for r in ev.self_tests:
            s = by_id.get(r.test_id)
            if s is None:
                s = by_id[r.test_id] = SelfTestSummary(
                    r.test_id, r.kind, r.channels, None, r.every_ms, False
                )
            s.times.append(r.time_ms)
            s.last_ms = r.time_ms
            if r.passed:
                s.passed += 1
            else:
                s.failed += 1
                s.failures.append(
                    SelfTestFailure(
                        ev.seq, r.time_ms, r.observed, r.reference, r.error, r.tolerance,
                        r.readings, r.reason,
                    )
                )  # fmt: skip
    out.tests = list(by_id.values())
    if chain:
        start = min(ev.window_start_ms for ev in chain)
        end = max(ev.window_end_ms for ev in chain)
        for s in out.tests:
            out.overdue += _overdue(s, start, end, grace)
    return out


def _overdue(s: SelfTestSummary, start: int, end: int, grace: int) -> list[Overdue]:
    """The spans without a result longer than the period plus one window."""
    limit = s.every_ms + grace
    out = []
    prev = start
    for t in [*sorted(s.times), None]:
        to = end if t is None else t
        if to - prev > limit:
            out.append(Overdue(s.id, s.goal, s.every_ms, prev, to, to - prev, t is None))
        if t is not None:
            prev = max(prev, t)
    return out


def judge_self_tests(items: list[ComplianceItem], per_device: dict[str, DeviceSelfTests]) -> None:
    """Goals served by a failed or overdue self-test: *not quality-assured* at best."""
    for j, item in enumerate(items):
        if item.kind != "goal":
            continue
        for dv in item.devices:
            st = per_device.get(dv.device)
            why = st.problems(item.id) if st is not None else None
            if why is not None:
                item = items[j] = at_most(item, dv.device, "not quality-assured", why)
