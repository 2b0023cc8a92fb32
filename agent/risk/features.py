"""Risk-model input features: the spec language, the compiled plan and the reading history.

A model's declaration in the policy lists its features in input order. Each one is

* ``AGG(channel)``: an aggregate over the attestation window's own readings;
* ``AGG(channel, DUR)``: the same aggregate over the trailing ``DUR`` (``500ms``, ``30s``,
  ``10m``, ``1h``, ``1d``) at the window's last reading, exactly the readings the policy
  language's ``mean(x, 10m)`` sees at that reading, so it reaches back into earlier windows;
* ``lag(channel, K)``: the channel's ``K`` most recent valid readings, most recent first,
  as ``K`` consecutive inputs (``K`` from 1 to :data:`MAX_LAG`).

``AGG`` is one of :data:`AGGREGATES`, the policy language's window aggregates. The numbers
come from ``native.features`` (Cython, with a pure-Python twin that defines the semantics):
one call fills the whole (windows x inputs) tensor, with no Python loop per reading.

Features that reach back (durations, lags) need readings from before the window. A
:class:`History` keeps them: after each batch it drops the readings no feature can need
again. Which readings it keeps is a function of the reading stream alone, so the agent, an
agent restarted from its evidence store and ``edgegov audit replay`` compute the same
features from the same readings.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import ModelError
from native import features as _native

__all__ = [
    "AGGREGATES",
    "MAX_LAG",
    "Feature",
    "FeaturePlan",
    "History",
    "parse_feature",
]

#: aggregate name -> op code of native.features
AGGREGATES: dict[str, int] = {
    "mean": _native.F_MEAN,
    "min": _native.F_MIN,
    "max": _native.F_MAX,
    "stddev": _native.F_STDDEV,
    "count": _native.F_COUNT,
    "rate": _native.F_RATE,
    "delta": _native.F_DELTA,
    "completeness": _native.F_COMPLETENESS,
}
MAX_LAG = 256
#: longest trailing duration a feature may ask for (the history is held in memory)
MAX_DURATION_MS = 86_400_000

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SPEC_RE = re.compile(
    r"(?P<agg>[a-z_]+)\(\s*(?P<channel>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?:,\s*(?P<arg>[^()]*?)\s*)?\)"
)
_DURATION_RE = re.compile(r"(?P<n>[0-9]+)(?P<unit>ms|s|m|h|d)")
_FORMS = (
    "AGG(channel), AGG(channel, DURATION) with AGG one of "
    + ", ".join(AGGREGATES)
    + ", or lag(channel, K)"
)


@dataclass(frozen=True)
class Feature:
    """One declared feature; ``lags`` > 0 for ``lag(channel, K)``, which fills K inputs."""

    spec: str
    agg: str
    channel: str
    dur_ms: int = 0  # 0: the window's own readings
    lags: int = 0

    @property
    def width(self) -> int:
        return self.lags or 1

    def inputs(self) -> list[str]:
        """Names of the model inputs this feature fills, e.g. ``lag(t, 2)[0]``."""
        if not self.lags:
            return [self.spec]
        return [f"{self.spec}[{k}]" for k in range(self.lags)]


def parse_feature(spec: str) -> Feature:
    """Parse one feature spec (see the module docstring).

    Raises:
        ModelError: the spec is not one of the forms, names an unknown aggregate, or has a
            bad duration or lag count; the message says which and what is expected.
    """
    m = _SPEC_RE.fullmatch(spec.strip())
    if m is None:
        raise ModelError(f"feature {spec!r} is not of the form {_FORMS}")
    agg, channel, arg = m["agg"], m["channel"], m["arg"]
    if agg == "lag":
        if arg is None or not arg.isdigit() or not 1 <= int(arg) <= MAX_LAG:
            raise ModelError(
                f"feature {spec!r}: lag(channel, K) needs K, a whole number from 1 to {MAX_LAG}"
            )
        return Feature(spec, agg, channel, lags=int(arg))
    if agg not in AGGREGATES:
        raise ModelError(
            f"feature {spec!r}: unknown aggregate {agg!r}; expected one of "
            f"{', '.join(AGGREGATES)} or lag"
        )
    if arg is None:
        return Feature(spec, agg, channel)
    d = _DURATION_RE.fullmatch(arg)
    if d is None:
        raise ModelError(f"feature {spec!r}: {arg!r} is not a duration such as 500ms, 30s, 10m, 1h")
    ms = int(d["n"]) * _UNIT_MS[d["unit"]]
    if not 0 < ms <= MAX_DURATION_MS:
        raise ModelError(f"feature {spec!r}: the duration must be more than 0 and at most 1d")
    return Feature(spec, agg, channel, dur_ms=ms)


class FeaturePlan:
    """A model's features compiled against the policy's channels.

    Attributes:
        features: the parsed features, in declaration order.
        inputs: the model-input names, one per column (lags expanded).
        history_ms: how far back before a window's last reading a feature reaches.
        history_rows: how many readings back a lag feature reaches.
    """

    def __init__(self, specs: Sequence[str], channel_index: Mapping[str, int]) -> None:
        self.features = tuple(parse_feature(s) for s in specs)
        chan, op, dur, arg = [], [], [], []
        for f in self.features:
            row = channel_index.get(f.channel)
            if row is None:
                raise ModelError(
                    f"feature {f.spec!r} needs channel {f.channel!r}, which is not among the "
                    f"policy's channels {sorted(channel_index)}"
                )
            for k in range(f.width):
                chan.append(row)
                op.append(_native.F_LAG if f.lags else AGGREGATES[f.agg])
                dur.append(f.dur_ms)
                arg.append(k)
        self.inputs = tuple(name for f in self.features for name in f.inputs())
        self._chan = np.array(chan, dtype=np.int32)
        self._op = np.array(op, dtype=np.int32)
        self._dur = np.array(dur, dtype=np.int64)
        self._arg = np.array(arg, dtype=np.int32)
        self.history_ms = max((f.dur_ms for f in self.features), default=0)
        self.history_rows = max((f.lags for f in self.features), default=0)

    @property
    def channel_rows(self) -> tuple[int, ...]:
        """The channel rows the features read, ascending."""
        return tuple(sorted({int(c) for c in self._chan}))

    @property
    def width(self) -> int:
        return len(self.inputs)

    def compute(
        self,
        ts: npt.NDArray[np.int64],
        cols: npt.NDArray[np.float64],
        lo: npt.NDArray[np.int64],
        hi: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float32]:
        """Features of the windows ``[lo[w], hi[w])`` of the readings: float32 (W, width).

        ``ts`` must be non-decreasing (a :class:`History` ensures it); NaN = no reading.
        """
        out = np.empty((lo.shape[0], self.width), dtype=np.float32)
        _native.window_features(ts, cols, lo, hi, self._chan, self._op, self._dur, self._arg, out)
        return out


def _buffer(n: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
    """``n`` elements in an anonymous mapping of their own: a page is resident only once
    written, and the whole buffer goes back to the system when the array is dropped (a
    large buffer from the heap would leave a hole that keeps the process's RSS up)."""
    size = max(1, n) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=n)


