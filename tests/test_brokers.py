"""Probe the brokers edgegov runs on, with paho directly (issue 17): Mosquitto (v5 and
3.1.1), a NATS server (MQTT gateway on JetStream), RabbitMQ (MQTT plugin) and a 3-node
NATS cluster losing a node. Every broker is test-owned (agent/tools/brokers.py); a
missing binary is a failure naming its Debian package, not a skip.

What the agent relies on: a persistent session (clean_session false / session expiry)
keeps QoS 1 messages for a subscriber that is away; retained messages reach a new
subscriber; and, on the cluster, neither a node's death nor a client moving to another
node loses a message it was sent or that was acknowledged to its publisher.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.tools.brokers import NatsCluster, NatsServer
from tests.broker_targets import PARAMS, TARGETS, mosquitto, nats, rabbit  # noqa: F401
from tests.mqtt_probe import V5, V311, Gateway, Probe, payloads

PAHO = {"5": V5, "3.1.1": V311}  # our version names -> paho protocol


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "cluster") as c:
        yield c


def _target(request: pytest.FixtureRequest, name: str) -> tuple[str, int]:
    fixture, name_version = TARGETS[name]
    version = PAHO[name_version]
    return request.getfixturevalue(fixture).url, version


@pytest.mark.parametrize("name", PARAMS)
def test_persistent_session_keeps_qos1_messages_while_the_subscriber_is_away(
    request: pytest.FixtureRequest, name: str
) -> None:
    url, version = _target(request, name)
    cid, topic = f"sub-away-{name}", f"edgegov/probe/{name}/away"
    sub = Probe(cid, version=version)
    assert not sub.connect(url), "a fresh client id must not find a session"
    sub.subscribe(topic)
    sub.close()

    pub = Probe(f"pub-away-{name}", version=version, clean=True)
    pub.connect(url)
    sent = payloads(name, 200)
    pub.publish(topic, sent)
    pub.wait_acked(set(sent), 30)
    pub.close()

    back = Probe(cid, version=version)
    try:
        assert back.connect(url), "the broker lost the persistent session"
        back.wait_received(set(sent), 30)
        assert len(back.distinct()) == 200
    finally:
        back.close()


@pytest.mark.parametrize("name", PARAMS)
def test_retained_message_reaches_a_new_subscriber(
    request: pytest.FixtureRequest, name: str
) -> None:
    url, version = _target(request, name)
    topic = f"edgegov/probe/{name}/status"
    pub = Probe(f"pub-ret-{name}", version=version, clean=True)
    pub.connect(url)
    pub.publish(topic, [b'{"state":"online"}'], retain=True)
    pub.wait_acked({b'{"state":"online"}'}, 15)
    pub.close()

    sub = Probe(f"sub-ret-{name}", version=version, clean=True)
    try:
        sub.connect(url)
        sub.subscribe(topic)
        sub.wait(lambda: bool(sub.retained), 15, "the retained message")
        assert sub.retained == [b'{"state":"online"}']
    finally:
        sub.close()


def test_nats_restart_keeps_jetstream_sessions(tmp_path: Path) -> None:
    """A persistent session and its queued messages outlive a SIGKILL of a single
    server: JetStream's file store is in the work directory and a restart reuses it."""
    with NatsServer(tmp_path / "nats") as server:
        sub = Probe("sub-restart")
        sub.connect(server.url)
        sub.subscribe("edgegov/probe/restart")
        sub.close()
        pub = Probe("pub-restart", clean=True)
        pub.connect(server.url)
        sent = payloads("restart", 50)
        pub.publish("edgegov/probe/restart", sent)
        pub.wait_acked(set(sent), 15)
        pub.close()

        server.kill()
        server.start()
        back = Probe("sub-restart")
        try:
            assert back.connect(server.url), "the session did not survive the restart"
            back.wait_received(set(sent), 30)
        finally:
            back.close()


def _stream_with_a_node_killed(cluster: NatsCluster, victim: int, n: int = 2000) -> Gateway:
    """Publish n QoS 1 messages on node 0 to a persistent subscriber on node 1; kill
    node ``victim`` (SIGKILL) once half are acknowledged; the gateway moves to another
    node when its own dies or PUBACKs stall, and resends what had no PUBACK (as the
    agent's outbox does). Restart the victim; every message must arrive."""
    assert cluster.mqtt_stream_replicas() == {
        "$MQTT_sess": 3,
        "$MQTT_msgs": 3,
        "$MQTT_rmsgs": 3,
    }
    topic = "edgegov/fleet/dev-1/attestation"
    sub = Probe("collector-1")
    gateway = Gateway("gateway-1", cluster.urls, lambda i: cluster.nodes[i].running)
    killed: list[float] = []

    def kill_at_half(acked: int) -> None:
        if acked >= n // 2 and not killed:
            cluster.kill(victim)
            killed.append(time.monotonic())

    try:
        sub.connect(cluster.urls[1])
        sub.subscribe(topic)
        sent = payloads("att", n)
        t0 = time.monotonic()
        gateway.deliver(topic, sent, node=0, progress=kill_at_half)
        assert killed, "the node was never killed: the test proved nothing"
        cluster.start(victim)
        sub.wait_received(set(sent), 60)
        assert len(sub.distinct(b"att-")) == n
        print(
            f"\n{n} delivered in {time.monotonic() - t0:.1f} s with node {victim} killed; "
            f"gateway reconnects {gateway.reconnects} (PUBACK stalls {gateway.stalls}); "
            f"duplicates at the collector {sum(sub.received.values()) - n}"
        )
    finally:
        sub.close()
    return gateway


