"""Risk scoring: our overhead over raw onnxruntime, per-window latency, start-up cost.

On the shipped cold-chain policy's models, over synthetic 5 s windows of 20 Hz readings:

* ``RiskEngine.score`` (features assembled from the readings by ``native.features``, input
  and output guards, out-of-distribution flags) against ``session.run`` on a bare
  InferenceSession fed the same features already assembled, at batch 1 and batch 1024. The
  target (README.md, `edgegov bench`) is at most 25 % overhead at batch 1024: our rate at
  least 0.8x raw.
* per-window latency p50/p99 at batch 1, ours and raw, and for all of the policy's models
  together (what the agent pays per window);
* start-up cost and resident memory, measured in a fresh interpreter (this process has
  already imported everything).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from agent.tools.bench.core import Row, timeit

# Run in a fresh interpreter: import time, session creation, and the RSS of a whole agent
# (policy compiled, its models loaded, evidence store, signer, publisher) built from a config.
_STARTUP = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
import onnxruntime
t1 = time.perf_counter()
from pathlib import Path
from agent.policy import load_policy
from agent.risk.onnx_model import load_declared
bundle = load_policy(Path(sys.argv[1]))
t2 = time.perf_counter()
models = [load_declared(r) for r in bundle.models]
t3 = time.perf_counter()
del models
import yaml
from agent.config import load_config
from agent.identity.keys import generate_key
from agent.pipeline.runner import Agent
with tempfile.TemporaryDirectory() as d:
    generate_key(Path(d) / "device.key")
    cfg = Path(d) / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "device": {"id": "bench", "key": "device.key"}, "fleet": "bench",
        "policy": sys.argv[1], "state_dir": "state",
        "sources": [{"port": "/dev/null", "baud": 115200}], "output": {"spool": "spool"}}))
    agent = Agent(load_config(cfg))
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
    n = len(agent.models)
    agent.store.close()
print(json.dumps({"import_s": t1 - t0, "load_s": (t3 - t2) / len(bundle.models),
                  "models": n, "rss_kib": rss}))
"""


def _model_path() -> Path:
    return Path(str(resources.files("configs") / "models" / "excursion-v1.onnx"))


def _policy_path() -> Path:
    return Path(str(resources.files("configs") / "policies" / "cold-chain.yaml"))


