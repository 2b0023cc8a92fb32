"""One analysis of verified evidence: every number ``audit verify`` (text and JSON) and
``audit report --html`` show, computed once, here.

::

    AuditResult (verify.py: integrity, the chain per log)
        -> analyze(result, policy=None)
        -> Analysis
             evidence: "intact" | "findings"        the integrity verdict
             compliance: [ComplianceItem]           per goal (with --policy) or per rule
             devices: [DeviceAnalysis]              per log: period, completeness,
                                                    episodes, degraded runs, restarts, ...
             to_json()                              what --json prints; the report shows
                                                    the same values (tests check it)

The renderings (``text.py``, ``report.py``) format these values and compute none.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent.audit.completeness import Completeness, WindowSources, measure
from agent.audit.compliance import ComplianceItem, judge_goals, judge_rules
from agent.audit.self_tests import DeviceSelfTests, judge_self_tests, summarise_self_tests
from agent.audit.verify import AuditResult, Finding, VerifiedLog
from agent.errors import Error
from agent.evidence.claims import Evidence

if TYPE_CHECKING:
    from agent.governance.review import Governance
    from agent.governance.score import DeviceScore
    from agent.policy.model import PolicyBundle

__all__ = [
    "Analysis",
    "DegradedRun",
    "DeviceAnalysis",
    "Episode",
    "PolicyMismatch",
    "RestartEvent",
    "Restarts",
    "Window",
    "analyze",
]


class PolicyMismatch(Error):
    """The policy given is not one the evidence was signed under (an input error, exit 2)."""


_NO_COMPLETENESS = Completeness(0, 0.0, None, {})


@dataclass(frozen=True)
class Episode:
    """One violation episode of a rule, merged over the windows that list it.

    ``end_ms`` None: still open at the end of the evidence (``open_at_ms``: the end of
    the last window that shows it open); ``duration_ms`` is then None too.
    """

    rule: str
    goal: str | None
    start_ms: int
    end_ms: int | None
    duration_ms: int | None
    open_at_ms: int | None
    peak: float | None
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class DegradedRun:
    """Consecutive windows whose evidence is degraded for the same reasons."""

    first_seq: int
    last_seq: int
    windows: int
    start_ms: int
    end_ms: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RestartEvent:
    """One agent start on an existing log, or a new log declared (claim -70001/12)."""

    seq: int
    started_ms: int
    last_end_ms: int | None
    down_ms: int
    clean: bool
    recovered_readings: int
    unrecorded_readings: int | None
    no_data_ms: dict[str, int]
    new_log: str | None
    previous_log: str | None


@dataclass
class Restarts:
    count: int = 0
    unclean: int = 0
    down_ms: int = 0
    recovered_readings: int = 0
    unrecorded_readings: int = 0  # sum of those stated
    unrecorded_unknown: int = 0  # restarts that could not state it
    frames_unrecorded: int = 0  # health counter: frames framed devices sent meanwhile
    new_logs: int = 0  # starts that began a new log beside an earlier log's state
    # starts the bootcount (267) shows that stated no restart: killed before their first
    # attestation (their downtime lies inside the next stated restart's)
    starts_unsigned: int = 0
    events: list[RestartEvent] = field(default_factory=list)


@dataclass(slots=True)
class Window:
    seq: int
    start_ms: int
    end_ms: int
    readings: int
    completeness: Completeness
    violated: dict[str, int]
    risk: dict[str, float | None]
    degraded: tuple[str, ...]
    policy_digest: str


@dataclass
class DeviceAnalysis:
    """What one device log's verified evidence says."""

    device: str
    origin: str
    signer: str
    attestations: int = 0
    redelivered: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    period_start_ms: int | None = None
    period_end_ms: int | None = None
    readings: int = 0
    log_size: int = 0
    policies: list[str] = field(default_factory=list)
    completeness: Completeness = field(default_factory=lambda: _NO_COMPLETENESS)
    rules: dict[str, dict[str, int]] = field(default_factory=dict)
    episodes: list[Episode] = field(default_factory=list)
    degraded: list[DegradedRun] = field(default_factory=list)
    degraded_windows: int = 0
    restarts: Restarts = field(default_factory=Restarts)
    risk: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: dict[str, int] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    # what compliance re-reads: the chain, and each window's completeness inputs
    evidence: list[Evidence] = field(default_factory=list, repr=False)
    window_sources: list[WindowSources] = field(default_factory=list, repr=False)
    self_tests: DeviceSelfTests | None = None  # set by analyze (self_tests.py)


