"""Risk scoring: our overhead over raw onnxruntime, and what a gateway pays to start.

Compares, on the shipped excursion model and the same input arrays:
``RiskModel.score`` (digest-checked model, input checks, NaN/inf guard) against
``session.run`` on a bare InferenceSession, at batch 1 and batch 1024. The
target (PRODUCT.md §9) is at most 25 % overhead at batch 1024, i.e. our rate
at least 0.8x the raw rate. Start-up cost and resident memory are measured in a
fresh interpreter, since this process has already imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np

from agent.bench.core import Row, timeit

_FEATURES = (
    "mean(temperature)",
    "min(temperature)",
    "max(temperature)",
    "stddev(temperature)",
    "mean(humidity)",
)

# Run in a fresh interpreter: import time, session creation, RSS with the model loaded.
_STARTUP = r"""
import json, sys, time
t0 = time.perf_counter()
import onnxruntime
t1 = time.perf_counter()
from pathlib import Path
from agent.risk import load_model
paths = sys.argv[1:]
import hashlib
t2 = time.perf_counter()
models = [load_model(f"m{i}", Path(p), hashlib.sha256(Path(p).read_bytes()).hexdigest(), FEATURES)
          for i, p in enumerate(paths)]
t3 = time.perf_counter()
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
print(json.dumps({"import_s": t1 - t0, "load_s": (t3 - t2) / len(paths), "rss_kib": rss}))
"""


def _model_path() -> Path:
    return Path(str(resources.files("configs") / "models" / "excursion-v1.onnx"))


def _startup(paths: list[Path]) -> dict[str, float]:
    code = _STARTUP.replace("FEATURES", repr(list(_FEATURES)))
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def run(quick: bool) -> list[Row]:
    import hashlib

    import onnxruntime as ort

    from agent.risk import load_model

    path = _model_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = load_model("excursion-risk", path, digest, _FEATURES)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    raw = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = raw.get_inputs()[0].name
    rng = np.random.default_rng(1)
    rows: list[Row] = []
    for batch in (1, 1024):
        x = rng.normal(5.0, 1.0, (batch, len(_FEATURES))).astype(np.float32)
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
                note="digest-checked, input and output guarded",
            )
        )
    if not quick:
        one = _startup([path])
        two = _startup([path, path])
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
                "process RSS with two models loaded",
                two["rss_kib"] / 1024,
                "MiB",
                note="target <= 80 MiB for the whole agent",
            )
        )
    return rows
