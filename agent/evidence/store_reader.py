"""The evidence store read-only, for those who only read it: ``edgegov audit replay``
(a window at a time), the agent rebuilding its policy state after a crash
(``agent.pipeline.policy_state``), ``audit verify --store`` on a gateway's store, and the
fault bench.

The schema is the store's (``agent.evidence.store``, with the journal's table in
``agent.evidence.journal``); nothing outside ``agent.evidence`` runs SQL on it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StorageError
from agent.evidence.leaves import split_records
from agent.evidence.store import records_before, window_records

__all__ = ["StoreReader", "StoredWindow", "is_evidence_store", "stored_log", "stored_records"]


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
