"""The auditor's tools: verify attestation streams offline and say what they show.

In: attestations (files, a collector's store, a gateway's evidence store) and trust
anchors (``trust``). Out: two verdicts and the numbers behind them. ``verify`` checks
integrity (signatures, chains, Merkle logs; ``parallel`` checks the signatures ahead in
worker processes for ``--jobs``) and yields an :class:`AuditResult`;
``analyze`` turns it, with the policy when given, into the one :class:`Analysis` that the
text (``format_result``, ``text_report``), the JSON and the HTML report (``report``)
render. ``collector`` keeps a fleet's attestations from MQTT (``evidence_db``), ``prove``
makes and checks inclusion proofs, ``replay`` re-runs windows from a gateway's store, and
``commands`` holds the ``edgegov audit`` handlers.

The names below load their module on first use: the command line declares subcommands
from modules of this package (``export``, ``pgstore``) at every start, ``edgegov run``
included, and must not load the verifier (numpy, cryptography, the claims profile) to do
so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.audit.analysis import Analysis, DeviceAnalysis, PolicyMismatch, analyze
    from agent.audit.text_report import format_result
    from agent.audit.verify import AuditResult, Finding, Message, collect_files, verify_paths

__all__ = [
    "Analysis",
    "AuditResult",
    "DeviceAnalysis",
    "Finding",
    "Message",
    "PolicyMismatch",
    "analyze",
    "collect_files",
    "format_result",
    "verify_paths",
]

_WHERE = {
    "Analysis": "analysis",
    "DeviceAnalysis": "analysis",
    "PolicyMismatch": "analysis",
    "analyze": "analysis",
    "format_result": "text_report",
    "AuditResult": "verify",
    "Finding": "verify",
    "Message": "verify",
    "collect_files": "verify",
    "verify_paths": "verify",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"agent.audit.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'agent.audit' has no attribute {name!r}")
