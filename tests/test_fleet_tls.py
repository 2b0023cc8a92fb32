"""Fleet configuration under the production TLS listener and ACL file: gateways read
the fleet's TUF topics and ack on their own topic; nobody but a fleet manager writes config."""

from __future__ import annotations

import json

from agent.errors import TransportError
from agent.fleet._mqtt import FleetSession
from agent.fleet.client import FleetClient, FleetClientConfig
from agent.fleet.repository import FleetRepository
from agent.transport.mqtt import BrokerURL, TlsFiles
from tests.fleet_util import MODEL, MODEL_NAME, POLICY_NAME, policy_bytes
from tests.test_transport_tls import TlsBroker


def _files(tls: TlsBroker, cn: str) -> TlsFiles:
    f = tls.client_files(cn)
    return TlsFiles(f["ca_file"], f["cert_file"], f["key_file"])


def test_gateway_fetches_over_mutual_tls_and_cannot_forge_config_or_acks(tls, tmp_path):
    url = BrokerURL.parse(tls.url)
    repo = FleetRepository.init(tmp_path / "repo", "f")
    repo.add_target(POLICY_NAME, policy_bytes(1), "policy")
    repo.add_target(MODEL_NAME, MODEL.read_bytes(), "model")
    repo.assign(POLICY_NAME, [MODEL_NAME], device="gw-1")
    repo.release()
    manager = FleetSession(url, "manager", tls=_files(tls, "fleet-manager")).connect()
    try:
        manager.publish_many(repo.messages(), retain=True, content_type="x")
        root = tmp_path / "repo" / "metadata" / "1.root.json"
        cfg = FleetClientConfig("gw-1", "f", url, root, tmp_path / "gw-1", tls=_files(tls, "gw-1"))
        client = FleetClient(cfg)
        assert client.update().state == "applied"
        client.stop()
        ack_topic = repo.topics.ack("gw-1")
        ack = manager.read_retained(ack_topic)
        assert ack is not None and json.loads(ack)["state"] == "applied"
        timestamp = manager.read_retained(repo.topics.timestamp)

        # Another gateway tries to push config to the fleet, and to ack in gw-1's name.
        rogue = FleetSession(url, "rogue", tls=_files(tls, "gw-2")).connect()
        try:
            for topic in (repo.topics.timestamp, ack_topic):
                try:
                    rogue.publish(topic, b'{"forged": true}', retain=True, content_type="x")
                except TransportError:
                    pass  # refused with a reason code: fine, as long as nothing changed
        finally:
            rogue.close()
        assert manager.read_retained(repo.topics.timestamp) == timestamp
        assert manager.read_retained(ack_topic) == ack
    finally:
        manager.close()
