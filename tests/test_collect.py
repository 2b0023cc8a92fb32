"""`audit collect`: a real Mosquitto, SQLite and a real PostgreSQL, shared subscriptions."""

from __future__ import annotations

import secrets
import time

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.audit.collector import FileCollector, StoreCollector
from agent.audit.evidence_db import open_db
from agent.audit.verify import verify_messages
from tests.evidence_util import make_stream

PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url():
    """A fresh schema in the real PostgreSQL (trust auth, database test)."""
    schema = f"edgegov_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG, autocommit=True, connect_timeout=5) as c:
            c.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {PG}: {e}")
    yield f"{PG}?options=-csearch_path%3D{schema}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f"DROP SCHEMA {schema} CASCADE")


def _publish(url: str, items: list[tuple[str, bytes]]) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(host, int(port))
    c.loop_start()
    try:
        for device, payload in items:
            c.publish(f"edgegov/f/{device}/attestation", payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def _wait(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the collectors")


@pytest.fixture
def streams(tmp_path, signer):
    from agent.identity.keys import generate_key

    other = generate_key(tmp_path / "b.key")
    a = make_stream(tmp_path / "a.sqlite", signer, device="gw-1", windows=12, per_window=3)
    b = make_stream(tmp_path / "b.sqlite", other, device="gw-2", windows=12, per_window=3)
    return [("gw-1", m) for m in a] + [("gw-2", m) for m in b], [signer.public, other.public]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_collectors_on_a_shared_subscription_store_each_attestation_once(
    broker, tmp_path, streams, backend, request
):
    items, keys = streams
    url = str(tmp_path / "c.sqlite") if backend == "sqlite" else request.getfixturevalue("pg_url")
    cols = [StoreCollector(broker.url, url, fleet="f", share="auditors") for _ in range(2)]
    for c in cols:
        c.start()
    try:
        _publish(broker.url, items)
        _publish(broker.url, items[:5])  # redelivered: stored again? no, idempotent
        _wait(lambda: sum(c.received for c in cols) >= len(items) + 5)
    finally:
        for c in cols:
            c.stop()
    # The broker split the load (each collector got a share) ...
    assert all(c.received > 0 for c in cols), [c.received for c in cols]
    assert sum(c.received for c in cols) == len(items) + 5  # each message to one member
    db = open_db(url)
    try:
        assert db.count() == len(items)  # ... and together they stored each one once
        res = verify_messages(list(db.messages()), keys)
    finally:
        db.close()
    assert res.ok, [str(f) for f in res.findings]
    assert sorted(d.device for d in res.devices) == ["gw-1", "gw-2"]


def test_a_replay_under_another_devices_topic_is_caught_from_the_store(broker, tmp_path, streams):
    items, keys = streams
    url = f"sqlite:///{tmp_path}/c.sqlite"
    c = StoreCollector(broker.url, url, fleet="f")
    c.start()
    try:
        gw1 = [i for i in items if i[0] == "gw-1"]
        replay = ("gw-1", items[-1][1])  # gw-2's attestation published on gw-1's topic
        _publish(broker.url, gw1 + [replay])
        _wait(lambda: c.received >= len(gw1) + 1)
    finally:
        c.stop()
    db = open_db(url)
    res = verify_messages(list(db.messages()), keys)
    db.close()
    assert {f.kind for f in res.findings} == {"REPLAY"}


def test_file_collector_names_sort_in_seq_order_and_redelivery_is_idempotent(
    broker, tmp_path, streams
):
    items, _ = streams
    c = FileCollector(broker.url, tmp_path / "files", fleet="f")
    c.start()
    try:
        _publish(broker.url, items[:6] + items[:6])
        _wait(lambda: c.received >= 12)
    finally:
        c.stop()
    names = sorted(p.name for p in (tmp_path / "files" / "gw-1").iterdir())
    assert len(names) == 6 and [n[:10] for n in names] == [f"{i:010d}" for i in range(6)]


def test_cli_collect_into_postgresql_then_verify_the_store(broker, pg_url, streams, run_cli,
                                                           tmp_path):  # fmt: skip
    import subprocess
    import sys

    items, keys = streams
    for i, k in enumerate(keys):
        (tmp_path / f"k{i}.pub").write_bytes(k.pem())
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "audit", "collect", "--broker", broker.url,
         "--store", pg_url, "--fleet", "f", "--seconds", "6"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until it has subscribed (table exists)
            with psycopg.connect(pg_url) as c:
                if c.execute("SELECT to_regclass('collected')").fetchone()[0]:
                    break
            time.sleep(0.1)
        time.sleep(0.3)
        _publish(broker.url, items)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    args = ["--key", str(tmp_path / "k0.pub"), "--key", str(tmp_path / "k1.pub")]
    r = run_cli("audit", "verify", "--store", pg_url, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "evidence:   INTACT" in r.stdout


def test_shared_collectors_one_killed_and_restarted_store_each_attestation_once(
    broker, tmp_path, streams
):
    """Scale-out on the broker (an MQTT 5 shared subscription): two collectors, each with
    a persistent session, split the load. Collector B's process is killed mid-stream: what
    the broker had handed it waits in its session, the rest goes to A. B restarts with the
    same session and stores what waited. Every attestation is stored exactly once."""
    import os
    import signal
    import subprocess
    import sys

    from agent.audit.evidence_db import read_messages

    items, keys = streams
    store = tmp_path / "c.sqlite"
    a = StoreCollector(broker.url, str(store), fleet="f", share="g", session_id="collector-a")
    a.start()
    cmd = [sys.executable, "-m", "agent", "audit", "collect", "--broker", broker.url,
           "--store", str(store), "--fleet", "f", "--share", "g",
           "--session", "collector-b"]  # fmt: skip

    err = tmp_path / "b.err"

    def start_b() -> subprocess.Popen[bytes]:
        err.write_text("")
        with err.open("w") as f:
            p = subprocess.Popen(cmd, stderr=f, stdout=subprocess.DEVNULL)
        _wait(lambda: "collecting" in err.read_text() or p.poll() is not None, 30)
        assert p.poll() is None, err.read_text()
        return p

    b = start_b()
    try:
        half = len(items) // 2
        _publish(broker.url, items[:half])
        _wait(lambda: len(read_messages(str(store))) >= half // 2)  # both are storing
        os.kill(b.pid, signal.SIGKILL)
        b.wait(10)
        _publish(broker.url, items[half:])
        b = start_b()  # the same session: what waited for B arrives now
        _wait(lambda: len(read_messages(str(store))) >= len(items), 20)
    finally:
        if b.poll() is None:
            b.send_signal(signal.SIGTERM)
            b.wait(10)
        a.stop()
    msgs = read_messages(str(store))
    assert len(msgs) == len(items)  # once each: the store is keyed on (device, seq, digest)
    assert a.received < len(items)  # the load was split: A did not get everything
    res = verify_messages(msgs, keys)
    assert res.ok, [str(f) for f in res.findings]
