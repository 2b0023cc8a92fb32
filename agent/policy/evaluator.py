"""The stateful evaluator: a bundle's compiled plan run over batches of readings.

One batch is a timestamp vector (int64 Unix ms, non-decreasing) plus the
channel columns (float64, ``(n_channels, n)``, NaN = missing) and the risk
scores for the batch's window (one number per model, NaN when the model did
not score). Per batch, in order:

1. **data quality**: a reading outside its channel's valid range (or, for a
   bool channel, other than 0/1) is a *finding*, counted per channel, and is
   treated as missing (CEL's error value) rather than silently used;
2. **rows**: the columns, the risk scores (one row each, the same value for
   every reading) and the *derived rows* of the plan (window aggregates,
   ``duration_true``), each computed by a kernel that carries its state
   from batch to batch (ring buffers, monotonic deques, Welford sums);
3. **conditions**: every rule's condition (and clear condition) by the
   block-wise program evaluator, in one call;
4. **rules**: each rule's state machine (``for`` durations, clear
   hysteresis, violation episodes).

The kernels come from ``native.policy`` (compiled, or the pure-Python twin)
unless another module is given; both produce identical results.
:meth:`Evaluator.state` returns a JSON-serialisable snapshot of everything
carried between batches, and :meth:`Evaluator.restore` loads one, so the
agent can persist it across restarts (it names the plan digest and is
refused for another plan).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import PolicyError
from agent.policy.compiler import AggNode, DurationNode
from native import policy_format as fmt
from native.policy import Program

__all__ = [
    "BatchResult",
    "ChannelSpec",
    "Episode",
    "Evaluator",
    "Plan",
    "RuleSpec",
    "mask_invalid",
    "state_digest",
]

STATE_FORMAT = "edgegov-policy-state/1"
_I64 = np.int64


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    low: float
    high: float
    is_bool: bool = False


@dataclass(frozen=True)
class RuleSpec:
    """What the evaluator needs of a rule: programs, durations, peak measure."""

    id: str
    condition: Program
    clear: Program | None = None
    for_ms: int = 0
    clear_ms: int = 0
    measure_row: int = -1  # -1: no measure (episodes have no peak)
    peak_max: bool = True


@dataclass(frozen=True)
class Plan:
    """A bundle compiled for evaluation; ``digest`` names it (the bundle digest)."""

    channels: tuple[ChannelSpec, ...]
    models: tuple[str, ...]
    derived: tuple[AggNode | DurationNode, ...]
    duration_programs: tuple[Program, ...]  # one per DurationNode, in order
    rules: tuple[RuleSpec, ...]
    n_rows: int
    digest: str = ""


@dataclass(frozen=True)
class Episode:
    """A violation: ``end_ms`` None while it is still open; ``peak`` of the rule's measure."""

    start_ms: int
    end_ms: int | None
    peak: float | None


@dataclass
class BatchResult:
    codes: npt.NDArray[np.uint8]  # (n_rules, n): 1 holds, 0 violated, 2 not evaluable
    episodes: list[list[Episode]]  # per rule: closed in this batch, then the open one
    out_of_range: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)


