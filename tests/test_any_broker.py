"""The same end-to-end test on each broker (issue 17): a real agent (emulated device on a
pty, 1 s windows, ~8 s) -> the broker -> a collector storing into SQLite -> ``edgegov
audit verify --store``: intact, every attestation stored once, in order.

Brokers: Mosquitto in MQTT 5 and 3.1.1, a NATS server (MQTT gateway on JetStream, 3.1.1
only) and a RabbitMQ node (MQTT plugin, 3.1.1; slow: its start, paid once per module).
Each is test-owned (agent/tools/brokers.py) on free loopback ports. A broker that did not
take the protocol the agent speaks refuses its CONNECT, and nothing is stored: the test
fails, it does not skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.audit.collector import StoreCollector
from agent.identity.keys import generate_key
from tests.broker_targets import PARAMS, TARGETS, mosquitto, nats, rabbit  # noqa: F401
from tests.evidence_util import make_stream
from tests.fleet_run import FLEET, Gateway, Store, verify_store, wait_until
from tests.mqtt_probe import V5, V311, Probe


@pytest.mark.parametrize("name", PARAMS)
def test_agent_to_broker_to_collector_stores_every_attestation_in_order_and_verifies(
    request: pytest.FixtureRequest, tmp_path: Path, run_cli, name: str
) -> None:
    fixture, version = TARGETS[name]
    url = request.getfixturevalue(fixture).url
    device = f"gw-{name}"  # brokers are shared by the module: a device (and session) each
    store = tmp_path / "collected.sqlite"
    collector = StoreCollector(url, str(store), fleet=FLEET, version=version)
    collector.start(timeout=10)
    try:
        with Gateway(tmp_path, device, [url], version) as gw:
            # ~8 windows of 1 s, counted from the first attestation stored (the agent's
            # start, onnxruntime's included, is not part of the 8 s)
            wait_until(lambda: Store(store).count(device) >= 1, 20, "a first attestation")
            wait_until(lambda: Store(store).count(device) >= 8, 15, "8 attestations")
            stats = gw.stop()
        signed = stats.attestations
        wait_until(lambda: Store(store).count(device) >= signed, 15, f"all {signed} stored")
    finally:
        collector.stop()
    # every one, once, in the order signed
    assert Store(store).seqs(device) == list(range(signed)) and signed >= 8
    verdict = verify_store(run_cli, store, [gw.public_pem])
    assert verdict["evidence"] == "intact" and verdict["verified"] == signed


@pytest.mark.parametrize("name", ["mosquitto-v5", "mosquitto-v311", "nats"])
def test_collector_with_a_session_id_receives_what_was_published_while_it_was_away(
    request: pytest.FixtureRequest, tmp_path: Path, name: str
) -> None:
    """``session_id``: clean session off under that client id (v5: an expiry too), so a
    collector that stops and comes back finds the attestations published meanwhile; a
    clean session (the default) would find none."""
    fixture, version = TARGETS[name]
    url = request.getfixturevalue(fixture).url
    device, session = f"gw-away-{name}", f"edgegov-collector-away-{name}"
    sent = make_stream(tmp_path / "s.sqlite", generate_key(tmp_path / "k.key"), device=device)
    store = tmp_path / "collected.sqlite"

    def collector() -> StoreCollector:
        c = StoreCollector(url, str(store), fleet=FLEET, version=version, session_id=session)
        c.start(timeout=10)
        return c

    collector().stop()  # subscribed, then away
    pub = Probe(f"pub-away-{name}", version=V5 if version == "5" else V311, clean=True)
    pub.connect(url)
    pub.publish(f"edgegov/{FLEET}/{device}/attestation", sent)
    pub.wait_acked(set(sent), 15)
    pub.close()
    back = collector()
    try:
        wait_until(lambda: Store(store).count(device) == len(sent), 15, "the messages kept")
    finally:
        back.stop()
    assert Store(store).seqs(device) == list(range(len(sent)))
