"""The same campaign on the compiled and the pure-Python verifier, case by case.

``EDGEGOV_PURE`` is read once, when ``native`` is first imported, so each side runs in its
own interpreter (``python -m agent.tools.bench.fuzz``); both run at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from agent.tools.bench.fuzz.cli_check import subprocess_env
from agent.tools.bench.fuzz.summary import DifferentialReport, FuzzReport

__all__ = ["run_differential"]


def run_differential(cases: int, seed: int, cli_cases: int = 0) -> DifferentialReport:
    """Run the campaign with and without ``EDGEGOV_PURE=1``; list the cases that differ.

    Raises:
        RuntimeError: a side did not finish (its stderr is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="edgegov-fuzz-diff-") as tmp:
        procs = {}
        for side, pure in (("compiled", None), ("pure", "1")):
            out = Path(tmp) / f"{side}.json"
            cmd = [sys.executable, "-m", "agent.tools.bench.fuzz", "--cases", str(cases)]
            cmd += ["--seed", str(seed), "--cli", str(cli_cases), "--out", str(out)]
            env = subprocess_env(EDGEGOV_PURE=pure)
            procs[side] = (out, subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
        reports = {}
        for side, (out, p) in procs.items():
            _, err = p.communicate()
            if p.returncode != 0 or not out.exists():
                raise RuntimeError(
                    f"fuzz differential: the {side} side exited {p.returncode}: {err[-2000:]}"
                )
            reports[side] = FuzzReport.from_json(json.loads(out.read_text()))
    a, b = reports["compiled"], reports["pure"]
    mismatches = [
        f"{label}: compiled {fa} / pure {fb}"
        for label, fa, fb in zip(a.labels, a.fingerprints, b.fingerprints)
        if fa != fb
    ]
    if len(a.fingerprints) != len(b.fingerprints):
        mismatches.append(f"case counts differ: {len(a.fingerprints)} / {len(b.fingerprints)}")
    return DifferentialReport(a, b, mismatches)
