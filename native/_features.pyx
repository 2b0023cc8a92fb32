# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Risk-model features over windows of columnar readings: the compiled module.

Same signature, argument checks (and messages), results and summation order as
the pure-Python twin ``native._features_py``, whose docstring is the
specification (which readings each feature looks at, NaN rules, rounding).
Only *how* it runs differs: arguments are checked once, then every
(window, feature) cell is computed without the GIL by a plain C loop over the
column, with the trailing-duration start found by binary search.

Bit-for-bit agreement with the twin rests on doing the same IEEE operations in
the same order: sums in reading order, float64 throughout, one rounding to
float32 on store, and no FMA contraction (setup.py builds this module with
``-ffp-contract=off``). Where the twin scans every reading only to find the
first and last valid one (``delta``, ``rate``), this module scans inwards
from both ends, which selects the same readings.
"""

from libc.math cimport INFINITY, NAN, sqrt
from libc.stdint cimport INT64_MIN, int32_t, int64_t, uint64_t

from native._features_py import (
    F_COMPLETENESS,
    F_COUNT,
    F_DELTA,
    F_LAG,
    F_MAX,
    F_MEAN,
    F_MIN,
    F_RATE,
    F_STDDEV,
)

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

cdef enum:
    OP_MEAN = 1
    OP_MIN = 2
    OP_MAX = 3
    OP_STDDEV = 4
    OP_COUNT = 5
    OP_RATE = 6
    OP_DELTA = 7
    OP_COMPLETENESS = 8
    OP_LAG = 9

if (F_MEAN, F_MIN, F_MAX, F_STDDEV, F_COUNT, F_RATE, F_DELTA, F_COMPLETENESS, F_LAG) != (
    OP_MEAN, OP_MIN, OP_MAX, OP_STDDEV, OP_COUNT, OP_RATE, OP_DELTA, OP_COMPLETENESS, OP_LAG
):  # a build out of step with the twin must not run
    raise ImportError("native._features op codes differ from native._features_py")


cdef inline Py_ssize_t _first_after(const int64_t[:] ts, Py_ssize_t hi,
                                    int64_t limit) noexcept nogil:
    """Smallest index i < hi with ts[i] > limit (hi if none): the twin's binary search."""
    cdef Py_ssize_t a = 0, b = hi, m
    while a < b:
        m = (a + b) >> 1
        if ts[m] > limit:
            b = m
        else:
            a = m + 1
    return a


