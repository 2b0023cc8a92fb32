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
:meth:`Evaluator.snapshot` returns everything carried between batches as
bytes, and :meth:`Evaluator.restore` loads them, so the agent can persist the
state across restarts (a snapshot names the plan digest and is refused for
another plan). :meth:`Evaluator.state_digest` names the state without
serialising it: each window aggregate's ring is committed to by a hash chain
over the readings appended to it, one link per batch, so the digest costs
the same whatever the window's length (``docs/attestation-profile.md``,
*Evaluator state digest*).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import struct
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
    "snapshot_digest",
]

STATE_FORMAT = "edgegov-policy-state/2"
_MAGIC = b"edgegov-policy-state/2\n"  # a snapshot's first bytes
_I64 = np.int64
_LE_I64, _LE_F64 = np.dtype("<i8"), np.dtype("<f8")  # the digest's byte order, any host
_NO_LINK = bytes(32)  # the hash chain of a ring nothing was appended to yet
_Q = struct.Struct("<q")


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
        self.chain = _NO_LINK  # the hash chain over every reading appended (see link)

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

    def _logical(self, arr: npt.NDArray[Any], lo: int, hi: int) -> list[npt.NDArray[Any]]:
        """Entries ``lo..hi-1`` (absolute positions) of a ring array, in order, as at most
        two views of its slots (no copy)."""
        cap = arr.shape[0]
        if hi <= lo:
            return []
        a, b = lo & (cap - 1), hi & (cap - 1)
        if hi - lo == cap:
            b = a
        return [arr[a:b]] if a < b else [arr[a:], arr[:b]]

    def link(self, old_tail: int) -> None:
        """Extend the hash chain by the readings appended since ``old_tail`` (one link):
        ``chain = SHA-256(chain || old_tail || their times || their values)``, int64 and
        float64 little-endian. Appended entries are never overwritten within the batch
        that appended them (:meth:`reserve`), so they are read from the ring here."""
        tail = int(self.ist[1])
        if tail == old_tail:
            return
        h = hashlib.sha256(self.chain)
        h.update(_Q.pack(old_tail))
        for piece in self._logical(self.rt, old_tail, tail):
            h.update(piece.astype(_LE_I64, copy=False).data)
        for piece in self._logical(self.rx, old_tail, tail):
            h.update(piece.astype(_LE_F64, copy=False).data)
        self.chain = h.digest()

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The ring's live contents in order, for a snapshot."""
        head, tail, dqh, dqt = (int(v) for v in self.ist[:4])

        def cat(arr: npt.NDArray[Any], lo: int, hi: int) -> npt.NDArray[Any]:
            parts = self._logical(arr, lo, hi)
            return np.concatenate(parts) if parts else arr[:0].copy()

        return {
            "ist": self.ist,
            "fst": self.fst,
            "t": cat(self.rt, head, tail),
            "x": cat(self.rx, head, tail),
            "dq": cat(self.dq, dqh, dqt),
            "chain": np.frombuffer(self.chain, dtype=np.uint8),
        }

    @classmethod
    def from_arrays(cls, d: Mapping[str, npt.NDArray[Any]]) -> _Ring:
        ist = np.array(d["ist"], dtype=_I64)
        fst = np.array(d["fst"], dtype=np.float64)
        chain = bytes(np.asarray(d["chain"], dtype=np.uint8))
        if ist.shape != (7,) or fst.shape != (2,) or len(chain) != 32:
            raise ValueError("bad aggregate state")
        head, tail, dqh, dqt = (int(v) for v in ist[:4])
        if not (0 <= head <= tail and 0 <= dqh <= dqt and tail - head == len(d["t"])):
            raise ValueError("bad aggregate counters")
        if len(d["x"]) != tail - head:
            raise ValueError("bad aggregate values")
        r = cls()
        r.reserve(tail - head)  # the fresh ring is empty: only sizes the buffers
        mask = r.rt.shape[0] - 1
        seq = np.arange(head, tail, dtype=_I64)
        r.rt[seq & mask] = np.asarray(d["t"], dtype=_I64)
        r.rx[seq & mask] = np.asarray(d["x"], dtype=np.float64)
        dseq = np.arange(dqh, dqt, dtype=_I64)
        dqv = np.asarray(d["dq"], dtype=_I64)
        if dqv.shape != dseq.shape or (dqv.size and (dqv.min() < head or dqv.max() >= tail)):
            raise ValueError("bad deque state")
        r.dq[dseq & mask] = dqv
        r.ist, r.fst, r.chain = ist, fst, chain
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
        # every condition, then the clear conditions, in one evaluate_many call per batch;
        # the same Program objects each time, so the compiled module lowers them once
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
                tail = int(ring.ist[1])
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
                ring.link(tail)
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
    def state_digest(self) -> str:
        """SHA-256 (hex) naming everything carried between batches: claim -70001/5 key 9.

        Hashed, in order: the format line, the plan digest, then per window aggregate
        (by row) its counters (7 int64), its sums (2 float64) and its ring's hash chain
        (:meth:`_Ring.link`); per ``duration_true`` (by row) its 3 int64; per rule (plan
        order) its id, its 5 int64 and its peak (float64; every NaN as the one quiet NaN).
        All little-endian. It costs the same whatever the windows hold.
        """
        h = hashlib.sha256(_MAGIC)
        h.update(_text(self.plan.digest))
        for row in sorted(self._rings):
            ring = self._rings[row]
            h.update(_Q.pack(row))
            h.update(ring.ist.astype(_LE_I64, copy=False).data)
            h.update(_canonical_f64(ring.fst))
            h.update(ring.chain)
        for row in sorted(self._durations):
            h.update(_Q.pack(row))
            h.update(self._durations[row].astype(_LE_I64, copy=False).data)
        for spec, ist, fst in zip(self.plan.rules, self._rule_ist, self._rule_fst):
            h.update(_text(spec.id))
            h.update(ist.astype(_LE_I64, copy=False).data)
            h.update(_canonical_f64(fst))
        return h.hexdigest()

    def snapshot(self) -> bytes:
        """The state as bytes (what ``policy-state.bin`` and a held-windows file keep):
        :data:`_MAGIC`, a 4-byte length and a JSON header (format, plan, digest, and each
        array's name, dtype and length), then the arrays' bytes, little-endian."""
        arrays: dict[str, npt.NDArray[Any]] = {}
        for row, ring in self._rings.items():
            arrays.update({f"agg/{row}/{k}": v for k, v in ring.arrays().items()})
        for row, v in self._durations.items():
            arrays[f"dur/{row}"] = v
        for spec, ist, fst in zip(self.plan.rules, self._rule_ist, self._rule_fst):
            arrays[f"rule/{spec.id}/ist"] = ist
            arrays[f"rule/{spec.id}/peak"] = fst
        layout = []
        blobs = []
        for name, a in arrays.items():
            le = a.astype(a.dtype.newbyteorder("<"), copy=False)
            layout.append([name, le.dtype.str, int(le.shape[0])])
            blobs.append(le.tobytes())
        header = json.dumps(
            {
                "format": STATE_FORMAT,
                "plan": self.plan.digest,
                "digest": self.state_digest(),
                "arrays": layout,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        return b"".join([_MAGIC, struct.pack("<I", len(header)), header, *blobs])

    def restore(self, snapshot: bytes) -> None:
        """Load a :meth:`snapshot` taken with the same plan; its digest is recomputed and
        must be the one it names (a damaged file is refused, not half-loaded).

        Raises:
            PolicyError: the snapshot is for another plan, malformed or damaged
                (nothing is changed then).
        """
        arrays, header = _read_snapshot(snapshot)
        if header.get("plan") != self.plan.digest:
            raise PolicyError("policy state was saved for another policy; starting fresh")
        saved = (self._rings, self._durations, self._rule_ist, self._rule_fst)
        try:
            rings = {
                row: _Ring.from_arrays(
                    {k: arrays[f"agg/{row}/{k}"] for k in ("ist", "fst", "t", "x", "dq", "chain")}
                )
                for row in self._rings
            }
            durs = {row: arrays[f"dur/{row}"].astype(_I64).reshape(3) for row in self._durations}
            ists = [arrays[f"rule/{r.id}/ist"].astype(_I64).reshape(5) for r in self.plan.rules]
            fsts = [
                arrays[f"rule/{r.id}/peak"].astype(np.float64).reshape(1) for r in self.plan.rules
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"policy state does not match the plan: {e}") from e
        self._rings, self._durations, self._rule_ist, self._rule_fst = rings, durs, ists, fsts
        if self.state_digest() != header.get("digest"):
            self._rings, self._durations, self._rule_ist, self._rule_fst = saved
            raise PolicyError("policy state is damaged: its contents do not hash to its digest")


def snapshot_digest(snapshot: bytes) -> str:
    """The state digest a :meth:`Evaluator.snapshot` names (its header's; :meth:`restore`
    checks the contents against it).

    Raises:
        PolicyError: not a snapshot.
    """
    digest = _read_snapshot(snapshot)[1].get("digest")
    if not isinstance(digest, str):
        raise PolicyError("policy state is malformed: its header names no digest")
    return digest


def _read_snapshot(data: bytes) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    if not data.startswith(_MAGIC):
        raise PolicyError(f"policy state: not a {STATE_FORMAT} snapshot")
    try:
        pos = len(_MAGIC)
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        header = json.loads(data[pos : pos + size])
        pos += size
        arrays = {}
        for name, dtype, count in header["arrays"]:
            dt = np.dtype(dtype)
            if dt.kind not in "iuf" or not 0 <= count <= len(data):
                raise ValueError(f"array {name}: bad layout")
            end = pos + dt.itemsize * count
            if end > len(data):
                raise ValueError("truncated")
            arrays[str(name)] = np.frombuffer(data, dtype=dt, count=count, offset=pos)
            pos = end
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} byte(s) after the last array")
    except (ValueError, TypeError, KeyError, struct.error) as e:
        raise PolicyError(f"policy state is malformed: {e}") from e
    if not isinstance(header, dict) or header.get("format") != STATE_FORMAT:
        raise PolicyError("policy state: unknown format")
    return arrays, header


def _text(s: str) -> bytes:
    b = s.encode()
    return _Q.pack(len(b)) + b


def _canonical_f64(a: npt.NDArray[np.float64]) -> bytes:
    """Little-endian float64 bytes with every NaN as the quiet NaN (the compiled and the
    pure kernels may leave NaNs with different payloads; both mean "none")."""
    return np.where(np.isnan(a), np.nan, a).astype(_LE_F64).tobytes()


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
