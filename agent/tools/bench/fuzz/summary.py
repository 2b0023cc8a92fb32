"""What a campaign found: outcomes per kind, crash signatures, bombs, CLI problems.

:class:`FuzzReport` is plain data (it goes through JSON between the differential's two
processes and back); :func:`format_report` prints the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agent.tools.bench.fuzz.classify import BAD_OUTCOMES, OUTCOMES, CaseResult
from agent.tools.bench.fuzz.mutations import KINDS, Case

__all__ = ["BOMB_MAX_BYTES", "BOMB_MAX_S", "DifferentialReport", "FuzzReport", "format_report"]

BOMB_MAX_S = 1.0
BOMB_MAX_BYTES = 64 * 1024 * 1024
_EXAMPLES = 40  # failing cases listed in a report


@dataclass
class FuzzReport:
    """Counts per kind and outcome, and what is needed to act on the bad ones."""

    seed: int
    cases: int
    implementation: str
    seconds: float = 0.0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    crashes: dict[str, dict[str, Any]] = field(default_factory=dict)  # by signature
    bombs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # the first few bad cases
    cli_cases: int = 0
    cli_problems: list[str] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def add(self, case: Case, r: CaseResult, cli_problems: list[str] | None = None) -> None:
        row = self.counts.setdefault(case.kind, dict.fromkeys(("cases", *OUTCOMES), 0))
        row["cases"] += 1
        row[r.outcome] += 1
        self.fingerprints.append(r.fingerprint)
        self.labels.append(repr(case))
        if r.outcome == "crash":
            sig = f"{r.crash} at {r.where}"
            c = self.crashes.setdefault(
                sig, {"count": 0, "mutations": {}, "example": f"{case!r}: {r.message}"}
            )
            c["count"] += 1
            m = f"{case.kind} {case.mutation if case.kind in _NAMED else '*'}"
            c["mutations"][m] = c["mutations"].get(m, 0) + 1
        elif r.outcome in BAD_OUTCOMES and len(self.failures) < _EXAMPLES:
            self.failures.append(f"{case!r}: {r.outcome} [{r.fingerprint.split('|', 3)[-1]}]")
        if case.kind == "bomb":
            self.bombs.append(
                {
                    "bomb": case.mutation,
                    "outcome": r.outcome,
                    "seconds": round(r.seconds, 4),
                    "peak_bytes": r.peak_bytes,
                }
            )
        if cli_problems is not None:
            self.cli_cases += 1
            self.cli_problems.extend(cli_problems)

    def total(self, outcome: str) -> int:
        return sum(row.get(outcome, 0) for row in self.counts.values())

    @property
    def bombs_over_limits(self) -> list[dict[str, Any]]:
        return [
            b for b in self.bombs if b["seconds"] > BOMB_MAX_S or b["peak_bytes"] > BOMB_MAX_BYTES
        ]

    @property
    def failed(self) -> bool:
        """Any crash, undetected, accepted-identical, wrong-file, invalid JSON or CLI problem."""
        return any(self.total(o) for o in BAD_OUTCOMES) or bool(self.cli_problems)

    def to_json(self, per_case: bool = True) -> dict[str, Any]:
        """Plain data; ``per_case=False`` leaves out the fingerprint and label of each case."""
        doc = asdict(self)
        if not per_case:
            del doc["fingerprints"], doc["labels"]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> FuzzReport:
        return cls(**doc)


_NAMED = frozenset({"envelope", "claims-unsigned", "claims-resigned", "bomb", "ecdsa-high-s"})

_COLUMNS = (
    ("cases", "cases"),
    ("rejected", "rejected"),
    ("accepted-identical", "acc-identical"),
    ("undetected", "undetected"),
    ("wrong-file", "wrong-file"),
    ("accepted", "accepted(re-signed)"),
    ("crash", "crashes"),
    ("invalid-json", "invalid JSON"),
)


def format_report(report: FuzzReport) -> str:
    """The table, bombs, CLI problems, crash signatures and the first failing cases."""
    lines = [
        f"edgegov bench fuzz: {report.cases} cases, seed {report.seed}, native.verify "
        f"implementation {report.implementation}, {report.seconds:.1f} s",
    ]
    width = max(len(k) for k in KINDS) + 1
    lines.append(f"{'kind':<{width}}" + "".join(f" {h:>{max(len(h), 6)}}" for _, h in _COLUMNS))
    rows = [(k, report.counts[k]) for k in KINDS if k in report.counts]
    total = {c: report.total(c) for c, _ in _COLUMNS}
    for name, row in [*rows, ("total", total)]:
        lines.append(
            f"{name:<{width}}" + "".join(f" {row.get(c, 0):>{max(len(h), 6)}}" for c, h in _COLUMNS)
        )
    if report.bombs:
        slow = max(report.bombs, key=lambda b: b["seconds"])
        big = max(report.bombs, key=lambda b: b["peak_bytes"])
        lines.append(
            f"bombs: {len(report.bombs)} run; max {slow['seconds']:.3f} s ({slow['bomb']}), "
            f"max peak {big['peak_bytes'] / 1e6:.1f} MB ({big['bomb']}); limits "
            f"{BOMB_MAX_S:g} s, {BOMB_MAX_BYTES / 2**20:g} MiB: "
            f"{len(report.bombs_over_limits)} over"
        )
    lines.append(
        f"CLI: {report.cli_cases} cases ({3 * report.cli_cases} commands), "
        f"{len(report.cli_problems)} problems"
    )
    lines.extend(f"  {p}" for p in report.cli_problems[:_EXAMPLES])
    if report.crashes:
        lines.append(f"crash signatures ({len(report.crashes)}):")
        for sig, c in sorted(report.crashes.items(), key=lambda kv: -kv[1]["count"]):
            muts = ", ".join(f"{m} ({n})" for m, n in sorted(c["mutations"].items()))
            lines.append(
                f"  {c['count']:>5}  {sig}\n         by: {muts}\n         e.g. {c['example']}"
            )
    if report.failures:
        lines.append(f"first {len(report.failures)} other failing cases:")
        lines.extend(f"  {f}" for f in report.failures)
    return "\n".join(lines)


@dataclass
class DifferentialReport:
    """The same campaign on the compiled and the pure path, and where they differ."""

    compiled: FuzzReport
    pure: FuzzReport
    mismatches: list[str]

    @property
    def failed(self) -> bool:
        return self.compiled.failed or self.pure.failed or bool(self.mismatches)

    def to_json(self) -> dict[str, Any]:
        return {
            "compiled": self.compiled.to_json(per_case=False),
            "pure": self.pure.to_json(per_case=False),
            "mismatches": self.mismatches,
        }

    def format(self) -> str:
        lines = [
            "== compiled path (EDGEGOV_PURE unset)",
            format_report(self.compiled),
            "",
            "== pure path (EDGEGOV_PURE=1)",
            format_report(self.pure),
            "",
            f"differential: {self.compiled.cases} cases, implementations "
            f"{self.compiled.implementation} vs {self.pure.implementation}: "
            f"{len(self.mismatches)} differ",
        ]
        lines.extend(f"  {m}" for m in self.mismatches[:_EXAMPLES])
        return "\n".join(lines)
