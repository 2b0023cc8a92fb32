"""`edgegov fleet` through the real entry point: a fleet manager's day, and the fleet view."""

from __future__ import annotations

import json

from agent.fleet._mqtt import FleetSession
from agent.fleet.client import FleetClient, FleetClientConfig
from agent.transport import BrokerURL
from tests.fleet_util import MODEL, POLICY, policy_bytes


def test_init_add_assign_sign_publish_then_status_shows_each_gateway(tmp_path, broker, run_cli):
    repo = str(tmp_path / "repo")

    def fleet(*args: str, code: int = 0) -> str:
        r = run_cli("fleet", *args)
        assert r.returncode == code, r.stderr + r.stdout
        return r.stdout

    fleet("init", "--repo", repo, "--fleet", "site-a", "--keys", "root=3", "--threshold", "root=2")
    policy = tmp_path / "cold-chain.yaml"
    policy.write_bytes(policy_bytes(1))
    fleet("add", "--repo", repo, "policies/cold-chain.yaml", str(policy))
    fleet("add", "--repo", repo, "models/excursion-v1.onnx", str(MODEL))
    out = fleet("assign", "--repo", repo, "--group", "cold", "--policy", "policies/cold-chain.yaml",
                "--model", "models/excursion-v1.onnx")  # fmt: skip
    assert "config version 1" in out
    fleet("assign", "--repo", repo, "--device", "gw-2", "--policy", "policies/cold-chain.yaml")
    fleet("sign", "--repo", repo)
    assert "published" in fleet("publish", "--repo", repo, "--broker", broker.url)

    url = BrokerURL.parse(broker.url)
    root = tmp_path / "repo" / "metadata" / "1.root.json"
    for dev in ("gw-1", "gw-2"):  # gw-2's assignment lacks the model its policy needs
        c = FleetClient(FleetClientConfig(dev, "site-a", url, root, tmp_path / dev, group="cold"))
        c.connect().update()
        c.stop()
    with FleetSession(url, "agent-gw-1") as s:  # what the agent's status would say
        s.publish("edgegov/site-a/gw-1/status", json.dumps(
            {"state": "online", "last_seq": 41, "fleet": {"config_version": 1}}).encode(),
            retain=True, content_type="application/json")  # fmt: skip

    text = fleet("status", "--broker", broker.url, "--fleet", "site-a", code=1)
    assert "gw-1" in text and "applied v1" in text and "seq 41" in text
    assert "gw-2" in text and "rejected" in text and "not in this device's assignment" in text
    raw = fleet("status", "--broker", broker.url, "--fleet", "site-a", "--json", code=1)
    rows = {r["device"]: r for r in json.loads(raw)}
    assert rows["gw-1"]["online"] is True and rows["gw-1"]["config_version"] == 1
    assert rows["gw-1"]["last_attestation_seq"] == 41
    assert rows["gw-2"]["last_ack"]["state"] == "rejected" and rows["gw-2"]["online"] is None


def test_usage_errors_exit_2_and_name_the_problem(tmp_path, run_cli):
    r = run_cli("fleet", "add", "--repo", str(tmp_path / "none"), "p.yaml", str(POLICY))
    assert r.returncode == 2 and "not a fleet repository" in r.stderr
    r = run_cli("fleet", "init", "--repo", str(tmp_path / "r"), "--fleet", "a",
                "--threshold", "root=2")  # fmt: skip
    assert r.returncode == 2 and "threshold 2 needs 1..1 keys" in r.stderr
