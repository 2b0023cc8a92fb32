"""Scheduled self-tests: which are due in a window, and their results (``docs/self-tests.md``).

The schedule is stateless, so the agent and ``edgegov audit replay`` agree on it from the
window's bounds alone and a restart cannot shift it: a self-test with period P is due in
the window ``[start, end)`` that contains a multiple of P (Unix ms), i.e. when
``(end - 1) // P > (start - 1) // P``. It runs over that window's valid readings (those
inside their channel's range; the columns are masked before this runs). Means are taken
with :func:`math.fsum` (exactly rounded), so they do not depend on the order the readings
were summed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agent.evidence.claims import SelfTestResult
from agent.policy.model import PolicyBundle, SelfTest

__all__ = ["is_due", "run_self_test", "run_self_tests"]

NO_READINGS = "no readings"


def is_due(every_ms: int, start_ms: int, end_ms: int) -> bool:
    """Whether a self-test with period ``every_ms`` is due in ``[start_ms, end_ms)``."""
    if every_ms <= 0:
        raise ValueError(f"every_ms must be > 0, got {every_ms}")
    return end_ms > start_ms and (end_ms - 1) // every_ms > (start_ms - 1) // every_ms


def _mean(row: np.ndarray) -> tuple[float | None, int]:
    valid = row[~np.isnan(row)]
    n = int(valid.size)
    return (math.fsum(valid.tolist()) / n if n else None), n


def run_self_test(test: SelfTest, end_ms: int, rows: Sequence[np.ndarray]) -> SelfTestResult:
    """One self-test over ``rows`` (the masked readings of its channels, in order)."""
    means = [_mean(r) for r in rows]
    counts = tuple(n for _m, n in means)
    missing = [ch for ch, (m, _n) in zip(test.channels, means) if m is None]
    if test.kind == "redundant":
        observed, reference = means[0][0], means[1][0]
        error = None if missing else abs(observed - reference)  # type: ignore[operator]
    else:
        observed, reference = means[0][0], test.reference
        error = None if observed is None else observed - test.reference  # type: ignore[operator]
    reason = ""
    if missing:
        reason = NO_READINGS if len(missing) == len(rows) else f"{NO_READINGS}: {missing[0]}"
    passed = error is not None and abs(error) <= test.tolerance
    return SelfTestResult(
        test.id, test.kind, test.channels, reference, observed, error, test.tolerance, passed,
        end_ms, counts, test.every_ms, reason,
    )  # fmt: skip


def run_self_tests(
    bundle: PolicyBundle, start_ms: int, end_ms: int, columns: np.ndarray
) -> tuple[SelfTestResult, ...]:
    """The results of the self-tests due in ``[start_ms, end_ms)``, in declaration order.

    ``columns``: float64 (n_channels, n), masked (NaN: missing or out of range).
    """
    out = []
    for t in bundle.self_tests:
        if is_due(t.every_ms, start_ms, end_ms):
            rows = [columns[bundle.channel_index(ch)] for ch in t.channels]
            out.append(run_self_test(t, end_ms, rows))
    return tuple(out)
