"""The open window's journal: what an agent has received but not yet signed, kept in the
evidence store so that a restart is evidence and a crash loses as little as possible.

While a window is open the agent's main loop writes, every :data:`FLUSH_S` seconds, the
readings that arrived since the last write and, per source, a *mark*: the source's
quality record so far (counters, gap ranges, offline intervals not yet signed), the
device frame counter of the last frame it accounts for, and when the last reading was
received. The agent takes each mark with the source's ``stream_lock`` held and drains the
reading queue under the same lock, so a mark accounts for exactly the readings written
with it: every frame up to ``last_seq`` is in a signed or journaled record or count, none
after it is. One SQLite transaction per write, without fsync (``EvidenceStore.transact``):
a ``kill -9`` loses nothing already handed to the OS, a power cut at most the writes since
the last signed window (and the next start declares those frames like any others).

A signed window leaves the journal in the transaction that commits it (:meth:`Journal.
on_commit`). So at the next start (:meth:`Journal.begin`), after a crash, the journal holds
exactly what was received and never signed: those readings go into the first window and
its marks into the sources' first health records, and each framed source continues from
its mark's frame counter, so the first frame after the restart reveals how many frames
the device sent while no agent recorded (``frames_unrecorded``). The claim -70001/12
(:class:`agent.evidence.claims.Restart`) of the first attestation says all of it.

A clean stop (the last window signed) is marked in ``journal_run``; the next start clears
the mark, so a start that finds it cleared knows the run before it did not end cleanly.
Each commit also records the digest of the policy evaluator's state after the window it
signs, so a start can bring the saved policy state (``policy-state.bin``, a checkpoint
written just before some commits) to the state of the signed log
(:attr:`Recovered.signed_state`, ``agent.pipeline.policy_state``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.evidence.claims import Restart, SourceDowntime
from agent.evidence.store import EvidenceStore
from agent.sources.reading import Reading, ReadingBatch, reading_dtype

__all__ = ["FLUSH_S", "Journal", "Recovered", "SourceMark", "pack_readings", "unpack_readings"]

log = logging.getLogger("edgegov.agent")

#: How often the main loop writes the open window's new readings (seconds): at most this
#: much is received and not in the store when the agent is killed (framed sources count
#: those frames at the next start; text and Modbus sources say the time without data).
FLUSH_S = 0.5

# The journal's own tables, in the evidence store's database.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS journal (
        id INTEGER PRIMARY KEY,
        window_start_ms INTEGER NOT NULL,  -- the window the readings were received for
        readings BLOB NOT NULL             -- pack_readings()
    )""",
    """CREATE TABLE IF NOT EXISTS journal_sources (
        source TEXT PRIMARY KEY,           -- the source's name in the agent config
        protocol TEXT NOT NULL,
        last_seq INTEGER,                  -- device frame counter of the last frame accounted
        last_rx_ms INTEGER,                -- the last reading recorded (signed or journaled)
        signed_rx_ms INTEGER,              -- the last reading in a signed window
        pending TEXT                       -- JSON quality record not yet signed, or NULL
    )""",
    """CREATE TABLE IF NOT EXISTS journal_run (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        first_ms INTEGER NOT NULL,         -- when this log's journal began
        started_ms INTEGER NOT NULL,       -- the agent process running (or that ran last)
        clean_stop_ms INTEGER,             -- set at a clean stop, cleared at the next start
        layout TEXT NOT NULL,              -- JSON sources and channels the readings follow
        signed_state TEXT                  -- policy state digest after the last signed window
    )""",
)


def pack_readings(readings: Sequence[Reading], n_channels: int) -> bytes:
    """Readings as one blob: fixed-size little-endian rows (``reading_dtype``)."""
    return ReadingBatch.of(readings, n_channels).rows.tobytes()


def unpack_readings(blob: bytes, n_channels: int) -> ReadingBatch:
    """The readings :func:`pack_readings` packed; ValueError if the blob does not fit."""
    dt = reading_dtype(n_channels)
    if len(blob) % dt.itemsize:
        raise ValueError(f"a journal row of {len(blob)} bytes is not rows of {dt.itemsize}")
    return ReadingBatch(np.frombuffer(blob, dt).copy())


@dataclass(frozen=True)
class SourceMark:
    """What one source accounts for beyond the signed windows.

    ``last_seq``: the device frame counter of the last frame accounted for (framed
    sources; None if none yet). ``pending``: its quality record not yet in a signed
    window (None: everything it counted is signed).
    """

    source: str
    protocol: str
    last_seq: int | None
    pending: Mapping[str, Any] | None


@dataclass(frozen=True)
class Recovered:
    """What :meth:`Journal.begin` found: the restart claim, the readings to sign in the
    first window, and each source's mark (by name) to continue from."""

    restart: Restart
    readings: Sequence[Reading]
    marks: dict[str, SourceMark]
    signed_state: str | None = None  # policy state digest after the last signed window


