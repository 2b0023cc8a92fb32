"""``edgegov policy eval``: run a bundle over recorded readings (CSV).

The CSV has a header. One time column is required: ``timestamp`` (ISO 8601 with a
time zone, e.g. ``2026-01-01T00:00:00Z``; a bare number is refused, since nothing says
whether it counts seconds or milliseconds) or ``timestamp_ms`` (Unix time in integer
milliseconds). Then one column per channel, by name, in any order; a channel the rules
use that has no column is all missing readings, and the caller is warned. An empty cell
or ``nan`` is a missing reading. Columns named ``risk:<model-id>`` give that model's
score per reading (otherwise ``risk()`` is an error value, with a warning). Unknown
columns are an error, so a typo does not silently drop a channel.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import PolicyError
from agent.policy.evaluator import Episode
from agent.policy.model import PolicyBundle

__all__ = ["TIME_COLUMNS", "RuleReport", "read_readings", "replay"]

#: largest recording accepted (rows)
MAX_ROWS = 20_000_000
#: the accepted time columns: ISO 8601 with a time zone, or integer Unix milliseconds
TIME_COLUMNS = ("timestamp", "timestamp_ms")

Warn = Callable[[str], None]


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


def _time(text: str, where: str, unix_ms: bool) -> int:
    """One cell of the time column; ``where`` is ``file:line: column N (name)``."""
    t = text.strip()
    if unix_ms:
        try:
            return int(t)
        except ValueError:
            raise PolicyError(f"{where}: {t!r} is not an integer of Unix milliseconds") from None
    if _is_number(t):
        raise PolicyError(
            f"{where}: {t!r} is a bare number (seconds or milliseconds?); write ISO 8601 with "
            "a time zone, e.g. 2026-01-01T00:00:00Z, or name the column timestamp_ms for "
            "Unix time in milliseconds"
        )
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise PolicyError(
            f"{where}: {t!r} is not ISO 8601 (e.g. 2026-01-01T00:00:00Z or "
            "2026-01-01T01:00:00.250+01:00)"
        ) from None
    if dt.tzinfo is None:
        raise PolicyError(f"{where}: {t!r} has no time zone (add Z or +01:00, say)")
    return int(dt.timestamp() * 1000)


def _is_number(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


def _value(text: str, where: str) -> float:
    t = text.strip()
    if t == "" or t.lower() == "nan":
        return math.nan
    try:
        return float(t)
    except ValueError:
        raise PolicyError(f"{where}: {t!r} is not a number") from None


def read_readings(
    bundle: PolicyBundle, path: str | Path, warn: Warn | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(timestamps, columns in channel order, risk score per model) from a CSV file.

    ``warn`` is called with a message for each channel the rules use that has no column
    (and each model ``risk()`` names that has no ``risk:`` column).

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
            times = [h for h in header if h in TIME_COLUMNS]
            if len(times) != 1:
                raise PolicyError(
                    f"{label}:1: "
                    + ("no time column" if not times else f"two time columns {times}")
                    + "; give one: timestamp (ISO 8601 with a time zone) or timestamp_ms "
                    "(Unix milliseconds)"
                )
            known = {*TIME_COLUMNS, *names, *(f"risk:{m}" for m in models)}
            for k, h in enumerate(header):
                if h not in known:
                    raise PolicyError(
                        f"{label}:1: unknown column {h!r}; channels: {', '.join(names)}"
                        + "".join(f", risk:{m}" for m in models)
                    )
                if h in header[:k]:
                    raise PolicyError(f"{label}:1: column {h!r} appears twice")
            idx = {h: i for i, h in enumerate(header)}
            t_name = times[0]
            t_col = idx[t_name]
            for n in names:
                if n not in idx and n in bundle.used_channels and warn is not None:
                    warn(
                        f"{label}:1: no column {n!r}, a channel the policy's rules use: "
                        "all its readings count as missing"
                    )
            for m in models:
                if f"risk:{m}" not in idx and m in bundle.used_models and warn is not None:
                    warn(
                        f"{label}:1: no column 'risk:{m}': the rules' risk(\"{m}\") has no "
                        "value (not evaluable)"
                    )
            chan_cols = [idx.get(n) for n in names]  # None: not in the file, missing
            risk_cols = [idx.get(f"risk:{m}") for m in models]
            unix_ms = t_name == "timestamp_ms"
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
                ts.append(_time(rec[t_col], f"{where}: column {t_col + 1} ({t_name})", unix_ms))
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


def replay(
    bundle: PolicyBundle, path: str | Path, warn: Warn | None = None
) -> tuple[list[RuleReport], dict[str, int]]:
    """Per-rule results over a recording, and data-quality findings per channel.

    ``warn``: see :func:`read_readings`.
    """
    ts, cols, scores = read_readings(bundle, path, warn)
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
