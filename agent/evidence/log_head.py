"""The last committed head of the evidence log, kept beside the store (``log-head.json``).

The evidence store says where its log stands; this small file says it again from outside
the database, rewritten after every commit. It is what lets a start tell

* a store that vanished or was emptied from a first start: the new log's first attestation
  names the log before it (claim -70001/12 key 8, "origin seq N head sha256:HEX");
* a store that went back in time (an older copy put back, rows deleted) from one that is
  merely behind: attestations the file names and the store lacks were signed and may have
  been published, so continuing would fork the log (``agent.evidence.chain_check``).

It is advisory: written after the commit and not part of it, so after a crash it can be
one attestation behind the store, never ahead. A file that does not parse is reported as
unreadable, never trusted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FILE", "LogHead", "read_log_head", "write_log_head"]

FILE = "log-head.json"


@dataclass(frozen=True)
class LogHead:
    """The newest attestation committed to a log: its origin, seq and SHA-256."""

    origin: str
    seq: int
    digest: bytes  # SHA-256 of the attestation's COSE bytes

    def describe(self) -> str:
        """The form claim -70001/12 key 8 uses: ``origin seq N head sha256:HEX``."""
        return f"{self.origin} seq {self.seq} head sha256:{self.digest.hex()}"


def read_log_head(state_dir: Path) -> LogHead | None:
    """The head recorded in ``state_dir``; None if there is no file.

    Raises:
        ValueError: the file is there but unreadable or not a log head (the caller says
            so; it is still evidence that a log existed here).
    """
    path = Path(state_dir) / FILE
    try:
        data = json.loads(path.read_text())
        head = data["head"]
        if not head.startswith("sha256:"):
            raise ValueError("head is not sha256:HEX")
        digest = bytes.fromhex(head.removeprefix("sha256:"))
        if len(digest) != 32 or not isinstance(data["origin"], str):
            raise ValueError("head or origin malformed")
        return LogHead(data["origin"], int(data["seq"]), digest)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable log head ({e})") from e


def write_log_head(state_dir: Path, head: LogHead) -> None:
    """Replace the file atomically (write, fsync, rename). Raises OSError."""
    path = Path(state_dir) / FILE
    tmp = path.with_name(FILE + ".tmp")
    text = json.dumps(
        {"origin": head.origin, "seq": head.seq, "head": f"sha256:{head.digest.hex()}"}
    )
    try:
        with open(tmp, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