def _startup(policy: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _STARTUP, str(policy)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _windows(n: int, n_channels: int, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` consecutive 5 s windows of 20 Hz readings (temperature, humidity, door...)."""
    rng = np.random.default_rng(seed)
    per = 100
    out = []
    for w in range(n):
        ts = (w * per + np.arange(per, dtype=np.int64)) * 50
        cols = np.empty((n_channels, per))
        cols[0] = 5.0 + 0.3 * np.sin(ts / 60_000) + rng.normal(0.0, 0.05, per)
        cols[1:] = 50.0 + rng.normal(0.0, 0.3, (n_channels - 1, per))
        if n_channels > 2:
            cols[2] = 0.0
        out.append((ts, cols))
    return out


def _latency(fn: Any, items: list[Any]) -> tuple[float, float]:
    """p50 and p99 of ``fn(item)`` over ``items``, in microseconds."""
    fn(items[0])
    took = []
    for item in items:
        t0 = time.perf_counter_ns()
        fn(item)
        took.append(time.perf_counter_ns() - t0)
    p50, p99 = np.percentile(np.array(took, dtype=np.float64), [50, 99]) / 1000.0
    return float(p50), float(p99)


def run(quick: bool) -> list[Row]:
    import onnxruntime as ort

    from agent.policy import load_policy
    from agent.risk.engine import RiskEngine
    from agent.risk.features import FeaturePlan
    from agent.risk.onnx_model import load_declared
    from native.features import IMPLEMENTATION as IMPL

    bundle = load_policy(_policy_path())
    names = [c.name for c in bundle.channels]
    models = [load_declared(r) for r in bundle.models]
    model = next(m for m in models if m.id == "excursion-risk")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    raw = ort.InferenceSession(str(_model_path()), opts, providers=["CPUExecutionProvider"])
    name = raw.get_inputs()[0].name
    data = _windows(1024, len(names))
    plan = FeaturePlan(model.features, {c: i for i, c in enumerate(names)})
    rows: list[Row] = []
    for batch in (1, 1024):
        wins = data[:batch]
        ts = np.concatenate([t for t, _ in wins])
        cols = np.ascontiguousarray(np.concatenate([c for _, c in wins], axis=1))
        bounds = np.cumsum([0] + [int(t.shape[0]) for t, _ in wins]).astype(np.int64)
        lo, hi = bounds[:-1], bounds[1:]
        x = plan.compute(ts, cols, lo, hi)
        raw_name = f"raw session.run, batch {batch}"
        rows.append(
            Row("onnx", raw_name, timeit(partial(raw.run, None, {name: x}), batch), "rows/s")
        )
        rows.append(
            Row(
                "onnx",
                f"RiskModel.score, batch {batch}",
                timeit(partial(model.score, x), batch),
                "rows/s",
                baseline=raw_name,
                target=0.8 if batch == 1024 else None,
                note="the call: digest-checked model, NaN/inf guards on input and output",
            )
        )
    # Feature assembly, 1024 windows x 100 readings: native kernel, NumPy, pure twin.
    from native import _features_py

    def numpy_features() -> np.ndarray:
        c = cols.reshape(cols.shape[0], 1024, 100)
        t, h = c[names.index("temperature")], c[names.index("humidity")]
        return np.stack(
            [np.nanmean(t, 1), np.nanmin(t, 1), np.nanmax(t, 1), np.nanstd(t, 1), np.nanmean(h, 1)],
            axis=1,
        ).astype(np.float32)

    np.testing.assert_allclose(numpy_features(), x, rtol=1e-6)
    twin_args = (ts, cols, lo, hi, plan._chan, plan._op, plan._dur, plan._arg)
    twin_out = np.empty_like(x)
    numpy_name = "features: NumPy nan-aggregates, 1024 windows"
    rows.append(Row("onnx", numpy_name, timeit(numpy_features, 1024), "windows/s"))
    rows.append(
        Row(
            "onnx",
            "features: native.features, 1024 windows",
            timeit(partial(plan.compute, ts, cols, lo, hi), 1024),
            "windows/s",
            baseline="features: NumPy nan-aggregates, 1024 windows",
            note=f"{plan.width} inputs from 100 readings each ({IMPL})",
        )
    )
    if not quick:
        rows.append(
            Row(
                "onnx",
                "features: pure-Python twin, 1024 windows",
                timeit(lambda: _features_py.window_features(*twin_args, twin_out), 1024, repeat=1),
                "windows/s",
                baseline="features: native.features, 1024 windows",
            )
        )
    engine = RiskEngine([model], names)  # window-scoped features: no history kept
    rows.append(
        Row(
            "onnx",
            "RiskEngine.score end to end, batch 1024",
            timeit(partial(engine.score, data), 1024),
            "rows/s",
            baseline="raw session.run, batch 1024",
            note="features from the readings + call + guards + OOD + per-window results",
        )
    )
    one_raw = [{name: x[i : i + 1]} for i in range(x.shape[0])]
    engine = RiskEngine([model], names)
    r50, r99 = _latency(partial(raw.run, None), one_raw)
    o50, o99 = _latency(lambda w: engine.score([w]), data)
    rows.append(
        Row(
            "onnx",
            "raw session.run, one window: p50 latency",
            1e6 / r50,
            "windows/s",
            note=f"p50 {r50:.1f} us, p99 {r99:.1f} us",
        )
    )
    rows.append(
        Row(
            "onnx",
            "RiskEngine.score, one window: p50 latency",
            1e6 / o50,
            "windows/s",
            baseline="raw session.run, one window: p50 latency",
            note=f"p50 {o50:.1f} us, p99 {o99:.1f} us",
        )
    )
    both = RiskEngine(models, names)
    a50, a99 = _latency(lambda w: both.score([w]), _windows(1024, len(names), seed=2))
    rows.append(
        Row(
            "onnx",
            f"all {len(models)} cold-chain models, one window",
            1e6 / a50,
            "windows/s",
            note=f"p50 {a50:.1f} us, p99 {a99:.1f} us ({', '.join(m.id for m in models)})",
        )
    )
    if not quick:
        one = _startup(_policy_path())
        rows.append(
            Row(
                "onnx",
                "import onnxruntime (fresh process)",
                1 / one["import_s"],
                "imports/s",
                note=f"{one['import_s'] * 1000:.0f} ms",
            )
        )
        rows.append(
            Row(
                "onnx",
                "load_model (digest + session + trial run)",
                1 / one["load_s"],
                "loads/s",
                note=f"{one['load_s'] * 1000:.1f} ms per model",
            )
        )
        rows.append(
            Row(
                "onnx",
                f"agent RSS, built from a config with {int(one['models'])} models loaded",
                one["rss_kib"] / 1024,
                "MiB",
                note="target <= 80 MiB for the whole agent",
            )
        )
    return rows
