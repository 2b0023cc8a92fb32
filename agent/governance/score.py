"""The evidence-quality score: one deterministic figure per device and period, from the
evidence alone, with every term shown.

``score = sum(weight x term)``, each term in [0, 1], the weights adding up to 100:

=========================  ======  ===================================================
term                       weight  value
=========================  ======  ===================================================
data availability            25    readings received / readings expected (the data
                                   completeness of ``audit verify``; 0 when unknown)
sequence completeness        15    attestations verified / (last seq - first seq + 1)
restarts                      5    1 / (1 + unclean starts), unclean starts = restarts
                                   after a crash or kill + starts that signed nothing
declared losses              10    readings received / (received + readings declared
                                   lost: unrecorded at restarts, shed under overload)
calibration currency         15    windows whose required channels all had a valid
                                   calibration certificate / windows judged (1: none
                                   required, or no --policy)
self-tests on time           10    self-test results passed / results due: every result
                                   signed, plus each due time an overdue span skipped
                                   (span // period, at least 1); 1: none declared
explained deviations         10    explained / (explained + unexplained); deviations
                                   still within their deadline are left out (1: none)
config freshness             10    windows not degraded for the fleet config (stale,
                                   frozen, refused) / windows
=========================  ======  ===================================================

The score is rounded to one decimal; the terms to six. The same evidence (and the same
``--as-of``, which decides which deviations are past their deadline) gives the same
score wherever it is computed: on the gateway's store, a collector's, or files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.audit.analysis import DeviceAnalysis
    from agent.governance.review import Governance

__all__ = ["WEIGHTS", "DeviceScore", "Term", "score_device"]

WEIGHTS = {
    "data availability": 25,
    "sequence completeness": 15,
    "restarts": 5,
    "declared losses": 10,
    "calibration currency": 15,
    "self-tests on time": 10,
    "explained deviations": 10,
    "config freshness": 10,
}
_CONFIG_REASONS = ("fleet config", "fleet-signed config")
_LOSS_COUNTERS = ("readings_shed_overload",)  # agent.pipeline.intake.SHED_COUNTER


@dataclass(frozen=True)
class Term:
    name: str
    weight: int
    value: float
    basis: str  # the numbers behind it, in words

    @property
    def points(self) -> float:
        return self.weight * self.value

    def to_json(self) -> dict[str, Any]:
        return {
            "term": self.name,
            "weight": self.weight,
            "value": round(self.value, 6),
            "points": round(self.points, 6),
            "basis": self.basis,
        }


@dataclass(frozen=True)
class DeviceScore:
    device: str
    period_start_ms: int | None
    period_end_ms: int | None
    terms: tuple[Term, ...]

    @property
    def score(self) -> float:
        return round(sum(t.points for t in self.terms), 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "score": self.score,
            "period_start_ms": self.period_start_ms,
            "period_end_ms": self.period_end_ms,
            "terms": [t.to_json() for t in self.terms],
        }


def _share(num: float, den: float, none: float = 1.0) -> float:
    return none if den <= 0 else max(0.0, min(1.0, num / den))


def _self_tests_due(d: DeviceAnalysis) -> tuple[int, int]:
    """(results due, of them passed): each result signed, and each due time an overdue
    span of the self-test skipped (at least one per span)."""
    st = d.self_tests
    if st is None:
        return 0, 0
    passed = sum(t.passed for t in st.tests)
    missed = sum(max(1, o.span_ms // o.every_ms) for o in st.overdue)
    return passed + sum(t.failed for t in st.tests) + missed, passed


def score_device(d: DeviceAnalysis, gov: Governance) -> DeviceScore:
    t: list[Term] = []

    def term(name: str, value: float, basis: str) -> None:
        t.append(Term(name, WEIGHTS[name], value, basis))

    c = d.completeness
    term(
        "data availability",
        0.0 if c.ratio is None else c.ratio,
        f"{c.received} of {c.expected:.0f} expected (frames, lines or polls, as each "
        "source counts them)"
        if c.ratio is not None
        else "unknown (no source declares its rate)",
    )
    span = 0 if d.first_seq is None or d.last_seq is None else d.last_seq - d.first_seq + 1
    seqs = len({ev.seq for ev in d.evidence})
    term(
        "sequence completeness",
        _share(seqs, span, 0.0),
        f"{seqs} of {span} seqs ({d.first_seq}..{d.last_seq})" if span else "no attestation",
    )
    r = d.restarts
    unclean = r.unclean + r.starts_unsigned
    term("restarts", 1.0 / (1 + unclean), f"{unclean} unclean start(s) of {r.count} restart(s)")
    shed = sum(d.health.get(k, 0) for k in _LOSS_COUNTERS)
    lost = r.unrecorded_readings + shed
    term(
        "declared losses",
        _share(d.readings, d.readings + lost),
        f"{lost} reading(s) declared lost ({r.unrecorded_readings} at restarts, {shed} shed) "
        f"beside {d.readings} readings received",
    )
    cover = [x for x in gov.calibration if x.device == d.device]
    if cover:
        judged = max(x.windows for x in cover)
        ok = _all_covered(d, gov)
        term("calibration currency", _share(ok, judged), f"{ok} of {judged} window(s) covered")
    else:
        term("calibration currency", 1.0, "no channel requires calibration (or no --policy)")
    due, passed = _self_tests_due(d)
    term(
        "self-tests on time",
        _share(passed, due),
        f"{passed} of {due} self-test result(s) due passed on time" if due else "none declared",
    )
    devs = [x for x in gov.deviations if x.device == d.device]
    explained = sum(x.status == "explained" for x in devs)
    unexplained = sum(x.status == "unexplained" for x in devs)
    term(
        "explained deviations",
        _share(explained, explained + unexplained),
        f"{explained} explained, {unexplained} unexplained, "
        f"{len(devs) - explained - unexplained} within their deadline",
    )
    n = len(d.windows)
    stale = sum(any(k in why for why in w.degraded for k in _CONFIG_REASONS) for w in d.windows)
    term(
        "config freshness",
        _share(n - stale, n),
        f"{stale} of {n} window(s) with a stale or refused fleet config",
    )
    return DeviceScore(d.device, d.period_start_ms, d.period_end_ms, tuple(t))


def _all_covered(d: DeviceAnalysis, gov: Governance) -> int:
    """Windows judged in which every required channel was covered."""
    certs = [c for c in gov.certificates if c.device == d.device]
    channels = {x.channel for x in gov.calibration if x.device == d.device}
    digest = gov.policy_digest
    n = 0
    for w in d.windows:
        if w.policy_digest != digest:
            continue
        if all(
            any(c.channel == ch and c.covers(w.start_ms, w.end_ms) for c in certs)
            for ch in channels
        ):
            n += 1
    return n