class _Ring:
    """State of one window aggregate: ring buffers and counters."""

    def __init__(self, cap: int = 64) -> None:
        self.rt = np.zeros(cap, dtype=_I64)
        self.rx = np.zeros(cap, dtype=np.float64)
        self.dq = np.zeros(cap, dtype=_I64)
        self.ist = np.array([0, 0, 0, 0, 0, fmt.NO_TIME, 0], dtype=_I64)
        self.fst = np.zeros(2, dtype=np.float64)

    def reserve(self, extra: int) -> None:
        """Grow (doubling) so the window's readings plus ``extra`` new ones fit."""
        head, tail, dqh, dqt = (int(v) for v in self.ist[:4])
        need = tail - head + extra
        cap = self.rt.shape[0]
        if need <= cap:
            return
        new = cap
        while new < need:
            new *= 2
        seq = np.arange(head, tail, dtype=_I64)
        dseq = np.arange(dqh, dqt, dtype=_I64)
        rt = np.zeros(new, dtype=_I64)
        rx = np.zeros(new, dtype=np.float64)
        dq = np.zeros(new, dtype=_I64)
        rt[seq & (new - 1)] = self.rt[seq & (cap - 1)]
        rx[seq & (new - 1)] = self.rx[seq & (cap - 1)]
        dq[dseq & (new - 1)] = self.dq[dseq & (cap - 1)]
        self.rt, self.rx, self.dq = rt, rx, dq

    def to_json(self) -> dict[str, Any]:
        head, tail, dqh, dqt = (int(v) for v in self.ist[:4])
        mask = self.rt.shape[0] - 1
        seq = np.arange(head, tail, dtype=_I64) & mask
        dseq = np.arange(dqh, dqt, dtype=_I64) & mask
        return {
            "ist": self.ist.tolist(),
            "fst": [float(v).hex() for v in self.fst],
            "t": self.rt[seq].tolist(),
            "x": [float(v).hex() for v in self.rx[seq]],
            "dq": self.dq[dseq].tolist(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> _Ring:
        ist = np.array(d["ist"], dtype=_I64)
        fst = np.array([float.fromhex(v) for v in d["fst"]], dtype=np.float64)
        if ist.shape != (7,) or fst.shape != (2,):
            raise ValueError("bad aggregate state")
        head, tail, dqh, dqt = (int(v) for v in ist[:4])
        if not (0 <= head <= tail and 0 <= dqh <= dqt and tail - head == len(d["t"])):
            raise ValueError("bad aggregate counters")
        r = cls()
        r.reserve(tail - head)  # the fresh ring is empty: only sizes the buffers
        mask = r.rt.shape[0] - 1
        seq = np.arange(head, tail, dtype=_I64)
        r.rt[seq & mask] = np.array(d["t"], dtype=_I64)
        r.rx[seq & mask] = np.array([float.fromhex(v) for v in d["x"]], dtype=np.float64)
        dseq = np.arange(dqh, dqt, dtype=_I64)
        dqv = np.array(d["dq"], dtype=_I64)
        if dqv.shape != dseq.shape or (dqv.size and (dqv.min() < head or dqv.max() >= tail)):
            raise ValueError("bad deque state")
        r.dq[dseq & mask] = dqv
        r.ist, r.fst = ist, fst
        return r


class Evaluator:
    """Runs a :class:`Plan` over successive batches, carrying state between them."""

    def __init__(self, plan: Plan, kernels: ModuleType | None = None) -> None:
        self.plan = plan
        self.k: ModuleType = (
            kernels if kernels is not None else importlib.import_module("native.policy")
        )
        self._rings: dict[int, _Ring] = {}
        self._durations: dict[int, npt.NDArray[np.int64]] = {}
        for node in plan.derived:
            if isinstance(node, AggNode):
                self._rings[node.row] = _Ring()
            else:
                self._durations[node.row] = np.array([0, 0, fmt.NO_TIME], dtype=_I64)
        self._rule_ist = [np.array([0, 0, 0, 0, fmt.NO_TIME], dtype=_I64) for _ in plan.rules]
        self._rule_fst = [np.full(1, np.nan) for _ in plan.rules]
        # every condition, then the clear conditions, in one evaluate_many call per batch
        self._programs = [r.condition for r in plan.rules]
        self._programs += [r.clear for r in plan.rules if r.clear is not None]

    # -- evaluation ----------------------------------------------------------------
    def run(
        self,
        timestamps: npt.ArrayLike,
        columns: npt.ArrayLike,
        scores: Mapping[str, float | None] | None = None,
    ) -> BatchResult:
        """Evaluate one batch. ``scores``: risk model id -> score (missing: error).

        Raises:
            ValueError: the arrays do not match the plan (API misuse).
        """
        plan = self.plan
        ts = np.ascontiguousarray(timestamps, dtype=_I64)
        cols = np.ascontiguousarray(columns, dtype=np.float64)
        n_ch = len(plan.channels)
        if ts.ndim != 1 or cols.ndim != 2 or cols.shape != (n_ch, ts.shape[0]):
            raise ValueError(
                f"expected timestamps (n,) and columns ({n_ch}, n); got {ts.shape} and {cols.shape}"
            )
        n = ts.shape[0]
        rows = np.empty((plan.n_rows, n), dtype=np.float64)
        res = BatchResult(np.empty((len(plan.rules), n), np.uint8), [])
        res.missing, res.out_of_range = mask_invalid(plan.channels, cols, rows[:n_ch])
        scores = scores or {}
        for k, mid in enumerate(plan.models):
            v = scores.get(mid)
            rows[n_ch + k] = np.nan if v is None else float(v)
        d = 0
        for node in plan.derived:
            out = rows[node.row]
            if isinstance(node, AggNode):
                ring = self._rings[node.row]
                ring.reserve(n)
                self.k.agg_update(
                    node.kind,
                    node.ms,
                    ts,
                    np.ascontiguousarray(rows[node.source]),
                    out,
                    ring.rt,
                    ring.rx,
                    ring.dq,
                    ring.ist,
                    ring.fst,
                )
            else:
                cond = self.k.evaluate(plan.duration_programs[d], rows)
                d += 1
                self.k.duration_update(ts, cond, out, self._durations[node.row])
        codes = self.k.evaluate_many(self._programs, rows)
        nan_row = np.full(n, np.nan)
        ep_s = np.empty(n, dtype=_I64)
        ep_e = np.empty(n, dtype=_I64)
        ep_p = np.empty(n, dtype=np.float64)
        c = len(plan.rules)
        for i, rule in enumerate(plan.rules):
            cond = codes[i]
            clear = cond
            if rule.clear is not None:
                clear = codes[c]
                c += 1
            measure = rows[rule.measure_row] if rule.measure_row >= 0 else nan_row
            closed = self.k.rule_update(
                ts,
                np.ascontiguousarray(cond),
                np.ascontiguousarray(clear),
                np.ascontiguousarray(measure),
                rule.for_ms,
                rule.clear_ms,
                1 if rule.peak_max else 0,
                res.codes[i],
                self._rule_ist[i],
                self._rule_fst[i],
                ep_s,
                ep_e,
                ep_p,
            )
            eps = [
                Episode(int(ep_s[k]), int(ep_e[k]), _peak(float(ep_p[k]))) for k in range(closed)
            ]
            ist = self._rule_ist[i]
            if ist[0] in (fmt.PHASE_VIOLATED, fmt.PHASE_CLEARING):
                eps.append(Episode(int(ist[3]), None, _peak(float(self._rule_fst[i][0]))))
            res.episodes.append(eps)
        return res

    # -- persistence -----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything carried between batches, as JSON-serialisable data."""
        return {
            "format": STATE_FORMAT,
            "plan": self.plan.digest,
            "aggregates": {str(r): ring.to_json() for r, ring in self._rings.items()},
            "durations": {str(r): v.tolist() for r, v in self._durations.items()},
            "rules": {
                spec.id: {"ist": ist.tolist(), "peak": float(fst[0]).hex()}
                for spec, ist, fst in zip(self.plan.rules, self._rule_ist, self._rule_fst)
            },
        }

    def state_digest(self) -> str:
        """SHA-256 (hex) of :meth:`state_json`: claim -70001/5 key 9."""
        return state_digest(self.state_json())

    def state_json(self) -> str:
        """:meth:`state` as canonical JSON (sorted keys, no spaces): what is saved and what
        the attestation's state digest (claim -70001/5 key 9) hashes."""
        return json.dumps(self.state(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`state` snapshot taken with the same plan.

        Raises:
            PolicyError: the snapshot is for another plan or is malformed
                (nothing is changed then).
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise PolicyError("policy state: unknown format")
        if state.get("plan") != self.plan.digest:
            raise PolicyError("policy state was saved for another policy; starting fresh")
        try:
            rings = {int(k): _Ring.from_json(v) for k, v in state["aggregates"].items()}
            durs = {
                int(k): np.array(v, dtype=_I64).reshape(3) for k, v in state["durations"].items()
            }
            rules = state["rules"]
            ists = [np.array(rules[r.id]["ist"], dtype=_I64).reshape(5) for r in self.plan.rules]
            fsts = [
                np.array([float.fromhex(rules[r.id]["peak"])], dtype=np.float64)
                for r in self.plan.rules
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PolicyError(f"policy state is malformed: {e}") from e
        if set(rings) != set(self._rings) or set(durs) != set(self._durations):
            raise PolicyError("policy state does not match the plan's derived rows")
        self._rings, self._durations = rings, durs
        self._rule_ist, self._rule_fst = ists, fsts


def state_digest(state_json: str) -> str:
    """SHA-256 (hex) of an evaluator state's canonical JSON (:meth:`Evaluator.state_json`)."""
    return hashlib.sha256(state_json.encode()).hexdigest()


def mask_invalid(
    channels: Sequence[ChannelSpec],
    columns: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Copy ``columns`` into ``out`` (in place if None) with invalid readings as NaN.

    Returns (missing, out_of_range) counts per channel: a reading outside
    its channel's valid range, or other than 0/1 on a bool channel, is a
    data-quality finding and is not used.
    """
    target = columns if out is None else out
    missing_n: dict[str, int] = {}
    bad_n: dict[str, int] = {}
    for i, ch in enumerate(channels):
        x = columns[i]
        missing = np.isnan(x)
        bad = ~missing & ((x < ch.low) | (x > ch.high))
        if ch.is_bool:
            bad |= ~missing & (x != 0.0) & (x != 1.0)
        missing_n[ch.name] = int(missing.sum())
        bad_n[ch.name] = int(bad.sum())
        if out is not None:
            target[i] = x
        target[i][bad] = np.nan
    return missing_n, bad_n


def _peak(v: float) -> float | None:
    return None if v != v else v
