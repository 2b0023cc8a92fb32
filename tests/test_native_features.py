"""Risk-model window features: compiled module and pure twin agree bit for bit, and with NumPy.

Every behaviour test runs on both implementations; the differential test feeds them the
same random histories (repeated timestamps, NaN, infinities, huge and negative values) and
compares the float32 outputs bit for bit, NaN payloads and signed zeros included.
"""

from __future__ import annotations

import importlib
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

compiled = importlib.import_module("native._features")  # a build failure is a test failure
twin = importlib.import_module("native._features_py")
IMPLS = [compiled, twin]

F_MEAN, F_MIN, F_MAX, F_STDDEV, F_COUNT = 1, 2, 3, 4, 5
F_RATE, F_DELTA, F_COMPLETENESS, F_LAG = 6, 7, 8, 9
ALL_OPS = range(1, 10)
NAN = math.nan
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


@pytest.fixture(params=IMPLS, ids=["cython", "python"])
def impl(request):
    return request.param


def run(mod, ts, cols, windows, feats, fill: float = -7.0) -> np.ndarray:
    """``out`` for ``windows`` [(lo, hi)] and ``feats`` [(chan, op, dur_ms, arg)]."""
    ts = np.asarray(ts, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.float64)
    lo = np.array([w[0] for w in windows], dtype=np.int64)
    hi = np.array([w[1] for w in windows], dtype=np.int64)
    chan = np.array([f[0] for f in feats], dtype=np.int32)
    op = np.array([f[1] for f in feats], dtype=np.int32)
    dur = np.array([f[2] for f in feats], dtype=np.int64)
    arg = np.array([f[3] for f in feats], dtype=np.int32)
    out = np.full((len(windows), len(feats)), fill, dtype=np.float32)
    mod.window_features(ts, cols, lo, hi, chan, op, dur, arg, out)
    return out


def bits(a: np.ndarray) -> list[int]:
    return a.view(np.uint32).ravel().tolist()


def same(a: float, b: float) -> bool:
    """Equal as float32, NaN equal to NaN."""
    a, b = float(np.float32(a)), float(np.float32(b))
    return (math.isnan(a) and math.isnan(b)) or a == b


def check(out_row, expected) -> None:
    got = [float(v) for v in out_row]
    assert all(same(g, e) for g, e in zip(got, expected)), (got, expected)


# --------------------------------------------------------------------------- selector


def test_both_modules_export_the_twins_op_codes():
    for name in twin.__all__:
        if name.startswith("F_"):
            assert getattr(compiled, name) == getattr(twin, name) == globals()[name]


# --------------------------------------------------------------------------- by hand

TS = [0, 1000, 2000, 3000, 4000, 5000]
X = [1.0, NAN, 3.0, 4.0, NAN, 10.0]


def ops(dur: int = 0, arg: int = 0, chan: int = 0) -> list[tuple[int, int, int, int]]:
    return [(chan, o, dur, arg) for o in ALL_OPS]


def test_every_op_over_the_windows_own_readings(impl):
    out = run(impl, TS, [X], [(0, 6), (2, 4), (1, 2)], ops())
    # [1, 3, 4, 10]: mean 4.5, squared deviations 12.25 + 2.25 + 0.25 + 30.25 = 45
    check(out[0], [4.5, 1, 10, math.sqrt(45 / 4), 4, 9 / 5, 9, 4 / 6, 10])
    check(out[1], [3.5, 3, 4, 0.5, 2, 1.0, 1, 1.0, 4])
    # a window whose only reading is NaN: nothing valid, but lag looks back before it
    check(out[2], [NAN, NAN, NAN, NAN, 0, NAN, NAN, 0.0, 1])


