"""PostgreSQL for a fleet's years (issue 17): monthly partitions, migration, retention,
streamed verification, and a PostgreSQL restart during collection. Real PostgreSQL, real
Mosquitto, real signatures."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
import tracemalloc
from datetime import date
from pathlib import Path

import psycopg
import pytest

from agent.audit.collector import StoreCollector
from agent.audit.evidence_db import iter_messages, open_db, read_messages
from agent.audit.pgstore import cutoff, partitions, retention
from agent.audit.verify import verify_messages
from agent.audit.verify_stream import verify_stream
from agent.errors import Error
from agent.tools.broker import free_port
from tests.evidence_util import make_stream
from tests.test_collect import _publish, _wait
from tests.test_collect import pg_url as pg_url  # a fixture

MONTH_MS = 31 * 86400 * 1000
T0 = 1_700_000_000_000  # 2023-11-14


def _put_all(url: str, items: list[tuple[str, bytes]]) -> None:
    db = open_db(url)
    try:
        for i, (dev, m) in enumerate(items):
            db.put(dev, i, hashlib.sha256(m).digest(), m, "test")
    finally:
        db.close()


def _where(url: str) -> dict[str, int]:
    with psycopg.connect(url) as c:
        rows = c.execute("SELECT tableoid::regclass::text, count(*) FROM collected GROUP BY 1")
        return dict(rows.fetchall())


def test_rows_go_to_monthly_partitions_once_and_unreadable_ones_to_default(
    pg_url, tmp_path, signer
):
    msgs = [
        m
        for k in range(3)  # three months, 2023-11 .. 2024-01
        for m in make_stream(
            tmp_path / f"{k}.sqlite", signer, windows=2, start_ms=T0 + k * MONTH_MS
        )
    ]
    db = open_db(pg_url)
    try:
        stored = [db.put("gw-1", i, hashlib.sha256(m).digest(), m, "c") for i, m in enumerate(msgs)]
        again = [db.put("gw-1", i, hashlib.sha256(m).digest(), m, "c") for i, m in enumerate(msgs)]
        junk = [db.put("gw-1", 99, b"\x00" * 32, b"not cose", "c") for _ in range(2)]
    finally:
        db.close()
    assert stored == [True] * 6 and again == [False] * 6 and junk == [True, False]
    assert _where(pg_url) == {
        "collected_y2023m11": 2,
        "collected_y2023m12": 2,
        "collected_y2024m01": 2,
        "collected_default": 1,
    }
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT relkind FROM pg_class WHERE relname = 'collected'").fetchone()[
            0
        ] in ("p",)
        plan = "\n".join(
            r[0]
            for r in c.execute(
                "EXPLAIN SELECT * FROM collected WHERE device = 'gw-1' AND seq = 3"
            ).fetchall()
        )
    assert "Index" in plan, plan  # (device, seq) leads the unique index


def test_an_unpartitioned_table_of_an_earlier_version_is_migrated_once(pg_url, tmp_path, signer):
    msgs = make_stream(tmp_path / "a.sqlite", signer, windows=4)
    with psycopg.connect(pg_url, autocommit=True) as c:  # the schema before issue 17
        c.execute(
            "CREATE TABLE collected (id BIGSERIAL PRIMARY KEY, device TEXT NOT NULL, "
            "seq BIGINT NOT NULL, digest BYTEA NOT NULL, cose BYTEA NOT NULL, "
            "collector TEXT NOT NULL, received_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "UNIQUE (device, seq, digest))"
        )
        for i, m in enumerate(msgs):
            c.execute(
                "INSERT INTO collected (device, seq, digest, cose, collector) "
                "VALUES (%s, %s, %s, %s, 'old')",
                ("gw-1", i, hashlib.sha256(m).digest(), m),
            )
        before = c.execute("SELECT id, received_at FROM collected ORDER BY id").fetchall()
    open_db(pg_url).close()
    open_db(pg_url).close()  # the second open finds it partitioned: nothing to do
    with psycopg.connect(pg_url) as c:
        after = c.execute("SELECT id, received_at FROM collected ORDER BY id").fetchall()
    assert after == before
    assert _where(pg_url) == {"collected_y2023m11": 4}
    db = open_db(pg_url)  # ids go on from the old sequence; the old rows are still unique
    try:
        assert db.put("gw-1", 0, hashlib.sha256(msgs[0]).digest(), msgs[0], "new") is False
        extra = make_stream(tmp_path / "b.sqlite", signer, device="gw-2", windows=1)[0]
        assert db.put("gw-2", 0, hashlib.sha256(extra).digest(), extra, "new") is True
    finally:
        db.close()
    with psycopg.connect(pg_url) as c:
        new = c.execute("SELECT id FROM collected WHERE device = 'gw-2'").fetchone()[0]
    assert new > before[-1][0]  # (the conflicting insert took a number too)


def test_retention_drops_whole_old_partitions_and_refuses_the_current_month(
    pg_url, tmp_path, signer
):
    msgs = [
        m
        for k in range(3)
        for m in make_stream(
            tmp_path / f"{k}.sqlite", signer, windows=2, start_ms=T0 + k * MONTH_MS
        )
    ]
    _put_all(pg_url, [("gw-1", m) for m in msgs])
    # as if received then: a month whose rows arrived after the cutoff is kept (clock behind)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("UPDATE collected SET received_at = window_start + interval '1 minute'")
        c.execute(
            "UPDATE collected SET received_at = now() WHERE tableoid = "
            "'collected_y2023m12'::regclass"
        )
    dropped, held = retention(pg_url, date(2024, 1, 1), dry_run=True)
    assert [p.name for p in dropped] == ["collected_y2023m11"]
    assert _where(pg_url)["collected_y2023m11"] == 2  # a dry run drops nothing
    dropped, held = retention(pg_url, date(2024, 1, 1))
    assert [(p.name, p.rows) for p in dropped] == [("collected_y2023m11", 2)]
    assert len(held) == 1 and held[0].startswith("collected_y2023m12: kept")
    with psycopg.connect(pg_url) as c:
        names = [p.name for p in partitions(c)]
    assert names == ["collected_y2023m12", "collected_y2024m01"]
    # a message of a dropped month delivered again: its partition is made again
    _put_all(pg_url, [("gw-1", msgs[0])])
    assert _where(pg_url)["collected_y2023m11"] == 1
    today = date(2026, 5, 17)
    assert cutoff("24M", None, today) == date(2024, 5, 1)
    assert cutoff("2Y", None, today) == date(2024, 5, 1)
    assert cutoff(None, "2026-05-01", today) == cutoff("0M", None, today) == date(2026, 5, 1)
    for keep, before in ((None, "2026-05-02"), (None, "2027-01-01")):
        with pytest.raises(Error, match="current month"):
            cutoff(keep, before, today)


def test_retention_command_prints_what_it_dropped(pg_url, tmp_path, signer):
    msgs = make_stream(tmp_path / "a.sqlite", signer, windows=3)
    _put_all(pg_url, [("gw-1", m) for m in msgs])
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("UPDATE collected SET received_at = window_start")
    edgegov = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "edgegov"
    edgegov = edgegov if edgegov.exists() else Path(".venv/bin/edgegov")
    out = subprocess.run(
        [str(edgegov), "audit", "retention", "--store", pg_url, "--keep", "24M"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "dropped collected_y2023m11 (2023-11): 3 rows" in out.stdout
    assert "dropped 1 partitions, 3 rows" in out.stdout
    refused = subprocess.run(
        [str(edgegov), "audit", "retention", "--store", pg_url, "--before", "2999-01-01"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "current month" in refused.stderr


def test_streamed_verify_gives_the_same_result_as_in_memory_with_a_gap_and_a_duplicate(
    pg_url, tmp_path, signer
):
    from agent.identity.keys import generate_key

    other = generate_key(tmp_path / "b.key")
    a = make_stream(tmp_path / "a.sqlite", signer, device="gw-1", windows=8)
    b = make_stream(tmp_path / "b.sqlite", other, device="gw-2", windows=6)
    items = [("gw-1", m) for i, m in enumerate(a) if i != 4]  # a gap: seq 4 missing
    items += [("gw-2", m) for m in b] + [("gw-2", a[1])]  # a replay of gw-1's into gw-2
    items += [("gw-3", b"not cose at all")]
    db = open_db(pg_url)
    try:
        for i, (dev, m) in enumerate(items):
            db.put(dev, i, hashlib.sha256(m).digest(), m, "c")
        db.put("gw-1", 2, b"\x01" * 32, a[2], "c")  # a byte-identical copy (a duplicate row)
    finally:
        db.close()
    keys = [signer.public, other.public]
    mem = verify_messages(read_messages(pg_url), keys)
    streamed = verify_stream(iter_messages(pg_url, batch=3), verify_stream_trust(keys))
    assert [str(f) for f in streamed.findings] == [str(f) for f in mem.findings]
    assert {f.code for f in mem.findings} >= {"CHAIN_GAP", "REPLAY", "INVALID"}
    assert (streamed.files, streamed.verified, streamed.redelivered, streamed.ok) == (
        mem.files,
        mem.verified,
        mem.redelivered,
        mem.ok,
    )
    assert mem.redelivered == 1
    assert [(x.origin, len(x.evidence)) for x in streamed.logs] == [
        (x.origin, len(x.evidence)) for x in mem.logs
    ]
    assert streamed.to_json() == mem.to_json()


def verify_stream_trust(keys):
    from agent.audit.verify import _as_trust

    return _as_trust(keys)


def test_streamed_verify_holds_a_batch_not_the_store(pg_url, tmp_path):
    """Many devices' attestations: the memory verify needs beyond its result is a
    device's stream and a batch, well below the bytes stored; in memory it is more."""
    from agent.identity.keys import generate_key

    items, keys = [], []
    for d in range(40):
        k = generate_key(tmp_path / f"{d}.key")
        keys.append(k.public)
        items += [
            (f"gw-{d:02d}", m)
            for m in make_stream(tmp_path / f"{d}.sqlite", k, device=f"gw-{d:02d}", windows=25)
        ]
    _put_all(pg_url, items)
    stored = sum(len(m) for _, m in items)
    trust = verify_stream_trust(keys)

    def overhead(run):
        tracemalloc.start()
        try:
            res = run()
            kept, peak = tracemalloc.get_traced_memory()  # kept: the result (its evidence)
        finally:
            tracemalloc.stop()
        return res, peak - kept

    streamed, s_over = overhead(lambda: verify_stream(iter_messages(pg_url, batch=100), trust))
    mem, m_over = overhead(lambda: verify_messages(read_messages(pg_url), trust))
    assert streamed.ok and mem.ok and streamed.to_json() == mem.to_json()
    assert s_over < stored / 4, (s_over, stored)
    assert m_over > stored, (m_over, stored)  # the measure can tell the difference
    print(f"stored {stored} B; beyond the result: streamed {s_over} B, in memory {m_over} B")


