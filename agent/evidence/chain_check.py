"""At start: does the store's chain state agree with the attestations it holds?

The state row (origin, next seq, prev digest, Merkle log state) is what the next
attestation is built from; the attestations are what was signed. They are committed in
one transaction, so they agree unless something outside the agent changed the file (a
hand edit, an older copy put back, rows deleted, a salvage after corruption). Signing
from a state row that disagrees either fails forever (a seq that is already stored) or
forks the log (a seq that was signed before, with different bytes). So, before anything
is written:

* agreement (the usual case: a few comparisons, no signature checks) -> continue;
* the row or ``log-head.json`` names attestations the store does not hold -> refuse:
  they were signed and may have been published, continuing would fork the log;
* otherwise the stored attestations are the truth if they prove it: every one from where
  the state row says the log stood up to the last verifies with the device key and links
  to the one before (seq, prev, checkpoint sizes), and the last window's readings rebuild
  its checkpoint root. Then the state is rebuilt from them (and the caller says so);
  if any of that fails -> refuse.

Refusals are :class:`agent.errors.StorageError` naming what disagrees and how to recover.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cbor2

from agent.errors import StorageError, VerificationError
from agent.evidence.claims import Evidence, parse_claims
from agent.evidence.cose import decode_sign1
from agent.evidence.leaves import record_leaf_hashes, split_records
from agent.evidence.log_head import LogHead
from agent.evidence.merkle import CompactRange

if TYPE_CHECKING:
    from agent.evidence.store import ChainState
    from agent.identity.keys import PublicKey

__all__ = ["ChainCheck", "check_chain_state", "new_log_steps"]

_BATCH = 512  # attestations read per query while verifying


def new_log_steps(path: Path) -> str:
    """How an operator starts a new log while keeping the old store for the auditor."""
    return (
        f"stop the agent, move {path.name} and its {path.name}-wal and {path.name}-shm "
        f"files out of {path.parent} (keep them: the attestations in them still verify), "
        "then start the agent: it begins a new evidence log, and its first attestation "
        "names this one (README: 'When the evidence store is damaged')"
    )


@dataclass(frozen=True)
class ChainCheck:
    """The state to continue from, and what was rebuilt (None: the row agreed)."""

    state: ChainState
    rebuilt: str | None = None


def check_chain_state(
    db: sqlite3.Connection,
    path: Path,
    stored: ChainState | None,
    head: LogHead | None,
    key: PublicKey | None,
    log_problem: str | None = None,
) -> ChainCheck | None:
    """Check ``stored`` (None: no state row) against the attestations in ``db``.

    ``log_problem``: why the state row's Merkle log state did not decode (``stored.log``
    is then empty and not compared).

    Returns None only when there is neither a state row nor an attestation (a new log).

    Raises:
        StorageError: they disagree and the stored attestations do not prove a state to
            continue from; the message says what disagrees and how to recover.
    """
    from agent.evidence.store import ChainState

    n, lo, hi = db.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM attestations").fetchone()
    if n == 0:
        if stored is not None and log_problem is not None:
            raise _refusal(
                path,
                [f"the state row's Merkle log state does not decode ({log_problem})"],
                "There is no attestation to rebuild it from.",
                new_log_steps(path),
            )
        return None if stored is None else _no_attestations(path, stored, head)
    if lo != 0 or n != hi + 1:
        missing = f"seq 0..{hi} expected, {n} there" + (f", starting at {lo}" if lo else "")
        raise _refusal(
            path,
            [f"attestations are missing from the store ({missing})"],
            "Attestations are never deleted by the agent (retention removes readings only).",
            f"restore {path.name} from a backup that holds them, or {new_log_steps(path)}",
        )
    last_cose = _cose(db, hi)
    last = _claims(path, hi, last_cose)
    cp, digest = last.checkpoint, hashlib.sha256(last_cose).digest()
    problems, ahead = _disagreements(db, stored, last, digest, log_problem), []
    if stored is not None and stored.next_seq > hi + 1:
        ahead.append(f"the state row says seq {stored.next_seq - 1} was signed")
    if head is not None and head.origin == cp.origin:
        if head.seq > hi:
            ahead.append(f"log-head.json says seq {head.seq} was signed")
        elif hashlib.sha256(_cose(db, head.seq)).digest() != head.digest:
            ahead.append(
                f"log-head.json names another attestation seq {head.seq} than the store holds"
            )
    if ahead:
        raise _refusal(
            path,
            (problems or [f"the last stored attestation is seq {hi}"]) + ahead,
            "Those attestations were signed and may have been published: continuing from the "
            f"store would sign a second, different seq {hi + 1} (a fork).",
            f"put back the copy of {path.name} that holds them, or {new_log_steps(path)}",
        )
    if not problems:
        assert stored is not None
        return ChainCheck(stored)
    if key is None:
        raise _refusal(
            path,
            problems,
            "No device key to verify the stored attestations with.",
            new_log_steps(path),
        )
    start = _claimed_start(db, stored, hi)
    if start is None:
        raise _refusal(
            path,
            problems,
            "Its prev matches no stored attestation, so where the state row's log stood is "
            "not known.",
            new_log_steps(path),
        )
    _verify_tail(db, path, key, start, hi, cp.origin)
    log = _rebuild_log(db, path, hi, last)
    bootcount = max(stored.bootcount if stored is not None else 0, last.bootcount)
    rebuilt = (
        f"the chain state disagreed with the stored attestations ({'; '.join(problems)}); "
        f"rebuilt from attestations seq {start}..{hi}, each verified with the device key: "
        f"the log continues at seq {hi + 1}"
    )
    return ChainCheck(ChainState(cp.origin, hi + 1, digest, log, bootcount), rebuilt)


def _no_attestations(path: Path, stored: ChainState, head: LogHead | None) -> ChainCheck:
    problems = []
    if stored.next_seq or stored.prev is not None or stored.log.size:
        problems.append(
            f"the state row is past the start of its log (next_seq {stored.next_seq}, log "
            f"size {stored.log.size}), and the store holds no attestation"
        )
    if head is not None and head.origin == stored.origin:
        problems.append(f"log-head.json says {head.describe()} was signed")
    if problems:
        raise _refusal(
            path,
            problems,
            "Those attestations were signed and may have been published: signing seq 0 "
            "again would fork the log.",
            f"restore {path.name} from a backup that holds them, or {new_log_steps(path)}",
        )
    return ChainCheck(stored)


def _disagreements(
    db: sqlite3.Connection,
    stored: ChainState | None,
    last: Evidence,
    digest: bytes,
    log_problem: str | None,
) -> list[str]:
    """What the state row says that the last stored attestation contradicts."""
    cp, hi = last.checkpoint, last.seq
    out = []
    if stored is None:
        out.append("there is no state row")
    else:
        if stored.origin != cp.origin:
            out.append(f"the state row names log {stored.origin}, the attestations {cp.origin}")
        if stored.next_seq != hi + 1:
            out.append(f"next_seq is {stored.next_seq}, the last stored attestation is seq {hi}")
        if stored.prev != digest:
            out.append(f"prev is not the SHA-256 of attestation seq {hi}")
        if log_problem is not None:
            out.append(f"the state row's Merkle log state does not decode ({log_problem})")
        elif stored.log.size != cp.size:
            out.append(
                f"the log size is {stored.log.size}, the checkpoint of seq {hi} says {cp.size}"
            )
        elif stored.log.root() != cp.root:
            out.append(f"the log state's root is not the checkpoint root of seq {hi}")
    top = db.execute(
        "SELECT MAX(first_idx + n - 1) FROM window_readings WHERE seq <= ?", (hi,)
    ).fetchone()[0]
    if top is not None and top >= cp.size:
        out.append(
            f"readings are stored up to index {top}, beyond the {cp.size} leaves the log "
            f"holds at seq {hi}"
        )
    return out


def _claimed_start(db: sqlite3.Connection, stored: ChainState | None, hi: int) -> int | None:
    """The first attestation to verify: where the state row says the log stood."""
    if stored is None:
        return 0
    candidates = [min(max(stored.next_seq - 1, 0), hi)]
    if stored.prev is not None:
        at = [
            s for s in {hi, candidates[0]} if hashlib.sha256(_cose(db, s)).digest() == stored.prev
        ]
        if not at:
            return None
        candidates += at
    return min(candidates)


def _verify_tail(
    db: sqlite3.Connection, path: Path, key: PublicKey, start: int, hi: int, origin: str
) -> None:
    """Every attestation start..hi: signed with ``key``, of ``origin``, linked to the one
    before it (prev digest, checkpoint sizes)."""
    prev_digest = hashlib.sha256(_cose(db, start - 1)).digest() if start else None
    prev_size = _claims(path, start - 1, _cose(db, start - 1)).checkpoint.size if start else 0
    for seq, cose in _rows(db, start, hi):
        try:
            msg = decode_sign1(cose)
            msg.verify(key)
        except VerificationError as e:
            raise _refusal(
                path,
                [f"attestation seq {seq} does not verify with the device key: {e}"],
                "The state cannot be rebuilt from attestations this key did not sign (signed "
                "before a key rotation, or not by this device).",
                new_log_steps(path),
            ) from e
        ev = _claims(path, seq, cose)
        cp = ev.checkpoint
        broken = (
            ev.seq != seq
            or cp.origin != origin
            or ev.prev != prev_digest
            or cp.prev_size != prev_size
            or cp.size != prev_size + ev.readings
        )
        if broken:
            raise _refusal(
                path,
                [
                    f"attestation seq {seq} does not follow the one before it (seq, origin, prev "
                    "or checkpoint sizes)"
                ],
                "The stored attestations do not form one chain.",
                new_log_steps(path),
            )
        prev_digest, prev_size = hashlib.sha256(cose).digest(), cp.size


def _rebuild_log(db: sqlite3.Connection, path: Path, hi: int, last: Evidence) -> CompactRange:
    """The Merkle log state after seq ``hi``: the range stored before it plus its readings."""
    size_before, nodes = db.execute(
        "SELECT log_size_before, log_before FROM attestations WHERE seq = ?", (hi,)
    ).fetchone()
    row = db.execute(
        "SELECT first_idx, stride, records FROM window_readings WHERE seq = ?", (hi,)
    ).fetchone()
    records = [] if row is None else split_records(bytes(row[2]), row[1])
    idx = [] if row is None else list(range(row[0], row[0] + len(records)))
    cp = last.checkpoint
    try:
        log = CompactRange(size_before, cbor2.loads(nodes))
        log.extend(record_leaf_hashes(records))
        ok = idx == list(range(size_before, cp.size)) and log.root() == cp.root
    except (ValueError, cbor2.CBORDecodeError):
        ok = False
    if not ok:
        raise _refusal(
            path,
            [
                f"the Merkle log state after seq {hi} cannot be rebuilt: the window's readings "
                f"(indexes {cp.prev_size}..{cp.size - 1}) are not all stored, or do not give "
                "its checkpoint root"
            ],
            "Without that state no further reading can be proven against this log.",
            new_log_steps(path),
        )
    return log


def _rows(db: sqlite3.Connection, start: int, hi: int) -> Iterator[tuple[int, bytes]]:
    at = start
    while at <= hi:
        batch = db.execute(
            "SELECT seq, cose FROM attestations WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
            (at, hi, _BATCH),
        ).fetchall()
        if not batch:
            return
        for seq, cose in batch:
            yield seq, bytes(cose)
        at = batch[-1][0] + 1


def _cose(db: sqlite3.Connection, seq: int) -> bytes:
    row = db.execute("SELECT cose FROM attestations WHERE seq = ?", (seq,)).fetchone()
    return bytes(row[0]) if row else b""


def _claims(path: Path, seq: int, cose: bytes) -> Evidence:
    """The claims of a stored attestation (signature not checked here)."""
    try:
        return parse_claims(decode_sign1(cose).claims())
    except VerificationError as e:
        raise _refusal(
            path,
            [f"stored attestation seq {seq} is not a valid attestation: {e}"],
            "The store has been damaged or edited.",
            new_log_steps(path),
        ) from e


def _refusal(path: Path, problems: list[str], why: str, recover: str) -> StorageError:
    return StorageError(
        f"{path}: the chain state disagrees with the attestations stored: "
        f"{'; '.join(problems)}. {why} Nothing was written. To recover: {recover}."
    )
