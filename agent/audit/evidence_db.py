"""Where collectors put attestations: SQLite (default) or PostgreSQL, chosen by URL.

``sqlite:///path/to/file.sqlite`` (or a plain path) and ``postgresql://...``.
Rows are keyed on (device, seq, SHA-256 of the bytes): storing the same
message again is a no-op (QoS 1 redelivery, several collectors), while two
*different* messages with one seq are both kept, so ``audit verify`` can
report the fork. device comes from the MQTT topic and seq from the unverified
payload; they only organise storage, ``audit verify`` decides what is true.

:func:`read_messages` is the auditor's side: it reads a collector store, or a
gateway's own evidence store (``state_dir/evidence.sqlite``, ``agent.evidence.store``), without
creating or changing anything.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from agent.audit import pgstore
from agent.audit.verify import Message
from agent.errors import StorageError
from agent.evidence.store import read_only  # leaves no -wal/-shm behind (edgegov status)
from agent.evidence.store_reader import is_evidence_store, stored_log
from agent.logs import redact

__all__ = [
    "EvidenceDB",
    "StoreUnavailable",
    "iter_messages",
    "open_db",
    "read_messages",
    "read_statements",
    "store_kind",
]

_SQLITE = """
CREATE TABLE IF NOT EXISTS collected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    cose BLOB NOT NULL,
    collector TEXT NOT NULL,
    UNIQUE (device, seq, digest)
);
"""
# Signed governance statements (explanations, calibration certificates) as received, once
# each (agent.governance.statements); the same table in SQLite and PostgreSQL.
_STATEMENTS = """
CREATE TABLE IF NOT EXISTS statements (
    digest {blob} PRIMARY KEY,
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    cose {blob} NOT NULL,
    collector TEXT NOT NULL
);
"""
_PUT_STATEMENT = (
    "INSERT INTO statements (digest, kind, device, cose, collector) "
    "VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (digest) DO NOTHING"
)
_SELECT_STATEMENTS = (
    "SELECT kind, device, digest, cose FROM statements ORDER BY kind, device, digest"
)
_SELECT = "SELECT id, device, seq, cose FROM collected ORDER BY device, seq, id"
_INSERT = (
    "INSERT INTO collected (device, seq, digest, cose, collector) VALUES ({p}, {p}, {p}, {p}, {p}) "
    "ON CONFLICT (device, seq, digest) DO NOTHING"
)


class EvidenceDB(Protocol):
    url: str

    def put(self, device: str, seq: int, digest: bytes, cose: bytes, collector: str) -> bool:
        """Store one message; False if it was already there."""
        ...

    def messages(self) -> Iterator[Message]:
        """Every row by device, claimed seq, arrival (for verify_messages)."""
        ...

    def count(self) -> int: ...

    def put_statement(
        self, kind: str, device: str, digest: bytes, cose: bytes, collector: str
    ) -> bool:
        """Store one signed statement; False if it was already there."""
        ...

    def close(self) -> None: ...


class StoreUnavailable(StorageError):
    """The store cannot be reached now (a PostgreSQL restart, a lost connection): the
    same insert may succeed later, so a collector retries it (a StorageError otherwise)."""


class _SqlStore:
    """What the SQLite and PostgreSQL collector stores share (both DB-API connections)."""

    url: str
    _lock: threading.Lock
    _db: Any
    _param: str
    _errors: tuple[type[BaseException], ...]

    def put_statement(
        self, kind: str, device: str, digest: bytes, cose: bytes, collector: str
    ) -> bool:
        with self._lock:
            try:
                cur = self._db.execute(
                    _PUT_STATEMENT.format(p=self._param), (digest, kind, device, cose, collector)
                )
            except self._errors as e:
                raise StorageError(
                    f"{redact(self.url)}: cannot store the {kind} for {device}: {e}"
                ) from e
            return bool(cur.rowcount == 1)

    def messages(self) -> Iterator[Message]:
        with self._lock:
            rows = self._db.execute(_SELECT).fetchall()
        for row in rows:
            yield _collected(self.url, *row)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM collected").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Sqlite(_SqlStore):
    def __init__(self, path: Path, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._param, self._errors = "?", (sqlite3.Error,)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SQLITE + _STATEMENTS.format(blob="BLOB"))
        except (sqlite3.Error, OSError) as e:
            raise StorageError(f"{url}: cannot open the collector store: {e}") from e

    def put(self, device: str, seq: int, digest: bytes, cose: bytes, collector: str) -> bool:
        with self._lock:
            try:
                cur = self._db.execute(
                    _INSERT.format(p="?"), (device, seq, digest, cose, collector)
                )
            except sqlite3.OperationalError as e:  # locked, disk full: may pass later
                raise StoreUnavailable(f"{self.url}: cannot store {device} seq {seq}: {e}") from e
            except sqlite3.Error as e:
                raise StorageError(f"{self.url}: cannot store {device} seq {seq}: {e}") from e
            return bool(cur.rowcount == 1)


class _Postgres(_SqlStore):
    """``collected`` partitioned by month (:mod:`agent.audit.pgstore`); reconnects after
    a lost connection, on the next put."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._lock = threading.Lock()
        self._param, self._errors = "%s", (psycopg.Error,)
        self._months: set[Any] = set()  # partitions known to exist
        try:
            self._db: Any = psycopg.connect(url, autocommit=True, connect_timeout=5)
            with self._db.transaction():
                # One creator at a time: CREATE TABLE IF NOT EXISTS races on pg_type.
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (pgstore.LOCK_SCHEMA,))
                pgstore.create_schema(self._db)
                self._db.execute(_STATEMENTS.format(blob="BYTEA"))
        except psycopg.Error as e:
            raise StorageError(f"{redact(url)}: cannot open the collector store: {e}") from e

    def put(self, device: str, seq: int, digest: bytes, cose: bytes, collector: str) -> bool:
        import psycopg

        t = pgstore.claimed_window(cose)
        with self._lock:
            try:
                if self._db.closed:
                    self._db = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                if t is not None and pgstore.month_of(t) not in self._months:
                    with self._db.transaction():
                        pgstore.ensure_partition(self._db, pgstore.month_of(t))
                    self._months.add(pgstore.month_of(t))
                row = (device, seq, digest, cose, collector, t)
                try:
                    cur = self._db.execute(pgstore.INSERT, row)
                except psycopg.errors.CheckViolation:  # its month was dropped since: again
                    self._months.clear()
                    if t is not None:
                        with self._db.transaction():
                            pgstore.ensure_partition(self._db, pgstore.month_of(t))
                    cur = self._db.execute(pgstore.INSERT, row)
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                self._db.close()  # reconnect on the next put
                raise StoreUnavailable(
                    f"{redact(self.url)}: cannot store {device} seq {seq}: {e}"
                ) from e
            except self._errors as e:
                raise StorageError(
                    f"{redact(self.url)}: cannot store {device} seq {seq}: {e}"
                ) from e
            return bool(cur.rowcount == 1)


