"""The edgegov error tree.

Every failure caused by *untrusted or user-supplied input* (a corrupt frame, a
bad policy file, a forged attestation, an unreachable broker) is raised as a
subclass of :class:`Error`, with a message an operator can act on: which file,
field, line, and what was expected. Misuse of our own API raises the usual
``ValueError`` / ``TypeError`` / ``RuntimeError`` instead. Only the CLI maps
these errors to exit codes.

::

    Error                          root; .exit_code = 2 (usage or input error)
    +-- ConfigError                agent config file: missing/invalid field
    +-- KeyFileError               device key missing, unreadable, bad permissions
    +-- PolicyError                policy bundle: YAML, schema, semantics
    |   +-- PolicySyntaxError      a condition does not parse (line, column, caret)
    +-- ModelError                 ONNX model: digest mismatch, load failure, bad output
    +-- FrameError                 serial frame: CRC, framing, unknown type (counted, not fatal)
    +-- SerialPortError            a serial port cannot be opened / vanished
    +-- StorageError               evidence store / outbox (SQLite, disk full)
    |   +-- StoreCorruptError      the store fails SQLite's quick_check or reads as malformed
    |   +-- EvidenceAtRiskError    the agent stopped with evidence at risk; .exit_code = 3
    +-- TransportError             MQTT broker unreachable / refused
    +-- VerificationError          evidence does not verify; .exit_code = 1 (a finding)
    +-- FleetError                 fleet repository or client: bad input, unusable state
        +-- TrustRootError         the gateway's configured trust root is unusable
        +-- ConfigRejected         a signed config was refused; .exit_code = 1 (a finding)
        +-- RepositoryInvalid      the repository's metadata do not verify; .exit_code = 1

Any other exception reaching the CLI is a bug in edgegov: it exits with
:data:`INTERNAL_ERROR_EXIT` (70, ``EX_SOFTWARE`` of sysexits.h) and says so, so it is
never read as findings (1), an input error (2) or evidence at risk (3).
"""

from __future__ import annotations

__all__ = [
    "INTERNAL_ERROR_EXIT",
    "ConfigError",
    "ConfigRejected",
    "Error",
    "EvidenceAtRiskError",
    "FleetError",
    "FrameError",
    "KeyFileError",
    "ModelError",
    "PolicyError",
    "PolicySyntaxError",
    "RepositoryInvalid",
    "SerialPortError",
    "StorageError",
    "StoreCorruptError",
    "TransportError",
    "TrustRootError",
    "VerificationError",
]


INTERNAL_ERROR_EXIT = 70


class Error(Exception):
    """Root of every edgegov error. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(Error):
    """The agent configuration is missing, malformed or inconsistent."""


class KeyFileError(Error):
    """A key file is missing, unreadable, of the wrong type or too permissive."""


class PolicyError(Error):
    """A policy bundle is invalid (schema or semantics)."""


class PolicySyntaxError(PolicyError):
    """A rule condition does not parse or type-check.

    Attributes carry the position so tools can point at it; ``str()`` is a
    complete, human-readable message with a caret excerpt.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        line: int = 1,
        column: int = 1,
        text: str = "",
    ) -> None:
        self.reason = message
        self.source = source
        self.line = line
        self.column = column
        self.text = text
        where = f"{source}:{line}:{column}: " if source else f"line {line}, column {column}: "
        excerpt = ""
        if text:
            lines = text.splitlines() or [""]
            src_line = lines[line - 1] if 0 < line <= len(lines) else ""
            excerpt = f"\n    {src_line}\n    {' ' * (column - 1)}^"
        super().__init__(f"{where}{message}{excerpt}")


class ModelError(Error):
    """A risk model cannot be used (digest mismatch, load failure, bad output)."""


class FrameError(Error):
    """A serial frame is corrupt or not understood (counted and skipped)."""


class SerialPortError(Error):
    """A serial port cannot be opened or has gone away."""


class StorageError(Error):
    """The evidence store or outbox cannot be written or read."""


class StoreCorruptError(StorageError):
    """The evidence store is damaged: SQLite's quick_check fails, or a read finds it malformed.

    Nothing more is written to it; the message says how to recover.
    """


class EvidenceAtRiskError(StorageError):
    """The agent stopped with evidence at risk: its store turned corrupt while it ran, or it
    held windows it could neither sign nor save for the next start (the message says how
    many). ``exit_code`` 3, so a service manager restarts it (and the start checks decide)."""

    exit_code = 3


class TransportError(Error):
    """The MQTT broker is unreachable or refused us."""


class VerificationError(Error):
    """Evidence failed verification: a finding, not a usage error."""

    exit_code = 1


class FleetError(Error):
    """The fleet repository or the fleet client cannot do what was asked."""


class TrustRootError(FleetError):
    """The fleet trust root a gateway is configured with is missing or not a root."""


class RepositoryInvalid(FleetError):
    """The repository's metadata or targets do not verify as a gateway would verify them
    (``edgegov fleet publish`` refuses to publish); a finding, exit code 1."""

    exit_code = 1


class ConfigRejected(FleetError):
    """Fleet configuration was refused (TUF verification, assignment, staging).

    ``reason`` is the short operator-readable text that goes into the
    ``rejected`` ack on ``…/config/ack``.
    """

    exit_code = 1

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
