"""One row per fault, and the table ``edgegov bench faults`` prints (Markdown, so it
pastes into a README or an issue as it is)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.tools.bench.core import machine
from agent.tools.bench.faults.measure import Attestations, AuditView, Readings

__all__ = ["COLUMNS", "FaultRow", "format_table"]

COLUMNS = (
    "fault",
    "iterations",
    "attestations signed",
    "delivered",
    "lost",
    "duplicated",
    "readings lost / declared",
    "detected by audit verify",
)


@dataclass
class FaultRow:
    """One fault's outcome.

    ``readings`` is None where no framed device's frames could be counted (a dead
    sensor). ``problems`` lists what breaks the promise (an attestation lost, a reading
    lost without a signed declaration, a redelivery reported as a finding, ...): empty
    when the fault was survived and told. ``unseen`` says where the fault left a trace
    in the signed evidence that ``audit verify`` does not report.
    """

    scenario: str
    fault: str
    iterations: int
    attestations: Attestations
    readings: Readings | None
    audit: AuditView
    detected: str
    agent: list[str] = field(default_factory=list)  # what the agent did, run by run
    problems: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def cells(self) -> tuple[str, ...]:
        a, r = self.attestations, self.readings
        return (
            self.fault,
            str(self.iterations),
            str(a.signed),
            str(a.delivered),
            str(a.lost),
            str(a.duplicated),
            "n/a" if r is None else f"{r.lost} / {r.declared}",
            self.detected,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "fault": self.fault,
            "iterations": self.iterations,
            "attestations": vars(self.attestations),
            "readings": None if self.readings is None else vars(self.readings),
            "audit": self.audit.to_json(),
            "detected": self.detected,
            "agent": self.agent,
            "problems": self.problems,
            "unseen": self.unseen,
            "seconds": round(self.seconds, 1),
        }


def format_table(rows: list[FaultRow]) -> str:
    cells = [COLUMNS, *(r.cells() for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = {1, 2, 3, 4, 5, 6}

    def line(c: tuple[str, ...]) -> str:
        parts = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(c, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)
        )
        + "|"
    )
    out = [f"edgegov bench faults on {machine()}", "", line(COLUMNS), rule]
    out += [line(r.cells()) for r in rows]
    bad = [r for r in rows if r.problems]
    out.append("")
    if bad:
        out.append("NOT survived as promised:")
        out += [f"  {r.fault}: {p}" for r in bad for p in r.problems]
    else:
        out.append(
            "every fault survived: 0 attestations lost, 0 readings lost without a signed "
            "declaration, 0 redeliveries reported as findings"
        )
    unseen = [(r.fault, u) for r in rows for u in r.unseen]
    if unseen:
        out.append("in the signed evidence, not reported by audit verify:")
        out += [f"  {fault}: {u}" for fault, u in unseen]
    missing = sorted({k for r in rows for k in r.audit.missing})
    if missing:
        out.append(f"audit verify --json lacked: {', '.join(missing)}")
    return "\n".join(out)
