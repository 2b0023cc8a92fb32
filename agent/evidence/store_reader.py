"""The evidence store read-only, for those who only read it: ``edgegov audit replay``
(a window at a time), the agent rebuilding its policy state after a crash
(``agent.pipeline.policy_state``), ``audit verify --store`` on a gateway's store,
``edgegov audit prove`` (a reading with its inclusion proof), ``edgegov status`` (a
summary) and the fault bench.

The schema is the store's (``agent.evidence.store``, with the journal's table in
``agent.evidence.journal``); nothing outside ``agent.evidence`` runs SQL on it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import cbor2

from agent.errors import StorageError
from agent.evidence.leaves import record_leaf_hashes, split_records
from agent.evidence.merkle import CompactRange, RangeHasher
from agent.evidence.store import read_only, records_before, window_records

__all__ = [
    "RetainedReading",
    "StoreReader",
    "StoreSummary",
    "StoredAttestation",
    "StoredWindow",
    "is_evidence_store",
    "read_retained",
    "read_summary",
    "stored_log",
    "stored_records",
]


@dataclass(frozen=True)
class StoredWindow:
    """One window's row as the store holds it: what ``edgegov audit replay`` starts from."""

    seq: int
    start_ms: int
    end_ms: int
    size_before: int  # the log's size before the window's readings
    log_before: bytes  # the compact range of the log before them (CBOR)
    cose: bytes  # the attestation (not verified here)


class StoreReader:
    """A gateway's evidence store opened read-only, read a window at a time (replay).

    Raises:
        StorageError: no store at the path, or it cannot be opened.
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise StorageError(
                f"{path}: no evidence store there (the agent's state/evidence.sqlite)"
            )
        self.path = path
        try:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as e:
            raise StorageError(f"{path}: cannot read the evidence store: {e}") from e

    def bounds(self) -> tuple[int | None, int | None]:
        """The first and last seq stored (None, None: no attestations)."""
        first, last = self.db.execute("SELECT MIN(seq), MAX(seq) FROM attestations").fetchone()
        return first, last

    def has(self, seq: int) -> bool:
        row = self.db.execute("SELECT 1 FROM attestations WHERE seq = ?", (seq,)).fetchone()
        return row is not None

    def seqs_from(self, start_ms: int) -> list[int]:
        """The seqs of the windows that start at or after ``start_ms``, in order."""
        rows = self.db.execute(
            "SELECT seq FROM attestations WHERE window_start_ms >= ? ORDER BY seq", (start_ms,)
        ).fetchall()
        return [int(r[0]) for r in rows]

    def window(self, seq: int) -> StoredWindow | None:
        r = self.db.execute(
            "SELECT window_start_ms, window_end_ms, log_size_before, log_before, cose "
            "FROM attestations WHERE seq = ?",
            (seq,),
        ).fetchone()
        return None if r is None else StoredWindow(seq, r[0], r[1], r[2], bytes(r[3]), bytes(r[4]))

    def records(self, seq: int) -> list[bytes]:
        """The raw records of window ``seq``, in log order."""
        stored = window_records(self.db, seq)
        return [] if stored is None else stored[1]

    def records_before(self, seq: int | None, keep_ms: int, keep_rows: int) -> list[bytes]:
        """:func:`records_before` on this store."""
        return records_before(self.db, seq, keep_ms, keep_rows)

    def close(self) -> None:
        self.db.close()


def stored_log(db: sqlite3.Connection) -> tuple[str | None, list[tuple[int, bytes]]]:
    """A store's log origin (None: no chain state) and every attestation ``(seq, COSE)``
    in seq order, on a connection the caller opened (``read_only``)."""
    state = db.execute("SELECT origin FROM state").fetchone()
    rows = db.execute("SELECT seq, cose FROM attestations ORDER BY seq").fetchall()
    return (state[0] if state else None), [(int(q), bytes(c)) for q, c in rows]


def stored_records(db: sqlite3.Connection) -> list[bytes]:
    """Every raw reading record the store retains, in log order."""
    rows = db.execute("SELECT stride, records FROM window_readings ORDER BY seq")
    return [r for stride, blob in rows for r in split_records(bytes(blob), stride)]


def is_evidence_store(tables: set[str]) -> bool:
    """Whether a database with these tables is a gateway's evidence store."""
    return {"state", "attestations"} <= tables


