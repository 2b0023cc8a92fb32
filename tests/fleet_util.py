"""Fleet test helpers: a real TUF repository, a real broker session, a real client."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from agent.fleet._mqtt import FleetSession
from agent.fleet.client import FleetClient, FleetClientConfig
from agent.fleet.repository import FleetRepository
from agent.tools.broker import MosquittoBroker
from agent.transport.mqtt import BrokerURL

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "configs" / "policies" / "cold-chain.yaml"
MODEL = ROOT / "configs" / "models" / "excursion-v1.onnx"
POLICY_NAME = "policies/cold-chain.yaml"
MODEL_NAME = "models/excursion-v1.onnx"


def policy_bytes(version: int = 1) -> bytes:
    """The cold-chain policy at ``version``, with its one model ``MODEL``.

    The shipped bundle also declares the drift model; the fleet tests are about TUF
    distribution, for which one model target is enough (and keeps each test's targets to
    what it names), so its declaration is cut here.
    """
    text = POLICY.read_text()
    assert "\n  version: 1\n" in text
    text, n = re.subn(r"(?s)\n  - id: drift-anomaly\n.*?\n\n(?=window:)", "\n\n", text)
    assert n == 1, "the drift model's declaration moved: update policy_bytes"
    return text.replace("\n  version: 1\n", f"\n  version: {version}\n").encode()


class Fleet:
    """A repository for fleet ``name`` on ``broker`` and gateway clients for it."""

    def __init__(self, tmp: Path, broker: MosquittoBroker, name: str = "site-a", **init: Any):
        self.tmp = tmp
        self.url = BrokerURL.parse(broker.url)
        self.repo = FleetRepository.init(tmp / "repo", name, **init)
        self.root_v1 = tmp / "root.json"
        self.root_v1.write_bytes((tmp / "repo" / "metadata" / "1.root.json").read_bytes())
        self.session = FleetSession(self.url, f"fleet-manager-{name}").connect()
        self.clients: list[FleetClient] = []
        self._forged = 0

    def release(self, policy_version: int = 1, models: bool = True, device: str = "gw-1") -> None:
        """Add the policy (at ``policy_version``) and model, assign them, sign, publish."""
        self.repo.add_target(POLICY_NAME, policy_bytes(policy_version), "policy")
        if models:
            self.repo.add_target(MODEL_NAME, MODEL.read_bytes(), "model")
        self.repo.assign(POLICY_NAME, [MODEL_NAME] if models else [], device=device)
        self.repo.release()
        self.publish()

    def publish(self) -> None:
        self.session.publish_many(self.repo.messages(), retain=True, content_type="x")

    def put(self, topic: str, payload: bytes) -> None:
        self.session.publish(topic, payload, retain=True, content_type="x")

    def meta_topic(self, filename: str) -> str:
        return self.repo.topics.metadata(filename)

    def metadata(self, filename: str) -> Metadata[Any]:
        return Metadata.from_bytes((self.repo.dir / "metadata" / filename).read_bytes())

    def resign(self, md: Metadata[Any], *key_names: str) -> bytes:
        md.signatures.clear()
        for n in key_names:
            md.sign(self.repo.signer(n), append=True)
        return md.to_bytes(JSONSerializer(compact=True))

    def serve_forged(self, role: str, forged: bytes) -> None:
        """Publish ``forged`` as the current version of targets role ``role``, with a
        snapshot and timestamp (signed by the real online keys) that name its hash,
        so that only the forged file's own signatures decide."""
        import hashlib

        from tuf.api.metadata import MetaFile

        version = int(json.loads(forged)["signed"]["version"])
        self.put(self.meta_topic(f"{version}.{role}.json"), forged)
        self._forged += 1  # each forgery is a new snapshot and timestamp version
        snap = self.metadata("snapshot.json")
        snap.signed.version += self._forged
        snap.signed.meta[f"{role}.json"] = MetaFile(
            version, len(forged), {"sha256": hashlib.sha256(forged).hexdigest()}
        )
        raw = self.resign(snap, "snapshot-1")
        self.put(self.meta_topic(f"{snap.signed.version}.snapshot.json"), raw)
        ts = self.metadata("timestamp.json")
        ts.signed.version += self._forged
        ts.signed.snapshot_meta = MetaFile(
            snap.signed.version, len(raw), {"sha256": hashlib.sha256(raw).hexdigest()}
        )
        self.put(self.repo.topics.timestamp, self.resign(ts, "timestamp-1"))

    def client(self, device: str = "gw-1", **kw: Any) -> FleetClient:
        kw.setdefault("trusted_root", self.root_v1)
        cfg = FleetClientConfig(
            device, self.repo.topics.fleet, self.url, state_dir=self.tmp / device, **kw
        )
        c = FleetClient(cfg).connect()
        self.clients.append(c)
        return c

    def ack(self, device: str = "gw-1") -> dict[str, Any]:
        raw = self.session.read_retained(self.repo.topics.ack(device))
        assert raw is not None, "no ack"
        return dict(json.loads(raw))

    def close(self) -> None:
        for c in self.clients:
            c.stop()
        self.session.close()


def state_snapshot(client: FleetClient) -> dict[str, bytes]:
    """Every file of the client's trusted metadata and config in force (bytes)."""
    out = {}
    for p in sorted(client.root_dir.rglob("*")):
        if p.is_file() and "staging" not in p.parts:
            out[str(p.relative_to(client.root_dir))] = p.read_bytes()
    link = client.root_dir / "current"
    if link.is_symlink():
        out["current ->"] = str(link.readlink()).encode()
    return out
