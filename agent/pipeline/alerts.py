"""Alerts for people on call: violation episodes starting and ending, evidence degraded
and cleared. Each names the attestation that proves it; the signed attestation is the
record, an alert only points at it (README.md, Running it on a gateway: topic ``alert``,
spool ``alerts.jsonl``).

The runner publishes what these functions return; they decide nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.evidence.claims import RuleResult
from agent.policy.model import Rule

__all__ = ["degraded_alerts", "violation_alerts"]


def violation_alerts(
    device: str,
    evidence: Mapping[str, Any],
    window: tuple[int, int],
    results: Iterable[RuleResult],
    rules: Mapping[str, Rule],
) -> list[dict[str, Any]]:
    """``violation_start`` for each episode that began in ``window``, ``violation_end`` for
    each that ended; ``evidence`` is ``{"log": origin, "seq": seq}`` of the attestation."""
    start, end = window
    out: list[dict[str, Any]] = []
    for res in results:
        rule = rules.get(res.rule_id)
        if rule is None:
            continue
        for e in res.episodes:
            events = ["violation_start"] * (start <= e.start_ms < end)
            events += ["violation_end"] * (e.end_ms is not None)
            out.extend(
                {
                    "event": event,
                    "device": device,
                    "rule": rule.id,
                    "goal": rule.goal,
                    "severity": rule.severity,
                    "start_ms": e.start_ms,
                    "end_ms": e.end_ms,
                    "peak": e.peak,
                    "message": rule.explain_text(e.start_ms, e.end_ms, e.peak),
                    "evidence": dict(evidence),
                }
                for event in events
            )
    return out


def degraded_alerts(
    device: str, evidence: Mapping[str, Any], before: set[str], now: set[str]
) -> list[dict[str, Any]]:
    """``degraded`` for each reason new in ``now``, ``degraded_cleared`` for each gone."""
    changes = [(r, "degraded") for r in sorted(now - before)]
    changes += [(r, "degraded_cleared") for r in sorted(before - now)]
    return [
        {"event": event, "device": device, "reason": reason, "evidence": dict(evidence)}
        for reason, event in changes
    ]