cdef double _aggregate(int op, const int64_t[:] ts, const double* x,
                       Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """One aggregate of ``x[a:b]`` (b > a), as ``native._features_py._aggregate``."""
    cdef Py_ssize_t i, k = 0, first, last
    cdef double v, s, mean, m2, d, ext
    cdef uint64_t span
    if op == OP_COUNT or op == OP_COMPLETENESS:
        for i in range(a, b):
            v = x[i]
            if v == v:
                k += 1
        if op == OP_COUNT:
            return <double>k
        return <double>k / <double>(b - a)
    if op == OP_MEAN or op == OP_STDDEV:
        s = 0.0
        for i in range(a, b):
            v = x[i]
            if v == v:
                k += 1
                s += v
        if k == 0:
            return NAN
        mean = s / <double>k
        if op == OP_MEAN:
            return mean
        m2 = 0.0
        for i in range(a, b):
            v = x[i]
            if v == v:
                d = v - mean
                m2 += d * d
        return sqrt(m2 / <double>k)
    if op == OP_MIN:
        ext = INFINITY
        for i in range(a, b):
            v = x[i]
            if v == v:
                k += 1
                if v < ext:
                    ext = v
        return ext if k > 0 else NAN
    if op == OP_MAX:
        ext = -INFINITY
        for i in range(a, b):
            v = x[i]
            if v == v:
                k += 1
                if v > ext:
                    ext = v
        return ext if k > 0 else NAN
    # OP_DELTA, OP_RATE: the first and the last valid reading
    first = a
    while first < b and x[first] != x[first]:
        first += 1
    if first == b:
        return NAN
    last = b - 1
    while x[last] != x[last]:
        last -= 1
    if op == OP_DELTA:
        return x[last] - x[first]
    if ts[last] <= ts[first]:  # the twin's span <= 0 (exact integers, no wrap-around)
        return NAN
    span = <uint64_t>ts[last] - <uint64_t>ts[first]  # exact: 0 < span < 2**64
    return (x[last] - x[first]) / (<double>span / 1000.0)


cdef inline double _lag(const double* x, Py_ssize_t hi, int32_t lag) noexcept nogil:
    """The ``lag``-th most recent valid reading at index < hi (NaN if there is none)."""
    cdef Py_ssize_t i
    cdef int64_t seen = 0
    cdef double v
    for i in range(hi - 1, -1, -1):
        v = x[i]
        if v == v:
            if seen == lag:
                return v
            seen += 1
    return NAN


def window_features(ts, cols, lo, hi, chan, op, dur_ms, arg, out):
    """Fill ``out[w, f]`` with feature ``f`` of window ``w`` (see ``native._features_py``).

    ``ts``, ``lo``, ``hi``, ``dur_ms`` are int64, ``chan``, ``op``, ``arg`` int32 (any
    strides); ``cols`` is C-contiguous float64 (channels, n) and ``out`` C-contiguous
    float32 (windows, features), written in place.

    Raises:
        ValueError: shapes that do not fit together, a feature with a channel out of
            range, an unknown op or a negative lag or duration, or a window outside the
            readings. The checks, their order and their messages are the twin's; as
            there, windows before a bad one have already been written.
    """
    n = ts.shape[0]
    n_win, n_feat = out.shape[0], out.shape[1]
    if cols.ndim != 2 or cols.shape[1] != n:
        raise ValueError(f"cols must be (channels, {n}), got {cols.shape}")
    if lo.shape[0] != n_win or hi.shape[0] != n_win:
        raise ValueError("lo and hi need one entry per row of out")
    for spec in (chan, op, dur_ms, arg):
        if spec.shape[0] != n_feat:
            raise ValueError("chan, op, dur_ms and arg need one entry per column of out")

    cdef const int64_t[:] ts_v = ts
    cdef const double[:, ::1] cols_v = cols
    cdef const int64_t[:] lo_v = lo
    cdef const int64_t[:] hi_v = hi
    cdef const int32_t[:] chan_v = chan
    cdef const int32_t[:] op_v = op
    cdef const int64_t[:] dur_v = dur_ms
    cdef const int32_t[:] arg_v = arg
    cdef float[:, ::1] out_v = out

    cdef Py_ssize_t f, w, nw = n_win, nf = n_feat, nr = n, start
    cdef Py_ssize_t bad = -1
    cdef int64_t a, b, d, t_last
    cdef int kind
    cdef double r
    cdef const double* x
    for f in range(nf):
        if not 0 <= chan_v[f] < cols_v.shape[0]:
            raise ValueError(f"feature {f}: channel row {chan_v[f]} out of range")
        if not OP_MEAN <= op_v[f] <= OP_LAG:
            raise ValueError(f"feature {f}: unknown op {op_v[f]}")
        if arg_v[f] < 0 or dur_v[f] < 0:
            raise ValueError(f"feature {f}: negative lag or duration")

    with nogil:
        for w in range(nw):
            a = lo_v[w]
            b = hi_v[w]
            if not 0 <= a <= b <= nr:
                bad = w
                break
            for f in range(nf):
                kind = op_v[f]
                if b == a:
                    r = 0.0 if kind == OP_COUNT else NAN
                else:
                    x = &cols_v[chan_v[f], 0]
                    if kind == OP_LAG:
                        r = _lag(x, b, arg_v[f])
                    else:
                        d = dur_v[f]
                        if d == 0:
                            start = a
                        else:
                            t_last = ts_v[b - 1]
                            if t_last < INT64_MIN + d:  # t_last - d < every int64 time
                                start = 0
                            else:
                                start = _first_after(ts_v, b, t_last - d)
                        r = _aggregate(kind, ts_v, x, start, b)
                out_v[w, f] = <float>r
    if bad >= 0:
        raise ValueError(f"window {bad}: range [{lo_v[bad]}, {hi_v[bad]}) outside 0..{n}")