def test_results_are_float64_arithmetic_rounded_once_to_float32(impl):
    x = [0.1, 0.2, 0.7, 1e-3]
    out = run(impl, [0, 1, 2, 3], [x], [(0, 4)], [(0, F_MEAN, 0, 0), (0, F_STDDEV, 0, 0)])
    s = ((0.1 + 0.2) + 0.7) + 1e-3
    mean = s / 4
    m2 = 0.0
    for v in x:
        m2 += (v - mean) * (v - mean)
    assert bits(out) == bits(np.array([mean, math.sqrt(m2 / 4)], dtype=np.float32))


def test_lag_counts_valid_readings_back_from_the_windows_end(impl):
    feats = [(0, F_LAG, 0, k) for k in range(5)]
    out = run(impl, TS, [X], [(0, 6), (2, 4), (5, 6)], feats)
    check(out[0], [10, 4, 3, 1, NAN])  # lag 4 is beyond the history
    check(out[1], [4, 3, 1, NAN, NAN])  # looks back before lo, never at or after hi
    check(out[2], [10, 4, 3, 1, NAN])


def test_trailing_duration_is_t_minus_d_exclusive_to_t_inclusive(impl):
    # the window is only the last reading; the duration looks back from ts[hi-1] = 5000
    out = run(impl, TS, [X], [(5, 6)], ops(dur=2500) + ops(dur=3000) + ops(dur=3001))
    # 2500 and 3000: readings at 3000, 4000, 5000 -> [4, NaN, 10] (2000 is not > 2000)
    for k in (0, 9):
        check(out[0, k : k + 9], [7, 4, 10, 3, 2, 6 / 2, 6, 2 / 3, 10])
    # 3001 takes the reading at 2000 too -> [3, 4, NaN, 10]
    m = 17 / 3
    sd = math.sqrt(((3 - m) ** 2 + (4 - m) ** 2 + (10 - m) ** 2) / 3)
    check(out[0, 18:], [m, 3, 10, sd, 3, 7 / 3, 7, 3 / 4, 10])


def test_trailing_duration_ignores_lo_and_includes_repeated_timestamps(impl):
    ts = [0, 10, 10, 10, 20]
    x = [5.0, 1.0, 2.0, 3.0, 4.0]
    out = run(impl, ts, [x], [(3, 4), (4, 5)], [(0, F_COUNT, 1, 0), (0, F_MEAN, 10, 0)])
    check(out[0], [3, 2.0])  # all three readings at t=10 count, not just [3, 4)
    check(out[1], [1, 4.0])  # only t=20 is in (10, 20]
    huge = run(impl, ts, [x], [(2, 3)], [(0, F_COUNT, I64_MAX, 0)])
    check(huge[0], [3])


def test_empty_windows_are_nan_except_count(impl):
    out = run(impl, TS, [X], [(3, 3), (0, 0), (6, 6)], ops() + ops(dur=10_000, arg=1))
    for row in out:
        check(row, ([NAN] * 4 + [0] + [NAN] * 4) * 2)
    empty = run(impl, [], np.empty((2, 0)), [(0, 0)], [(1, F_COUNT, 5, 0), (0, F_LAG, 0, 0)])
    check(empty[0], [0, NAN])


def test_an_all_nan_channel_has_count_zero_completeness_zero_and_nan_otherwise(impl):
    cols = [X, [NAN] * 6]
    out = run(impl, TS, cols, [(0, 6), (4, 6)], ops(chan=1) + ops(chan=1, dur=1500))
    for row in out:
        check(row, ([NAN] * 4 + [0] + [NAN] * 2 + [0.0] + [NAN]) * 2)


def test_rate_needs_two_distinct_timestamps_but_delta_does_not(impl):
    ts = [0, 500, 500, 500, 900]
    x = [NAN, 2.0, NAN, 5.0, NAN]
    feats = [(0, F_RATE, 0, 0), (0, F_DELTA, 0, 0), (0, F_STDDEV, 0, 0)]
    out = run(impl, ts, [x], [(0, 5), (1, 2), (1, 4)], feats)
    check(out[0], [NAN, 3, 1.5])  # first and last valid share t=500
    check(out[1], [NAN, 0, 0])  # one valid reading
    check(out[2], [NAN, 3, 1.5])
    out = run(impl, [0, 250, 1250], [[1.0, NAN, -2.0]], [(0, 3)], feats)
    check(out[0], [-3 / 1.25, -3, 1.5])


