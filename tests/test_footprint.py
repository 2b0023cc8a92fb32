"""The running agent's footprint: the flat feature history, and the bench that measures it.

The bench section runs the real agent (``python -m agent run``) on an emulated device for a
few seconds; the rows are printed, not held to the goals (timings and RSS depend on the
machine), only checked for being measured at all.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.risk.features import History, _move
from agent.risk.onnx_model import _session_options
from agent.tools.bench.core import format_rows
from agent.tools.bench.footprint import measure, rows
from tests.conftest import ROOT


class _Reference:
    """The history as it was: concatenate every window, copy on trim (the semantics)."""

    def __init__(self, n_channels: int, keep_ms: int, keep_rows: int) -> None:
        self.keep_ms, self.keep_rows = keep_ms, keep_rows
        self.ts = np.empty(0, dtype=np.int64)
        self.cols = np.empty((n_channels, 0), dtype=np.float64)

    def extend(self, windows: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, int]]:
        spans, at = [], len(self.ts)
        for ts, _ in windows:
            spans.append((at, at + len(ts)))
            at += len(ts)
        if at == len(self.ts):
            return spans
        t = np.concatenate([self.ts, *(np.asarray(ts, dtype=np.int64) for ts, _ in windows)])
        self.ts = np.maximum.accumulate(t)
        self.cols = np.concatenate([self.cols, *(c for _, c in windows)], axis=1)
        return spans

    def trim(self) -> None:
        n = len(self.ts)
        if n == 0:
            return
        first = int(np.searchsorted(self.ts, int(self.ts[-1]) - self.keep_ms, side="right"))
        first = min(first, max(0, n - self.keep_rows))
        self.ts, self.cols = self.ts[first:].copy(), self.cols[:, first:].copy()


def test_in_place_move_equals_a_copy_for_every_overlap() -> None:
    rng = np.random.default_rng(1)
    for _ in range(2000):
        size = int(rng.integers(1, 400))
        buf = rng.normal(size=size)
        ref = buf.copy()
        n = int(rng.integers(0, size))
        src, dst = (int(v) for v in rng.integers(0, size - n + 1, 2))
        ref[dst : dst + n] = ref[src : src + n].copy()
        _move(buf, src, dst, n)
        assert np.array_equal(buf, ref)


@pytest.mark.parametrize("rows_kept", [None, (0,), (0, 2), (2,), ()])
def test_history_keeps_exactly_the_readings_the_concatenating_history_kept(rows_kept) -> None:
    """In-place buffers, grown and shrunk, equal the old concatenate-and-copy, bit for bit:
    bursts, quiet spells, empty windows, several windows per batch, a clock stepping back."""
    rng = np.random.default_rng(7)
    hist = History(3, keep_ms=2_000, keep_rows=40, rows=rows_kept)
    ref = _Reference(3, keep_ms=2_000, keep_rows=40)
    keep = list(range(3)) if rows_kept is None else list(rows_kept)
    t = 0
    for step in range(300):
        batch = []
        for _ in range(int(rng.integers(1, 4))):
            rate = 2_000 if 60 <= step < 120 else int(rng.integers(0, 300))  # a burst
            ts = t + np.sort(rng.integers(0, 1_000, rate)).astype(np.int64)
            if step % 37 == 0 and rate:
                ts[rate // 2 :] -= 1_500  # the clock steps back
            cols = rng.normal(5.0, 1.0, (3, rate))
            cols[:, rng.random(rate) < 0.05] = np.nan
            batch.append((ts, cols))
            t += 1_000
        assert hist.extend(batch) == ref.extend(batch)
        assert np.array_equal(hist.ts, ref.ts)
        assert np.array_equal(hist.cols, ref.cols[keep], equal_nan=True)
        assert hist.cols.flags.c_contiguous
        hist.trim()
        ref.trim()
        assert np.array_equal(hist.ts, ref.ts)
        assert np.array_equal(hist.cols, ref.cols[keep], equal_nan=True)
    assert hist.nbytes < 4 * (8 + 8 * len(keep)) * 40_000  # shrunk back after the burst


@pytest.mark.parametrize("model", sorted((ROOT / "configs" / "models").glob("*.onnx")), ids=str)
def test_lean_session_options_score_bit_for_bit_as_onnxruntime_defaults(model: Path) -> None:
    """No arena and no memory patterns change where buffers live, not a single bit of a
    score: every shipped model, batches from 1 to 5,000 rows, on the CPU provider."""
    default = _session_options(1)
    default.enable_cpu_mem_arena = default.enable_mem_pattern = True  # onnxruntime's defaults
    data = model.read_bytes()
    lean = ort.InferenceSession(data, _session_options(1), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(data, default, providers=["CPUExecutionProvider"])
    assert not _session_options(1).enable_cpu_mem_arena
    inp = ref.get_inputs()[0]
    rng = np.random.default_rng(3)
    for n in (1, 2, 100, 1024, 5000):
        x = rng.normal(0, 1, (n, inp.shape[1])) * rng.choice([0.1, 10, 100], n)[:, None]
        x = x.astype(np.float32)
        for a, b in zip(lean.run(None, {inp.name: x}), ref.run(None, {inp.name: x})):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_footprint_bench_runs_the_real_agent_on_an_emulated_device(capsys) -> None:
    fp = measure(seconds=4.0, idle_s=1.0)
    table = format_rows(rows(fp))
    with capsys.disabled():
        print("\n" + table)
    assert fp.exit_code == 0, fp.log
    assert 0 < fp.ready_s < 60
    assert fp.idle_rss_mb > 0 and fp.steady_rss_mb > 0
    assert fp.idle_hwm_mb >= fp.idle_rss_mb
    assert len(fp.samples) >= 3
    assert fp.readings_per_s > 100  # the device ran (1 kHz asked; a busy machine sends fewer)
    assert math.isfinite(fp.cpu_share) and fp.cpu_share >= 0
    assert fp.full_state_mb > 0  # the cold-chain bundle's 10-minute state is sized
    names = [r.name for r in rows(fp)]
    assert any("idle" in n for n in names) and any("READY" in n for n in names)
    assert any("projected" in n for n in names) and any("CPU" in n for n in names)