@dataclass(frozen=True)
class RetainedReading:
    """One retained reading with what proves it: the attestation of its window."""

    index: int
    record: bytes
    tree_size: int
    proof: tuple[bytes, ...]
    attestation: bytes


def read_retained(path: Path, index: int) -> RetainedReading:
    """Inclusion proof for reading ``index`` from a store, opened read-only.

    The proof is against the checkpoint of the reading's own window: the
    window's leaves plus the compact range stored before it are all it needs.
    """

    def read(db: sqlite3.Connection) -> tuple[int, bytes, int, bytes, int, list[bytes]]:
        row = db.execute(
            "SELECT seq, first_idx, n, stride, records FROM window_readings "
            "WHERE first_idx <= ? ORDER BY first_idx DESC LIMIT 1",
            (index,),
        ).fetchone()
        if row is None or index >= row[1] + row[2]:
            raise StorageError(
                f"{path}: reading {index} is not retained (never recorded, or removed "
                "by the retention setting)"
            )
        seq, first, _, stride, blob = row
        cose, size_before, nodes = db.execute(
            "SELECT cose, log_size_before, log_before FROM attestations WHERE seq = ?", (seq,)
        ).fetchone()
        return seq, cose, size_before, nodes, first, split_records(bytes(blob), stride)

    seq, cose, size_before, nodes, first, records = read_only(path, f"read reading {index}", read)
    if first != size_before:
        raise StorageError(f"{path}: the readings of window seq {seq} are incomplete")
    hasher = RangeHasher(CompactRange(size_before, cbor2.loads(nodes)), record_leaf_hashes(records))
    return RetainedReading(
        index,
        records[index - size_before],
        hasher.size,
        tuple(hasher.inclusion_proof(index)),
        cose,
    )


@dataclass(frozen=True)
class StoredAttestation:
    """One stored attestation as the store holds it (the COSE bytes are not verified here)."""

    seq: int
    window_start_ms: int
    window_end_ms: int
    cose: bytes


@dataclass(frozen=True)
class StoreSummary:
    """What the store says about the agent, read without changing anything (``edgegov status``).

    ``window_ms`` is the longest of the last few windows: the policy's window length
    (the first window after a start and the last before a stop are shorter).
    """

    origin: str
    next_seq: int
    bootcount: int  # starts so far (the store counts one at each open)
    attestations: int
    last: StoredAttestation | None
    window_ms: int | None
    outbox: int  # attestations not yet acknowledged by the broker (or written to the spool)
    oldest_undelivered: StoredAttestation | None
    readings: int  # raw readings retained


def read_summary(path: Path) -> StoreSummary:
    """The chain state, newest attestation and outbox of a store, opened read-only.

    Raises:
        StorageError: no store at ``path``, or not an edgegov evidence store.
    """

    def read(db: sqlite3.Connection) -> StoreSummary:
        state = db.execute("SELECT origin, next_seq, bootcount FROM state").fetchone()
        if state is None:
            raise StorageError(f"{path}: no chain state (not an edgegov evidence store?)")
        recent = db.execute(
            "SELECT seq, window_start_ms, window_end_ms, cose FROM attestations "
            "ORDER BY seq DESC LIMIT 8"
        ).fetchall()
        oldest = db.execute(
            "SELECT a.seq, a.window_start_ms, a.window_end_ms, o.payload "
            "FROM outbox o JOIN attestations a ON a.seq = o.seq ORDER BY o.seq LIMIT 1"
        ).fetchone()
        count = db.execute("SELECT COUNT(*) FROM attestations").fetchone()[0]
        outbox = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        readings = db.execute("SELECT COALESCE(SUM(n), 0) FROM window_readings").fetchone()[0]
        return StoreSummary(
            origin=state[0],
            next_seq=state[1],
            bootcount=state[2],
            attestations=count,
            last=_stored(recent[0]) if recent else None,
            window_ms=max(r[2] - r[1] for r in recent) if recent else None,
            outbox=outbox,
            oldest_undelivered=_stored(oldest) if oldest else None,
            readings=readings,
        )

    return read_only(path, "read the store's state", read)


def _stored(row: tuple[int, int, int, bytes]) -> StoredAttestation:
    return StoredAttestation(row[0], row[1], row[2], bytes(row[3]))