def test_channels_are_picked_per_feature(impl):
    cols = [[1.0, 2.0, 3.0], [10.0, 20.0, 40.0], [NAN, -1.0, NAN]]
    feats = [(2, F_MEAN, 0, 0), (1, F_MAX, 0, 0), (0, F_MIN, 0, 0), (1, F_RATE, 0, 0)]
    out = run(impl, [0, 1000, 2000], cols, [(0, 3)], feats)
    check(out[0], [-1, 40, 1, 15])


def test_out_of_float32_range_stores_inf_quietly(impl):
    # pytest turns warnings into errors: NumPy's cast-overflow warning would fail this
    x = [1e300, 3e300, -1e308, -1e308, 1e-50]
    feats = [(0, F_MEAN, 0, 0), (0, F_MIN, 0, 0), (0, F_LAG, 0, 0)]
    out = run(impl, [0, 1, 2, 3, 4], [x], [(0, 2), (2, 4), (4, 5)], feats)
    check(out[0], [math.inf, math.inf, math.inf])
    check(out[1], [-math.inf, -math.inf, -math.inf])
    assert bits(out[2]) == [0, 0, 0]  # rounds to +0.0


def test_extreme_times_do_not_wrap(impl):
    ts = [I64_MIN, I64_MIN + 5, I64_MAX]
    x = [1.0, 2.0, 4.0]
    feats = [(0, F_RATE, 0, 0), (0, F_COUNT, I64_MAX, 0), (0, F_COUNT, 6, 0)]
    out = run(impl, ts, [x], [(0, 3), (0, 2)], feats)
    check(out[0], [3 / ((2**64 - 1) / 1000.0), 1, 1])  # (MAX - MAX, MAX]: the last only
    # ts[hi-1] - dur_ms is below every int64 time: the whole history is selected
    check(out[1], [1 / (5 / 1000.0), 2, 2])


def test_strided_index_and_spec_arrays_are_accepted(impl):
    ts = np.array([0, 1000, 2000, 3000], dtype=np.int64)
    cols = np.array([[1.0, 2.0, 4.0, 8.0]])
    lohi = np.array([[0, 4], [1, 3]], dtype=np.int64)
    spec = np.array([[0, 0], [F_MEAN, F_DELTA], [0, 0], [0, 0]], dtype=np.int32)
    dur = np.array([[0, 5], [0, 5]], dtype=np.int64)[:, 0]
    out = np.zeros((2, 2), dtype=np.float32)
    impl.window_features(ts, cols, lohi[:, 0], lohi[:, 1], spec[0], spec[1], dur, spec[2], out)
    check(out[0], [15 / 4, 7])
    check(out[1], [3, 2])


# --------------------------------------------------------------------------- errors

N = 4


def bad_call(**change):
    """Arguments for a valid call of shape (2 windows, 2 features) with ``change`` applied."""
    args = {
        "ts": np.arange(N, dtype=np.int64),
        "cols": np.zeros((2, N)),
        "lo": np.array([0, 1], dtype=np.int64),
        "hi": np.array([2, 4], dtype=np.int64),
        "chan": np.array([0, 1], dtype=np.int32),
        "op": np.array([F_MEAN, F_LAG], dtype=np.int32),
        "dur_ms": np.array([0, 5], dtype=np.int64),
        "arg": np.array([0, 1], dtype=np.int32),
        "out": np.zeros((2, 2), dtype=np.float32),
    }
    for k, v in change.items():
        args[k] = np.ascontiguousarray(v, dtype=args[k].dtype)
    return args


