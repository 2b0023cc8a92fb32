"""Policy evaluation: compiled evaluator vs its pure twin vs NumPy vs policy-engine peers.

The rule is the one in ../shared/bench (a 3-condition threshold rule), over
1,000,000 readings in typed arrays (1 % missing values), and again over one
batch of 100,000 readings (``BATCH``, the stateful evaluator's batch below),
which stays in the CPU caches, so that the evaluator's per-call cost and its
inner loops are compared with NumPy where memory bandwidth does not even them
out; both ratios come from the same run. Peers (cel-python's
CompiledRunner, regopy's compiled bundle) are driven per reading from Python
floats, as in ../shared/bench/bench_policy.py; where one is not installed its
row says so (``pip install edgegov[bench]``). The stateful evaluator is
measured on ``mean(x, 10m)`` (10 Hz readings, 6000 in each window), whole
pipeline: data quality, the aggregate, the condition and the rule's state
machine.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.tools.bench.core import Row, timeit

RULE = "temperature < 80.0 && humidity >= 20.0 && humidity <= 60.0"
RULE_REGO = """package edge

default allow := false

allow if {
  input.temperature < 80.0
  input.humidity >= 20.0
  input.humidity <= 60.0
}
"""
CHANNELS = ("temperature", "humidity")
CYTHON = "cython evaluator"
NUMPY = "numpy (same rule, no error semantics)"
BATCH = 100_000
MEAN_TARGET = "target: 20 M readings/s"


def _columns(n: int) -> np.ndarray:
    rng = np.random.default_rng(42)
    cols = np.empty((2, n))
    cols[0] = rng.uniform(-20, 100, n)
    cols[1] = rng.uniform(0, 100, n)
    cols[rng.random((2, n)) < 0.01] = np.nan
    return cols


def _per_reading(fn: Callable[[], int], n: int) -> float:
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _cel_python(readings: list[dict[str, float]]) -> float | None:
    try:
        import celpy
        from celpy import celtypes
    except ImportError:
        return None
    env = celpy.Environment(runner_class=celpy.CompiledRunner)
    prog = env.program(env.compile(RULE))
    d = celtypes.DoubleType

    def run() -> int:
        c = 0
        for r in readings:
            if prog.evaluate({"temperature": d(r["temperature"]), "humidity": d(r["humidity"])}):
                c += 1
        return c

    return _per_reading(run, len(readings))


def _regopy(readings: list[dict[str, float]]) -> float | None:
    try:
        from regopy import Interpreter
    except ImportError:
        return None
    builder = Interpreter()
    builder.add_module("edge.rego", RULE_REGO)
    bundle = builder.build("x = data.edge.allow", ["edge/allow"])
    vm = Interpreter()

    def run() -> int:
        c = 0
        for r in readings:
            vm.set_input(r)
            out: Any = vm.query_bundle_entrypoint(bundle, "edge/allow")
            res = out.results
            if res and res[0].expressions and res[0].expressions[0] is True:
                c += 1
        return c

    return _per_reading(run, len(readings))


def _peer_rows(name: str, rate: float | None, cython_rate: float) -> list[Row]:
    if rate is None:
        return [
            Row(
                "policy", name, 0.0, "readings/s", note="not installed (pip install edgegov[bench])"
            )
        ]
    return [
        Row("policy", name, rate, "readings/s", note="per reading, from Python floats"),
        Row("policy", f"cython vs {name}", cython_rate, "readings/s", baseline=name, target=1000.0),
    ]


def _mean_10m(quick: bool) -> float:
    from agent.policy.compiler import PlanBuilder
    from agent.policy.evaluator import ChannelSpec, Evaluator, Plan, RuleSpec

    b = PlanBuilder(["x"])
    cond = b.program(b.check("mean(x, 10m) < 50.0"))
    plan = Plan(
        channels=(ChannelSpec("x", -1e9, 1e9),),
        models=(),
        derived=tuple(b.derived),
        duration_programs=(),
        rules=(RuleSpec("mean", cond, measure_row=1),),
        n_rows=b.n_rows,
    )
    n = 200_000 if quick else 1_000_000
    batch = BATCH
    rng = np.random.default_rng(7)
    x = rng.normal(40, 10, (1, n))
    ts = np.arange(n, dtype=np.int64) * 100  # 10 Hz: 6000 readings per 10 min

    def run() -> None:
        ev = Evaluator(plan)
        for a in range(0, n, batch):
            ev.run(ts[a : a + batch], x[:, a : a + batch])

    return timeit(run, n, repeat=3)


def _versus_numpy(compiled: Any, prog: Any, cols: np.ndarray, label: str) -> list[Row]:
    """NumPy's rate on the rule, then the compiled evaluator's against it."""
    n = cols.shape[1]
    t, h = cols[0], cols[1]
    numpy_row = Row(
        "policy",
        NUMPY + label,
        timeit(lambda: (t < 80.0) & (h >= 20.0) & (h <= 60.0), n),
        "readings/s",
    )
    return [
        numpy_row,
        Row(
            "policy",
            CYTHON + label,
            timeit(lambda: compiled.evaluate(prog, cols), n),
            "readings/s",
            baseline=numpy_row.name,
            target=1.0,
        ),
    ]


def run(quick: bool) -> list[Row]:
    from agent.policy import compile_condition

    # Both implementations explicitly, whatever EDGEGOV_PURE says.
    _policy_py = importlib.import_module("native._policy_py")
    try:
        compiled = importlib.import_module("native._policy")
    except ImportError as e:  # pragma: no cover - make test always builds it
        raise RuntimeError("native._policy is not built (pip install . builds it)") from e

    n = 200_000 if quick else 1_000_000
    cols = _columns(n)
    prog = compile_condition(RULE, CHANNELS)
    rows = _versus_numpy(compiled, prog, cols, "")
    cython_rate = rows[1].rate
    rows += _versus_numpy(compiled, prog, cols[:, :BATCH].copy(), f", {BATCH:,}-reading batch")
    small = cols[:, : (20_000 if quick else 100_000)].copy()
    rows.append(
        Row(
            "policy",
            "pure-python twin",
            timeit(lambda: _policy_py.evaluate(prog, small), small.shape[1], repeat=1),
            "readings/s",
        )
    )
    rows.append(
        Row(
            "policy",
            "cython vs pure twin",
            cython_rate,
            "readings/s",
            baseline="pure-python twin",
            target=30.0,
        )
    )
    m = 2_000 if quick else 10_000
    readings = [
        {"temperature": float(a), "humidity": float(b)}
        for a, b in zip(
            np.nan_to_num(small[0, :m], nan=25.0), np.nan_to_num(small[1, :m], nan=50.0)
        )
    ]
    for name, rate in (
        ("cel-python CompiledRunner", _cel_python(readings)),
        ("regopy compiled bundle", _regopy(readings)),
    ):
        rows += _peer_rows(name, rate, cython_rate)
    rows.append(Row("policy", MEAN_TARGET, 20e6, "readings/s"))
    rows.append(
        Row(
            "policy",
            "mean(x, 10m) rule, stateful evaluator",
            _mean_10m(quick),
            "readings/s",
            baseline=MEAN_TARGET,
            target=1.0,
        )
    )
    return rows