@pytest.mark.slow
def test_nats_cluster_delivers_every_message_when_a_third_node_dies_mid_stream(
    cluster: NatsCluster,
) -> None:
    _stream_with_a_node_killed(cluster, victim=2)


@pytest.mark.slow
def test_nats_cluster_delivers_every_message_when_the_publishers_node_dies_mid_stream(
    cluster: NatsCluster,
) -> None:
    gateway = _stream_with_a_node_killed(cluster, victim=0)
    assert gateway.reconnects >= 1, "the gateway never left the dead node"


@pytest.mark.slow
def test_nats_cluster_session_survives_its_node_being_killed(cluster: NatsCluster) -> None:
    """A collector connected to node 1 with a persistent session; node 1 is killed
    (SIGKILL, no DISCONNECT reaches anyone); 200 messages are published on node 0
    while the collector is away; it reconnects to node 2 with the same client id and
    finds its session and every message."""
    topic = "edgegov/fleet/dev-2/attestation"
    sub = Probe("collector-2")
    sub.connect(cluster.urls[1])
    sub.subscribe(topic)
    cluster.kill(1)
    sub.wait(lambda: sub.disconnected, 15, "the collector noticing its node died")
    sub.drop()

    gateway = Gateway("gateway-2", cluster.urls, lambda i: cluster.nodes[i].running)
    sent = payloads("away", 200)
    gateway.deliver(topic, sent, node=0)
    moved = Probe("collector-2")
    try:
        assert moved.connect(cluster.urls[2]), "node 2 did not find node 1's session"
        moved.wait_received(set(sent), 60)
        assert len(moved.distinct(b"away-")) == 200
        print(
            f"\nsession found on node 2 after {moved.attempts} CONNECT attempts "
            f"({moved.connect_seconds:.1f} s); gateway reconnects {gateway.reconnects}"
        )
    finally:
        moved.close()


@pytest.mark.soak
def test_nats_cluster_repeated_node_kills_lose_nothing(cluster: NatsCluster) -> None:
    """Three minutes (EDGEGOV_SOAK_SECONDS) of node kills at random moments: a gateway
    publishes in rounds of 300, failing over as :class:`Gateway` does; a collector
    follows its node's death to another node with the same persistent session. Every
    message arrives."""
    rng = random.Random(17)
    topic = "edgegov/fleet/dev-3/attestation"
    deadline = time.monotonic() + float(os.environ.get("EDGEGOV_SOAK_SECONDS", "180"))
    up = lambda i: cluster.nodes[i].running  # noqa: E731
    sent_all: set[bytes] = set()
    received: set[bytes] = set()
    sub_node, rounds = 1, 0
    sub = Probe("collector-3")
    sub.connect(cluster.urls[sub_node])
    sub.subscribe(topic)
    try:
        while time.monotonic() < deadline:
            victim = rng.randrange(3)
            batch = payloads(f"r{rounds}", 300)
            sent_all.update(batch)
            at = rng.randrange(300)
            killed: list[int] = []

            def kill(acked: int, at: int = at, victim: int = victim, k: list[int] = killed) -> None:
                if acked >= at and not k:
                    cluster.kill(victim)
                    k.append(victim)

            Gateway(f"gateway-3-{rounds}", cluster.urls, up).deliver(
                topic, batch, node=rng.randrange(3), progress=kill
            )
            if killed and victim == sub_node:
                sub.wait(lambda s=sub: s.disconnected, 15, "the collector noticing")
                received |= sub.distinct()
                sub.drop()
                sub_node = (victim + 1) % 3
                sub = Probe("collector-3")
                assert sub.connect(cluster.urls[sub_node]), "session lost on failover"
            if killed:
                cluster.start(victim)
            rounds += 1
        sub.wait_received(sent_all - received, 120)
        assert len(received | sub.distinct()) == len(sent_all)
        print(f"\n{rounds} rounds, {len(sent_all)} messages, none lost")
    finally:
        sub.close()
