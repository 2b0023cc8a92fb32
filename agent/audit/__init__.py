"""The auditor's tools: verify attestation streams offline and say what they show.

``verify`` checks integrity (signatures, chains, Merkle logs) and yields an
:class:`AuditResult`; ``analyze`` turns it, with the policy when given, into the one
:class:`Analysis` that the text (``format_result``), the JSON and the HTML report
(``agent.audit.report``) render.
"""

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
