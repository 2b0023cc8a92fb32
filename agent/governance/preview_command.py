"""``edgegov policy preview``: its parser and handler (registered by agent/cli.py).

The handler imports the preview (onnxruntime, the policy compiler) only when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import Error

__all__ = ["add_command"]


def _preview(a: argparse.Namespace) -> int:
    from agent.audit.commands import _trust  # --trust / --key, fail closed if neither
    from agent.governance.preview import gateway_stores, preview
    from agent.policy import load_policy

    proposed = load_policy(Path(a.file))
    current = load_policy(Path(a.current))
    stores = gateway_stores(a.against)
    res = preview(
        stores, current, proposed, _trust(a), a.since, a.provider or ("CPUExecutionProvider",)
    )
    if a.out:
        try:
            Path(a.out).write_bytes(res.canonical_bytes())
        except OSError as e:
            raise Error(f"{a.out}: cannot write the preview: {e.strerror}") from e
    if a.json:
        print(json.dumps({**res.to_json(), "sha256": res.digest}, indent=2, allow_nan=False))
    else:
        print(res.text() + (f"\npreview written to {a.out}" if a.out else ""))
    return 0  # a preview is information, not a verdict


def add_command(psub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``preview`` under ``edgegov policy``."""
    p = cmd(
        "preview",
        _preview,
        "replay a proposed policy bundle over the readings gateways already recorded and "
        "show, per goal and device, what it would have flagged differently from the policy "
        "in force (new and vanished episodes, goal status, readings not evaluable); exit 0 "
        "when it ran, 1 if the evidence does not verify or reproduce, 2 on bad input",
        "edgegov policy preview cold-chain-v2.yaml --current cold-chain.yaml "
        "--against state/evidence.sqlite --since 30d --key device.pub.pem --out preview.json",
        psub,
    )
    p.add_argument("file", metavar="NEW.yaml", help="the proposed policy bundle")
    p.add_argument(
        "--against",
        required=True,
        metavar="STORE",
        help="a gateway's evidence store (state_dir/evidence.sqlite) or a directory of them; "
        "a collector's store is refused (it keeps no readings)",
    )
    p.add_argument(
        "--current",
        required=True,
        metavar="POLICY.yaml",
        help="the policy bundle the evidence was signed under (its digest must match; its "
        "models beside it)",
    )
    p.add_argument(
        "--since",
        metavar="DURATION",
        help="only the windows of the last DURATION before each store's newest (30d, 12h, "
        "90m); default: all (every window must then be under --current)",
    )
    p.add_argument("--trust", help="trust file (YAML): keys, fleet CAs, revocations, ...")
    p.add_argument("--key", action="append", help="trusted device public key (PEM); repeatable")
    p.add_argument(
        "--provider",
        action="append",
        help="onnxruntime execution provider (default CPUExecutionProvider)",
    )
    p.add_argument("--json", action="store_true", help="the preview document, with its sha256")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the preview document (canonical JSON; its SHA-256 is the digest printed, "
        "what `edgegov fleet add --preview FILE` records in the release)",
    )