# -- a PostgreSQL restart during collection -------------------------------------------------
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """A PostgreSQL of the test's own (initdb as the postgres user: initdb refuses root)."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.fail(f"{PG_BIN}/initdb is missing (apt-get install postgresql-15)")
        self.dir = Path(tempfile.mkdtemp(prefix="edgegov-pg-"))  # not under root's 0700 tmp
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(PG_BIN / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql://postgres:s3cret@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.dir / "data"), str(self.dir / "log")
        self._run("pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_pg():
    pg = OwnPostgres()
    pg.start()
    yield pg
    pg.remove()


def test_a_postgresql_restart_during_collection_loses_nothing(
    own_pg, broker, tmp_path, signer, caplog
):
    msgs = make_stream(tmp_path / "a.sqlite", signer, windows=60, per_window=2)
    col = StoreCollector(broker.url, own_pg.url, fleet="f")
    col.start()
    caplog.set_level(logging.WARNING, logger="edgegov.collector")
    try:
        _publish(broker.url, [("gw-1", m) for m in msgs[:20]])
        _wait(lambda: col.received == 20)
        own_pg.stop()
        _publish(broker.url, [("gw-1", m) for m in msgs[20:40]])  # while it is down
        _wait(lambda: len(col.errors) == 1 and len(col._waiting) >= 1)
        own_pg.start()
        _publish(broker.url, [("gw-1", m) for m in msgs[40:]])
        _publish(broker.url, [("gw-1", m) for m in msgs[30:35]])  # redelivered: once each
        _wait(lambda: col.received == 65, timeout=30)
    finally:
        col.stop()
    with psycopg.connect(own_pg.url) as c:
        rows = c.execute("SELECT seq, count(*) FROM collected GROUP BY seq ORDER BY seq")
        assert rows.fetchall() == [(i, 1) for i in range(60)]
    outage = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage) == 1, outage  # once per outage
    assert "postgres:***@127.0.0.1" in outage[0] and "s3cret" not in caplog.text
    assert any("is back after" in r.getMessage() for r in caplog.records)
    res = verify_stream(iter_messages(own_pg.url), verify_stream_trust([signer.public]))
    assert res.ok and res.verified == 60 and not res.findings


def test_collector_insert_rate_and_verify_stream_rate(pg_url, tmp_path, signer):
    """The figures for docs/scaling.md, "PostgreSQL for a fleet's years" (printed; asserted
    only to be sane)."""
    msgs = make_stream(tmp_path / "a.sqlite", signer, windows=1500, per_window=3)
    db = open_db(pg_url)
    t0 = time.perf_counter()
    try:
        for i, m in enumerate(msgs):
            db.put("gw-1", i, hashlib.sha256(m).digest(), m, "c")
    finally:
        db.close()
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_messages(pg_url))
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = verify_stream(iter_messages(pg_url), verify_stream_trust([signer.public]))
    verify_s = time.perf_counter() - t0
    assert n == len(msgs) and res.ok and res.verified == len(msgs)
    print(
        f"\n{len(msgs)} rows: put {len(msgs) / put_s:.0f}/s, stream read {n / read_s:.0f}/s, "
        f"streamed verify {n / verify_s:.0f}/s"
    )
