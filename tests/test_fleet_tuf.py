"""Fleet configuration over TUF and retained MQTT: the threats of issue 7, one test each.

Everything is real: Mosquitto, python-tuf (repository editing and ngclient),
Ed25519 signatures, the policy compiler and onnxruntime. Each attack is made
with the repository's own keys or an attacker's, published as retained
messages, and then the gateway's update is run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner, Signature
from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization.json import JSONSerializer

from agent.errors import FleetError
from tests.fleet_util import MODEL, MODEL_NAME, POLICY_NAME, Fleet, policy_bytes, state_snapshot

COMPACT = JSONSerializer(compact=True)


@pytest.fixture
def fleet(tmp_path, broker):
    f = Fleet(tmp_path, broker)
    yield f
    f.close()


def _applied(fleet: Fleet, client, version: int) -> None:
    out = client.update()
    assert out.state == "applied", out.reason
    assert out.config is not None and out.config.config_version == version
    ack = fleet.ack()
    assert ack["state"] == "applied" and ack["config_version"] == version


def _rejected(fleet: Fleet, client, *needles: str) -> str:
    before = client.store.current()
    out = client.update()
    assert out.state == "rejected"
    for n in needles:
        assert n in out.reason, out.reason
    after = client.store.current()
    assert (before and before.directory) == (after and after.directory)  # last good stays
    ack = fleet.ack()
    assert ack["state"] == "rejected" and ack["reason"] == out.reason
    return out.reason


def test_assigned_config_is_verified_activated_and_acked(fleet):
    fleet.release()
    client = fleet.client()
    _applied(fleet, client, 1)
    cfg = client.store.current()
    assert cfg is not None
    assert hashlib.sha256(cfg.policy_path.read_bytes()).hexdigest() == cfg.targets[POLICY_NAME]
    assert (cfg.directory / "models" / "excursion-v1.onnx").read_bytes() == MODEL.read_bytes()
    ack = fleet.ack()
    assert ack["tuf"] == {"root": 1, "timestamp": 2, "snapshot": 2, "targets": 4}
    assert ack["targets"][MODEL_NAME] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert client.update().state == "unchanged"  # nothing new: no second activation


def test_new_timestamp_triggers_a_refresh(fleet):
    fleet.release()
    client = fleet.client(refresh_seconds=3600)  # the timer alone would not fire
    client.start()
    deadline = time.monotonic() + 10
    while (client.store.current() is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    fleet.release(policy_version=2)
    while time.monotonic() < deadline:
        cur = client.store.current()
        if cur is not None and cur.config_version == 2:
            break
        time.sleep(0.05)
    assert client.store.current().config_version == 2
    assert fleet.ack()["state"] == "applied"


@pytest.mark.parametrize("how", ["unsigned", "attacker key"])
def test_unsigned_or_wrongly_signed_metadata_is_rejected(fleet, how):
    fleet.release()
    client = fleet.client()
    _applied(fleet, client, 1)
    fleet.release(policy_version=2)
    ts = fleet.metadata("timestamp.json")
    ts.signatures.clear()
    if how == "attacker key":
        ts.sign(CryptoSigner.generate_ed25519(), append=True)
    fleet.put(fleet.repo.topics.timestamp, ts.to_bytes(COMPACT))
    _rejected(fleet, client, "UnsignedMetadataError", "timestamp")


def test_duplicate_signatures_of_one_key_do_not_reach_the_threshold(tmp_path, broker):
    fleet = Fleet(tmp_path, broker, keys={"targets": 2}, thresholds={"targets": 2})
    try:
        fleet.release()
        client = fleet.client()
        _applied(fleet, client, 1)
        # The attacker holds one of two targets keys and signs a new release twice with it.
        fleet.release(policy_version=2)
        v = fleet.repo.targets().version
        doc = json.loads(fleet.resign(fleet.metadata(f"{v}.targets.json"), "targets-1"))
        doc["signatures"] = doc["signatures"] * 2
        fleet.serve_forged("targets", json.dumps(doc).encode())
        reason = _rejected(fleet, client, "targets")
        assert "Multiple signatures" in reason or "threshold" in reason, reason
        # One signature (no duplicate) is below the threshold of 2 just the same ...
        doc["signatures"] = doc["signatures"][:1]
        fleet.serve_forged("targets", json.dumps(doc).encode())
        _rejected(fleet, client, "UnsignedMetadataError", "targets")
        # ... and the two distinct keys reach it (the forgery above was the only fault).
        good = fleet.resign(fleet.metadata(f"{v}.targets.json"), "targets-1", "targets-2")
        fleet.serve_forged("targets", good)
        _applied(fleet, client, 2)
    finally:
        fleet.close()


def test_root_rotation_needs_old_and_new_thresholds_and_no_version_is_skipped(fleet):
    fleet.release()
    client = fleet.client()
    _applied(fleet, client, 1)
    v2 = fleet.repo.rotate("root", add=["root-2"], remove=["root-1"], threshold=1)
    assert v2 == 2
    good = (fleet.repo.dir / "metadata" / "2.root.json").read_bytes()
    topic = fleet.meta_topic("2.root.json")
    for keys in (["root-2"], ["root-1"]):  # only the new, only the old threshold
        fleet.put(topic, fleet.resign(Metadata.from_bytes(good), *keys))
        _rejected(fleet, client, "UnsignedMetadataError", "root")
    # No skipping: root 3 (signed by root-2 only) moves the timestamp key. With
    # 2.root withheld the gateway stays at root 1 and refuses the new timestamp.
    fleet.repo.rotate("timestamp", add=["timestamp-2"], remove=["timestamp-1"], threshold=1)
    fleet.release(policy_version=2)
    fleet.put(topic, b"")  # delete the retained 2.root.json
    _rejected(fleet, client, "UnsignedMetadataError", "timestamp")
    assert client.store.current().tuf.root == 1
    # Both thresholds present: the chain 1 -> 2 -> 3 is walked.
    fleet.put(topic, good)
    _applied(fleet, client, 2)
    assert client.store.current().tuf.root == 3


@pytest.mark.parametrize("role", ["root", "timestamp", "snapshot", "targets"])
def test_rollback_of_each_role_is_rejected(fleet, role):
    fleet.release()
    client = fleet.client()
    fleet.release(policy_version=2)
    _applied(fleet, client, 2)
    repo, meta = fleet.repo, fleet.repo.dir / "metadata"
    if role == "root":
        # A "version 2" root that is really version 1 re-signed: python-tuf wants 2.
        fake = fleet.metadata("1.root.json")
        fleet.put(fleet.meta_topic("2.root.json"), fleet.resign(fake, "root-1"))
        _rejected(fleet, client, "root")
        return
    if role == "timestamp":
        old = fleet.metadata("timestamp.json")
        old.signed.version -= 1
        fleet.put(repo.topics.timestamp, fleet.resign(old, "timestamp-1"))
        _rejected(fleet, client, "BadVersionNumberError", "timestamp")
        return
    ts = fleet.metadata("timestamp.json")
    ts.signed.version += 1
    if role == "snapshot":
        old_v = ts.signed.snapshot_meta.version - 1
        data = (meta / f"{old_v}.snapshot.json").read_bytes()
        ts.signed.snapshot_meta = MetaFile(
            old_v, len(data), {"sha256": hashlib.sha256(data).hexdigest()}
        )
    else:
        snap = fleet.metadata("snapshot.json")
        snap.signed.version += 1
        old_v = snap.signed.meta["targets.json"].version - 1
        data = (meta / f"{old_v}.targets.json").read_bytes()
        snap.signed.meta["targets.json"] = MetaFile(
            old_v, len(data), {"sha256": hashlib.sha256(data).hexdigest()}
        )
        raw = fleet.resign(snap, "snapshot-1")
        fleet.put(fleet.meta_topic(f"{snap.signed.version}.snapshot.json"), raw)
        ts.signed.snapshot_meta = MetaFile(
            snap.signed.version, len(raw), {"sha256": hashlib.sha256(raw).hexdigest()}
        )
    fleet.put(repo.topics.timestamp, fleet.resign(ts, "timestamp-1"))
    _rejected(fleet, client, "BadVersionNumberError", role)


def test_fast_forward_recovery_after_timestamp_key_rotation(fleet):
    fleet.release()
    client = fleet.client()
    _applied(fleet, client, 1)
    # A stolen timestamp key fast-forwards the gateway to version 1000.
    ts = fleet.metadata("timestamp.json")
    ts.signed.version = 1000
    fleet.put(fleet.repo.topics.timestamp, fleet.resign(ts, "timestamp-1"))
    assert client.update().state == "unchanged"  # signed right: accepted as is
    # The fleet rotates the timestamp key; its next timestamp is far below 1000.
    fleet.repo.rotate("timestamp", add=["timestamp-2"], remove=["timestamp-1"], threshold=1)
    fleet.release(policy_version=2)
    assert fleet.repo.timestamp().version < 1000
    _applied(fleet, client, 2)


def test_expired_metadata_is_a_potential_freeze(tmp_path, broker):
    fleet = Fleet(tmp_path, broker, expiry_days={"timestamp": 3 / 86400})
    try:
        fleet.release()
        client = fleet.client(freeze_factor=1.0)
        _applied(fleet, client, 1)
        assert client.health()["fleet_potential_freeze"] == 0
        time.sleep(3.2)
        _rejected(fleet, client, "potential freeze", "timestamp")
        h = client.health()
        assert h["fleet_potential_freeze"] == 1
        assert h["fleet_update_not_seen_s"] >= 3
    finally:
        fleet.close()


def test_mix_and_match_across_releases_is_rejected(fleet, tmp_path):
    fleet.release()
    client = fleet.client()
    _applied(fleet, client, 1)
    fork = tmp_path / "fork"
    shutil.copytree(fleet.repo.dir, fork)
    from agent.fleet.repository import FleetRepository

    other = FleetRepository(fork)
    fleet.release(policy_version=2)
    v = fleet.repo.targets().version
    n = 0
    while other.targets().version < v:  # another release with the same version number
        n += 1
        other.add_target(f"policies/other-{n}.yaml", policy_bytes(7), "policy")
    assert other.targets().version == v
    fleet.put(
        fleet.meta_topic(f"{v}.targets.json"), (fork / "metadata" / "targets.json").read_bytes()
    )
    _rejected(fleet, client, "targets")


@pytest.mark.parametrize("how", ["corrupt", "another target"])
def test_target_bytes_must_match_hash_and_length(fleet, how):
    fleet.release()
    client = fleet.client()
    sha = fleet.repo.targets().targets[MODEL_NAME].hashes["sha256"]
    topic = fleet.repo.topics.target(MODEL_NAME, sha)
    if how == "corrupt":
        bad = bytearray(MODEL.read_bytes())
        bad[100] ^= 0xFF
        payload = bytes(bad)
    else:
        payload = policy_bytes(1)  # the policy's bytes served under the model's name
    fleet.put(topic, payload)
    _rejected(fleet, client, MODEL_NAME)
    assert client.store.current() is None


def test_policy_referencing_a_model_outside_the_assignment_is_rejected(fleet):
    fleet.repo.add_target(MODEL_NAME, MODEL.read_bytes(), "model")
    fleet.release(models=False)  # the policy names excursion-v1.onnx; the assignment does not
    client = fleet.client()
    _rejected(fleet, client, "not in this device's assignment")
    assert client.store.current() is None


def test_endless_data_is_capped_before_any_length_is_known(fleet):
    fleet.release()
    client = fleet.client()
    _applied(fleet, client, 1)
    fleet.put(fleet.repo.topics.timestamp, b"{" * (40 * 1024 * 1024))
    t = time.monotonic()
    # The broker never delivers it (Maximum Packet Size in CONNECT): for the gateway
    # there is no timestamp, and nothing large was read.
    _rejected(fleet, client, "no retained message on", "timestamp.json")
    assert time.monotonic() - t < 5
    assert client._session.oversized == 0


def test_replayed_old_retained_message_changes_nothing(fleet):
    fleet.release()
    old_ts = (fleet.repo.dir / "metadata" / "timestamp.json").read_bytes()
    client = fleet.client()
    fleet.release(policy_version=2)
    _applied(fleet, client, 2)
    before = state_snapshot(client)
    fleet.put(fleet.repo.topics.timestamp, old_ts)
    _rejected(fleet, client, "BadVersionNumberError")
    assert state_snapshot(client) == before


def test_configured_trust_root_with_missing_metadata_fails_closed(fleet, tmp_path):
    client = fleet.client()  # nothing published for this fleet
    _rejected(fleet, client, "timestamp")
    assert client.store.current() is None
    with pytest.raises(FleetError, match="trust root"):
        fleet.client(device="gw-2", trusted_root=tmp_path / "missing.json")


def test_kid_never_selects_an_algorithm(fleet):
    fleet.release()
    client = fleet.client()
    _applied(fleet, client, 1)
    fleet.release(policy_version=2)
    ts = fleet.metadata("timestamp.json")
    kid = next(iter(ts.signatures))
    # An ECDSA signature over the right bytes, labelled with the trusted Ed25519 key id.
    ecdsa = CryptoSigner(ec.generate_private_key(ec.SECP256R1()))
    sig = ecdsa.sign(ts.signed_bytes)
    ts.signatures = {kid: Signature(kid, sig.signature)}
    fleet.put(fleet.repo.topics.timestamp, ts.to_bytes(COMPACT))
    _rejected(fleet, client, "UnsignedMetadataError")