def last_rx_by_source(readings: Sequence[Reading], n_sources: int) -> list[int | None]:
    """The received time of each source's last reading in ``readings`` (None: none)."""
    out: list[int | None] = [None] * n_sources
    if isinstance(readings, ReadingBatch):
        src, rx = readings.source, readings.received_ms
        for i in np.unique(src).tolist():
            if i < n_sources:
                out[i] = int(rx[np.flatnonzero(src == i)[-1]])
        return out
    missing = n_sources
    for r in reversed(readings):
        if r.source < n_sources and out[r.source] is None:
            out[r.source] = r.received_ms
            missing -= 1
            if not missing:
                break
    return out


class Journal:
    """The journal of one agent process, for its configured sources and policy channels.

    Args:
        store: the evidence store (the journal's tables live in its database).
        sources: ``(name, protocol)`` of each configured source, in config order.
        channels: the policy's channel names (the readings' value order).
    """

    def __init__(
        self, store: EvidenceStore, sources: Sequence[tuple[str, str]], channels: Sequence[str]
    ) -> None:
        self.store = store
        self.sources = [(name, protocol) for name, protocol in sources]
        self.n_channels = len(channels)
        self.layout = json.dumps({"sources": self.sources, "channels": list(channels)})

    def begin(
        self, started_ms: int, held: tuple[int, Mapping[str, int]] | None = None
    ) -> Recovered:
        """Read what the run before left, then mark this run as started (not clean).

        Returns the restart claim for this process's first attestation and what to
        continue from. A journal written for other sources or channels (the config
        changed across a crash) cannot be put into this run's windows: its readings, and
        the records and frame counters that count them, are dropped, logged, and the
        readings declared not recorded (count unknown).

        ``held``: the end of the last window the caller signs from ``agent.pipeline.held_windows``
        before anything else, and the last reading of each source (by name) in those
        windows. A journal its writer could not mark at its stop (the store refused that
        too) and that began before that end is superseded by them, and dropped the same
        way: the frames between the last the held windows count and the first after this
        start cannot be counted (``last_frame_seq`` null).

        Raises:
            StorageError: the store could not be read or written.
        """
        s = self.store

        def read(db: sqlite3.Connection) -> tuple[Any, list[Any], list[Any]]:
            for stmt in _SCHEMA:
                db.execute(stmt)
            if s.new_log:  # nothing before this log continues into it
                for table in ("journal", "journal_sources", "journal_run"):
                    db.execute(f"DELETE FROM {table}")
            run = db.execute(
                "SELECT first_ms, clean_stop_ms, layout, started_ms, signed_state FROM journal_run"
            ).fetchone()
            rows = db.execute("SELECT readings FROM journal ORDER BY id").fetchall()
            stored = db.execute(
                "SELECT source, protocol, last_seq, last_rx_ms, signed_rx_ms, pending "
                "FROM journal_sources"
            ).fetchall()
            return run, rows, stored

        run, rows, stored = s.transact("read the journal of the last run", read)
        if s.new_log:
            # A first start has nothing before it; a new log beside an earlier log's
            # state cannot know how that one ended (the store names it: new_log_reason).
            clean = s.new_log_reason is None
            restart = Restart(
                started_ms, None, clean, (), 0, 0 if clean else None,
                s.new_log_reason, s.previous_log,
            )  # fmt: skip
            self._start(started_ms, started_ms, drop=False)
            return Recovered(restart, [], {})
        clean = run is not None and run[1] is not None  # not known (no journal yet): False
        drop = False
        if held is not None and run is not None and not clean and run[3] < held[0]:
            drop = True
            log.warning(
                "the journal of the last run could not be marked at its stop; the windows it "
                "held are signed from the held-windows file instead, and the frames sent "
                "between their end and this start cannot be counted"
            )
        elif rows and (run is None or run[2] != self.layout):
            drop = True
            log.warning(
                "the journal of the last run holds %d batch(es) of readings received for "
                "other sources or channels than configured now; they cannot be signed in "
                "this log and are declared not recorded",
                len(rows),
            )
        readings = ReadingBatch.concat(
            [] if drop else [unpack_readings(bytes(blob), self.n_channels) for (blob,) in rows],
            self.n_channels,
        )
        first_ms = run[0] if run is not None else started_ms
        by_name = {row[0]: row for row in stored}
        marks: dict[str, SourceMark] = {}
        downtime = []
        for name, protocol in self.sources:
            row = by_name.get(name)
            if row is not None and row[1] != protocol:
                row = None  # another kind of source under that name: nothing carries over
            recorded = [] if row is None else [row[4] if drop else row[3]]
            if held is not None:
                recorded.append(held[1].get(name))
            since = max((t for t in recorded if t is not None), default=first_ms)
            seq = None
            if row is not None and not drop:
                seq = row[2] if protocol == "framed" else None
                marks[name] = SourceMark(name, protocol, row[2], json.loads(row[5] or "null"))
            downtime.append(SourceDowntime(name, max(0, started_ms - since), seq))
        restart = Restart(
            started_ms=started_ms,
            last_end_ms=s.last_window_end(),
            clean=clean,
            sources=tuple(downtime),
            recovered_readings=len(readings),
            unrecorded_readings=0 if clean and not drop else None,
            new_log=s.new_log_reason,
            previous_log=s.previous_log,
        )
        self._start(first_ms, started_ms, drop=drop)
        return Recovered(restart, readings, marks, run[4] if run is not None else None)

    def _start(self, first_ms: int, started_ms: int, *, drop: bool) -> None:
        def work(db: sqlite3.Connection) -> None:
            if drop:  # and what was counted with them
                db.execute("DELETE FROM journal")
                db.execute("UPDATE journal_sources SET last_seq = NULL, pending = NULL")
            db.execute(
                "INSERT INTO journal_run (id, first_ms, started_ms, layout) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET started_ms = excluded.started_ms, "
                "clean_stop_ms = NULL, layout = excluded.layout",
                (first_ms, started_ms, self.layout),
            )

        self.store.transact("start the journal of this run", work)

    def write(
        self, rows: Sequence[tuple[int, Sequence[Reading]]], marks: Sequence[SourceMark]
    ) -> None:
        """Journal ``rows`` (``(window start ms, readings)``) and the sources' marks (one per
        configured source, in config order), in one transaction without fsync.

        Raises:
            StorageError: it could not be written (nothing was).
        """
        self.store.transact("journal the open window", self._writer(rows, marks), durable=False)

    def on_commit(
        self,
        signed_before_ms: int,
        signed: Sequence[Reading],
        marks: Sequence[SourceMark] | None,
        carry: tuple[int, Sequence[Reading]] | None = None,
        state_after: str | None = None,
    ) -> Callable[[sqlite3.Connection], None]:
        """The journal's part of the commit that signs the window ending at
        ``signed_before_ms`` with the readings ``signed`` (for ``EvidenceStore.commit(
        also=...)``): the window leaves the journal, the marks say what is accounted for
        now (None: leave them), ``carry`` (readings received for the next window before
        this one was closed, counted in its records) goes in, and ``state_after`` is the
        policy state digest after the window (None: not known)."""
        write = (
            self._writer([carry] if carry is not None else [], marks, signed)
            if marks is not None
            else None
        )

        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM journal WHERE window_start_ms < ?", (signed_before_ms,))
            if write is not None:
                write(db)
            db.execute("UPDATE journal_run SET signed_state = ?", (state_after,))

        return work

    def clean_stop(self, at_ms: int, marks: Sequence[SourceMark]) -> None:
        """The agent stops with everything it received signed, or saved with the windows
        the store refused (``agent.pipeline.held_windows``, which the next start signs): nothing is
        left in the journal, ``marks`` say up to where, and the next start is told."""
        write = self._writer([], marks)

        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM journal")
            write(db)
            db.execute("UPDATE journal_run SET clean_stop_ms = ?", (at_ms,))

        self.store.transact("mark a clean stop", work)

    def _writer(
        self,
        rows: Sequence[tuple[int, Sequence[Reading]]],
        marks: Sequence[SourceMark],
        signed: Sequence[Reading] = (),
    ) -> Callable[[sqlite3.Connection], None]:
        """The statements writing ``rows`` and ``marks`` (each source's last reading, signed
        or journaled, from ``signed`` and ``rows``), as one function of a connection."""
        n = len(self.sources)
        blobs = [(start, pack_readings(rs, self.n_channels)) for start, rs in rows if rs]
        signed_rx = last_rx_by_source(signed, n)
        last_rx = list(signed_rx)
        for _, rs in rows:  # in order: each later batch is newer
            for i, rx in enumerate(last_rx_by_source(rs, n)):
                last_rx[i] = rx if rx is not None else last_rx[i]
        params = [
            (
                m.source,
                m.protocol,
                m.last_seq,
                last_rx[i],
                signed_rx[i],
                json.dumps(m.pending, separators=(",", ":")) if m.pending is not None else None,
            )
            for i, m in enumerate(marks)
        ]

        def work(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO journal (window_start_ms, readings) VALUES (?, ?)", blobs)
            db.executemany(
                "INSERT INTO journal_sources VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source) DO "
                "UPDATE SET protocol = excluded.protocol, "
                "last_seq = COALESCE(excluded.last_seq, last_seq), "
                "last_rx_ms = COALESCE(excluded.last_rx_ms, last_rx_ms), "
                "signed_rx_ms = COALESCE(excluded.signed_rx_ms, signed_rx_ms), "
                "pending = excluded.pending",
                params,
            )

        return work