@dataclass
class Analysis:
    files: int
    verified: int
    attestations: int
    redelivered: int
    findings: list[Finding]
    devices: list[DeviceAnalysis]
    compliance: list[ComplianceItem]
    scope: str  # "goals" (a policy was given) or "rules"
    policy: dict[str, Any] | None = None  # id, version, digest, file; windows judged
    governance: Governance | None = None  # deviations, calibration (agent.governance)
    disclosure: list[dict[str, Any]] | None = None  # export bundles (agent.audit.bundle)

    def scores(self) -> list[DeviceScore]:
        """The evidence-quality score of each device (``agent.governance.score``)."""
        from agent.governance.review import Governance
        from agent.governance.score import score_device

        gov = self.governance or Governance(0)
        return [score_device(d, gov) for d in self.devices if d.attestations]

    @property
    def evidence(self) -> str:
        """The integrity verdict: ``intact`` (every signature and chain check passed, at
        least one attestation) or ``findings``."""
        return "intact" if not self.findings and self.verified > 0 else "findings"

    @property
    def intact(self) -> bool:
        return self.evidence == "intact"

    def not_met(self) -> list[ComplianceItem]:
        return [c for c in self.compliance if c.status != "met"]

    def to_json(self) -> dict[str, Any]:
        return {
            "evidence": self.evidence,
            "files": self.files,
            "verified": self.verified,
            "attestations": self.attestations,
            "redelivered": self.redelivered,
            "findings": [f.to_json() for f in self.findings],
            "compliance": {
                "scope": self.scope,
                "policy": self.policy,
                "note": None
                if self.scope == "goals"
                else "per rule; goals (owner, clause, data thresholds) need --policy BUNDLE.yaml",
                "items": [c.to_json() for c in self.compliance],
            },
            "devices": [_device_json(d) for d in self.devices],
            "governance": None
            if self.governance is None
            else self.governance.to_json() | {"scores": [x.to_json() for x in self.scores()]},
        } | ({"disclosure": self.disclosure} if self.disclosure is not None else {})


def analyze(res: AuditResult, policy: PolicyBundle | None = None) -> Analysis:
    """The analysis of verified evidence; with ``policy``, compliance per goal.

    Raises:
        PolicyMismatch: ``policy``'s digest is not attested by any verified window.
    """
    devices = [_device(log) for log in res.logs]
    attested = {w.policy_digest for d in devices for w in d.windows}
    info: dict[str, Any] | None = None
    if policy is None:
        items = judge_rules(devices)
        scope = "rules"
    else:
        if attested and policy.digest not in attested:
            raise PolicyMismatch(
                f"{policy.source}: policy {policy.id} v{policy.version} (digest "
                f"{policy.digest[:16]}...) is not the policy the evidence was signed under "
                f"(attested: {', '.join(sorted(d[:16] + '...' for d in attested))})"
            )
        judged = sum(1 for d in devices for w in d.windows if w.policy_digest == policy.digest)
        info = {
            "id": policy.id,
            "version": policy.version,
            "digest": policy.digest,
            "file": str(policy.source),
            "windows_judged": judged,
            "windows_other_policy": sum(len(d.windows) for d in devices) - judged,
        }
        items = judge_goals(devices, policy)
        scope = "goals"
        goal_of = {r.id: r.goal for r in policy.rules}
        for d in devices:
            d.episodes = [replace(e, goal=goal_of.get(e.rule)) for e in d.episodes]
    tests = {d.device: summarise_self_tests(d.evidence, policy) for d in devices}
    for d in devices:
        d.self_tests = tests[d.device]
    judge_self_tests(items, tests)
    return Analysis(
        res.files,
        res.verified,
        sum(d.attestations for d in devices),
        res.redelivered,
        res.findings,
        devices,
        items,
        scope,
        info,
    )


