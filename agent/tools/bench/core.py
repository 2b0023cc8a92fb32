"""Timing helpers, the row type and the side-by-side table for `edgegov bench`."""

from __future__ import annotations

import importlib
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SECTIONS",
    "Row",
    "format_rows",
    "machine",
    "proc_cpu_s",
    "run_sections",
    "timeit",
    "verdict",
]

# Section name -> module under agent.tools.bench; order is the print order.
SECTIONS = ("policy", "onnx", "evidence", "frames", "transport", "fleet", "pipeline", "footprint")


@dataclass(frozen=True)
class Row:
    """One measurement. ``rate`` is items per second (higher is better)."""

    section: str
    name: str
    rate: float
    unit: str = "items/s"
    baseline: str | None = None  # name of the row this one is compared with
    target: float | None = (
        None  # ratio against the baseline we promise (README.md and `edgegov bench`)
    )
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verdict(ok: bool) -> str:
    """How a row says whether it meets its goal."""
    return "PASS" if ok else "FAIL"


def timeit(
    fn: Callable[[], object], items: int, *, repeat: int = 5, min_time: float = 0.2
) -> float:
    """Best-of-``repeat`` rate in items/s; each repeat loops ``fn`` for at least ``min_time``."""
    fn()  # warm up
    best = 0.0
    for _ in range(repeat):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = max(best, n * items / dt)
    return best


def run_sections(names: tuple[str, ...] = SECTIONS, quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        mod = importlib.import_module(f"agent.tools.bench.{name}")
        rows.extend(mod.run(quick))
    return rows


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def _fmt_rate(r: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if r >= div:
            return f"{r / div:,.2f} {suffix}"
    return f"{r:,.1f} "


def format_rows(rows: list[Row]) -> str:
    by_name = {(r.section, r.name): r for r in rows}
    out = [f"edgegov bench on {machine()}", ""]
    width = max(len(r.name) for r in rows) if rows else 10
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            out.append(f"[{section}]")
        line = f"  {r.name:<{width}}  {_fmt_rate(r.rate):>12}{r.unit:<10}"
        base = by_name.get((r.section, r.baseline)) if r.baseline else None
        if base is not None and base.rate > 0:
            ratio = r.rate / base.rate
            line += f"  {ratio:>9,.2f}x {r.baseline}"
            if r.target is not None:
                line += f"  (target >= {r.target:g}x: {verdict(ratio >= r.target)})"
        if r.note:
            line += f"  -- {r.note}"
        out.append(line.rstrip())
    return "\n".join(out)


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of a process's threads: each thread's schedstat (ns), since
    /proc/PID/stat counts in clock ticks (10 ms), too coarse for a process that uses 1 %
    of a core for 2 s. A thread that ends meanwhile is left out (the agent's threads live
    as long as it does); the ticks on a kernel without schedstat."""
    total, read = 0, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
            read += 1
        except (OSError, ValueError, IndexError):
            continue
    if read:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
