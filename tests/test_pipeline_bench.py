"""``edgegov bench --only pipeline`` measures the real thing: the whole agent from recorded
bytes, ``edgegov run`` on a flooded pty, and ``edgegov run`` at 115,200 baud.

Small sizes; the figures are printed, never held to the goals (they depend on the machine).
What is checked is that each row measured what it says: every reading fed was counted,
every reading sent through the pty was signed (the intake is large, nothing is shed), and
the 115,200-baud device really sent.
"""

from __future__ import annotations

import math

import pytest

from agent.tools.bench import pipeline
from agent.tools.bench.core import format_rows


def test_whole_pipeline_counts_every_reading_and_every_stage():
    data, _clock = pipeline._capture(20_000)
    readings, wall, cpu, stages = pipeline._whole(20_000)
    assert 19_000 <= readings <= 20_000, readings  # DATA frames among 20,000 (a HELLO, beats)
    assert wall > 0 and cpu > 0 and data
    for stage in ("decode and readings", "store (SQLite)", "risk models", "leaves", "sign"):
        assert stages.get(stage, 0) > 0, stages
    assert sum(stages.values()) <= wall * 1.05
    long_readings, _, _, _ = pipeline._whole(20_000, window_s=60.0)
    assert long_readings == readings  # the same capture in longer windows: the same readings


@pytest.mark.parametrize("replayed", [False, True], ids=["live-flood", "replayed-capture"])
def test_flooded_pty_signs_every_reading_sent(replayed):
    signed, seconds, sent, writer_cpu = pipeline._pty(1.0, replayed=replayed)
    assert sent > 1_000 and seconds > 0 and writer_cpu > 0
    assert signed == sent  # nothing lost: intake_readings is large, so nothing shed


def test_baud_row_measures_a_device_that_sent(capsys):
    share, rate = pipeline._baud_cpu(2.0)
    assert math.isfinite(share) and share > 0
    assert 100 < rate < 400  # ~360 frames/s fit 115,200 baud
    flood = (5, 1.0, 5, 0.5)
    rows = pipeline._rows(20_000, 1.0, 0.5, {"decode": 0.1}, flood, flood, (share, rate))
    table = format_rows(rows)
    with capsys.disabled():
        print("\n" + table)
    assert "PASS" in table or "FAIL" in table
