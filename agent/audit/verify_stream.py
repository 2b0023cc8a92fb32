"""``audit verify --store postgresql://...`` one device at a time, streamed from the store.

:func:`agent.audit.evidence_db.iter_messages` reads the rows in (device, seq, arrival)
order with a server-side cursor; each device's messages are verified and its logs'
chains checked as soon as the next device begins, and its messages (bytes and entries)
are let go. Only the result stays: the parsed attestations of each log, which the
analysis (compliance, report) reads.

The result is that of :func:`agent.audit.verify.verify_messages` on the same rows, to the
finding: the messages' own findings come in delivery order, then the logs' findings by
log origin, as there. A log's entries all arrive under one device's topic (an attestation
of another device is a REPLAY, never added to a log), and a collector row's finding is
labelled with its topic's device, so one device's messages decide its logs. Across
devices, only a message replayed into another device's stream can be delivered again
under its own: those (and only those) are remembered from one device to the next.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby

from agent.audit.trust import TrustStore
from agent.audit.verify import (
    AuditResult,
    Finding,
    Message,
    VerifiedLog,
    _check_log,
    _Entry,
    _verify_each,
)

__all__ = ["verify_stream"]


def verify_stream(messages: Iterable[Message], trust: TrustStore) -> AuditResult:
    """Verify store rows ordered by device (``device_hint``, set on every row)."""
    res = AuditResult()
    known: dict[bytes, _Entry] = {}
    done: list[tuple[str, VerifiedLog, list[Finding]]] = []
    for dev, group in groupby(messages, key=lambda m: m.device_hint):
        logs, rejected = _verify_each(group, trust, None, None, res, known)
        for origin, entries in logs.items():
            found: list[Finding] = []
            log_dev = entries[0].ev.device_id
            here = [(o, f) for o, f, d in rejected if d in (log_dev, "?")]
            done.append((origin, _check_log(origin, entries, found, trust, here), found))
        known = {raw: e for raw, e in known.items() if e.ev.device_id != dev}  # replays
    for _origin, log, found in sorted(done, key=lambda d: d[0]):
        res.logs.append(log)
        res.findings.extend(found)
    return res
