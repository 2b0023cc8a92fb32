"""A large outbox backlog drains completely and in order through a real broker.

This once deadlocked: our publish() held our lock while calling paho, and paho's
network thread held its own while waiting for ours in the PUBACK callback.
"""

from __future__ import annotations

import sqlite3
import time

from agent.evidence.store import EvidenceStore
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher
from agent.transport.topics import DeviceTopics
from tests.conftest import Listener

N = 3000


def test_backlog_drains_in_order_and_empties_the_outbox(tmp_path, broker):
    path = tmp_path / "e.sqlite"
    EvidenceStore(path, "gw").close()
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO outbox VALUES (?, ?, ?)",
            ((i, "edgegov/f/gw/attestation", i.to_bytes(4, "big") * 100) for i in range(N)),
        )
    db.close()

    listener = Listener(broker.url, "edgegov/f/gw/attestation")
    u = BrokerURL.parse(broker.url)

    store = EvidenceStore(path, "gw")
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
