"""Store-and-forward: draining an outbox backlog to a local Mosquitto, beside raw paho.

The agent's drain path is the real one: SQLite outbox -> MqttPublisher (QoS 1)
-> PUBACK -> row deleted. The baseline is paho publishing the same payloads at
QoS 1 with nothing behind it. Reconnect time is from a broker restart to the
first PUBACK on the restarted broker.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.evidence.store import EvidenceStore, OutboxItem
from agent.tools.bench.core import Row, verdict
from agent.tools.broker import MosquittoBroker, find_mosquitto
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher
from agent.transport.topics import DeviceTopics

_PAYLOAD = os.urandom(600)  # about the size of one attestation


def _raw_paho(url: str, n: int) -> float:
    u = BrokerURL.parse(url)
    done = threading.Event()
    window = threading.BoundedSemaphore(16)  # what a careful paho user does: no queue
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        window.release()
        if acked == n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect(u.host, u.port)
    c.loop_start()
    t0 = time.perf_counter()
    for _ in range(n):
        window.acquire()
        c.publish("edgegov/bench/raw/attestation", _PAYLOAD, qos=1)
    done.wait(120)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return n / dt


def _fill_outbox(store_path: Path, n: int) -> None:
    db = sqlite3.connect(store_path)
    with db:
        db.executemany(
            "INSERT INTO outbox VALUES (?, ?, ?)",
            ((i, "edgegov/bench/gw/attestation", _PAYLOAD) for i in range(n)),
        )
    db.close()


def _drain(url: str, tmp: Path, n: int) -> float:
    path = tmp / "drain.sqlite"
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):  # a fresh outbox each round
        f.unlink(missing_ok=True)
    EvidenceStore(path, "gw").close()
    _fill_outbox(path, n)
    store = EvidenceStore(path, "gw")
    pub = MqttPublisher(
        BrokerURL.parse(url), DeviceTopics("edgegov", "bench", "gw"), store.acknowledge
    )
    t0 = time.perf_counter()
    pub.start(store.pending())
    while pub.unacknowledged() and time.perf_counter() - t0 < 300:
        time.sleep(0.005)
    dt = time.perf_counter() - t0
    left = len(store.pending())
    pub.stop(1)
    store.close()
    if left:
        raise RuntimeError(f"drain bench: {left} rows still in the outbox")
    return n / dt


def _reconnect(tmp: Path) -> float:
    broker = MosquittoBroker(tmp / "reconnect").start()
    acks: list[int] = []
    pub = MqttPublisher(
        BrokerURL.parse(broker.url), DeviceTopics("edgegov", "bench", "rc"), acks.append
    )
    pub.start([])
    pub.wait_connected(5)
    broker.stop()
    while pub.wait_connected(0):
        time.sleep(0.01)
    broker = MosquittoBroker(tmp / "reconnect", port=broker.port).start()
    t0 = time.perf_counter()
    pub.publish(OutboxItem(1, "edgegov/bench/rc/attestation", _PAYLOAD))
    while not acks and time.perf_counter() - t0 < 60:
        time.sleep(0.005)
    dt = time.perf_counter() - t0
    pub.stop(1)
    broker.stop()
    return dt


def run(quick: bool) -> list[Row]:
    if find_mosquitto() is None:
        return [Row("transport", "mosquitto not installed: section not run", 0.0, "")]
    n, rounds = (5_000, 1) if quick else (50_000, 2)
    raw = drain = 0.0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with MosquittoBroker(tmp / "broker") as broker:
            for _ in range(rounds):  # interleaved, best of each: neither goes first only
                raw = max(raw, _raw_paho(broker.url, n))
                drain = max(drain, _drain(broker.url, tmp, n))
        rc = _reconnect(tmp)
    return [
        Row(
            "transport",
            "raw paho QoS 1 publish",
            raw,
            "msgs/s",
            note=f"{n:,} x 600 B, 16 in flight, best of {rounds}",
        ),
        Row(
            "transport",
            "outbox drain (SQLite -> QoS 1 -> PUBACK -> delete)",
            drain,
            "atts/s",
            baseline="raw paho QoS 1 publish",
            target=0.9,
            note=f"{n:,}-attestation backlog, best of {rounds}",
        ),
        Row(
            "transport",
            "broker restart -> first PUBACK",
            1 / rc,
            "per s",
            note=f"{rc * 1000:.0f} ms; target <= 2,000 ms: {verdict(rc <= 2.0)}",
        ),
    ]
