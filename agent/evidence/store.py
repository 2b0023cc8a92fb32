"""The gateway's durable evidence store: chain state, attestations, outbox (SQLite, WAL).

One transaction commits a signed attestation, its outbox entry, the window's
readings (the salted leaf records, so any of them can later be proven included; one
row per window, its records back to back: ``window_readings``, measured ~3x faster
to write than a row per reading, ``edgegov bench --only pipeline``) and the new
chain state (next seq, prev hash, Merkle log state) together, with
``synchronous=FULL`` so it is on disk (fsync) before anything is published.
An outbox row is deleted only when the broker has acknowledged it (PUBACK).

If the database is lost, the next start declares a *new* log (fresh origin,
seq 0, no prev): the chain never silently restarts under the old name. When state of an
earlier log is found beside it (``log-head.json``, rewritten after every commit, and the
files the caller names), :attr:`EvidenceStore.new_log_reason` says so and
:attr:`EvidenceStore.previous_log` names that log, for the new log's first attestation.

Faults are found, never carried on with: at open, SQLite's ``quick_check`` runs and the
chain state is checked against the stored attestations (``agent.evidence.chain_check``: agree,
rebuilt from verified attestations, or refused); while running, ``quick_check`` runs again
every :data:`INTEGRITY_CHECK_S` seconds before a commit. A store found corrupt raises
:class:`agent.errors.StoreCorruptError` and is not written again.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import cbor2

from agent.errors import StorageError, StoreCorruptError
from agent.evidence.chain_check import check_chain_state, new_log_steps
from agent.evidence.leaves import (
    WindowRecords,
    decode_record,
    split_records,
)
from agent.evidence.log_head import FILE as LOG_HEAD_FILE
from agent.evidence.log_head import LogHead, read_log_head, write_log_head
from agent.evidence.merkle import CompactRange

if TYPE_CHECKING:
    from agent.identity.keys import PublicKey

__all__ = [
    "INTEGRITY_CHECK_S",
    "ChainState",
    "EvidenceStore",
    "OutboxItem",
    "read_only",
    "records_before",
    "store_path",
]

_T = TypeVar("_T")

log = logging.getLogger("edgegov.store")

INTEGRITY_CHECK_S = 3600.0  # quick_check while running: ~20 ms for 100k readings (13 MB)
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26
# How long a write waits for another process's lock (an operator's sqlite3 shell, a backup)
# before it fails and the window is held: the main loop, which feeds the watchdog, waits it.
_BUSY_S = 1.0

_ACK_BATCH = 64  # outbox deletions per transaction
_FILE = "evidence.sqlite"

# The open window's journal keeps its own tables (journal, journal_sources, journal_run) in
# this database, written through transact() and commit(also=...): agent/evidence/journal.py.
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
CREATE TABLE IF NOT EXISTS window_readings (
    seq INTEGER PRIMARY KEY,
    first_idx INTEGER NOT NULL,
    n INTEGER NOT NULL,
    stride INTEGER NOT NULL,
    records BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS window_readings_by_idx ON window_readings (first_idx);
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

    def __init__(
        self,
        path: Path,
        device_id: str,
        *,
        public_key: PublicKey | None = None,
        earlier: Sequence[Path] = (),
    ) -> None:
        """Open (or create) the store, check it, and count a boot.

        Args:
            public_key: the device key, to verify stored attestations before the chain
                state is rebuilt from them (None: a disagreeing state is refused).
            earlier: files of the caller that exist only once a log has run here (policy
                state, held windows, spooled attestations): found beside a missing or
                empty store, they make the new log say so (:attr:`new_log_reason`).

        Raises:
            StoreCorruptError: SQLite's quick_check fails, or the file is not a database.
            StorageError: it cannot be opened, or its chain state disagrees with its
                attestations in a way they do not resolve (``agent.evidence.chain_check``).
        """
        self.path = path
        self._lock = threading.Lock()
        self.new_log = False
        # A new log began while state of an earlier log was there: why, and which log
        # ("origin seq N head sha256:HEX", or "unknown"); for claim -70001/12 keys 7 and 8.
        self.new_log_reason: str | None = None
        self.previous_log: str | None = None
        self.rebuilt: str | None = None  # the chain state was rebuilt from attestations: how
        self.head_note: str | None = None  # log-head.json: unreadable, or of another log
        self.corrupt: str | None = None  # set once the store is found corrupt: never written
        self.integrity_check_s = INTEGRITY_CHECK_S
        existed = path.is_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=_BUSY_S, check_same_thread=False, isolation_level=None
            )
        except (sqlite3.Error, OSError) as e:
            raise StorageError(f"{path}: cannot open the evidence store: {e}") from e
        self._acked: list[int] = []  # PUBACKed seqs whose outbox rows are not yet deleted
        # _acked is guarded by _ack_cond alone (taken inside _lock, never around it), so an
        # acknowledgement from the MQTT thread never waits for SQLite; the deletions are made
        # by the "outbox-acks" thread (started at the first full batch) or a flush_acks().
        self._ack_cond = threading.Condition(threading.Lock())
        self._ack_thread: threading.Thread | None = None
        self._ack_closed = False
        try:
            with self._wrap("open the evidence store"):
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self.check_integrity()
            with self._wrap("open the evidence store"):
                self._db.executescript(_SCHEMA)
                _migrate_readings(self._db, self.path)
            self.state = self._load_or_create(device_id, public_key, existed, earlier)
        except BaseException:
            self._db.close()  # refused (corrupt, state disagrees): leave nothing open
            raise

    def _load_or_create(
        self, device_id: str, key: PublicKey | None, existed: bool, earlier: Sequence[Path]
    ) -> ChainState:
        head = self._read_head()
        with self._lock, self._wrap("read chain state"):
            row = self._db.execute(
                "SELECT origin, next_seq, prev, log_size, log_nodes, bootcount FROM state"
            ).fetchone()
            stored, log_problem = None, None
            if row is not None:
                origin, next_seq, prev, size, nodes, boots = row
                try:
                    log_state = CompactRange(size, cbor2.loads(nodes))
                except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
                    log_state, log_problem = CompactRange(), str(e)
                stored = ChainState(origin, next_seq, prev, log_state, boots)
            checked = check_chain_state(self._db, self.path, stored, head, key, log_problem)
            if checked is None:
                stored_any = "SELECT 1 FROM window_readings UNION SELECT 1 FROM outbox"
                if self._db.execute(stored_any).fetchone():
                    raise StorageError(
                        f"{self.path}: the store has readings or outbox rows but no chain state "
                        f"and no attestation: it is not a store a log can start in. Nothing was "
                        f"written. To recover: {new_log_steps(self.path)}."
                    )
                # New (or lost) state: declare a new log, never reuse an old origin.
                origin = f"edgegov/{device_id}/{secrets.token_hex(8)}"
                state = ChainState(origin, 0, None, CompactRange(), 1)
                self.new_log = True
                self._say_why_new(existed, earlier, head)
            else:
                state = replace(checked.state, bootcount=checked.state.bootcount + 1)
                self.rebuilt = checked.rebuilt
                if head is not None and head.origin != state.origin:
                    self.head_note = (
                        f"{LOG_HEAD_FILE} names log {head.describe()}, the store continues "
                        f"log {state.origin} (the store was swapped?)"
                    )
            self._write_state(state)
            return state

    def _read_head(self) -> LogHead | None:
        try:
            return read_log_head(self.path.parent)
        except ValueError as e:
            self.head_note = str(e)
            return None

    def _say_why_new(self, existed: bool, earlier: Sequence[Path], head: LogHead | None) -> None:
        """A new log: if state of an earlier log is here, say why and name that log."""
        found = [p.name for p in earlier if p.exists()]
        if head is not None or self.head_note is not None:
            found.insert(0, LOG_HEAD_FILE)
        if not found and not existed:
            return  # a first start
        what = "was empty (no chain state)" if existed else "was missing"
        self.new_log_reason = f"evidence store {self.path.name} {what}" + (
            f" while state of an earlier log was there: {', '.join(found)}" if found else ""
        )
        self.previous_log = head.describe() if head is not None else "unknown"

    def _wrap(self, what: str) -> _SqliteGuard:
        return _SqliteGuard(self.path, what, self._found_corrupt)

    def _found_corrupt(self, reason: str) -> None:
        self.corrupt = reason

    def check_integrity(self) -> None:
        """SQLite's ``quick_check`` over what is on disk (a fresh connection, not this one's
        page cache): b-tree structure, page and record format, NOT NULL and free lists.

        Raises:
            StoreCorruptError: it found problems (the first 10 are named), with the steps
                to recover; the store is not written again by this process.
        """
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True)
            try:
                rows = db.execute("PRAGMA quick_check(10)").fetchall()
            finally:
                db.close()
            problems = [str(r[0]) for r in rows if r[0] != "ok"]
        except sqlite3.DatabaseError as e:
            problems = [str(e)]
        self._checked_at = time.monotonic()
        if problems:
            err = _corrupt_error(self.path, "; ".join(problems))
            self.corrupt = str(err)
            raise err

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
        records: WindowRecords | None = None,
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Atomically persist an attestation, its readings, its outbox entry and the chain state.

        ``also`` runs inside the same transaction, after those writes (``agent.evidence.journal``:
        the signed window leaves the journal in the very commit that signs it).

        Then ``log-head.json`` names it (a failure there is logged, the commit stands).

        Raises:
            StoreCorruptError: the store is corrupt (found now, by the scheduled
                quick_check, or before): nothing is written.
            StorageError: the write failed (disk full, I/O error); nothing was written.
        """
        if seq != self.state.next_seq:
            raise RuntimeError(f"commit out of order: seq {seq}, expected {self.state.next_seq}")
        if self.corrupt is not None:
            raise StoreCorruptError(self.corrupt)
        if time.monotonic() - self._checked_at >= self.integrity_check_s:
            self.check_integrity()
        before = self.state.log
        with self._lock, self._wrap(f"store attestation seq {seq}"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO attestations VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, window[0], window[1], cose, before.size, cbor2.dumps(list(before.nodes))),
                )
                if records is not None and records.n:
                    self._db.execute(
                        "INSERT INTO window_readings VALUES (?, ?, ?, ?, ?)",
                        (seq, before.size, records.n, records.stride, records.blob),
                    )
                self._db.execute("INSERT INTO outbox VALUES (?, ?, ?)", (seq, topic, cose))
                self._write_state(new_state)
                if also is not None:
                    also(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        self.state = new_state
        self._write_head(LogHead(new_state.origin, seq, hashlib.sha256(cose).digest()))

    def _write_head(self, head: LogHead) -> None:
        try:
            write_log_head(self.path.parent, head)
        except OSError as e:  # advisory: the store has the attestation
            log.warning("cannot update %s beside the evidence store: %s", LOG_HEAD_FILE, e)

    def prune(self, older_than_ms: int) -> int:
        """Retention: drop the readings of windows that ended before ``older_than_ms``.

        Attestations are kept (they are small and the chain needs them); only the
        raw readings go, after which they can no longer be proven.
        """
        with self._lock, self._wrap("apply the retention setting"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                where = "seq IN (SELECT seq FROM attestations WHERE window_end_ms < ?)"
                (n,) = self._db.execute(
                    f"SELECT COALESCE(SUM(n), 0) FROM window_readings WHERE {where}",
                    (older_than_ms,),
                ).fetchone()
                self._db.execute(f"DELETE FROM window_readings WHERE {where}", (older_than_ms,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return int(n)

    def used_bytes(self) -> int:
        """Bytes in use by the database (freed pages are reused, so this is what grows)."""
        with self._lock, self._wrap("measure the evidence store"):
            pages, free, size = (
                self._db.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("page_count", "freelist_count", "page_size")
            )
        return int((pages - free) * size)

    def shed_readings(self, target_bytes: int) -> int:
        """Disk quota: delete the oldest windows' raw readings until ``used_bytes() <=
        target_bytes`` (a window's readings go together).

        Only readings go: attestations, outbox and chain state are never shed. Returns
        how many readings were deleted (the caller records that in the evidence).
        """
        shed = 0
        while self.used_bytes() > target_bytes:
            with self._lock, self._wrap("shed raw readings for the disk quota"):
                row = self._db.execute(
                    "SELECT seq, n FROM window_readings ORDER BY seq LIMIT 1"
                ).fetchone()
                if row is None:
                    break
                self._db.execute("DELETE FROM window_readings WHERE seq = ?", (row[0],))
            shed += int(row[1])
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
        fsynced: after a crash the rows acknowledged since the last batch was written come
        back (a batch or two, so about 64 to 128) and are sent once more, which collectors
        and the verifier treat as the same attestation (same bytes). Evidence itself is
        always fsynced before it is published.

        Never waits for SQLite: called on the MQTT network thread, for every PUBACK, while
        paho holds the lock its publishers need. A full batch is deleted by this store's
        ``outbox-acks`` thread (a failure there is logged; those rows are sent again).
        """
        with self._ack_cond:
            self._acked.append(seq)
            if len(self._acked) < _ACK_BATCH or self._ack_closed:
                return
            if self._ack_thread is None:
                self._ack_thread = threading.Thread(
                    target=self._ack_loop, name="outbox-acks", daemon=True
                )
                self._ack_thread.start()
            self._ack_cond.notify()

    def _ack_loop(self) -> None:
        while True:
            with self._ack_cond:
                while len(self._acked) < _ACK_BATCH and not self._ack_closed:
                    self._ack_cond.wait()
                if self._ack_closed:
                    return  # close() flushes what is left
            try:
                self.flush_acks()
            except StorageError as e:
                log.warning("%s; those attestations may be delivered again", e)

    def flush_acks(self) -> None:
        with self._lock:
            self._flush_acks_locked()

    def _flush_acks_locked(self) -> None:
        with self._ack_cond:  # taken under _lock, so pending() sees every earlier ack
            if not self._acked:
                return
            acked, self._acked = self._acked, []
        with self._wrap(f"acknowledge {len(acked)} attestation(s)"):
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                # one statement per run of consecutive seqs (a drain acknowledges in order),
                # not one per row: each statement is a round trip of the GIL
                self._db.executemany("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", _runs(acked))
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._db.execute("PRAGMA synchronous=FULL")

    def transact(
        self, what: str, work: Callable[[sqlite3.Connection], _T], *, durable: bool = True
    ) -> _T:
        """``work(connection)`` in one transaction of its own, under the store's lock.

        ``durable=False`` commits without an fsync (``synchronous=NORMAL``; in WAL mode the
        commit is still atomic): it survives the agent being killed, not a power cut, and
        a later fsynced commit makes it durable too. For ``agent.evidence.journal``'s
        frequent writes.

        Raises:
            StoreCorruptError: the store is corrupt; nothing is written.
            StorageError: the write failed; nothing was written.
        """
        if self.corrupt is not None:
            raise StoreCorruptError(self.corrupt)
        with self._lock, self._wrap(what):
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                result = work(self._db)
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")
        return result

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
        """Stop the ``outbox-acks`` thread, flush the acknowledgements (if that fails, the
        rows are sent again) and close."""
        with self._ack_cond:
            self._ack_closed = True
            self._ack_cond.notify_all()
        if self._ack_thread is not None:
            self._ack_thread.join(5.0)
        with self._lock:
            try:
                self._flush_acks_locked()
            except StorageError as e:
                log.warning("%s; those attestations may be delivered again", e)
            finally:
                self._db.close()


def records_before(
    db: sqlite3.Connection, seq: int | None, keep_ms: int, keep_rows: int
) -> list[bytes]:
    """The stored records a feature history needs before window ``seq`` (None: the next).

    Every record of the windows that end after (the last stored reading before ``seq``
    minus ``keep_ms``), and of earlier windows until there are at least ``keep_rows``
    records, in log order: a superset of what :class:`agent.risk.features.History` keeps.
    Shed or pruned records are simply not there.
    """
    if not keep_ms and not keep_rows:
        return []
    bound = seq if seq is not None else (1 << 62)
    row = db.execute(
        "SELECT first_idx, n, stride, records FROM window_readings WHERE seq < ? "
        "ORDER BY seq DESC LIMIT 1",
        (bound,),
    ).fetchone()
    if row is None:
        return []
    first_idx, n, stride, blob = row
    last_idx, t_last = first_idx + n - 1, decode_record(bytes(blob[-stride:])).received_ms
    first = db.execute(
        "SELECT MIN(seq) FROM attestations WHERE seq < ? AND window_end_ms > ?",
        (bound, t_last - keep_ms),
    ).fetchone()[0]
    if keep_rows:  # and the whole windows that hold the last keep_rows readings
        by_rows = db.execute(
            "SELECT MIN(seq) FROM window_readings WHERE seq < ? AND first_idx + n - 1 > ?",
            (bound, last_idx - keep_rows),
        ).fetchone()[0]
        first = by_rows if first is None else min(first, by_rows)
    if first is None:
        return []
    rows = db.execute(
        "SELECT stride, records FROM window_readings WHERE seq >= ? AND seq < ? ORDER BY seq",
        (first, bound),
    ).fetchall()
    return [r for stride, blob in rows for r in split_records(bytes(blob), stride)]


def window_records(db: sqlite3.Connection, seq: int) -> tuple[int, list[bytes]] | None:
    """(log index of the first, the records) of window ``seq``'s stored readings (None:
    none stored: shed, pruned, or a window without readings)."""
    row = db.execute(
        "SELECT first_idx, stride, records FROM window_readings WHERE seq = ?", (seq,)
    ).fetchone()
    return None if row is None else (int(row[0]), split_records(bytes(row[2]), row[1]))


def _migrate_readings(db: sqlite3.Connection, path: Path) -> None:
    """A store written before readings were kept per window (one row per reading, table
    ``readings``): its rows become one ``window_readings`` row per window, in one
    transaction. A window whose rows were partly shed keeps its first contiguous run, and
    the log says how many readings that leaves out."""
    has = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'readings'"
    ).fetchone()
    if has is None:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        dropped = 0
        windows: dict[int, list[tuple[int, bytes]]] = {}
        for idx, seq, record in db.execute("SELECT idx, seq, record FROM readings ORDER BY idx"):
            windows.setdefault(seq, []).append((idx, bytes(record)))
        for seq, rows in windows.items():
            run = [rows[0]]
            for idx, rec in rows[1:]:
                if idx != run[-1][0] + 1 or len(rec) != len(run[0][1]):
                    break
                run.append((idx, rec))
            dropped += len(rows) - len(run)
            db.execute(
                "INSERT OR REPLACE INTO window_readings VALUES (?, ?, ?, ?, ?)",
                (seq, run[0][0], len(run), len(run[0][1]), b"".join(r for _, r in run)),
            )
        db.execute("DROP TABLE readings")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    log.warning(
        "%s: raw readings moved to one row per window (%d window(s))%s",
        path,
        len(windows),
        f"; {dropped} reading(s) not contiguous in their window (partly shed) left out"
        if dropped
        else "",
    )


def read_only(path: Path, what: str, read: Callable[[sqlite3.Connection], _T]) -> _T:
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


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """``seqs`` as runs of consecutive numbers: ``[(first, last), ...]``, in order."""
    runs: list[tuple[int, int]] = []
    first = last = None
    for s in sorted(seqs):
        if last is not None and s <= last + 1:
            last = max(last, s)
            continue
        if first is not None and last is not None:
            runs.append((first, last))
        first = last = s
    if first is not None and last is not None:
        runs.append((first, last))
    return runs


def _corrupt_error(path: Path, problems: str) -> StoreCorruptError:
    return StoreCorruptError(
        f"{path}: the evidence store is corrupt (SQLite: {problems}); nothing more is written "
        f"to it. To recover: stop the agent and keep a copy of {path.name} and its -wal and "
        "-shm files; salvage what SQLite can read with `sqlite3 "
        f"{path.name} .recover | sqlite3 recovered.sqlite` and put recovered.sqlite in its "
        "place (the agent checks it against its attestations at start and continues the log "
        f"if they agree), or {new_log_steps(path)}"
    )


def _is_full(e: BaseException) -> bool:
    """SQLITE_FULL (SQLite's ENOSPC), or ENOSPC/EDQUOT from the OS."""
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_FULL
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _free_space(path: Path) -> str:
    """`` (N KiB free on that filesystem)`` for the directory of ``path`` ("" if unknown)."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return ""
    return f" ({st.f_bavail * st.f_frsize // 1024} KiB free on that filesystem)"


class _SqliteGuard:
    """Translate sqlite3 errors into StorageError with the file and the operation.

    A full disk gets the free space appended (only then: it is noise on other errors);
    corruption (SQLITE_CORRUPT, SQLITE_NOTADB) is a :class:`StoreCorruptError` with the
    recovery steps, and ``on_corrupt`` is told so the store is not written again.
    """

    def __init__(
        self, path: Path, what: str, on_corrupt: Callable[[str], None] | None = None
    ) -> None:
        self.path, self.what, self.on_corrupt = path, what, on_corrupt

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type | None, e: BaseException | None, tb: object) -> None:
        if not isinstance(e, sqlite3.Error):
            return
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            err = _corrupt_error(self.path, f"{e}, while trying to {self.what}")
            if self.on_corrupt is not None:
                self.on_corrupt(str(err))
            raise err from e
        note = _free_space(self.path) if _is_full(e) else ""
        raise StorageError(f"{self.path}: cannot {self.what}: {e}{note}") from e
