"""Risk-model features over windows of columnar readings (pure-Python twin).

This file defines the semantics; ``native/_features.pyx`` is the compiled version and must
give bit-identical results (tests/test_native_features.py checks both on random input).

Inputs, for a batch of ``W`` windows over one history of ``n`` readings:

* ``ts``: int64 (n,), reading times in ms, non-decreasing (the caller clamps a clock that
  steps back, as the policy evaluator does);
* ``cols``: float64 (C, n), C-contiguous, one row per channel; NaN = no valid reading;
* ``lo``, ``hi``: int64 (W,), window ``w`` is the readings ``lo[w] <= i < hi[w]``;
* per feature ``f`` (F of them): ``chan`` (int32, row of ``cols``), ``op`` (int32, one of the
  ``F_*`` codes), ``dur_ms`` (int64) and ``arg`` (int32);
* ``out``: float32 (W, F), C-contiguous, written in place.

Which readings feature ``f`` of window ``w`` looks at:

* ``dur_ms == 0``: the window's own readings, ``[lo[w], hi[w])``;
* ``dur_ms > 0``: the trailing ``dur_ms`` at the window's last reading, i.e. every reading
  ``i < hi[w]`` with ``ts[i] > ts[hi[w] - 1] - dur_ms`` (the policy language's
  ``mean(x, 10m)`` at that reading: ``t - D < time <= t``);
* ``F_LAG``: the ``arg``-th most recent valid reading (0 = the latest) at index ``< hi[w]``.

A window without readings (``hi[w] == lo[w]``) gives NaN for every feature except
``count`` (0). Over the selected readings, NaN readings left out:

* ``mean``; ``stddev`` (population, ddof=0; two passes: mean, then the sum of squared
  deviations, both summed in reading order); ``min``; ``max``;
* ``count``: number of valid readings;
* ``rate``: (last - first) / ((t_last - t_first) / 1000), per second, first and last valid
  reading; NaN when they share a timestamp;
* ``delta``: last - first valid reading;
* ``completeness``: valid readings / all readings selected;

and NaN when no reading is valid. Sums and the final division are float64; the value is
rounded to float32 only when stored in ``out`` (the models take float32).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "F_COMPLETENESS",
    "F_COUNT",
    "F_DELTA",
    "F_LAG",
    "F_MAX",
    "F_MEAN",
    "F_MIN",
    "F_RATE",
    "F_STDDEV",
    "window_features",
]

F_MEAN, F_MIN, F_MAX, F_STDDEV, F_COUNT, F_RATE, F_DELTA, F_COMPLETENESS, F_LAG = range(1, 10)

_NAN = float("nan")


def _first_after(ts: npt.NDArray[np.int64], hi: int, limit: int) -> int:
    """Smallest index i < hi with ts[i] > limit (hi if none): binary search."""
    a, b = 0, hi
    while a < b:
        m = (a + b) >> 1
        if int(ts[m]) > limit:
            b = m
        else:
            a = m + 1
    return a


def _aggregate(
    op: int, ts: npt.NDArray[np.int64], x: npt.NDArray[np.float64], a: int, b: int
) -> float:
    """One aggregate of ``x[a:b]`` (see the module docstring)."""
    k = 0
    total = b - a
    first = last = -1
    s = 0.0
    lo_v = math.inf
    hi_v = -math.inf
    for i in range(a, b):
        v = float(x[i])
        if v != v:
            continue
        if first < 0:
            first = i
        last = i
        k += 1
        s += v
        if v < lo_v:
            lo_v = v
        if v > hi_v:
            hi_v = v
    if op == F_COUNT:
        return float(k)
    if op == F_COMPLETENESS:
        return k / total if total > 0 else _NAN
    if k == 0:
        return _NAN
    if op == F_MEAN:
        return s / k
    if op == F_MIN:
        return lo_v
    if op == F_MAX:
        return hi_v
    if op == F_STDDEV:
        mean = s / k
        m2 = 0.0
        for i in range(a, b):
            v = float(x[i])
            if v == v:
                d = v - mean
                m2 += d * d
        return math.sqrt(m2 / k)
    if op == F_DELTA:
        return float(x[last]) - float(x[first])
    if op == F_RATE:
        span = int(ts[last]) - int(ts[first])
        if span <= 0:
            return _NAN
        return (float(x[last]) - float(x[first])) / (span / 1000.0)
    raise ValueError(f"unknown feature op {op}")


def _lag(x: npt.NDArray[np.float64], hi: int, k: int) -> float:
    seen = 0
    for i in range(hi - 1, -1, -1):
        v = float(x[i])
        if v == v:
            if seen == k:
                return v
            seen += 1
    return _NAN


def window_features(
    ts: npt.NDArray[np.int64],
    cols: npt.NDArray[np.float64],
    lo: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
    chan: npt.NDArray[np.int32],
    op: npt.NDArray[np.int32],
    dur_ms: npt.NDArray[np.int64],
    arg: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
) -> None:
    """Fill ``out[w, f]`` with feature ``f`` of window ``w`` (see the module docstring)."""
    n = ts.shape[0]
    n_win, n_feat = out.shape[0], out.shape[1]
    if cols.ndim != 2 or cols.shape[1] != n:
        raise ValueError(f"cols must be (channels, {n}), got {cols.shape}")
    if lo.shape[0] != n_win or hi.shape[0] != n_win:
        raise ValueError("lo and hi need one entry per row of out")
    for spec in (chan, op, dur_ms, arg):
        if spec.shape[0] != n_feat:
            raise ValueError("chan, op, dur_ms and arg need one entry per column of out")
    for f in range(n_feat):
        if not 0 <= int(chan[f]) < cols.shape[0]:
            raise ValueError(f"feature {f}: channel row {int(chan[f])} out of range")
        if not F_MEAN <= int(op[f]) <= F_LAG:
            raise ValueError(f"feature {f}: unknown op {int(op[f])}")
        if int(arg[f]) < 0 or int(dur_ms[f]) < 0:
            raise ValueError(f"feature {f}: negative lag or duration")
    # A value beyond float32's range is stored as +-inf, as the C cast does, without
    # NumPy's "overflow encountered in cast" warning.
    with np.errstate(over="ignore"):
        for w in range(n_win):
            a, b = int(lo[w]), int(hi[w])
            if not 0 <= a <= b <= n:
                raise ValueError(f"window {w}: range [{a}, {b}) outside 0..{n}")
            for f in range(n_feat):
                kind = int(op[f])
                x = cols[int(chan[f])]
                if b == a:
                    r = 0.0 if kind == F_COUNT else _NAN
                elif kind == F_LAG:
                    r = _lag(x, b, int(arg[f]))
                else:
                    d = int(dur_ms[f])
                    start = a if d == 0 else _first_after(ts, b, int(ts[b - 1]) - d)
                    r = _aggregate(kind, ts, x, start, b)
                out[w, f] = r
