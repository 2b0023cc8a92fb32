"""PostgreSQL collector storage for a fleet's years: monthly partitions, retention.

``collected`` is partitioned by RANGE on ``window_start``: the start of the attestation
window the payload *claims* (unverified), one partition per UTC month
(``collected_y2026m03``), created on demand before the first insert into it, under an
advisory lock so that concurrent collectors cannot race on it. Why the claimed window and
not ``received_at``:

* it is a function of the bytes, so the idempotency key can include the partition key
  without weakening it: ``UNIQUE NULLS NOT DISTINCT (device, seq, digest, window_start)``
  is exactly ``UNIQUE (device, seq, digest)`` (same bytes, same digest, same claimed
  window). A redelivery weeks later, or a second collector, lands on the same row. With
  ``received_at`` the same message received in two months would be two rows, or need a
  dedup table that grows forever;
* retention is about the period the evidence covers ("keep 24 months of evidence").

The collector does not verify, so the claimed time is only a filing label, and a device
clock can be wrong. Hence: a payload without a readable window, one before 2000-01-01
(a clock never set) or more than 31 days ahead of the collector's clock goes to the
``collected_default`` partition (``window_start`` NULL, which retention never drops);
and retention drops a month only when the rows in it were also *received* before the
cutoff (``received_at``, indexed), so a device whose clock lags cannot have its fresh
evidence dropped. (One edge: the same bytes claiming a time more than 31 days ahead,
delivered once before and once after the collector's clock caught up, are two rows, one
in ``collected_default``; ``audit verify`` counts a byte-identical copy as redelivered,
no finding.)

Indexes: the unique constraint leads with (device, seq), the order ``audit verify``
streams in; ``received_at`` for time. A table from before partitioning (``collected``
unpartitioned, BIGSERIAL id) is migrated once, in one transaction, keeping ids and
arrival times. ``edgegov audit retention`` drops whole partitions (``DROP TABLE``), never
rows one by one, and refuses the current month or a later one.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import cbor2

from agent.errors import Error, StorageError
from agent.logs import redact

UTC = timezone.utc

__all__ = ["Partition", "add_command", "claimed_window", "create_schema", "retention"]

LOCK_SCHEMA = 70001  # creating or migrating the tables (agent.audit.evidence_db)
LOCK_PARTITIONS = 70002  # creating or dropping a month's partition
FLOOR = datetime(2000, 1, 1, tzinfo=UTC)  # earlier: a device clock never set
AHEAD = timedelta(days=31)  # later than the collector's clock plus this: not filed by month

_TABLE = """
CREATE SEQUENCE IF NOT EXISTS collected_id_seq;
CREATE TABLE collected (
    id BIGINT NOT NULL DEFAULT nextval('collected_id_seq'),
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    digest BYTEA NOT NULL,
    cose BYTEA NOT NULL,
    collector TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    window_start TIMESTAMPTZ,
    CONSTRAINT collected_once UNIQUE NULLS NOT DISTINCT (device, seq, digest, window_start)
) PARTITION BY RANGE (window_start);
CREATE INDEX collected_received ON collected (received_at);
CREATE TABLE collected_default PARTITION OF collected (
    CONSTRAINT collected_default_unfiled CHECK (window_start IS NULL)
) DEFAULT;
"""
INSERT = (
    "INSERT INTO collected (device, seq, digest, cose, collector, window_start) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_NAME = re.compile(r"^collected_y(\d{4})m(\d{2})$")


def claimed_window(cose: bytes, received: datetime | None = None) -> datetime | None:
    """The window start a message claims, as its partition key; None (the default
    partition) if unreadable, before :data:`FLOOR`, or beyond ``received`` + :data:`AHEAD`."""
    from agent.evidence.claims import EDGEGOV, WINDOW
    from agent.evidence.cose import decode_sign1

    try:
        ms = decode_sign1(cose).claims()[EDGEGOV][WINDOW][0]
    except (Error, KeyError, TypeError, IndexError, ValueError, cbor2.CBORDecodeError):
        return None
    if type(ms) is not int:
        return None
    try:
        t = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    if t < FLOOR or t > (received or datetime.now(UTC)) + AHEAD:
        return None
    return t


def month_of(t: datetime) -> date:
    return date(t.year, t.month, 1)


def _next(m: date) -> date:
    return date(m.year + m.month // 12, m.month % 12 + 1, 1)


def _name(m: date) -> str:
    return f"collected_y{m.year:04d}m{m.month:02d}"


def ensure_partition(db: Any, m: date) -> None:
    """Create month ``m``'s partition unless it exists (in the caller's transaction)."""
    db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_PARTITIONS,))
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {_name(m)} PARTITION OF collected "
        f"FOR VALUES FROM ('{m.isoformat()} 00:00+00') TO ('{_next(m).isoformat()} 00:00+00')"
    )


def create_schema(db: Any) -> None:
    """The partitioned ``collected`` (migrating an unpartitioned one); in the caller's
    transaction, which holds :data:`LOCK_SCHEMA`."""
    row = db.execute(
        "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass('collected')"
    ).fetchone()
    if row is None:
        db.execute(_TABLE)
    elif row[0] == "r":
        _migrate(db)


def _migrate(db: Any) -> None:
    """Copy an unpartitioned ``collected`` (ids, arrival times) into the partitioned one."""
    db.execute("ALTER TABLE collected RENAME TO collected_unpartitioned")
    # BIGSERIAL's sequence belongs to the old table: keep it, so that ids go on from there
    db.execute("ALTER SEQUENCE IF EXISTS collected_id_seq OWNED BY NONE")
    db.execute(_TABLE)
    made: set[date] = set()
    with db.cursor(name="edgegov_migrate") as cur:
        cur.itersize = 2000
        cur.execute(
            "SELECT id, device, seq, digest, cose, collector, received_at "
            "FROM collected_unpartitioned ORDER BY id"
        )
        while rows := cur.fetchmany(2000):
            out = []
            for id_, device, seq, digest, cose, collector, received in rows:
                t = claimed_window(bytes(cose), received)
                if t is not None and month_of(t) not in made:
                    ensure_partition(db, month_of(t))
                    made.add(month_of(t))
                out.append((id_, device, seq, digest, cose, collector, received, t))
            with db.cursor() as w:
                w.executemany(
                    "INSERT INTO collected (id, device, seq, digest, cose, collector, "
                    "received_at, window_start) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    out,
                )
    db.execute("DROP TABLE collected_unpartitioned")


@dataclass(frozen=True)
class Partition:
    name: str
    month: date
    rows: int
    last_received: datetime | None


def partitions(db: Any) -> list[Partition]:
    """The monthly partitions of ``collected``, oldest first, with rows and last arrival."""
    names = [
        r[0]
        for r in db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('collected')"
        )
    ]
    out = []
    for name in names:
        m = _NAME.match(name)
        if m is None:
            continue
        rows, last = db.execute(f"SELECT count(*), max(received_at) FROM {name}").fetchone()
        out.append(Partition(name, date(int(m[1]), int(m[2]), 1), int(rows), last))
    return sorted(out, key=lambda p: p.month)


def cutoff(keep: str | None, before: str | None, today: date) -> date:
    """The first day kept: ``--keep 24M`` / ``2Y`` (months before the current month's
    start) or ``--before YYYY-MM-DD``. Raises Error for the current month or a later one."""
    this = date(today.year, today.month, 1)
    if keep is not None:
        m = re.fullmatch(r"(\d+)([MY])", keep.strip().upper())
        if m is None:
            raise Error(f"--keep {keep}: give months or years, e.g. 24M or 2Y")
        months = int(m[1]) * (12 if m[2] == "Y" else 1)
        k = this.year * 12 + this.month - 1 - months
        cut = date(k // 12, k % 12 + 1, 1)
    elif before is not None:
        try:
            cut = date.fromisoformat(before)
        except ValueError as e:
            raise Error(f"--before {before}: not a date (YYYY-MM-DD)") from e
    else:
        raise Error("give --keep (e.g. 24M) or --before YYYY-MM-DD")
    if cut > this:
        raise Error(
            f"refusing: that would drop the current month ({this:%Y-%m}) or a later one; "
            f"the latest cutoff is {this.isoformat()}"
        )
    return cut


def retention(url: str, cut: date, dry_run: bool = False) -> tuple[list[Partition], list[str]]:
    """Drop every month partition that ends on or before ``cut`` and whose rows all
    arrived before it. Returns (dropped, why others that end before it were kept)."""
    import psycopg

    cut_t = datetime(cut.year, cut.month, cut.day, tzinfo=UTC)
    dropped: list[Partition] = []
    held: list[str] = []
    try:
        with psycopg.connect(url, connect_timeout=5) as db, db.transaction():
            if db.execute("SELECT to_regclass('collected')").fetchone()[0] is None:  # type: ignore[index]
                raise StorageError(f"{redact(url)}: no collector table there")
            db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_PARTITIONS,))
            for p in partitions(db):
                if _next(p.month) > cut:
                    continue
                if p.last_received is not None and p.last_received >= cut_t:
                    held.append(
                        f"{p.name}: kept, a row arrived {p.last_received:%Y-%m-%d} (after the "
                        "cutoff: a device clock behind?)"
                    )
                    continue
                if not dry_run:
                    db.execute(f"DROP TABLE {p.name}")
                dropped.append(p)
    except psycopg.Error as e:
        raise StorageError(f"{redact(url)}: retention failed: {e}") from e
    return dropped, held


def _retention(a: argparse.Namespace) -> int:
    if not a.store.startswith(("postgresql://", "postgres://")):
        raise Error(f"{a.store}: retention drops PostgreSQL partitions (postgresql://...)")
    cut = cutoff(a.keep, a.before, datetime.now(UTC).date())
    t0 = time.monotonic()
    dropped, held = retention(a.store, cut, a.dry_run)
    verb = "would drop" if a.dry_run else "dropped"
    for p in dropped:
        print(f"{verb} {p.name} ({p.month:%Y-%m}): {p.rows} rows")
    for h in held:
        print(h)
    rows = sum(p.rows for p in dropped)
    print(
        f"{verb} {len(dropped)} partitions, {rows} rows, before {cut.isoformat()} "
        f"({time.monotonic() - t0:.2f} s)"
    )
    return 0


def add_command(
    asub: argparse._SubParsersAction[argparse.ArgumentParser],
    cmd: Callable[..., argparse.ArgumentParser],
) -> None:
    """Register ``edgegov audit retention``."""
    r = cmd(
        "retention",
        _retention,
        "drop a PostgreSQL collector store's monthly partitions older than --keep or "
        "--before (whole partitions; never the current month)",
        "edgegov audit retention --store postgresql://db/audit --keep 24M",
        asub,
    )
    r.add_argument("--store", required=True, help="postgresql:// URL of a collector store")
    when = r.add_mutually_exclusive_group(required=True)
    when.add_argument("--keep", help="months (24M) or years (7Y) to keep before this month")
    when.add_argument("--before", help="drop months that end on or before this date")
    r.add_argument("--dry-run", action="store_true", help="say what would be dropped")