def _device(log: VerifiedLog) -> DeviceAnalysis:
    """One pass over a log's chain (once per attestation: kept lean, issue 6)."""
    d = DeviceAnalysis(log.device, log.origin, log.signer, redelivered=log.redelivered)
    chain = log.evidence
    d.evidence = chain
    d.attestations = len(chain)
    if not chain:
        return d
    d.first_seq, d.last_seq = chain[0].seq, chain[-1].seq
    d.period_start_ms = min(ev.window_start_ms for ev in chain)
    d.period_end_ms = max(ev.window_end_ms for ev in chain)
    rules = d.rules
    health = d.health
    episodes: dict[tuple[str, int], list[Any]] = {}
    sources = d.window_sources
    last_digest = ""
    runs: list[list[Any]] = []  # degraded runs: first seq, last seq, windows, start, end, why
    for ev in chain:
        d.readings += ev.readings
        if ev.checkpoint.size > d.log_size:
            d.log_size = ev.checkpoint.size
        cfg = ev.config
        if cfg.policy_digest != last_digest:
            pol = f"{cfg.policy_id} v{cfg.policy_version} ({cfg.policy_digest[:16]})"
            if pol not in d.policies:
                d.policies.append(pol)
            d.config_changes.append(
                {
                    "seq": ev.seq,
                    "start_ms": ev.window_start_ms,
                    "policy": f"{cfg.policy_id} v{cfg.policy_version}",
                    "digest": cfg.policy_digest,
                }
            )
            last_digest = cfg.policy_digest
        violated: dict[str, int] = {}
        for r in ev.rules:
            agg = rules.get(r.rule_id)
            if agg is None:
                agg = rules[r.rule_id] = dict(_RULE_AGG)
            agg["evaluated"] += r.evaluated
            agg["violated"] += r.violated
            agg["errors"] += r.errors
            if r.violated:
                agg["windows_violated"] += 1
                violated[r.rule_id] = r.violated
            for re in r.episodes:
                ep = episodes.get((r.rule_id, re.start_ms))
                if ep is None:
                    episodes[r.rule_id, re.start_ms] = [
                        re.end_ms,
                        ev.window_end_ms,
                        re.peak,
                        ev.seq,
                        ev.seq,
                    ]
                else:  # the same episode, listed again by a later window
                    if re.end_ms is not None:
                        ep[0] = re.end_ms
                    ep[1], ep[2], ep[4] = ev.window_end_ms, re.peak, ev.seq
        risk: dict[str, float | None] = {}
        for k in ev.risk:
            risk[k.model_id] = k.score
            _risk(d.risk, k.model_id, k.score, k.provider, k.ood)
        for counter, v in ev.health.items():
            health[counter] = health.get(counter, 0) + v
        if ev.degraded:
            d.degraded_windows += 1
            run = runs[-1] if runs else None
            if run is not None and run[1] == ev.seq - 1 and run[5] == ev.degraded:
                run[1], run[2], run[4] = ev.seq, run[2] + 1, ev.window_end_ms
            else:
                runs.append([ev.seq, ev.seq, 1, ev.window_start_ms, ev.window_end_ms, ev.degraded])
        no_data: dict[str, int] = {}
        if ev.restart is not None:
            _restart(d.restarts, ev)
            no_data = {s.source: s.no_data_ms for s in ev.restart.sources}
        sources.append(
            WindowSources(
                ev.window_end_ms - ev.window_start_ms, ev.source_health or (ev.health,), no_data
            )
        )
        d.windows.append(
            Window(
                ev.seq,
                ev.window_start_ms,
                ev.window_end_ms,
                ev.readings,
                _NO_COMPLETENESS,
                violated,
                risk,
                ev.degraded,
                cfg.policy_digest,
            )
        )
    d.restarts.frames_unrecorded = health.get("frames_unrecorded", 0)
    stated = sum(1 for e in d.restarts.events if e.seq > chain[0].seq)
    d.restarts.starts_unsigned = max(0, chain[-1].bootcount - chain[0].bootcount - stated)
    d.degraded = [DegradedRun(r[0], r[1], r[2], r[3], r[4], tuple(r[5])) for r in runs]
    per, d.completeness = measure(sources)
    for win, c in zip(d.windows, per):
        win.completeness = c
    d.episodes = sorted(
        (_episode(rule, start, ep) for (rule, start), ep in episodes.items()),
        key=lambda e: (e.start_ms, e.rule),
    )
    for e in d.episodes:  # counted whole, not once per window that lists them
        agg = rules[e.rule]
        agg["episodes"] += 1
        if e.duration_ms is not None and e.duration_ms > agg["longest_episode_ms"]:
            agg["longest_episode_ms"] = e.duration_ms
    return d


