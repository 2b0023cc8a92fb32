"""The gateway's durable evidence store: chain state, attestations, outbox (SQLite, WAL).

One transaction commits a signed attestation, its outbox entry, the window's
readings (the salted leaf records, so any of them can later be proven included)
and the new chain state (next seq, prev hash, Merkle log state) together, with
``synchronous=FULL`` so it is on disk (fsync) before anything is published.
An outbox row is deleted only when the broker has acknowledged it (PUBACK).

If the database is lost, the next start declares a *new* log (fresh origin,
seq 0, no prev): the chain never silently restarts under the old name.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cbor2

from agent.errors import StorageError
from agent.leaves import decode_record, record_leaf_hashes
from agent.merkle import CompactRange, RangeHasher

__all__ = [
    "ChainState",
    "EvidenceStore",
    "OutboxItem",
    "RetainedReading",
    "StoreSummary",
    "StoredAttestation",
    "read_retained",
    "read_summary",
    "records_before",
    "store_path",
]

_T = TypeVar("_T")

_ACK_BATCH = 64  # outbox deletions per transaction
_FILE = "evidence.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    origin TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    prev BLOB,
    log_size INTEGER NOT NULL,
    log_nodes BLOB NOT NULL,
    bootcount INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attestations (
    seq INTEGER PRIMARY KEY,
    window_start_ms INTEGER NOT NULL,
    window_end_ms INTEGER NOT NULL,
    cose BLOB NOT NULL,
    log_size_before INTEGER NOT NULL DEFAULT 0,
    log_before BLOB NOT NULL DEFAULT x'80'
);
CREATE TABLE IF NOT EXISTS readings (
    idx INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_seq ON readings (seq);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


def store_path(state_dir: Path) -> Path:
    """The evidence store in an agent's ``state_dir``."""
    return Path(state_dir) / _FILE


@dataclass
class ChainState:
    """What must survive a restart for the chain to continue."""

    origin: str
    next_seq: int
    prev: bytes | None
    log: CompactRange
    bootcount: int


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    topic: str
    payload: bytes


