"""A case through the real command line: ``edgegov audit verify`` (text, ``--json``) and
``edgegov audit report --html``, each in a fresh interpreter.

What must hold for any input: exit code 0, 1 or 2; no traceback on stderr; ``--json``
prints strict JSON (no NaN or Infinity); the exit code agrees with the in-process verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import agent
from agent.tools.bench.fuzz.mutations import Case

__all__ = ["run_cli_case", "subprocess_env"]

_TIMEOUT_S = 60


def subprocess_env(**overrides: str | None) -> dict[str, str]:
    """This environment, with the code this process runs first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(agent.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _strict_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def run_cli_case(case: Case, intact: bool | None, workdir: Path) -> list[str]:
    """Problems found running ``case`` through the CLI (empty: none)."""
    d = workdir / f"case-{case.index}"
    files = d / case.stream.name
    files.mkdir(parents=True)
    for name, raw in zip(case.names(), case.files):
        (d / name).write_bytes(raw)
    key = d / "device.pub.pem"
    key.write_bytes(case.stream.public.pem())
    html = d / "report.html"
    base = [sys.executable, "-m", "agent", "audit"]
    runs = {
        "verify": [*base, "verify", "--key", str(key), str(files)],
        "verify --json": [*base, "verify", "--json", "--key", str(key), str(files)],
        "report --html": [*base, "report", "--key", str(key), "--html", str(html), str(files)],
    }
    env = subprocess_env()
    problems = []
    for label, cmd in runs.items():
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            problems.append(f"{case!r}: {label}: no exit within {_TIMEOUT_S} s")
            continue
        if p.returncode not in (0, 1, 2):
            problems.append(f"{case!r}: {label}: exit {p.returncode}")
        if "Traceback" in p.stderr:
            last = p.stderr.strip().splitlines()[-1][:160]
            problems.append(f"{case!r}: {label}: traceback: {last}")
            continue  # what it printed (and wrote) is a traceback's leftovers
        if intact is not None and p.returncode != (0 if intact else 1):
            problems.append(
                f"{case!r}: {label}: exit {p.returncode}, in-process verdict "
                f"{'intact' if intact else 'findings'}"
            )
        if label == "verify --json" and p.returncode in (0, 1):
            try:
                json.loads(p.stdout, parse_constant=_strict_constant)
            except ValueError as e:
                problems.append(f"{case!r}: {label}: invalid JSON: {str(e)[:120]}")
        if label == "report --html" and p.returncode in (0, 1) and not html.exists():
            problems.append(f"{case!r}: {label}: exit {p.returncode} but no report written")
    return problems