_RULE_AGG = {
    "evaluated": 0,
    "violated": 0,
    "errors": 0,
    "windows_violated": 0,
    "episodes": 0,
    "longest_episode_ms": 0,
}


def _episode(rule: str, start: int, ep: list[Any]) -> Episode:
    end, last_window_end, peak, first_seq, last_seq = ep
    return Episode(
        rule,
        None,
        start,
        end,
        None if end is None else end - start,
        last_window_end if end is None else None,
        peak,
        first_seq,
        last_seq,
    )


def _risk(
    out: dict[str, dict[str, Any]],
    model: str,
    score: float | None,
    provider: str,
    ood: tuple[str, ...] | None,
) -> None:
    agg = out.get(model)
    if agg is None:
        agg = out[model] = {
            "scored_windows": 0,
            "max": None,
            "mean": None,
            "providers": [],
            "out_of_distribution_windows": 0,
            "ood_not_assessed_windows": 0,
        }
    if score is not None:
        n = agg["scored_windows"]
        agg["mean"] = score if n == 0 else (agg["mean"] * n + score) / (n + 1)
        agg["max"] = score if agg["max"] is None else max(agg["max"], score)
        agg["scored_windows"] = n + 1
        if ood is None:
            agg["ood_not_assessed_windows"] += 1
        elif ood:
            agg["out_of_distribution_windows"] += 1
    if provider not in agg["providers"]:
        agg["providers"].append(provider)


def _restart(out: Restarts, ev: Evidence) -> None:
    r = ev.restart
    assert r is not None
    if ev.seq == 0 and r.new_log is None:
        return  # the first start of a new log, with no earlier one: not a restart
    out.count += 1
    if r.new_log is not None:
        out.new_logs += 1  # how the earlier log's run ended, and when, is not known here
    else:
        out.unclean += not r.clean
    out.down_ms += r.down_ms
    out.recovered_readings += r.recovered_readings
    if r.unrecorded_readings is None:
        out.unrecorded_unknown += 1
    else:
        out.unrecorded_readings += r.unrecorded_readings
    out.events.append(
        RestartEvent(
            ev.seq,
            r.started_ms,
            r.last_end_ms,
            r.down_ms,
            r.clean,
            r.recovered_readings,
            r.unrecorded_readings,
            {s.source: s.no_data_ms for s in r.sources},
            r.new_log,
            r.previous_log,
        )
    )


# -- JSON ---------------------------------------------------------------------------


def _device_json(d: DeviceAnalysis) -> dict[str, Any]:
    return {
        "device": d.device,
        "origin": d.origin,
        "signer": d.signer,
        "attestations": d.attestations,
        "redelivered": d.redelivered,
        "first_seq": d.first_seq,
        "last_seq": d.last_seq,
        "period_start_ms": d.period_start_ms,
        "period_end_ms": d.period_end_ms,
        "readings": d.readings,
        "log_size": d.log_size,
        "policies": d.policies,
        "completeness": d.completeness.to_json(),
        "rules": d.rules,
        "episodes": [_fields(e) for e in d.episodes],
        "degraded": {
            "windows": d.degraded_windows,
            "runs": [{**_fields(r), "reasons": list(r.reasons)} for r in d.degraded],
        },
        "restarts": {
            **{k: v for k, v in _fields(d.restarts).items() if k != "events"},
            "events": [_fields(e) for e in d.restarts.events],
        },
        "risk": d.risk,
        "health": d.health,
        "config_changes": d.config_changes,
        "self_tests": d.self_tests.to_json() if d.self_tests is not None else None,
        "windows": [
            {
                "seq": w.seq,
                "start_ms": w.start_ms,
                "end_ms": w.end_ms,
                "readings": w.readings,
                "completeness": w.completeness.to_json(),
                "violated": w.violated,
                "risk": w.risk,
                "degraded": list(w.degraded),
                "policy_digest": w.policy_digest,
            }
            for w in d.windows
        ],
    }


def _fields(obj: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