class EvidenceStore:
    """SQLite-backed store; safe to call from the agent and the MQTT thread."""

    def __init__(self, path: Path, device_id: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise StorageError(f"{path}: cannot open the evidence store: {e}") from e
        self.new_log = False
        self._acked: list[int] = []  # PUBACKed seqs whose outbox rows are not yet deleted
        self.state = self._load_or_create(device_id)

    def _load_or_create(self, device_id: str) -> ChainState:
        with self._lock, self._wrap("read chain state"):
            row = self._db.execute(
                "SELECT origin, next_seq, prev, log_size, log_nodes, bootcount FROM state"
            ).fetchone()
            if row is None:
                # New (or lost) state: declare a new log, never reuse an old origin.
                origin = f"edgegov/{device_id}/{secrets.token_hex(8)}"
                state = ChainState(origin, 0, None, CompactRange(), 1)
                self.new_log = True
            else:
                origin, next_seq, prev, size, nodes, boots = row
                state = ChainState(
                    origin, next_seq, prev, CompactRange(size, cbor2.loads(nodes)), boots + 1
                )
            self._write_state(state)
            return state

    def _wrap(self, what: str) -> _SqliteGuard:
        return _SqliteGuard(self.path, what)

    def _write_state(self, s: ChainState) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO state VALUES (1, ?, ?, ?, ?, ?, ?)",
            (s.origin, s.next_seq, s.prev, s.log.size, cbor2.dumps(list(s.log.nodes)), s.bootcount),
        )

    def commit(
        self,
        seq: int,
        window: tuple[int, int],
        cose: bytes,
        topic: str,
        new_state: ChainState,
        records: list[bytes] | None = None,
    ) -> None:
        """Atomically persist an attestation, its readings, its outbox entry and the chain state."""
        if seq != self.state.next_seq:
            raise RuntimeError(f"commit out of order: seq {seq}, expected {self.state.next_seq}")
        before = self.state.log
        records = records or []
        with self._lock, self._wrap(f"store attestation seq {seq}"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO attestations VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, window[0], window[1], cose, before.size, cbor2.dumps(list(before.nodes))),
                )
                self._db.executemany(
                    "INSERT INTO readings VALUES (?, ?, ?)",
                    [(before.size + i, seq, r) for i, r in enumerate(records)],
                )
                self._db.execute("INSERT INTO outbox VALUES (?, ?, ?)", (seq, topic, cose))
                self._write_state(new_state)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.state = new_state

    def prune(self, older_than_ms: int) -> int:
        """Retention: drop the readings of windows that ended before ``older_than_ms``.

        Attestations are kept (they are small and the chain needs them); only the
        raw readings go, after which they can no longer be proven.
        """
        with self._lock, self._wrap("apply the retention setting"):
            cur = self._db.execute(
                "DELETE FROM readings WHERE seq IN "
                "(SELECT seq FROM attestations WHERE window_end_ms < ?)",
                (older_than_ms,),
            )
            return cur.rowcount

    def used_bytes(self) -> int:
        """Bytes in use by the database (freed pages are reused, so this is what grows)."""
        with self._lock, self._wrap("measure the evidence store"):
            pages, free, size = (
                self._db.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("page_count", "freelist_count", "page_size")
            )
        return int((pages - free) * size)

    def shed_readings(self, target_bytes: int, batch: int = 2000) -> int:
        """Disk quota: delete the oldest raw readings until ``used_bytes() <= target_bytes``.

        Only readings go: attestations, outbox and chain state are never shed. Returns
        how many readings were deleted (the caller records that in the evidence).
        """
        shed = 0
        while self.used_bytes() > target_bytes:
            with self._lock, self._wrap("shed raw readings for the disk quota"):
                n = self._db.execute(
                    "DELETE FROM readings WHERE rowid IN "
                    "(SELECT rowid FROM readings ORDER BY rowid LIMIT ?)",
                    (batch,),
                ).rowcount
            if n <= 0:
                break
            shed += n
        return shed

    def pending(self) -> list[OutboxItem]:
        """Outbox entries not yet acknowledged by the broker, in seq order."""
        with self._lock, self._wrap("read outbox"):
            self._flush_acks_locked()
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM outbox ORDER BY seq"
            ).fetchall()
        return [OutboxItem(*r) for r in rows]

    def acknowledge(self, seq: int) -> None:
        """The broker has the attestation (PUBACK): drop it from the outbox.

        Deletions are batched (64 at a time, and at every :meth:`flush_acks`) and not
        fsynced: after a crash at most that many rows come back and are sent once more,
        which collectors and the verifier treat as the same attestation (same bytes).
        Evidence itself is always fsynced before it is published.
        """
        with self._lock:
            self._acked.append(seq)
            if len(self._acked) >= _ACK_BATCH:
                self._flush_acks_locked()

    def flush_acks(self) -> None:
        with self._lock:
            self._flush_acks_locked()

    def _flush_acks_locked(self) -> None:
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        with self._wrap(f"acknowledge {len(acked)} attestation(s)"):
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acked])
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._db.execute("PRAGMA synchronous=FULL")

    def last_window_end(self) -> int | None:
        """End (ms) of the newest attested window, so a restart never overlaps it."""
        with self._lock, self._wrap("read attestations"):
            row = self._db.execute("SELECT MAX(window_end_ms) FROM attestations").fetchone()
        return row[0] if row else None

    def attestations(self) -> list[tuple[int, bytes]]:
        with self._lock, self._wrap("read attestations"):
            return self._db.execute("SELECT seq, cose FROM attestations ORDER BY seq").fetchall()

    def records_before(self, seq: int | None, keep_ms: int, keep_rows: int) -> list[bytes]:
        """See :func:`records_before`."""
        with self._lock, self._wrap("read readings"):
            return records_before(self._db, seq, keep_ms, keep_rows)

    def close(self) -> None:
        with self._lock:
            self._flush_acks_locked()
            self._db.close()


@dataclass(frozen=True)
class RetainedReading:
    """One retained reading with what proves it: the attestation of its window."""

    index: int
    record: bytes
    tree_size: int
    proof: tuple[bytes, ...]
    attestation: bytes