def open_db(url: str) -> EvidenceDB:
    """Open (and create) a collector store from a URL or a plain SQLite path."""
    if url.startswith(("postgresql://", "postgres://")):
        return _Postgres(url)
    if url.startswith("sqlite:///"):
        return _Sqlite(Path(url[len("sqlite://") :]), url)
    if "://" in url:
        raise StorageError(f"{url}: unsupported store URL (sqlite:///PATH or postgresql://...)")
    return _Sqlite(Path(url), url)


def read_messages(url: str) -> list[Message]:
    """Every message of a store, for ``audit verify --store``, read-only.

    A collector store (SQLite or PostgreSQL) gives each row with the topic's device (a
    ``REPLAY`` check) and the seq it was filed under (a label for a finding about a
    message that fails); a gateway's evidence store gives its attestations in seq order.

    Raises:
        StorageError: no store there (nothing is created), or not one of ours.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return _read_postgres(url)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite://") :])
    elif "://" in url:
        raise StorageError(f"{url}: unsupported store URL (sqlite:///PATH or postgresql://...)")
    else:
        path = Path(url)
    return read_only(path, "read the attestations", lambda db: _read_sqlite(db, url))


def store_kind(url: str) -> str:
    """``"collector"`` or ``"gateway"``: which kind of store ``url`` is, read-only.

    A PostgreSQL URL is always a collector's (gateways keep SQLite only).

    Raises:
        StorageError: no store there, or neither kind.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return "collector"
    path = Path(url[len("sqlite://") :]) if url.startswith("sqlite:///") else Path(url)

    def kind(db: sqlite3.Connection) -> str:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "collected" in tables:
            return "collector"
        if is_evidence_store(tables):
            return "gateway"
        raise StorageError(
            f"{url}: neither a collector store nor a gateway evidence store "
            f"(tables: {', '.join(sorted(tables)) or 'none'})"
        )

    return read_only(path, "read the store's tables", kind)


