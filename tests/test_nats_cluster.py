"""A 3-node NATS cluster that loses a node mid-stream (issue 17), with real agents.

Two agents (emulated devices on ptys, 1 s windows, MQTT 3.1.1) connect to different nodes
with the whole URL list rotated: gateway 1 [n0, n1, n2], gateway 2 [n1, n2, n0]. A
collector reads from another node ([n2, n0, n1]) with a persistent session (``session_id``:
the same client id on every node, so the session, kept in the replicated ``$MQTT_sess``
stream, follows it when its node dies). Every collector stores into one SQLite store,
idempotent on (device, seq, digest): at the end each device's rows are exactly its seqs
0..n-1, once each, in the order signed, and ``edgegov audit verify --store`` passes.

The figures (failover after the kill, the node's restart, redeliveries to the collector,
PUBACK stalls the publisher had to leave a node for) are printed: run with ``-s``.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.audit.collector import StoreCollector
from agent.tools.brokers import NatsCluster
from tests.fleet_run import FLEET, Gateway, Store, verify_store, wait_until

V311 = "3.1.1"
DEVICES = ("gw-1", "gw-2")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    t0 = time.monotonic()
    with NatsCluster(tmp_path / "cluster") as c:
        print(f"\n3-node cluster up in {time.monotonic() - t0:.1f} s")
        yield c


def rotated(urls: list[str], k: int) -> list[str]:
    return urls[k:] + urls[:k]


class Fleet:
    """The two gateways and the collectors of one run, and the store they fill."""

    def __init__(self, cluster: NatsCluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.store = Store(root / "collected.sqlite")
        self.gateways: list[Gateway] = []
        self.collectors: list[StoreCollector] = []

    def collector(self, name: str, first_node: int) -> StoreCollector:
        c = StoreCollector(rotated(self.cluster.urls, first_node), str(self.store.path),
                           fleet=FLEET, version=V311, session_id=name)  # fmt: skip
        c.start(timeout=15)
        self.collectors.append(c)
        return c

    def start_gateways(self) -> None:
        for i, device in enumerate(DEVICES):  # gateway i starts on node i
            gw = Gateway(self.root, device, rotated(self.cluster.urls, i), V311)
            self.gateways.append(gw.__enter__())

    def counts(self) -> dict[str, int]:
        return {d: self.store.count(d) for d in DEVICES}

    def progressed(self, by: int, timeout: float, what: str) -> float:
        """Wait until every gateway has ``by`` more attestations stored; seconds taken."""
        start = self.counts()
        return wait_until(
            lambda: all(self.counts()[d] >= start[d] + by for d in DEVICES), timeout, what
        )

    def finish(self, run_cli: Callable[..., object]) -> dict[str, int]:
        """Stop the gateways, wait for every attestation signed to be stored, check the
        store (once each, in order) and verify it; each device's count signed."""
        signed = {gw.device_id: gw.stop().attestations for gw in self.gateways}
        wait_until(
            lambda: all(self.counts()[d] >= signed[d] for d in DEVICES),
            60,
            f"every attestation signed ({signed}) stored (stored: {self.counts()})",
        )
        for d in DEVICES:  # exactly once each (distinct (device, seq)), first stored in order
            assert self.store.seqs(d) == list(range(signed[d])), (d, self.store.seqs(d))
        keys = [gw.public_pem for gw in self.gateways]
        verdict = verify_store(run_cli, self.store.path, keys)
        assert verdict["evidence"] == "intact"
        assert verdict["verified"] == sum(signed.values())
        return signed

    def close(self) -> None:
        for gw in self.gateways:
            gw.__exit__()
        for c in self.collectors:
            c.stop()