def records_before(
    db: sqlite3.Connection, seq: int | None, keep_ms: int, keep_rows: int
) -> list[bytes]:
    """The stored records a feature history needs before window ``seq`` (None: the next).

    Every record of the windows that end after (the last stored reading before ``seq``
    minus ``keep_ms``), and of earlier windows until there are at least ``keep_rows``
    records, in log order: a superset of what :class:`agent.features.History` keeps.
    Shed or pruned records are simply not there.
    """
    if not keep_ms and not keep_rows:
        return []
    bound = seq if seq is not None else (1 << 62)
    row = db.execute(
        "SELECT idx, record FROM readings WHERE seq < ? ORDER BY idx DESC LIMIT 1", (bound,)
    ).fetchone()
    if row is None:
        return []
    last_idx, t_last = row[0], decode_record(row[1]).received_ms
    first = db.execute(
        "SELECT MIN(seq) FROM attestations WHERE seq < ? AND window_end_ms > ?",
        (bound, t_last - keep_ms),
    ).fetchone()[0]
    if keep_rows:  # and the whole windows that hold the last keep_rows readings
        by_rows = db.execute(
            "SELECT MIN(seq) FROM readings WHERE seq < ? AND idx > ?",
            (bound, last_idx - keep_rows),
        ).fetchone()[0]
        first = by_rows if first is None else min(first, by_rows)
    if first is None:
        return []
    rows = db.execute(
        "SELECT record FROM readings WHERE seq >= ? AND seq < ? ORDER BY idx", (first, bound)
    ).fetchall()
    return [bytes(r[0]) for r in rows]


def read_retained(path: Path, index: int) -> RetainedReading:
    """Inclusion proof for reading ``index`` from a store, opened read-only.

    The proof is against the checkpoint of the reading's own window: the
    window's leaves plus the compact range stored before it are all it needs.
    """

    def read(db: sqlite3.Connection) -> tuple[int, bytes, int, bytes, list[tuple[int, bytes]]]:
        row = db.execute("SELECT seq FROM readings WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise StorageError(
                f"{path}: reading {index} is not retained (never recorded, or removed "
                "by the retention setting)"
            )
        seq = row[0]
        cose, size_before, nodes = db.execute(
            "SELECT cose, log_size_before, log_before FROM attestations WHERE seq = ?", (seq,)
        ).fetchone()
        rows = db.execute(
            "SELECT idx, record FROM readings WHERE seq = ? ORDER BY idx", (seq,)
        ).fetchall()
        return seq, cose, size_before, nodes, rows

    seq, cose, size_before, nodes, rows = _read_only(path, f"read reading {index}", read)
    if [r[0] for r in rows] != list(range(size_before, size_before + len(rows))):
        raise StorageError(f"{path}: the readings of window seq {seq} are incomplete")
    records = [r[1] for r in rows]
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
        readings = db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
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

    return _read_only(path, "read the store's state", read)


def _stored(row: tuple[int, int, int, bytes]) -> StoredAttestation:
    return StoredAttestation(row[0], row[1], row[2], bytes(row[3]))


def _read_only(path: Path, what: str, read: Callable[[sqlite3.Connection], _T]) -> _T:
    """``read(db)`` on a read-only connection that creates and changes nothing beside the store.

    SQLite opening a WAL database with ``mode=ro`` creates its ``-wal`` and ``-shm`` files
    when they are missing, and leaves them behind. Without them the store was closed
    cleanly and all of it is in the main file, so it is read as ``immutable`` (no locks,
    no side files); if a writer appears meanwhile (its ``-wal`` shows up), the read is
    done again through the writer's files, which are there now. (One case still creates
    a file: a ``-wal`` left by a crash without its ``-shm``; SQLite needs one to read it.)
    """
    if not path.is_file():
        raise StorageError(f"{path}: no evidence store there")
    uri = path.resolve().as_uri()
    immutable = not _has_side_files(path)
    for _ in range(2):
        with _SqliteGuard(path, what):
            db = sqlite3.connect(uri + "?mode=ro" + "&immutable=1" * immutable, uri=True)
            try:
                result = read(db)
            finally:
                db.close()
        if not immutable or not _has_side_files(path):
            break
        immutable = False
    return result


def _has_side_files(path: Path) -> bool:
    return any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm"))


class _SqliteGuard:
    """Translate sqlite3 errors into StorageError with the file and the operation."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type | None, e: BaseException | None, tb: object) -> None:
        if isinstance(e, sqlite3.Error):
            hint = " (disk full?)" if "full" in str(e).lower() else ""
            free = ""
            try:
                st = os.statvfs(self.path.parent)
                free = f"; {st.f_bavail * st.f_frsize // 1024} KiB free on that filesystem"
            except OSError:
                pass
            raise StorageError(f"{self.path}: cannot {self.what}: {e}{hint}{free}") from e
