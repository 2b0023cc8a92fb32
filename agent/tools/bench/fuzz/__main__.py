"""``python -m agent.tools.bench.fuzz --cases N --seed S [--cli N] --out FILE``: one side of the
differential (``agent.tools.bench.fuzz.differential``) writes its full report as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.tools.bench.fuzz.campaign import run_fuzz


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m agent.tools.bench.fuzz")
    p.add_argument("--cases", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--cli", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    report = run_fuzz(a.cases, a.seed, a.cli)
    Path(a.out).write_text(json.dumps(report.to_json()), encoding="utf-8")


if __name__ == "__main__":
    main()
