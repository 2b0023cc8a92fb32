"""Policy evaluation: compiled evaluator vs its pure twin vs NumPy vs policy-engine peers.

The rule is the one in ../shared/bench (a 3-condition threshold rule), over
1,000,000 readings in typed arrays (1 % missing values).
"""

from __future__ import annotations

import importlib

import numpy as np

from agent.bench.core import Row, timeit

RULE = "temperature < 80.0 && humidity >= 20.0 && humidity <= 60.0"
CHANNELS = ("temperature", "humidity")


def _columns(n: int) -> np.ndarray:
    rng = np.random.default_rng(42)
    cols = np.empty((2, n))
    cols[0] = rng.uniform(-20, 100, n)
    cols[1] = rng.uniform(0, 100, n)
    cols[rng.random((2, n)) < 0.01] = np.nan
    return cols


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
    t, h = cols[0], cols[1]
    rows = [
        Row(
            "policy",
            "numpy (same rule, no error semantics)",
            timeit(lambda: (t < 80.0) & (h >= 20.0) & (h <= 60.0), n),
            "readings/s",
        ),
        Row(
            "policy",
            "cython evaluator",
            timeit(lambda: compiled.evaluate(prog, cols), n),
            "readings/s",
            baseline="numpy (same rule, no error semantics)",
            target=1.0,
        ),
    ]
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
            rows[1].rate,
            "readings/s",
            baseline="pure-python twin",
            target=30.0,
        )
    )
    return rows
