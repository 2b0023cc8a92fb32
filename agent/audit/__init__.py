"""The auditor's tools: verify attestation streams offline and summarise them."""

from agent.audit.text import format_result
from agent.audit.verify import AuditResult, DeviceReport, Finding, collect_files, verify_paths

__all__ = [
    "AuditResult",
    "DeviceReport",
    "Finding",
    "collect_files",
    "format_result",
    "verify_paths",
]
