"""Fleet configuration: activating a signed config with a 1 MB model (target ≤ 1 s).

End to end on a private Mosquitto: python-tuf refresh (root, timestamp,
snapshot, targets, the device's delegated role), the assignment, the policy and
a 1 MB ONNX model read from retained messages and checked by hash and length,
the policy compiled, the model loaded by onnxruntime, staged, fsynced and
switched. Each round alternates between two releases, so every round is a
full installation. Beside it: the switch alone (stage + fsync + rename) and a
raw SHA-256 over the same megabyte, for scale.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tempfile
import time
from importlib import resources
from pathlib import Path

from agent.tools.bench.core import Row, timeit, verdict

_MB = 1_000_000


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


@functools.cache
def _model_1mb() -> bytes:
    """The shipped model padded to 1 MB with an unknown protobuf field (parsers skip it)."""
    raw = (resources.files("configs") / "models" / "excursion-v1.onnx").read_bytes()
    pad = _MB - len(raw) - 10
    return raw + _varint((1000 << 3) | 2) + _varint(pad) + b"\0" * pad


def _policy(model: bytes, version: int) -> bytes:
    text = (resources.files("configs") / "policies" / "cold-chain.yaml").read_text()
    # the first model (excursion) becomes the 1 MB one; the drift model stays as shipped
    text = re.sub(r'sha256:\s*"?[0-9a-f]{64}"?', f'sha256: "{hashlib.sha256(model).hexdigest()}"',
                  text, count=1)  # fmt: skip
    return text.replace("\n  version: 1\n", f"\n  version: {version}\n").encode()


def _activation(rounds: int) -> tuple[float, float]:
    """(best, median) seconds of one full update-and-activate."""
    from agent.fleet._mqtt import FleetSession
    from agent.fleet.client import FleetClient, FleetClientConfig
    from agent.fleet.repository import FleetRepository
    from agent.tools.broker import MosquittoBroker
    from agent.transport.mqtt import BrokerURL

    model = _model_1mb()
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(Path(tmp) / "b") as broker:
        url = BrokerURL.parse(broker.url)
        repo = FleetRepository.init(Path(tmp) / "repo", "bench")
        repo.add_target("models/excursion-v1.onnx", model, "model")
        drift = (resources.files("configs") / "models" / "drift-v1.onnx").read_bytes()
        repo.add_target("models/drift-v1.onnx", drift, "model")
        root = Path(tmp) / "repo" / "metadata" / "1.root.json"
        client = FleetClient(FleetClientConfig("gw", "bench", url, root, Path(tmp) / "gw"))
        client.connect()
        times = []
        with FleetSession(url, "bench-publisher") as pub:
            for i in range(rounds + 1):
                repo.add_target("policies/cold-chain.yaml", _policy(model, 1 + i % 2), "policy")
                models = ["models/excursion-v1.onnx", "models/drift-v1.onnx"]
                repo.assign("policies/cold-chain.yaml", models, device="gw")
                repo.release()
                pub.publish_many(repo.messages(), retain=True, content_type="x")
                t0 = time.perf_counter()
                out = client.update()
                dt = time.perf_counter() - t0
                if out.state != "applied":
                    raise RuntimeError(f"bench activation was {out.state}: {out.reason}")
                if i:  # round 0 warms up imports (policy compiler, onnxruntime)
                    times.append(dt)
        client.stop()
    times.sort()
    return times[0], times[len(times) // 2]


def _switch_only() -> float:
    from agent.fleet.activation import ActiveConfig, ConfigStore, TufVersions, staged_path

    model = _model_1mb()
    with tempfile.TemporaryDirectory() as tmp:
        store = ConfigStore(Path(tmp))
        n = [0]

        def once() -> None:
            n[0] += 1
            staged = store.new_staging("b")
            store.write(staged_path(staged, "models/m.onnx", "model"), model)
            cfg = ActiveConfig(staged, n[0], "a", "0" * 64, "policies/p.yaml",
                               TufVersions(1, 1, 1, 1), {}, n[0])  # fmt: skip
            store.activate(staged, cfg)

        return timeit(once, 1, repeat=3, min_time=0.2)


def run(quick: bool = False) -> list[Row]:
    from agent.tools.broker import find_mosquitto

    model = _model_1mb()
    rows = [Row("fleet", "sha256 of 1 MB", timeit(lambda: hashlib.sha256(model).digest(), 1),
                "MB/s")]  # fmt: skip
    rows.append(Row("fleet", "switch only (stage 1 MB+fsync+rename)", _switch_only(),
                    "configs/s"))  # fmt: skip
    if find_mosquitto() is None:
        rows.append(Row("fleet", "activate 1 MB model", 0.0, "configs/s",
                        note="not measured: mosquitto is not installed"))  # fmt: skip
        return rows
    best, median = _activation(3 if quick else 7)
    met = verdict(median <= 1.0)
    rows.append(
        Row(
            "fleet",
            "activate 1 MB model (TUF+verify+stage+switch)",
            1 / median,
            "configs/s",
            note=f"median {median * 1000:.0f} ms, best {best * 1000:.0f} ms; "
            f"target <= 1000 ms: {met}",
        )
    )
    return rows
