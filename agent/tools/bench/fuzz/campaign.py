"""A fuzz campaign: plan the cases, run them, count the outcomes per kind.

Kinds take turns (so any prefix of a campaign covers them all) and every tenth case is a
CBOR bomb until each bomb has run once. Bombs are run twice: once timed, once under
``tracemalloc`` for the peak memory.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from agent.tools.bench.fuzz.classify import run_case
from agent.tools.bench.fuzz.cli_check import run_cli_case
from agent.tools.bench.fuzz.corpus import make_corpus
from agent.tools.bench.fuzz.mutations import BOMBS, KINDS, make_case
from agent.tools.bench.fuzz.summary import FuzzReport
from native.verify import IMPLEMENTATION

__all__ = ["plan", "run_fuzz"]


def plan(cases: int) -> list[tuple[str, int]]:
    """(kind, bomb number) of each case of a campaign of ``cases``."""
    others = [k for k in KINDS if k != "bomb"]
    out: list[tuple[str, int]] = []
    bombs = 0
    for i in range(cases):
        if i % 10 == 9 and bombs < len(BOMBS):
            out.append(("bomb", bombs))
            bombs += 1
        else:
            out.append((others[(i - bombs) % len(others)], 0))
    return out


def run_fuzz(
    cases: int,
    seed: int,
    cli_cases: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Run ``cases`` seeded cases in-process, ``cli_cases`` of them also through the CLI.

    Deterministic: the same ``seed`` and ``cases`` give the same cases (and, on the same
    code, the same fingerprints) in any process.
    """
    if cases < 0 or cli_cases < 0:
        raise ValueError("cases and cli_cases must not be negative")
    t0 = time.perf_counter()
    streams = make_corpus(seed)
    report = FuzzReport(seed, cases, IMPLEMENTATION)
    pick = random.Random(f"edgegov-fuzz-cli:{seed}")
    via_cli = set(pick.sample(range(cases), min(cli_cases, cases)))
    with tempfile.TemporaryDirectory(prefix="edgegov-fuzz-cli-") as tmp:
        for i, (kind, bomb) in enumerate(plan(cases)):
            case = make_case(i, kind, seed, streams, bomb)
            result = run_case(case)
            if kind == "bomb":
                peak = run_case(case, trace_memory=True).peak_bytes
                result = replace(result, peak_bytes=peak)
            problems = run_cli_case(case, result.intact, Path(tmp)) if i in via_cli else None
            report.add(case, result, problems)
            if progress is not None:
                progress(i + 1)
    report.seconds = time.perf_counter() - t0
    return report