@pytest.fixture
def fleet(cluster: NatsCluster, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(cluster, tmp_path)
    try:
        yield f
    finally:
        f.close()


def transport_log(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def redeliveries(c: StoreCollector) -> int:
    """Deliveries to this collector that stored nothing new (copies: QoS 1 resends)."""
    return c.received - len(c.stored)


@pytest.mark.slow
def test_cluster_loses_the_node_a_gateway_is_on_and_every_attestation_is_stored_once(
    fleet: Fleet, cluster: NatsCluster, run_cli, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgegov.transport")
    assert set(cluster.mqtt_stream_replicas().values()) == {3}
    collector = fleet.collector("edgegov-collector-a", first_node=2)
    fleet.start_gateways()
    fleet.progressed(3, 40, "3 attestations from each gateway before the kill")

    before = fleet.counts()["gw-1"]
    killed_at = time.time()
    cluster.kill(0)  # gateway 1's node, SIGKILL: no DISCONNECT reaches anyone
    gap = wait_until(lambda: fleet.counts()["gw-1"] > before, 40, "gw-1 stored after the kill")
    fleet.progressed(3, 40, "3 more from each gateway with node 0 dead")
    t0 = time.monotonic()
    cluster.start(0)
    restart_s = time.monotonic() - t0
    fleet.progressed(2, 40, "2 more from each gateway after node 0 is back")
    signed = fleet.finish(run_cli)

    n0 = cluster.urls[0]
    moved = transport_log(caplog, f"failed over from broker {n0}")
    assert moved, "gateway 1 never left the dead node: the test proved nothing"
    stalls = transport_log(caplog, "no PUBACK for attestation")
    print(
        f"\nsigned {signed}; node 0 killed: gw-1 failed over to "
        f"{moved[0].getMessage().split(' to broker ')[1].split(' ')[0]} "
        f"{moved[0].created - killed_at:.1f} s after the kill, next attestation stored "
        f"{gap:.1f} s after it; node 0 restarted in {restart_s:.1f} s; collector "
        f"redeliveries {redeliveries(collector)}; PUBACK stalls left {len(stalls)}"
    )


@pytest.mark.slow
def test_cluster_collector_killed_mid_run_the_remaining_collectors_store_everything(
    fleet: Fleet, cluster: NatsCluster, run_cli, tmp_path: Path
) -> None:
    """Scale-out without shared subscriptions (NATS has none): each collector has a
    session of its own and receives everything; all store into one idempotent store.
    Collector B (``edgegov audit collect --session``, a process) is SIGKILLed mid-run;
    collector A's copy of every message makes the union complete."""
    err = (tmp_path / "collector-b.err").open("w+")
    urls = [a for u in rotated(cluster.urls, 1) for a in ("--broker", u)]
    b = subprocess.Popen(
        [sys.executable, "-m", "agent", "audit", "collect", *urls, "--mqtt-version", V311,
         "--store", str(fleet.store.path), "--fleet", FLEET, "--session", "edgegov-collector-b"],
        stderr=err, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        collector_a = fleet.collector("edgegov-collector-a", first_node=2)
        wait_until(lambda: "collecting" in (tmp_path / "collector-b.err").read_text(), 30,
                   "collector B subscribed")  # fmt: skip
        fleet.start_gateways()
        fleet.progressed(3, 40, "3 attestations from each gateway with both collectors")
        by_b = fleet.store.by_collector().get("edgegov-collector-b", 0)
        os.kill(b.pid, signal.SIGKILL)
        b.wait(10)
        fleet.progressed(3, 40, "3 more from each gateway with collector B dead")
        signed = fleet.finish(run_cli)
    finally:
        if b.poll() is None:
            b.kill()
            b.wait()
        err.close()
    print(
        f"\nsigned {signed}; rows first stored by collector: {fleet.store.by_collector()} "
        f"(B {by_b} before its kill); A received {collector_a.received}, "
        f"stored {len(collector_a.stored)} new"
    )


@pytest.mark.soak
def test_cluster_repeated_node_kills_lose_nothing(
    fleet: Fleet, cluster: NatsCluster, run_cli, caplog: pytest.LogCaptureFixture
) -> None:
    """EDGEGOV_SOAK_SECONDS (120) of kills: a random node (the collector's too) is
    SIGKILLed once each gateway has stored 2 more, restarted once each has stored 2 more
    without it; repeat. At the end, every attestation once, in order, verified."""
    caplog.set_level(logging.WARNING, logger="edgegov.transport")
    rng = random.Random(17)
    collector = fleet.collector("edgegov-collector-a", first_node=2)
    fleet.start_gateways()
    deadline = time.monotonic() + float(os.environ.get("EDGEGOV_SOAK_SECONDS", "120"))
    kills: list[int] = []
    gaps: list[float] = []
    restarts: list[float] = []
    while time.monotonic() < deadline:
        fleet.progressed(2, 60, f"2 more from each gateway before kill {len(kills) + 1}")
        victim = rng.randrange(3)
        cluster.kill(victim)
        kills.append(victim)
        gaps.append(fleet.progressed(2, 60, f"2 more from each with node {victim} dead"))
        t0 = time.monotonic()
        cluster.start(victim)
        restarts.append(time.monotonic() - t0)
    signed = fleet.finish(run_cli)
    print(
        f"\n{len(kills)} kills (nodes {kills}); signed {signed}; 2 attestations each with "
        f"a node dead took {min(gaps):.1f}-{max(gaps):.1f} s (2 s without faults); node "
        f"restarts {min(restarts):.1f}-{max(restarts):.1f} s; failovers "
        f"{len(transport_log(caplog, 'failed over from broker'))}; PUBACK stalls left "
        f"{len(transport_log(caplog, 'no PUBACK for attestation'))}; collector "
        f"redeliveries {redeliveries(collector)}"
    )
