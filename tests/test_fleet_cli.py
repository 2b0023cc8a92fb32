"""`edgegov fleet` through the real entry point: a fleet manager's day, and the fleet view."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from tuf.api.serialization.json import JSONSerializer

from agent.fleet._mqtt import FleetSession
from agent.fleet.client import FleetClient, FleetClientConfig
from agent.fleet.repository import FleetRepository
from agent.transport.mqtt import BrokerURL
from tests.fleet_util import MODEL, MODEL_NAME, POLICY, POLICY_NAME, policy_bytes


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
    # An assignment without the model its policy declares: refused before signing, saying
    # exactly what to add ...
    r = run_cli("fleet", "assign", "--repo", repo, "--device", "gw-2", "--policy",
                "policies/cold-chain.yaml")  # fmt: skip
    assert r.returncode == 2, r.stdout
    assert "declares model excursion-risk (models/excursion-v1.onnx" in r.stderr, r.stderr
    assert "--model models/excursion-v1.onnx" in r.stderr, r.stderr
    # ... and signed anyway by another tool: the gateway still refuses it (below).
    FleetRepository(tmp_path / "repo").assign("policies/cold-chain.yaml", device="gw-2")
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


def _tamper(repo: FleetRepository, how: str) -> str:
    """Break a signed, released repository as ``how`` says; returns what the refusal names."""
    meta = repo.dir / "metadata"
    if how == "targets-resigned-with-another-key":
        md = repo.open("targets")
        md.signed.targets.pop(MODEL_NAME)
        md.signed.version += 1
        md.signatures.clear()
        md.sign(repo.signer("snapshot-1"))  # a key that is not a targets key
        data = md.to_bytes(JSONSerializer(compact=True))
        for name in (f"{md.signed.version}.targets.json", "targets.json"):
            (meta / name).write_bytes(data)
        repo.release()  # snapshot and timestamp (validly signed) name the forged file
        return f"metadata/{md.signed.version}.targets.json: UnsignedMetadataError"
    if how == "target-changed-after-signing":
        sha = repo.targets().targets[POLICY_NAME].hashes["sha256"]
        blob = repo.dir / "targets" / sha
        blob.write_bytes(blob.read_bytes().replace(b"version: 2", b"version: 3"))  # same length
        return f"targets/policies/{sha}.cold-chain.yaml: LengthOrHashMismatchError"
    if how == "snapshot-from-another-release":
        v = repo.snapshot().version
        (meta / f"{v}.snapshot.json").write_bytes((meta / f"{v - 1}.snapshot.json").read_bytes())
        return f"metadata/{v}.snapshot.json: "
    if how == "root-rotation-without-the-old-keys":
        repo.rotate("root", ["root-9"], ["root-1"], 1)
        md = repo.open("root")
        old = set(repo._load("1.root.json").signed.roles["root"].keyids)
        for keyid in old - set(md.signed.roles["root"].keyids):
            md.signatures.pop(keyid, None)
        (meta / f"{md.signed.version}.root.json").write_bytes(md.to_bytes(JSONSerializer()))
        return f"metadata/{md.signed.version}.root.json: UnsignedMetadataError"
    assert how == "expired-timestamp"
    md = repo.open("timestamp")
    md.signed.expires = datetime.now(timezone.utc) - timedelta(minutes=1)
    md.signatures.clear()
    md.sign(repo.signer("timestamp-1"))
    (meta / "timestamp.json").write_bytes(md.to_bytes(JSONSerializer()))
    return "metadata/timestamp.json: ExpiredMetadataError"


@pytest.mark.parametrize(
    "how",
    [
        None,
        "targets-resigned-with-another-key",
        "target-changed-after-signing",
        "snapshot-from-another-release",
        "root-rotation-without-the-old-keys",
        "expired-timestamp",
    ],
)
def test_publish_verifies_the_whole_repository_first(tmp_path, broker, run_cli, how):
    repo = FleetRepository.init(tmp_path / "repo", "site-a")
    repo.add_target(POLICY_NAME, policy_bytes(1), "policy")
    repo.add_target(MODEL_NAME, MODEL.read_bytes(), "model")
    repo.assign(POLICY_NAME, [MODEL_NAME], group="cold")
    repo.release()
    repo.add_target(POLICY_NAME, policy_bytes(2), "policy")  # a second release: old versions
    repo.assign(POLICY_NAME, [MODEL_NAME], group="cold")
    repo.release()
    names = _tamper(repo, how) if how else ""

    r = run_cli("fleet", "publish", "--repo", str(repo.dir), "--broker", broker.url)
    with FleetSession(BrokerURL.parse(broker.url), "auditor") as s:
        retained = s.read_retained_all("edgegov/site-a/tuf/#")
    if how is not None:
        assert r.returncode == 1, r.stdout + r.stderr
        assert names in r.stderr and "nothing published" in r.stderr, r.stderr
        assert retained == {}  # refused before connecting: nothing at all on the broker
        return
    assert r.returncode == 0, r.stderr
    tuf = "edgegov/site-a/tuf"
    assert f"{tuf}/metadata/1.root.json" in retained
    assert f"{tuf}/metadata/timestamp.json" in retained
    assert f"{tuf}/metadata/{repo.targets().version}.targets.json" in retained
    assert f"{tuf}/metadata/1.snapshot.json" not in retained  # only what a client needs
    # What was published is what a gateway accepts: it applies the config.
    c = FleetClient(
        FleetClientConfig("gw-1", "site-a", BrokerURL.parse(broker.url),
                          repo.dir / "metadata" / "1.root.json", tmp_path / "gw", group="cold")
    )  # fmt: skip
    try:
        assert c.connect().update().state == "applied"
    finally:
        c.stop()
