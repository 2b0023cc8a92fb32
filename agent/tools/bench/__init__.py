"""`edgegov bench`: our hot paths beside their baselines, measured in one run.

Each section module (``agent/tools/bench/<name>.py``) has ``run(quick: bool) -> list[Row]``.
A row is one measurement; when it names a baseline row, the ratio is printed
beside it, so every figure is read against something measured in the same run
on the same machine. Figures from different runs or machines are not comparable.
"""

from __future__ import annotations

from agent.tools.bench.core import SECTIONS, Row, format_rows, run_sections, timeit

__all__ = ["SECTIONS", "Row", "format_rows", "run_sections", "timeit"]