I64, I32 = np.int64, np.int32
BAD = [
    ({"cols": np.zeros(N)}, "cols must be (channels, 4), got (4,)"),
    ({"cols": np.zeros((2, 3))}, "cols must be (channels, 4), got (2, 3)"),
    ({"cols": np.zeros((1, 2, N))}, "cols must be (channels, 4), got (1, 2, 4)"),
    ({"lo": [0]}, "lo and hi need one entry per row of out"),
    ({"hi": [1, 2, 3]}, "lo and hi need one entry per row of out"),
    ({"chan": [0]}, "chan, op, dur_ms and arg need one entry per column of out"),
    ({"op": [1, 2, 3]}, "chan, op, dur_ms and arg need one entry per column of out"),
    ({"dur_ms": []}, "chan, op, dur_ms and arg need one entry per column of out"),
    ({"arg": [0]}, "chan, op, dur_ms and arg need one entry per column of out"),
    ({"chan": [0, 2]}, "feature 1: channel row 2 out of range"),
    ({"chan": [-1, 0]}, "feature 0: channel row -1 out of range"),
    ({"op": [0, 1]}, "feature 0: unknown op 0"),
    ({"op": [1, 10]}, "feature 1: unknown op 10"),
    ({"arg": [0, -1]}, "feature 1: negative lag or duration"),
    ({"dur_ms": [-1, 0]}, "feature 0: negative lag or duration"),
    ({"chan": [0, 9], "op": [0, 1]}, "feature 0: unknown op 0"),  # feature by feature
    ({"chan": [5, 0], "op": [0, 1], "arg": [-1, 0]}, "feature 0: channel row 5 out of range"),
    ({"op": [1, 1], "arg": [0, -3], "lo": [3, 0]}, "feature 1: negative lag or duration"),
    ({"lo": [0, 3], "hi": [2, 2]}, "window 1: range [3, 2) outside 0..4"),
    ({"lo": [-1, 0]}, "window 0: range [-1, 2) outside 0..4"),
    ({"hi": [2, 5]}, "window 1: range [1, 5) outside 0..4"),
    ({"lo": [2**40, 0], "hi": [2**41, 1]}, f"window 0: range [{2**40}, {2**41}) outside 0..4"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_every_bad_argument_is_a_value_error_with_the_twins_message(change, message):
    outs = []
    for mod in IMPLS:
        args = bad_call(**change)
        args["out"][:] = -7.0
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            mod.window_features(**args)
        outs.append(args["out"])
    # as in the twin, windows before a bad one have been written, and nothing else
    assert bits(outs[0]) == bits(outs[1])


def test_a_bad_window_leaves_later_rows_untouched(impl):
    args = bad_call(lo=[0, 3], hi=[2, 2], out=np.full((2, 2), -7.0))
    with pytest.raises(ValueError):
        impl.window_features(**args)
    assert args["out"][1].tolist() == [-7.0, -7.0] and args["out"][0, 0] == 0.0


# --------------------------------------------------------------------------- differential

SPECIAL = [NAN, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 3.5e38, -3.5e38, 5e-324, 1e-45]


@st.composite
def histories(draw):
    n = draw(st.integers(0, 40))
    kind = draw(st.integers(0, 4))
    if kind < 2:  # few distinct times: many repeats, small spans
        ts = sorted(draw(st.lists(st.integers(-3, 12), min_size=n, max_size=n)))
    elif kind < 4:
        ts = sorted(draw(st.lists(st.integers(I64_MIN, I64_MAX), min_size=n, max_size=n)))
    else:  # out of contract (a clock stepping back), but still the same answer
        ts = draw(st.lists(st.integers(I64_MIN, I64_MAX), min_size=n, max_size=n))
    n_chan = draw(st.integers(1, 3))
    value = st.one_of(
        st.floats(-100, 100),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(SPECIAL),
        st.just(NAN),
    )
    cols = []
    for _ in range(n_chan):
        if draw(st.integers(0, 5)) == 0:
            cols.append([NAN] * n)
        else:
            cols.append(draw(st.lists(value, min_size=n, max_size=n)))
    bound = st.integers(0, n)
    windows = draw(st.lists(st.tuples(bound, bound).map(sorted), max_size=6))
    span = max(ts) - min(ts) if ts else 0
    dur = st.one_of(
        st.just(0),
        st.integers(1, 20),
        st.integers(1, I64_MAX),
        st.integers(1, min(I64_MAX, max(1, span))),
        st.just(I64_MAX),
    )
    feat = st.tuples(st.integers(0, n_chan - 1), st.sampled_from(ALL_OPS), dur, st.integers(0, 6))
    feats = draw(st.lists(feat, max_size=9))
    return ts, np.array(cols, dtype=np.float64).reshape(n_chan, n), windows, feats


@settings(max_examples=600, deadline=None)
@given(histories())
def test_compiled_and_twin_agree_bit_for_bit(h):
    ts, cols, windows, feats = h
    a = run(compiled, ts, cols, windows, feats)
    b = run(twin, ts, cols, windows, feats)
    assert bits(a) == bits(b), (a, b)


# --------------------------------------------------------------------------- vs NumPy


def reference(ts, x, lo, hi, op, dur, arg) -> float:
    """The feature by NumPy, straight from the docstring of native._features_py."""
    if hi == lo:
        return 0.0 if op == F_COUNT else NAN
    if op == F_LAG:
        valid = x[:hi][~np.isnan(x[:hi])]
        return float(valid[-1 - arg]) if arg < valid.size else NAN
    idx = np.arange(lo, hi) if dur == 0 else np.flatnonzero(ts[:hi] > ts[hi - 1] - dur)
    sel = x[idx]
    ok = ~np.isnan(sel)
    if op == F_COUNT:
        return float(np.count_nonzero(ok))
    if op == F_COMPLETENESS:
        return np.count_nonzero(ok) / sel.size
    if not ok.any():
        return NAN
    first, last = idx[ok][0], idx[ok][-1]
    if op == F_MEAN:
        return float(np.nanmean(sel))
    if op == F_MIN:
        return float(np.nanmin(sel))
    if op == F_MAX:
        return float(np.nanmax(sel))
    if op == F_STDDEV:
        return float(np.nanstd(sel))
    if op == F_DELTA:
        return float(x[last] - x[first])
    assert op == F_RATE
    if ts[last] == ts[first]:
        return NAN
    return float((x[last] - x[first]) / ((ts[last] - ts[first]) / 1000.0))


@pytest.mark.parametrize("seed", range(8))
def test_both_agree_with_a_numpy_reference(impl, seed):
    rng = np.random.default_rng(seed)
    n = 400
    ts = np.cumsum(rng.choice([0, 0, 100, 250, 1000, 3000], size=n)).astype(np.int64)
    cols = rng.normal(50.0, 20.0, size=(3, n))
    cols[rng.random((3, n)) < 0.2] = np.nan
    cols[2, 100:180] = np.nan
    windows = [tuple(sorted(rng.integers(0, n + 1, size=2))) for _ in range(40)]
    windows += [(0, n), (n, n), (150, 170), (n - 1, n)]
    feats = [
        (int(rng.integers(0, 3)), int(o), int(d), int(rng.integers(0, 4)))
        for o in ALL_OPS
        for d in (0, 1, 2500, 60_000)
    ]
    out = run(impl, ts, cols, windows, feats)
    for w, (lo, hi) in enumerate(windows):
        for f, (c, o, d, k) in enumerate(feats):
            want = reference(ts, cols[c], int(lo), int(hi), o, d, k)
            got = float(out[w, f])
            if math.isnan(want):
                assert math.isnan(got), (w, f, got)
            else:
                assert got == pytest.approx(want, rel=1e-6, abs=1e-5), (w, f, got, want)