def _read_sqlite(db: sqlite3.Connection, url: str) -> list[Message]:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "collected" in tables:
        return [_collected(url, *row) for row in db.execute(_SELECT)]
    if is_evidence_store(tables):  # the gateway's own store (agent/evidence/store.py)
        origin, rows = stored_log(db)
        parts = (origin or "").split("/")  # edgegov/{device}/{hex}: names the log, signs nothing
        device = parts[1] if len(parts) == 3 else None
        return [
            Message(cose, f"{url}#seq={seq}", None, device, seq, "the evidence store row")
            for seq, cose in rows
        ]
    raise StorageError(
        f"{url}: neither a collector store nor a gateway evidence store "
        f"(tables: {', '.join(sorted(tables)) or 'none'})"
    )


def _collected(url: str, id_: int, device: str, seq: int, cose: bytes) -> Message:
    return Message(
        bytes(cose), f"{redact(url)}#{id_}", device, device, seq, "the collector's row (topic, seq)"
    )


def _read_postgres(url: str) -> list[Message]:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as db:
            if db.execute("SELECT to_regclass('collected')").fetchone()[0] is None:  # type: ignore[index]
                raise StorageError(f"{redact(url)}: no collector table there (nothing collected)")
            rows = db.execute(_SELECT).fetchall()
    except psycopg.Error as e:
        raise StorageError(f"{redact(url)}: cannot read the collector store: {e}") from e
    return [_collected(url, *row) for row in rows]


def iter_messages(url: str, batch: int = 2000) -> Iterator[Message]:
    """A PostgreSQL collector store's messages in (device, seq, arrival) order, fetched
    ``batch`` rows at a time by a server-side cursor: never the whole store in memory.

    Raises:
        StorageError: no collector table there, or the server fails mid-read.
    """
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as db:
            if db.execute("SELECT to_regclass('collected')").fetchone()[0] is None:  # type: ignore[index]
                raise StorageError(f"{redact(url)}: no collector table there (nothing collected)")
            with db.cursor(name="edgegov_verify") as cur:
                cur.itersize = batch
                cur.execute(_SELECT)
                for row in cur:
                    yield _collected(url, *row)
    except psycopg.Error as e:
        raise StorageError(f"{redact(url)}: cannot read the collector store: {e}") from e


def read_statements(url: str) -> list[tuple[bytes, str]]:
    """Every signed statement a collector store holds, as (bytes, where), read-only; none
    from a store without the table (a gateway's store, or one from before statements)."""
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        try:
            with psycopg.connect(url, connect_timeout=5) as db:
                if db.execute("SELECT to_regclass('statements')").fetchone()[0] is None:  # type: ignore[index]
                    return []
                rows = db.execute(_SELECT_STATEMENTS).fetchall()
        except psycopg.Error as e:
            raise StorageError(f"{redact(url)}: cannot read the collector store: {e}") from e
    else:
        path = Path(url[len("sqlite://") :]) if url.startswith("sqlite:///") else Path(url)

        def read(db: sqlite3.Connection) -> list[Any]:
            has = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'statements'"
            ).fetchone()
            return db.execute(_SELECT_STATEMENTS).fetchall() if has else []

        rows = read_only(path, "read the statements", read)
    return [
        (bytes(cose), f"{redact(url)}#{kind}/{device}/{bytes(digest).hex()[:16]}")
        for kind, device, digest, cose in rows
    ]
