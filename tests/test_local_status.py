"""`edgegov status`: a real agent (subprocess, emulated device on a pty) writes its store,
then the real CLI reports it from the local files alone, without changing a byte."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import Error
from agent.evidence.claims import parse_claims
from agent.evidence.cose import decode_sign1
from agent.pipeline.local_status import local_status
from agent.tools.broker import free_port
from tests.conftest import ROOT
from tests.test_agent_e2e import Device, make_site, wait_for


class AgentProcess:
    """``edgegov run --config CFG`` in a subprocess; stopped with SIGTERM."""

    def __init__(self, cfg: Path) -> None:
        self.log = cfg.parent / "agent.log"
        self._log = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        finally:
            self._log.close()
        assert rc == 0, self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _store_rows(path: Path) -> dict:
    """The store as the test reads it: SQLite directly (immutable: the agent has stopped)."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        origin, next_seq, boots = db.execute(
            "SELECT origin, next_seq, bootcount FROM state"
        ).fetchone()
        seqs = [r[0] for r in db.execute("SELECT seq FROM attestations ORDER BY seq")]
        last = db.execute("SELECT cose FROM attestations ORDER BY seq DESC LIMIT 1").fetchone()
        outbox = [r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq")]
    finally:
        db.close()
    return {
        "origin": origin,
        "next_seq": next_seq,
        "boots": boots,
        "seqs": seqs,
        "last": parse_claims(decode_sign1(bytes(last[0])).claims()),
        "outbox": outbox,
    }


def _fingerprint(state: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(state.iterdir())
    }


def _status(run_cli, cfg: Path, *extra: str) -> tuple[int, dict]:
    r = run_cli("status", "--config", str(cfg), "--json", *extra, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_status_reports_the_store_while_running_and_after_and_changes_nothing(tmp_path, run_cli):
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        agent = AgentProcess(cfg)
        try:
            spool = tmp_path / "spool" / "gw-test"
            assert wait_for(lambda: len(list(spool.glob("*.cose"))) >= 2, 30), (
                agent.log.read_text()[-3000:]
            )
            # while the agent writes: read through its WAL, and it is not behind
            rc, live = _status(run_cli, cfg)
            assert rc == 0, live
            assert live["device"] == "gw-test" and live["last"]["seq"] >= 1
        finally:
            try:
                agent.stop()
            finally:
                agent.kill()

    state = tmp_path / "state"
    store = state / "evidence.sqlite"
    before = _fingerprint(state)
    assert not [n for n in before if n.endswith(("-wal", "-shm"))]  # the agent closed it
    rows = _store_rows(store)
    spooled = sorted(spool.glob("*.cose"))
    last = rows["last"]

    rc, doc = _status(run_cli, cfg)
    assert rc == 0, doc
    assert doc["verdict"] == "ok" and doc["behind"] == [] and doc["degraded"] == []
    assert doc["device"] == "gw-test" and doc["store"] == str(store)
    assert doc["log"] == rows["origin"] == last.checkpoint.origin
    assert doc["bootcount"] == rows["boots"] == last.bootcount == 1
    assert doc["attestations"] == len(rows["seqs"]) == len(spooled) == rows["next_seq"]
    assert doc["last"]["seq"] == rows["seqs"][-1] == last.seq == len(spooled) - 1
    assert doc["last"]["signed_at"] == last.issued_at
    assert doc["last"]["window_ms"] == [last.window_start_ms, last.window_end_ms]
    assert doc["last"]["readings"] == last.readings
    assert doc["window_s"] == 1.0  # the test policy's window
    assert doc["outbox"] == {
        "depth": 0,
        "oldest_seq": None,
        "oldest_signed_at": None,
        "oldest_age_s": None,
    }
    assert rows["outbox"] == []
    (src,) = doc["sources"]
    (attested,) = last.source_health
    assert src["port"] == dev.pty.slave_path and src["device"] == "EMU-0001"
    assert src["readings_ok"] == attested["samples_ok"] and src["offline_at_end"] is False
    assert doc["config_in_force"]["policy"]["sha256"] == last.config.policy_digest
    assert doc["config_in_force"]["models"] == dict(last.config.model_digests)
    assert doc["fleet"] is None

    text = run_cli("status", "--config", str(cfg), timeout=60)
    assert text.returncode == 0, text.stderr
    assert f"last signed   seq {last.seq} at" in text.stdout
    assert rows["origin"] in text.stdout and "0 undelivered" in text.stdout
    assert f"{attested['samples_ok']} reading(s) ok" in text.stdout
    assert text.stdout.rstrip().splitlines()[-1].startswith("verdict: OK")

    # stale: the newest window ended longer ago than the threshold given
    time.sleep(1.2)
    stale = run_cli("status", "--config", str(cfg), "--max-lag", "1", timeout=60)
    assert stale.returncode == 1, stale.stderr
    assert (
        f"BEHIND: the newest signed window (seq {last.seq}) ended" in stale.stdout
        and "more than 1 s (the threshold given): is the agent running?" in stale.stdout
    ), stale.stdout
    rc, doc = _status(run_cli, cfg, "--max-lag", "1")
    assert rc == 1 and doc["verdict"] == "behind" and len(doc["behind"]) == 1

    # reading changed nothing: same bytes, same mtimes, no -wal/-shm left behind
    assert _fingerprint(state) == before

    # windows the store refused, waiting in held-windows.cbor for the next start: degraded
    (state / "held-windows.cbor").write_bytes(b"\xa0")  # status looks for it, reads nothing
    rc, doc = _status(run_cli, cfg)
    assert rc == 1 and doc["verdict"] == "degraded", doc
    assert any("held-windows.cbor holds window(s)" in r for r in doc["degraded"]), doc


def test_a_dead_port_and_an_unreachable_broker_are_degraded_and_behind(tmp_path, run_cli):
    port = str(tmp_path / "no-such-tty")
    cfg = make_site(
        tmp_path, output={"mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"}}, port=port
    )
    agent = AgentProcess(cfg)
    try:

        def signed_two() -> bool:
            try:
                st = local_status(load_config(cfg))
            except Error:
                return False  # no store yet
            return st.last is not None and st.last.seq >= 1

        assert wait_for(signed_two, 30), agent.log.read_text()[-3000:]
        agent.stop()
    finally:
        agent.kill()
    rows = _store_rows(tmp_path / "state" / "evidence.sqlite")
    assert rows["outbox"] == rows["seqs"]  # nothing was delivered

    rc, doc = _status(run_cli, cfg)
    assert rc == 1 and doc["verdict"] == "degraded", doc
    last = rows["last"]
    assert doc["degraded"] == [
        f"source source0 ({port}) was offline at the end of window seq {last.seq} "
        f"({last.source_health[0]['offline_ms']} ms offline in that window)"
    ]
    assert doc["sources"][0]["offline_at_end"] is True and doc["sources"][0]["readings_ok"] == 0
    assert doc["outbox"]["depth"] == len(rows["seqs"]) and doc["outbox"]["oldest_seq"] == 0
    assert doc["behind"] == []  # the defaults allow a broker a few minutes

    r = run_cli("status", "--config", str(cfg), "--max-outbox-age", "0.5", timeout=60)
    assert r.returncode == 1
    assert f"DEGRADED: source source0 ({port}) was offline at the end" in r.stdout
    assert (
        "BEHIND: the oldest undelivered attestation (seq 0) was signed" in r.stdout
        and f"{len(rows['seqs'])} attestation(s) wait in the outbox" in r.stdout
    ), r.stdout
    assert f"outbox        {len(rows['seqs'])} undelivered; oldest seq 0" in r.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_no_store_yet_is_an_input_error_and_creates_nothing(tmp_path, run_cli, as_json):
    cfg = make_site(tmp_path, output={"spool": "spool"}, port="/dev/null")
    r = run_cli("status", "--config", str(cfg), *(["--json"] if as_json else []), timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert f"{tmp_path / 'state' / 'evidence.sqlite'}: no evidence store there" in r.stderr
    assert not (tmp_path / "state").exists()


def test_a_fleet_managed_gateway_shows_the_signed_config_on_disk(tmp_path, run_cli, signer):
    """tuf: configured: the config activated on disk beside the attested one; reading it
    creates none of the fleet client's directories."""
    import yaml

    from agent.fleet.activation import ActiveConfig, ConfigStore, TufVersions, fleet_dir
    from agent.fleet.repository import FleetRepository
    from tests.evidence_util import make_stream

    repo = FleetRepository.init(tmp_path / "repo", "t")
    site = tmp_path / "site"  # (the signer fixture's key is in tmp_path/keys)
    cfg = make_site(site, output={"mqtt": {"url": "mqtt://127.0.0.1:1883"}}, port="/dev/null")
    doc = yaml.safe_load(cfg.read_text())
    doc["tuf"] = {"root": str(repo.dir / "metadata" / "1.root.json"), "group": "cold-stores"}
    cfg.write_text(yaml.safe_dump(doc))
    state = site / "state"

    r = run_cli("status", "--config", str(cfg), timeout=60)
    assert r.returncode == 2 and "no evidence store there" in r.stderr
    assert not state.exists()  # not even the fleet directory

    now_ms = int(time.time() * 1000)
    make_stream(state / "evidence.sqlite", signer, device="gw-test", start_ms=now_ms - 3000)
    store = ConfigStore(fleet_dir(state))
    staged = store.new_staging("v3")
    store.write(staged / "policies" / "cold-chain.yaml", b"id: x\n")
    active = store.activate(
        staged,
        ActiveConfig(staged, 3, "assignments/cold-stores.json", "ab" * 32,
                     "policies/cold-chain.yaml", TufVersions(1, 4, 4, 3),
                     {"policies/cold-chain.yaml": "cd" * 32}, now_ms - 1000),
    )  # fmt: skip
    before = sorted(p.relative_to(state) for p in state.rglob("*"))

    rc, doc = _status(run_cli, cfg)
    assert rc == 0, doc
    assert doc["fleet"] == {
        "root": str(repo.dir / "metadata" / "1.root.json"),
        "group": "cold-stores",
        "active": {
            "directory": str(active.directory),
            "config_version": 3,
            "policy": "policies/cold-chain.yaml",
            "assignment": "assignments/cold-stores.json",
            "tuf": {"root": 1, "timestamp": 4, "snapshot": 4, "targets": 3},
            "targets": {"policies/cold-chain.yaml": "cd" * 32},
            "activated_ms": now_ms - 1000,
        },
    }
    text = run_cli("status", "--config", str(cfg), timeout=60).stdout
    assert (
        "fleet         config v3 on disk (policy policies/cold-chain.yaml; TUF root 1, "
        "timestamp 4, snapshot 4, targets 3)" in text
    ), text
    assert sorted(p.relative_to(state) for p in state.rglob("*")) == before