def _move(buf: npt.NDArray[Any], src: int, dst: int, n: int) -> None:
    """``buf[dst:dst + n] = buf[src:src + n]`` for overlapping ranges, without the
    temporary copy numpy makes for overlapping operands: in pieces no longer than the
    distance moved, in the order that reads every piece before it is overwritten. A move
    by a short distance (many pieces) is left to numpy, temporary and all."""
    step = abs(dst - src)
    if n <= 0 or step == 0:
        return
    if n > 64 * step:
        buf[dst : dst + n] = buf[src : src + n]  # numpy copies an overlapping source first
        return
    if dst < src:
        for i in range(0, n, step):
            k = min(step, n - i)
            buf[dst + i : dst + i + k] = buf[src + i : src + i + k]
    else:
        for i in range(n, 0, -step):
            k = min(step, i)
            buf[dst + i - k : dst + i] = buf[src + i - k : src + i]


class History:
    """The recent readings that duration and lag features need, column-wise.

    ``append`` adds a window's readings and returns its index range in :attr:`ts` /
    :attr:`cols`; ``trim`` then drops every reading that is both older than ``keep_ms``
    before the newest one and not among the newest ``keep_rows``. A clock that steps back
    is clamped (a reading never gets an earlier time than the one before it), as the
    policy evaluator does.

    ``rows`` names the channel rows kept (default: all ``n_channels``): ``append`` and
    ``extend`` take every channel's column and keep those rows, in that order, as the rows
    of :attr:`cols`. A channel no feature reads costs nothing.

    Memory stays flat under load: the readings live in two preallocated buffers
    (:attr:`ts` and a flat one that :attr:`cols` is a C-contiguous view of, each kept row
    at ``row * len(self)``), moved in place as readings come and go; a buffer is replaced
    only when the readings outgrow it (doubling) or shrink to a quarter of it. At 1 kHz with
    a 10-minute feature that is 600,000 x (8 + 8 per kept row) bytes, never twice that.
    :attr:`ts` and :attr:`cols` are views: valid until the next ``append``, ``extend`` or
    ``trim``.
    """

    _MIN_CAP = 4096

    def __init__(
        self, n_channels: int, keep_ms: int, keep_rows: int, rows: Sequence[int] | None = None
    ) -> None:
        self.keep_ms = keep_ms
        self.keep_rows = keep_rows
        self.n_channels = n_channels
        self.rows = tuple(range(n_channels)) if rows is None else tuple(int(r) for r in rows)
        for r in self.rows:
            if not 0 <= r < n_channels:
                raise ValueError(f"history row {r} outside the {n_channels} channels")
        self._n = 0
        self._cap = 0
        self._ts = np.empty(0, dtype=np.int64)
        self._flat = np.empty(0, dtype=np.float64)

    def __len__(self) -> int:
        return self._n

    @property
    def ts(self) -> npt.NDArray[np.int64]:
        """int64 (n,), non-decreasing: the times of the readings kept."""
        return self._ts[: self._n]

    @property
    def cols(self) -> npt.NDArray[np.float64]:
        """float64 (len(rows), n), C-contiguous: the kept rows' values (NaN = no reading)."""
        k, n = len(self.rows), self._n
        return self._flat[: k * n].reshape(k, n)

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers (resident once the readings have reached them)."""
        return int(self._ts.nbytes + self._flat.nbytes)

    def _resize(self, cap: int) -> None:
        """New buffers for ``cap`` readings, holding the readings kept so far."""
        k, n = len(self.rows), self._n
        ts, flat = _buffer(cap, np.int64), _buffer(k * cap, np.float64)
        ts[:n] = self._ts[:n]
        flat[: k * n] = self._flat[: k * n]
        self._ts, self._flat, self._cap = ts, flat, cap

    def _relayout(self, n_new: int) -> None:
        """Move row ``r`` (``n`` readings at ``r * n``) to ``r * n_new``, in place."""
        k, n = len(self.rows), self._n
        order = range(k - 1, 0, -1) if n_new > n else range(1, k)
        for r in order:
            _move(self._flat, r * n, r * n_new, n)

    def append(self, ts: npt.NDArray[np.int64], cols: npt.NDArray[np.float64]) -> tuple[int, int]:
        """Add one window's readings; return their index range."""
        return self.extend([(ts, cols)])[0]

    def extend(
        self, windows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]
    ) -> list[tuple[int, int]]:
        """Add several windows' readings (one copy in all); return each one's index range."""
        spans = []
        n = at = len(self)
        for ts, _cols in windows:
            spans.append((at, at + int(ts.shape[0])))
            at += int(ts.shape[0])
        if at == n:
            return spans
        if at > self._cap:
            self._resize(max(at, 2 * self._cap, self._MIN_CAP))
        self._relayout(at)
        for (a, b), (ts, cols) in zip(spans, windows):
            self._ts[a:b] = np.asarray(ts, dtype=np.int64)
            if b == a:
                continue
            c = np.asarray(cols, dtype=np.float64)
            if c.shape != (self.n_channels, b - a):
                raise ValueError(
                    f"window columns must be ({self.n_channels}, {b - a}), got {c.shape}"
                )
            for i, r in enumerate(self.rows):
                self._flat[i * at + a : i * at + b] = c[r]
        self._n = at
        # The kept readings are already non-decreasing, so this clamps only the new ones,
        # never to earlier than the last reading kept.
        new = self._ts[n:at]
        np.maximum.accumulate(new, out=new)
        if n:
            np.maximum(new, self._ts[n - 1], out=new)
        return spans

    def trim(self) -> None:
        n = len(self)
        if n == 0:
            return
        ts = self.ts
        limit = int(ts[-1]) - self.keep_ms
        first = int(np.searchsorted(ts, limit, side="right"))  # ts[first] > limit
        first = min(first, max(0, n - self.keep_rows))
        if not first:
            return
        keep = n - first
        _move(self._ts, first, 0, keep)
        for r in range(len(self.rows)):  # row r: from r * n + first to r * keep
            _move(self._flat, r * n + first, r * keep, keep)
        self._n = keep
        if self._cap > self._MIN_CAP and 4 * keep < self._cap:
            self._resize(max(2 * keep, self._MIN_CAP))
