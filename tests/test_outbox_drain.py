"""A large outbox backlog drains completely and in order through a real broker.

This once deadlocked: our publish() held our lock while calling paho, and paho's
network thread held its own while waiting for ours in the PUBACK callback.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

from agent.evidence.store import _ACK_BATCH, EvidenceStore, _runs
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher
from agent.transport.topics import DeviceTopics
from tests.conftest import Listener

N = 3000


def _filled_store(
    tmp_path, n: int, payload: Callable[[int], bytes] = lambda i: b"x" * 600
) -> tuple[EvidenceStore, object]:
    """A store whose outbox holds attestations 0..n-1 (``payload(seq)``), opened."""
    path = tmp_path / "e.sqlite"
    EvidenceStore(path, "gw").close()
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO outbox VALUES (?, ?, ?)",
            ((i, "edgegov/f/gw/attestation", payload(i)) for i in range(n)),
        )
    db.close()
    return EvidenceStore(path, "gw"), path


def test_backlog_drains_in_order_and_empties_the_outbox(tmp_path, broker):
    store, _ = _filled_store(tmp_path, N, lambda i: i.to_bytes(4, "big") * 100)
    listener = Listener(broker.url, "edgegov/f/gw/attestation")
    u = BrokerURL.parse(broker.url)

    pub = MqttPublisher(u, DeviceTopics("edgegov", "f", "gw"), store.acknowledge)
    pub.start(store.pending())
    deadline = time.monotonic() + 60
    while (pub.unacknowledged() or len(listener.messages) < N) and time.monotonic() < deadline:
        time.sleep(0.01)
    pub.stop(2)
    listener.close()
    got = [int.from_bytes(m.payload[:4], "big") for m in listener.messages]
    assert store.pending() == []
    missing = sorted(set(range(N)) - set(got))
    dups = len(got) - len(set(got))
    assert got == list(range(N)), f"{len(got)} received, missing {missing[:10]}, {dups} duplicates"


def _outbox_seqs(path) -> list[int]:
    """What is on disk now, read beside the open store: what a crash would leave."""
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq")]
    finally:
        db.close()


def test_acknowledge_never_waits_for_sqlite(tmp_path):
    """PUBACKs are acknowledged on paho's network thread, which holds paho's lock meanwhile:
    a slow write (here: the store's lock held, as by a commit) must not stall them."""
    store, _ = _filled_store(tmp_path, 3 * _ACK_BATCH)
    done = threading.Event()

    def ack_all() -> None:
        for seq in range(3 * _ACK_BATCH):
            store.acknowledge(seq)
        done.set()

    with store._lock:  # a commit or a flush in progress
        threading.Thread(target=ack_all, daemon=True).start()
        assert done.wait(5), "acknowledge() waited for the store"
    assert store.pending() == []  # pending() sees every earlier acknowledgement
    store.close()


def test_acknowledged_rows_go_in_batches_and_unflushed_ones_come_back(tmp_path):
    store, path = _filled_store(tmp_path, 2 * _ACK_BATCH + 10)
    for seq in range(5):
        store.acknowledge(seq)
    # not written yet: after a crash now these 5 are sent again (at least once)
    assert _outbox_seqs(path) == list(range(2 * _ACK_BATCH + 10))
    for seq in range(5, 2 * _ACK_BATCH):
        store.acknowledge(seq)
    deadline = time.monotonic() + 10  # the outbox-acks thread deletes full batches
    while len(_outbox_seqs(path)) > 10 + _ACK_BATCH and time.monotonic() < deadline:
        time.sleep(0.01)
    left = _outbox_seqs(path)
    assert len(left) <= 10 + _ACK_BATCH and left[-10:] == list(
        range(2 * _ACK_BATCH, 2 * _ACK_BATCH + 10)
    )
    store.acknowledge(2 * _ACK_BATCH + 3)
    store.flush_acks()
    assert _outbox_seqs(path) == [2 * _ACK_BATCH + i for i in (0, 1, 2, 4, 5, 6, 7, 8, 9)]
    store.acknowledge(2 * _ACK_BATCH)
    store.close()  # flushes what is left
    assert _outbox_seqs(path) == [2 * _ACK_BATCH + i for i in (1, 2, 4, 5, 6, 7, 8, 9)]


def test_runs_of_consecutive_seqs():
    assert _runs([]) == []
    assert _runs([7]) == [(7, 7)]
    assert _runs([3, 1, 2, 2, 9, 7, 8, 12]) == [(1, 3), (7, 9), (12, 12)]
    assert _runs(list(range(64))) == [(0, 63)]
