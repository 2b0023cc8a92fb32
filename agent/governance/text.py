"""The governance block of ``audit verify``'s text: deviations with their explanations or
"unexplained", calibration cover, and each device's evidence-quality score."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.audit._format import dur, ts

if TYPE_CHECKING:
    from agent.audit.analysis import Analysis

__all__ = ["governance_lines"]

MAX_LISTED = 20


def governance_lines(a: Analysis) -> list[str]:
    g = a.governance
    if g is None:
        return []
    refused = f", {len(g.findings)} refused (listed above)" if g.findings else ""
    out = [
        "",
        f"governance: as of {ts(g.as_of_ms)}; {g.statements} signed statement(s) given{refused}",
    ]
    counts = g.counts()
    out.append(
        f"  deviations     {len(g.deviations)}: {counts['explained']} explained, "
        f"{counts['awaiting explanation']} awaiting explanation, "
        f"{counts['unexplained']} unexplained"
    )
    for d in g.deviations[:MAX_LISTED]:
        span = "still open" if d.end_ms is None else f"for {dur(d.end_ms - d.start_ms)}"
        due = "no deadline set" if d.due_ms is None else f"due {ts(d.due_ms)}"
        goal = f"goal {d.goal}, " if d.goal else ""
        out.append(
            f"    {d.status.upper():<21} {d.id}  ({goal}from {ts(d.start_ms)} {span}; {due})"
        )
        ex = d.explanation
        if ex is not None:
            late = " (after the deadline)" if d.late else ""
            out.append(
                f"    {'':<21} by {ex.signer} ({ex.role}) at {ts(ex.signed_ms)}{late}: cause: "
                f"{ex.cause}; action: {ex.action}; product {ex.disposition}"
                + (f"; {ex.text}" if ex.text else "")
            )
    if len(g.deviations) > MAX_LISTED:
        out.append(f"    ... {len(g.deviations) - MAX_LISTED} more in --json")
    if g.calibration:
        out.append("  calibration    channels the policy requires a calibration certificate for:")
        for c in g.calibration:
            used = f" ({', '.join(c.certificates)})" if c.certificates else ""
            out.append(f"    {c.device} {c.channel:<14} {c.status.upper():<15} {c.detail}{used}")
    elif g.certificates:
        out.append(
            f"  calibration    {len(g.certificates)} certificate(s); no channel requires one"
        )
    for s in a.scores():
        out.append(
            f"  quality score  {s.device} {s.score:.1f} / 100 "
            "(each term: edgegov audit score, same arguments)"
        )
    return out
