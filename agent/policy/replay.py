"""``edgegov policy eval``: run a bundle over recorded readings (CSV).

The CSV has a header. A ``timestamp`` column (Unix ms, or ISO 8601 with a
time zone) is required; then one column per channel, by name, in any order
(channels missing from the file are missing readings); an empty cell or
``nan`` is a missing reading. Columns named ``risk:<model-id>`` give that
model's score per reading (otherwise ``risk()`` is an error value). Unknown
columns are an error, so a typo does not silently drop a channel.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import PolicyError
from agent.policy.bundle import PolicyBundle
from agent.policy.evaluator import Episode

__all__ = ["RuleReport", "read_readings", "replay"]

#: largest recording accepted (rows)
MAX_ROWS = 20_000_000


@dataclass(frozen=True)
class RuleReport:
    rule_id: str
    severity: str
    evaluated: int
    violated: int
    errors: int
    first_violation_ms: int | None
    last_violation_ms: int | None
    episodes: tuple[Episode, ...]
    explanations: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule_id,
            "severity": self.severity,
            "evaluated": self.evaluated,
            "violated": self.violated,
            "errors": self.errors,
            "first_violation_ms": self.first_violation_ms,
            "last_violation_ms": self.last_violation_ms,
            "episodes": [
                {"start_ms": e.start_ms, "end_ms": e.end_ms, "peak": e.peak, "explain": x}
                for e, x in zip(self.episodes, self.explanations)
            ],
        }


def _time(text: str, where: str) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise PolicyError(f"{where}: timestamp {t!r} is neither Unix ms nor ISO 8601") from None
    if dt.tzinfo is None:
        raise PolicyError(f"{where}: timestamp {t!r} has no time zone")
    return int(dt.timestamp() * 1000)


def _value(text: str, where: str) -> float:
    t = text.strip()
    if t == "" or t.lower() == "nan":
        return math.nan
    try:
        return float(t)
    except ValueError:
        raise PolicyError(f"{where}: {t!r} is not a number") from None


def read_readings(
    bundle: PolicyBundle, path: str | Path
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(timestamps, columns in channel order, risk score per model) from a CSV file.

    Raises:
        PolicyError: unreadable file, bad header, bad cell (file:line: reason).
    """
    label = str(path)
    names = [c.name for c in bundle.channels]
    models = [m.id for m in bundle.models]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise PolicyError(f"{label}: empty file")
            header = [h.strip() for h in header]
            if "timestamp" not in header:
                raise PolicyError(f"{label}:1: no 'timestamp' column")
            known = {"timestamp", *names, *(f"risk:{m}" for m in models)}
            for k, h in enumerate(header):
                if h not in known:
                    raise PolicyError(
                        f"{label}:1: unknown column {h!r}; channels: {', '.join(names)}"
                        + "".join(f", risk:{m}" for m in models)
                    )
                if h in header[:k]:
                    raise PolicyError(f"{label}:1: column {h!r} appears twice")
            idx = {h: i for i, h in enumerate(header)}
            t_col = idx["timestamp"]
            chan_cols = [idx.get(n) for n in names]  # None: not in the file, missing
            risk_cols = [idx.get(f"risk:{m}") for m in models]
            ts: list[int] = []
            lines: list[int] = []  # file line of each row (blank lines are skipped)
            rows: list[list[float]] = []
            risk: list[list[float]] = []
            for line, rec in enumerate(reader, start=2):
                if not rec:
                    continue
                if len(rec) != len(header):
                    raise PolicyError(f"{label}:{line}: {len(rec)} cells, header has {len(header)}")
                if len(ts) >= MAX_ROWS:
                    raise PolicyError(f"{label}: more than {MAX_ROWS} rows")
                where = f"{label}:{line}"
                ts.append(_time(rec[t_col], where))
                lines.append(line)
                rows.append([math.nan if i is None else _value(rec[i], where) for i in chan_cols])
                risk.append([math.nan if i is None else _value(rec[i], where) for i in risk_cols])
    except OSError as e:
        raise PolicyError(f"{label}: cannot read: {e.strerror or e}") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise PolicyError(f"{label}: not a readable CSV file: {e}") from e
    t = np.array(ts, dtype=np.int64)
    if t.size and np.any(np.diff(t) < 0):
        bad = lines[int(np.flatnonzero(np.diff(t) < 0)[0]) + 1]
        raise PolicyError(f"{label}:{bad}: timestamps go backwards")
    cols = np.array(rows, dtype=np.float64).reshape(len(rows), len(names)).T.copy()
    scores = np.array(risk, dtype=np.float64).reshape(len(risk), len(models)).T
    return t, cols, {m: scores[k] for k, m in enumerate(models)}


def replay(bundle: PolicyBundle, path: str | Path) -> tuple[list[RuleReport], dict[str, int]]:
    """Per-rule results over a recording, and data-quality findings per channel."""
    ts, cols, scores = read_readings(bundle, path)
    ev = bundle.evaluator()
    if scores and ts.size:
        # risk scores vary per reading here: evaluate reading by reading groups of equal scores
        codes_parts, eps = [], [list[Episode]() for _ in bundle.rules]
        bad: dict[str, int] = {}
        key = np.stack(list(scores.values()))
        cuts = np.flatnonzero(np.any(np.diff(key, axis=1) != 0, axis=0)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, ts.size]):
            res = ev.run(ts[a:b], cols[:, a:b], {m: float(v[a]) for m, v in scores.items()})
            codes_parts.append(res.codes)
            for k, e in enumerate(res.episodes):
                eps[k] = [x for x in eps[k] if x.end_ms is not None] + e
            for c, v in res.out_of_range.items():
                bad[c] = bad.get(c, 0) + v
        codes = np.concatenate(codes_parts, axis=1)
    else:
        res = ev.run(ts, cols)
        codes, eps, bad = res.codes, res.episodes, res.out_of_range
    goals = {g.id: g.description for g in bundle.goals}
    out = []
    for k, r in enumerate(bundle.rules):
        row = codes[k]
        at = np.flatnonzero(row == 0)
        errors = int(np.count_nonzero(row == 2))
        out.append(
            RuleReport(
                r.id,
                r.severity,
                int(row.size) - errors,
                int(at.size),
                errors,
                int(ts[at[0]]) if at.size else None,
                int(ts[at[-1]]) if at.size else None,
                tuple(eps[k]),
                tuple(
                    r.explain_text(e.start_ms, e.end_ms, e.peak, goal=goals.get(r.goal, r.goal))
                    for e in eps[k]
                ),
            )
        )
    return out, bad
