"""Real agents (emulated devices on ptys) against a broker or a cluster, collectors into
one SQLite store, and what the store then holds: shared by tests/test_any_broker.py and
tests/test_nats_cluster.py.

Nothing here is a fake: each :class:`Gateway` is the whole agent (pty, pyserial, policy,
onnxruntime, Ed25519 COSE, SQLite outbox, paho) in a thread of the test process.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from agent.config import load_config
from agent.pipeline.runner import Agent, AgentStats
from tests.test_agent_e2e import Device, make_site

FLEET = "t"


class Gateway:
    """One agent named ``device`` on its own emulated device, publishing to ``urls`` (in
    that order) in MQTT ``version``, in a thread; a context manager that stops it."""

    def __init__(self, root: Path, device: str, urls: Sequence[str], version: str) -> None:
        self.device_id = device
        self.dev = Device("normal").__enter__()
        try:
            output = {"mqtt": {"url": list(urls), "version": version}}
            cfg = make_site(root / device, output=output, port=self.dev.pty.slave_path)
            site = yaml.safe_load(cfg.read_text())
            site["device"]["id"] = device
            cfg.write_text(yaml.safe_dump(site))
            self.agent = Agent(load_config(cfg))
        except BaseException:
            self.dev.__exit__()
            raise
        self.public_pem = root / f"{device}.pub.pem"
        self.public_pem.write_bytes(self.agent.signer.public.pem())
        self._result: list[AgentStats] = []
        self._thread = threading.Thread(
            target=lambda: self._result.append(self.agent.run()), name=device, daemon=True
        )

    def __enter__(self) -> Gateway:
        self._thread.start()
        return self

    def stop(self) -> AgentStats:
        """Stop the agent (it drains what it can), then its device; its final figures."""
        self.agent.stop()
        self._thread.join(30)
        self.dev.__exit__()
        assert self._result, f"{self.device_id}: the agent did not stop within 30 s"
        return self._result[0]

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()
        else:
            self.dev.__exit__()


class Store:
    """Read-only look at a collector SQLite store (``collected``: one row per distinct
    (device, seq, digest), ``id`` in the order they were first stored)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []
        finally:
            db.close()

    def seqs(self, device: str) -> list[int]:
        """Device's seqs in the order first stored (one per row)."""
        rows = self._rows("SELECT seq FROM collected WHERE device = ? ORDER BY id", device)
        return [int(str(r[0])) for r in rows]

    def count(self, device: str) -> int:
        return len(self.seqs(device))

    def by_collector(self) -> dict[str, int]:
        rows = self._rows("SELECT collector, COUNT(*) FROM collected GROUP BY collector")
        return {str(c): int(str(n)) for c, n in rows}


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll pred() every 50 ms; the seconds it took, or AssertionError naming ``what``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def verify_store(
    run_cli: Callable[..., subprocess.CompletedProcess[str]], store: Path, keys: Sequence[Path]
) -> dict[str, object]:
    """``edgegov audit verify --store`` with every gateway's key; its JSON verdict."""
    args = [a for k in keys for a in ("--key", str(k))]
    r = run_cli("audit", "verify", "--store", f"sqlite:///{store}", *args, "--json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out
