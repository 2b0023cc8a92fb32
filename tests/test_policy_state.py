"""Window aggregates, durations and rule state machines: compiled == pure == a slow reference.

The references here are written the obvious way (recompute each window from
scratch, scan back for the last compliant reading), with none of the
kernels' ring buffers, deques or running sums.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import PolicyError
from agent.policy import load_policy
from agent.policy.evaluator import Evaluator
from native import _policy_py, policy_format

AGGS = sorted(policy_format.AGG_KINDS.items())


def compiled() -> ModuleType:
    return importlib.import_module("native._policy")


@pytest.fixture(params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return compiled() if request.param == "cython" else _policy_py


# -- slow references ----------------------------------------------------------------


def clamp(ts: list[int]) -> list[int]:
    out, last = [], -(2**62)
    for t in ts:
        last = max(last, t)
        out.append(last)
    return out


def ref_aggregate(name: str, dur: int, ts: list[int], xs: list[float]) -> list[float]:
    tc = clamp(ts)
    out = []
    for j, t in enumerate(tc):
        inside = [k for k in range(j + 1) if tc[k] > t - dur]
        vals = [(tc[k], xs[k]) for k in inside if not math.isnan(xs[k])]
        v = [x for _, x in vals]
        if name == "completeness":
            out.append(len(v) / len(inside))
        elif name == "count":
            out.append(float(len(v)))
        elif not v:
            out.append(math.nan)
        elif name == "mean":
            out.append(sum(v) / len(v))
        elif name == "min":
            out.append(min(v))
        elif name == "max":
            out.append(max(v))
        elif name == "stddev":
            m = sum(v) / len(v)
            out.append(math.sqrt(sum((x - m) ** 2 for x in v) / len(v)))
        elif name == "delta":
            out.append(v[-1] - v[0])
        else:  # rate
            span = vals[-1][0] - vals[0][0]
            out.append((v[-1] - v[0]) / (span / 1000) if span > 0 else math.nan)
    return out


def ref_rule(ts: list[int], cond: list[int], for_ms: int) -> list[int]:
    """Violated at j iff, since the last compliant reading, the condition went false at f
    and some false reading g <= j came at least for_ms after it."""
    tc = clamp(ts)
    out = []
    for j in range(len(tc)):
        k = max([i for i in range(j + 1) if cond[i] == 1], default=-1)
        falses = [i for i in range(k + 1, j + 1) if cond[i] == 0]
        violated = bool(falses) and any(tc[g] - tc[falses[0]] >= for_ms for g in falses)
        out.append(0 if violated else (2 if cond[j] == 2 else 1))
    return out


# -- random streams -----------------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn, max_n: int = 60) -> tuple[np.ndarray, np.ndarray, list[int]]:
    n = draw(st.integers(0, max_n))
    steps = draw(
        st.lists(st.sampled_from([0, 1, 250, 500, 1000, 3000, -700]), min_size=n, max_size=n)
    )
    ts = np.cumsum(np.array(steps, dtype=np.int64)) + 1_700_000_000_000
    values = st.one_of(
        st.sampled_from([math.nan, 0.0, -1.5, 2.0, 8.0, 1e6]),
        st.floats(-100, 100, allow_nan=False),
    )
    xs = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float64)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return ts, xs, cuts


def run_agg(mod: ModuleType, kind: int, dur: int, ts: np.ndarray, xs: np.ndarray, cuts: list[int]):
    from agent.policy.evaluator import _Ring

    ring = _Ring(cap=1)
    out = np.empty(ts.size)
    for a, b in zip([0, *cuts], [*cuts, ts.size]):
        ring.reserve(b - a)
        mod.agg_update(
            kind, dur, ts[a:b], xs[a:b], out[a:b], ring.rt, ring.rx, ring.dq, ring.ist, ring.fst
        )
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=streams(),
    agg=st.sampled_from(AGGS),
    dur=st.sampled_from([1, 500, 1000, 2500, 10_000]),
)
def test_aggregates_match_reference_and_each_other(data, agg, dur) -> None:
    ts, xs, cuts = data
    name, kind = agg
    pure = run_agg(_policy_py, kind, dur, ts, xs, cuts)
    fast = run_agg(compiled(), kind, dur, ts, xs, cuts)
    # the two implementations agree bit for bit, whatever the batch boundaries
    np.testing.assert_array_equal(pure.view(np.int64), fast.view(np.int64))
    ref = ref_aggregate(name, dur, ts.tolist(), xs.tolist())
    # Documented accuracy: within ~1e-7 of the largest magnitude in the last two windows
    # (the running sums are recomputed exactly each time the window turns over).
    tc = clamp(ts.tolist())
    for j, (got, want) in enumerate(zip(pure.tolist(), ref)):
        if math.isnan(want):
            assert math.isnan(got), (j, got)
            continue
        recent = [abs(x) for t, x in zip(tc[: j + 1], xs.tolist()) if t > tc[j] - 2 * dur]
        scale = max([x for x in recent if not math.isnan(x)], default=1.0)
        assert abs(got - want) <= 1e-7 * max(scale, 1.0) + 1e-12 * abs(want), (name, j, got, want)


@settings(max_examples=100, deadline=None)
@given(data=streams(), for_ms=st.sampled_from([0, 1, 1000, 2500]), codes=st.data())
def test_rule_durations_match_reference(data, for_ms, codes) -> None:
    ts, _, cuts = data
    cond = np.array(
        codes.draw(st.lists(st.sampled_from([0, 1, 2]), min_size=ts.size, max_size=ts.size)),
        dtype=np.uint8,
    )
    expected = ref_rule(ts.tolist(), cond.tolist(), for_ms)
    results = []
    for mod in (_policy_py, compiled()):
        ist = np.array([0, 0, 0, 0, policy_format.NO_TIME], dtype=np.int64)
        fst = np.full(1, np.nan)
        out = np.empty(ts.size, dtype=np.uint8)
        measure = np.arange(ts.size, dtype=np.float64)
        eps = []
        for a, b in zip([0, *cuts], [*cuts, ts.size]):
            es, ee, ep = (np.empty(b - a, dtype=d) for d in (np.int64, np.int64, np.float64))
            k = mod.rule_update(
                ts[a:b], cond[a:b], cond[a:b], measure[a:b], for_ms, 0, 1,
                out[a:b], ist, fst, es, ee, ep,
            )  # fmt: skip
            eps += list(zip(es[:k].tolist(), ee[:k].tolist(), ep[:k].tolist()))
        assert out.tolist() == expected
        results.append((out.tolist(), eps, ist.tolist()))
    assert results[0] == results[1]


@settings(max_examples=60, deadline=None)
@given(data=streams(), codes=st.data())
def test_duration_true_matches_reference(data, codes) -> None:
    ts, _, cuts = data
    cond = np.array(
        codes.draw(st.lists(st.sampled_from([0, 1, 2]), min_size=ts.size, max_size=ts.size)),
        dtype=np.uint8,
    )
    tc = clamp(ts.tolist())
    expected = []
    for j in range(ts.size):
        if cond[j] == 2:
            expected.append(math.nan)
        elif cond[j] == 0:
            expected.append(0.0)
        else:  # back to the last false reading; errors do not break the run
            k = j
            while k > 0 and cond[k - 1] != 0:
                k -= 1
            first_true = next(i for i in range(k, j + 1) if cond[i] == 1)
            expected.append((tc[j] - tc[first_true]) / 1000)
    for mod in (_policy_py, compiled()):
        ist = np.array([0, 0, policy_format.NO_TIME], dtype=np.int64)
        out = np.empty(ts.size)
        for a, b in zip([0, *cuts], [*cuts, ts.size]):
            mod.duration_update(ts[a:b], cond[a:b], out[a:b], ist)
        np.testing.assert_array_equal(out, expected)


def test_clear_hysteresis_holds_a_violation_until_the_clear_condition_lasts(impl) -> None:
    #            ok  bad bad ok  bad ok  ok  ok  ok
    cond = np.array([1, 0, 0, 1, 0, 1, 1, 1, 1], dtype=np.uint8)
    ts = np.arange(cond.size, dtype=np.int64) * 1000
    measure = np.array([5, 9, 11, 7, 10, 7, 6, 5, 5], dtype=np.float64)
    out = np.empty(cond.size, dtype=np.uint8)
    ist = np.array([0, 0, 0, 0, policy_format.NO_TIME], dtype=np.int64)
    fst = np.full(1, np.nan)
    es, ee, ep = np.empty(9, np.int64), np.empty(9, np.int64), np.empty(9)
    k = impl.rule_update(ts, cond, cond, measure, 0, 2000, 1, out, ist, fst, es, ee, ep)
    # violated from 1 s; the compliant reading at 3 s is not enough (2 s needed), the
    # false one at 4 s restarts the clock; cleared at 7 s (2 s after 5 s)
    assert out.tolist() == [1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert k == 1
    assert (es[0], ee[0], ep[0]) == (1000, 7000, 11.0)


def test_state_survives_a_restart_through_json(tmp_path: Path) -> None:
    bundle = load_policy(Path(__file__).parent.parent / "configs/policies/cold-chain.yaml")
    rng = np.random.default_rng(3)
    n = 3000
    ts = np.cumsum(rng.integers(100, 2000, n)).astype(np.int64)
    cols = np.vstack(
        [rng.normal(6, 3, n), rng.uniform(40, 80, n), (rng.random(n) < 0.2).astype(float)]
    )
    cols[0, rng.random(n) < 0.05] = np.nan
    whole = Evaluator(bundle.plan).run(ts, cols)
    first = Evaluator(bundle.plan)
    a = first.run(ts[:1234], cols[:, :1234])
    saved = first.snapshot()
    second = Evaluator(bundle.plan)
    second.restore(saved)
    assert second.state_digest() == first.state_digest()
    assert second.snapshot() == saved  # the snapshot is a function of the state
    b = second.run(ts[1234:], cols[:, 1234:])
    np.testing.assert_array_equal(np.hstack([a.codes, b.codes]), whole.codes)
    assert whole.codes.min() == 0  # not vacuous: there are violations
    for k in range(len(bundle.rules)):
        closed = [e for e in a.episodes[k] if e.end_ms is not None] + b.episodes[k]
        assert closed == whole.episodes[k]


def test_state_for_another_plan_is_refused() -> None:
    root = Path(__file__).parent.parent / "configs/policies"
    cold = load_policy(root / "cold-chain.yaml").evaluator()
    stack = load_policy(root / "stack-emissions.yaml").evaluator()
    with pytest.raises(PolicyError, match="another policy"):
        stack.restore(cold.snapshot())
    good = cold.snapshot()
    with pytest.raises(PolicyError, match="malformed"):
        cold.restore(good[:-3])  # truncated
    with pytest.raises(PolicyError, match="not a edgegov-policy-state/2"):
        cold.restore(b'{"format": "edgegov-policy-state/1"}')
    damaged = bytearray(good)
    damaged[-1] ^= 0x40  # the last rule's peak: the contents no longer hash to the digest
    with pytest.raises(PolicyError, match="damaged"):
        cold.restore(bytes(damaged))
    cold.restore(good)  # a refused snapshot changed nothing


def test_window_memory_stays_bounded_by_the_window() -> None:
    from agent.policy.evaluator import _Ring

    ring = _Ring()
    ts = np.arange(200_000, dtype=np.int64) * 10  # 100 Hz
    xs = np.ones(ts.size)
    out = np.empty(10_000)
    for a in range(0, ts.size, 10_000):
        ring.reserve(10_000)
        compiled().agg_update(
            policy_format.AGG_MEAN, 60_000, ts[a : a + 10_000], xs[a : a + 10_000], out,
            ring.rt, ring.rx, ring.dq, ring.ist, ring.fst,
        )  # fmt: skip
    # one minute at 100 Hz is 6000 readings; the ring holds that plus one batch
    assert ring.rt.shape[0] <= 16_384
    assert out[-1] == 1.0
