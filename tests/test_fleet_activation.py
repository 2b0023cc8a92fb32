"""Atomic activation: ``kill -9`` at random moments leaves the old or the new config."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.fleet.activation import ConfigStore, staged_path

# The child activates config A and config B in turn, forever (1 MB model each).
CHILD = r"""
import hashlib, sys
from pathlib import Path
from agent.fleet.activation import ActiveConfig, ConfigStore, TufVersions, staged_path

store = ConfigStore(Path(sys.argv[1]))
files = {
    v: {"policies/p.yaml": f"policy {v}\n".encode() * 100, "models/m.onnx": bytes([v]) * 1_000_000}
    for v in (1, 2)
}
n = 0
while True:
    v = 1 + n % 2
    staged = store.new_staging(f"v{v}")
    digests = {}
    for name, data in files[v].items():
        kind = "policy" if name.startswith("policies") else "model"
        store.write(staged_path(staged, name, kind), data)
        digests[name] = hashlib.sha256(data).hexdigest()
    cfg = ActiveConfig(staged, v, "assignments/devices/gw.json", "ab" * 32, "policies/p.yaml",
                       TufVersions(1, v, v, v), digests, n)
    store.activate(staged, cfg)
    n += 1
    if n == 1:
        print("first", flush=True)
"""


def _check_in_force(root: Path) -> int:
    store = ConfigStore(root)  # also clears a half-written staging directory
    cfg = store.current()
    assert cfg is not None
    assert cfg.config_version in (1, 2)
    for name, digest in cfg.targets.items():
        kind = "policy" if name.startswith("policies") else "model"
        data = staged_path(cfg.directory, name, kind).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} of v{cfg.config_version}"
        assert set(data[:1]) <= {cfg.config_version, ord("p")}
    assert cfg.tuf.timestamp == cfg.config_version  # manifest and files are one config
    assert list(store.staging.iterdir()) == []
    return cfg.config_version


def test_kill_9_during_activation_leaves_old_or_new_never_a_mix(tmp_path):
    root = tmp_path / "fleet"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    rng = random.Random(7)
    seen = set()
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, env=env
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"first\n"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        seen.add(_check_in_force(root))
    assert seen <= {1, 2}
    assert len(list((root / "configs").iterdir())) <= 4  # old configs are pruned


def test_activating_a_config_with_a_1mb_model_takes_under_a_second():
    from agent.tools.bench.fleet import _activation

    _best, median = _activation(2)  # real broker, python-tuf, policy compiler, onnxruntime
    assert median <= 1.0, f"median {median:.3f} s"
