"""Storage faults are never stuck and never silent (issue 12, observation 5).

Real SQLite files, real signatures, the real agent as a subprocess on a real pty; the
faults are made as they happen on a gateway: a state row edited or an older copy of the
store put back, the store deleted or emptied, a filesystem that fills up (a small tmpfs,
as root), a store another process keeps write-locked, random byte flips in the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import numpy as np
import pytest
import yaml

from agent.audit import verify_paths
from agent.audit.replay import replay
from agent.audit.trust import TrustedKey, TrustStore
from agent.audit.verify import verify_messages
from agent.config import load_config
from agent.errors import EvidenceAtRiskError, StorageError, StoreCorruptError
from agent.evidence.attester import Attester
from agent.evidence.claims import ConfigInForce
from agent.evidence.leaves import decode_record
from agent.evidence.log_head import read_log_head
from agent.evidence.store import EvidenceStore
from agent.evidence.store_reader import read_retained, stored_records
from agent.identity.keys import Signer, generate_key, load_public_key
from agent.pipeline.evaluate import WindowVerdicts
from agent.pipeline.held_windows import FILE as HELD
from agent.pipeline.held_windows import RESERVE, HeldWindows, decode_held, encode_held
from agent.pipeline.runner import Agent
from agent.pipeline.window import Window
from agent.policy import load_policy
from agent.policy.evaluator import BatchResult, Episode
from agent.sources.reading import Reading
from agent.tools.bench.faults.storage import fill_filesystem
from tests.agent_process import AgentProcess, agent_env, spool_evidence
from tests.test_agent_e2e import Device, make_site

# -- the chain state against the stored attestations (store level) ---------------------


def _signed_store(tmp: Path, windows: int = 5, readings: int = 10) -> tuple[Path, Signer]:
    """A store with ``windows`` real attestations (and their readings), closed."""
    signer = generate_key(tmp / "device.key")
    path = tmp / "state" / "evidence.sqlite"
    store = EvidenceStore(path, "gw", public_key=signer.public)
    attester = Attester("gw", signer, store, "t")
    config = ConfigInForce("p", 1, "00" * 32, {}, 0)
    for i in range(windows):
        rs = [Reading(i * 1000 + j, j, 0, j, (4.0, 50.0, 0.0)) for j in range(readings)]
        attester.attest((i * 1000, i * 1000 + 1000), rs, config, (), (), {}, ())
    store.close()
    return path, signer


def _state(path: Path) -> tuple:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM state").fetchone()
    finally:
        db.close()


def _sql(path: Path, *statements: str, args: tuple = ()) -> None:
    db = sqlite3.connect(path)
    try:
        for s in statements:
            db.execute(s, args if "?" in s else ())
        db.commit()
    finally:
        db.close()


def _cose(path: Path, seq: int) -> bytes:
    db = sqlite3.connect(path)
    try:
        return bytes(
            db.execute("SELECT cose FROM attestations WHERE seq = ?", (seq,)).fetchone()[0]
        )
    finally:
        db.close()


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE state SET next_seq = 1",  # the case: signed nothing, forever
        "UPDATE state SET next_seq = 0, prev = NULL, log_size = 0, log_nodes = x'80'",
        "UPDATE state SET log_size = 3",  # prev and next_seq right, log state wrong
        "DELETE FROM state",  # the row gone, the attestations there
    ],
)
def test_a_state_row_behind_its_verified_attestations_is_rebuilt_from_them(tmp_path, edit):
    path, signer = _signed_store(tmp_path)
    good = _state(path)
    _sql(path, edit)
    store = EvidenceStore(path, "gw", public_key=signer.public)
    try:
        assert store.rebuilt is not None and "each verified with the device key" in store.rebuilt
        assert "the log continues at seq 5" in store.rebuilt
        s = store.state
        assert (s.origin, s.next_seq, s.prev, s.log.size) == good[1:5]
        assert s.log.nodes == tuple(cbor2.loads(good[5]))
        assert not store.new_log and store.new_log_reason is None
    finally:
        store.close()
    # the next attestation follows seq 4: one chain, every signature good
    store = EvidenceStore(path, "gw", public_key=signer.public)
    Attester("gw", signer, store, "t").attest(
        (5000, 6000), [], ConfigInForce("p", 1, "00" * 32, {}, 0), (), (), {}, ()
    )
    store.close()
    res = verify_messages([(_cose(path, s), f"seq {s}", None) for s in range(6)], [signer.public])
    assert res.ok and res.verified == 6, [str(f) for f in res.findings]


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("raised", "the state row says seq 8 was signed"),
        ("older-copy", "log-head.json says seq 4 was signed"),
        ("rows-deleted", "log-head.json says seq 4 was signed"),
        ("prev-unknown", "Its prev matches no stored attestation"),
        ("readings-gone", "the Merkle log state after seq 4 cannot be rebuilt"),
        ("foreign-key", "attestation seq 3 does not verify with the device key"),
        ("hole", "attestations are missing from the store (seq 0..4 expected, 4 there)"),
    ],
)
def test_a_state_that_the_attestations_do_not_prove_is_refused_and_nothing_written(
    tmp_path, fault, says
):
    path, signer = _signed_store(tmp_path)
    key = signer.public
    if fault == "raised":
        _sql(path, "UPDATE state SET next_seq = 9")
    elif fault == "older-copy":  # a backup from seq 2 put back: consistent in itself
        shutil.rmtree(path.parent)
        path, signer = _signed_store(tmp_path / "x", windows=3)
        copy = tmp_path / "copy.sqlite"
        shutil.copy(path, copy)
        store = EvidenceStore(path, "gw", public_key=signer.public)
        attester = Attester("gw", signer, store, "t")
        config = ConfigInForce("p", 1, "00" * 32, {}, 0)
        for i in (3, 4):
            attester.attest((i * 1000, i * 1000 + 1000), [], config, (), (), {}, ())
        store.close()
        shutil.copy(copy, path)
        key = signer.public
    elif fault == "rows-deleted":
        _sql(path, "DELETE FROM attestations WHERE seq = 4", "UPDATE state SET next_seq = 4")
    elif fault == "prev-unknown":
        _sql(path, "UPDATE state SET prev = ?", args=(b"\x01" * 32,))
    elif fault == "readings-gone":
        _sql(path, "UPDATE state SET log_size = 3", "DELETE FROM window_readings WHERE seq = 4")
    elif fault == "foreign-key":
        _sql(path, "UPDATE state SET next_seq = 4")
        key = generate_key(tmp_path / "other.key").public
    else:
        _sql(path, "DELETE FROM attestations WHERE seq = 2")
    before = _state(path)
    with pytest.raises(StorageError) as e:
        EvidenceStore(path, "gw", public_key=key)
    msg = str(e.value)
    assert says in msg, msg
    assert "the chain state disagrees with the attestations stored" in msg
    assert "Nothing was written. To recover:" in msg and "begins a new evidence log" in msg
    assert _state(path) == before  # not even a boot counted


def test_a_state_row_ahead_names_the_fork_it_would_make(tmp_path):
    path, signer = _signed_store(tmp_path)
    _sql(path, "UPDATE state SET next_seq = 9")
    with pytest.raises(StorageError, match=r"would sign a second, different seq 5 \(a fork\)"):
        EvidenceStore(path, "gw", public_key=signer.public)


@pytest.mark.parametrize("edit", ["lowered", "raised"])
def test_the_agent_continues_from_a_rebuilt_state_or_refuses_to_start(tmp_path, edit, run_cli):
    """The issue's case through the real agent: with next_seq lowered it signed nothing,
    forever, and dropped its windows at SIGTERM. Now it rebuilds the state from the verified
    attestations and the chain continues; with next_seq raised it refuses (exit 2)."""
    state = tmp_path / "state"
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        first = AgentProcess(cfg, env=agent_env())
        try:
            first.wait_log("attestation seq 2 signed")
        finally:
            assert first.stop() == 0
        last = _state(state / "evidence.sqlite")[2] - 1
        _sql(
            state / "evidence.sqlite",
            f"UPDATE state SET next_seq = {1 if edit == 'lowered' else 40}",
        )
        if edit == "raised":
            before = _state(state / "evidence.sqlite")
            r = run_cli("run", "--config", str(cfg))
            assert r.returncode == 2, r.stderr
            assert "the state row says seq 39 was signed" in r.stderr
            assert f"would sign a second, different seq {last + 1} (a fork)" in r.stderr
            assert _state(state / "evidence.sqlite") == before
            return
        second = AgentProcess(cfg, env=agent_env())
        try:
            text = second.wait_log(f"attestation seq {last + 2} signed")
        finally:
            assert second.stop() == 0, second.text()[-3000:]
    rebuilt = (
        f"rebuilt from attestations seq 0..{last}, each verified with the device key: "
        f"the log continues at seq {last + 1}"
    )
    assert rebuilt in text
    assert "UNIQUE constraint failed" not in text
    res = verify_paths(
        [tmp_path / "spool"], [load_public_key(tmp_path / "keys" / "device.pub.pem")]
    )
    assert res.ok, [str(f) for f in res.findings]
    assert res.verified == len(spool_evidence(tmp_path / "spool")) >= last + 3


def test_log_head_names_the_newest_commit(tmp_path):
    path, _ = _signed_store(tmp_path, windows=3)
    head = read_log_head(path.parent)
    assert head is not None and head.seq == 2
    assert head.digest == hashlib.sha256(_cose(path, 2)).digest()
    assert head.describe() == f"{_state(path)[1]} seq 2 head sha256:{head.digest.hex()}"


# -- free space only where it is the point ----------------------------------------------


def test_the_free_space_note_is_only_on_a_full_disk(tmp_path):
    path, signer = _signed_store(tmp_path, windows=1)
    store = EvidenceStore(path, "gw", public_key=signer.public)
    attester = Attester("gw", signer, store, "t")
    cfg = ConfigInForce("p", 1, "00" * 32, {}, 0)
    try:
        # another writer put a row where the next one goes: a constraint error, not a full disk
        _sql(path, "INSERT INTO outbox VALUES (1, 't', x'00')")
        with pytest.raises(StorageError) as e:
            attester.attest((1000, 2000), [], cfg, (), (), {}, ())
        assert "UNIQUE constraint failed: outbox.seq" in str(e.value)
        assert "KiB free" not in str(e.value)
        _sql(path, "DELETE FROM outbox WHERE seq = 1")
        # SQLITE_FULL (the file may not grow): now the free space is what the operator needs
        with store._lock:  # test-only: cap the database at its size
            pages = store._db.execute("PRAGMA page_count").fetchone()[0]
            store._db.execute(f"PRAGMA max_page_count = {pages}")
        rs = [Reading(1000 + j, j, 0, j, (4.0, 50.0, 0.0)) for j in range(2000)]
        with pytest.raises(StorageError) as e:
            attester.attest((1000, 2000), rs, cfg, (), (), {}, ())
        assert re.search(
            r"database or disk is full \(\d+ KiB free on that filesystem\)$", str(e.value)
        ), e.value
    finally:
        store.close()


# -- corruption ---------------------------------------------------------------------------


def _flip(path: Path, flips: int = 200, seed: int = 12) -> None:
    """``flips`` random bit flips past the first page (the header stays intact), each in
    the first bytes of a page: its b-tree header or overflow chain, which SQLite checks
    (a flip inside a record's bytes is the Merkle log's to find, not SQLite's)."""
    data = bytearray(path.read_bytes())
    rnd = random.Random(seed)
    for _ in range(flips):
        i = rnd.randrange(1, len(data) // 4096) * 4096 + rnd.randrange(8)
        data[i] ^= 1 << rnd.randrange(8)
    path.write_bytes(bytes(data))


def test_a_corrupt_store_is_refused_at_start_with_the_sqlite_findings_and_the_way_out(
    tmp_path, run_cli
):
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        agent = AgentProcess(cfg, env=agent_env())
        try:
            agent.wait_log("attestation seq 3 signed")
        finally:
            assert agent.stop() == 0, agent.text()[-2000:]
    path = tmp_path / "state" / "evidence.sqlite"
    assert not Path(f"{path}-wal").exists()  # closed cleanly: everything is in the file
    _flip(path)
    flipped = path.read_bytes()
    r = run_cli("run", "--config", str(cfg))
    assert r.returncode == 2, r.stderr
    err = r.stderr
    assert f"edgegov: error: {path}: the evidence store is corrupt (SQLite: " in err, err
    assert "nothing more is written to it. To recover:" in err and ".recover" in err
    assert path.read_bytes() == flipped


def test_corruption_found_while_running_alerts_saves_the_held_windows_and_stops(tmp_path):
    """The scheduled quick_check finds the file damaged under the running agent: it alerts,
    stops with exit status 3 (EvidenceAtRiskError), keeps what it held; the start check then
    refuses the store, and once the operator moves it aside a new log signs the held windows
    and names the damaged log."""
    state = tmp_path / "state"
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        agent = Agent(load_config(cfg))
        failure: list[BaseException] = []

        def run() -> None:
            try:
                agent.run()
            except BaseException as e:
                failure.append(e)

        worker = threading.Thread(target=run)
        worker.start()
        try:
            deadline = time.monotonic() + 20
            while agent.stats.attestations < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            db = sqlite3.connect(state / "evidence.sqlite", timeout=10)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
            db.close()
            _flip(state / "evidence.sqlite")
            agent.store.integrity_check_s = 0.0  # the hourly check, due now
            worker.join(timeout=20)
        finally:
            agent.stop()
            worker.join(timeout=20)
    assert len(failure) == 1 and isinstance(failure[0], EvidenceAtRiskError), failure
    assert failure[0].exit_code == 3 and "the evidence store is corrupt" in str(failure[0])
    alerts_file = tmp_path / "spool" / "gw-test" / "alerts.jsonl"
    alerts = [json.loads(x) for x in alerts_file.read_text().splitlines()]
    corrupt = [a for a in alerts if a["event"] == "storage_corrupt"]
    assert len(corrupt) == 1 and "is corrupt (SQLite: " in corrupt[0]["reason"]
    assert (state / HELD).is_file()
    held = decode_held(
        (state / HELD).read_bytes(), agent.signer.public, 3, [r.id for r in agent.policy.rules]
    )
    assert held.windows and held.readings > 0

    restart = AgentProcess(cfg, env=agent_env())
    assert restart.proc.wait(60) == 2
    restart.stop()
    assert "the evidence store is corrupt" in restart.text()

    # the operator's way out: the damaged files aside, a new log that names the old one
    old_head = read_log_head(state)
    assert old_head is not None
    aside = tmp_path / "damaged"
    aside.mkdir()
    for f in state.glob("evidence.sqlite*"):
        f.rename(aside / f.name)
    with Device("normal") as dev:
        _port(cfg, dev.pty.slave_path)
        again = AgentProcess(cfg, env=agent_env())
        try:
            text = again.wait_log("the held windows are signed")
            again.wait_log("attestation seq 2 signed")
        finally:
            assert again.stop() == 0, again.text()[-3000:]
    assert "was missing while state of an earlier log was there: log-head.json" in text
    assert f"previous log: {old_head.describe()}" in text
    assert f"signing {len(held.windows)} window(s) with {held.readings} reading(s)" in text
    new = spool_evidence(tmp_path / "spool" / "gw-test")
    assert new[0].seq == 0 and new[0].checkpoint.origin != old_head.origin
    recovered = new[: len(held.windows)]
    assert [(e.window_start_ms, e.readings) for e in recovered] == [
        (w.start_ms, w.n) for w, _ in held.windows
    ]
    assert all(any("signed after the restart" in d for d in e.degraded) for e in recovered)
    res = verify_paths([tmp_path / "spool" / "gw-test"], [agent.signer.public])
    assert res.ok, [str(f) for f in res.findings]


def _port(cfg: Path, port: str) -> None:
    data = yaml.safe_load(cfg.read_text())
    data["sources"][0]["port"] = port
    cfg.write_text(yaml.safe_dump(data))


# -- a store that went missing, or was emptied ---------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_store_starts_a_new_log_that_names_the_old_one_and_carries_none_of_its_state(
    tmp_path, how
):
    state = tmp_path / "state"
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        first = AgentProcess(cfg, env=agent_env())
        try:
            first.wait_log("attestation seq 2 signed")
        finally:
            assert first.stop() == 0
        old = read_log_head(state)
        assert old is not None and (state / "policy-state.bin").is_file()
        path = state / "evidence.sqlite"
        if how == "deleted":
            path.unlink()
        else:
            tables = ("state", "attestations", "window_readings", "outbox")
            _sql(path, *(f"DELETE FROM {t}" for t in tables))
        second = AgentProcess(cfg, "--log-format", "json", env=agent_env())
        try:
            second.wait_log("attestation seq 2 signed")
        finally:
            assert second.stop() == 0
    lines = second.json_lines()
    (new_log,) = [x for x in lines if x["message"].startswith("starting a new evidence log")]
    what = "was missing" if how == "deleted" else "was empty (no chain state)"
    assert new_log["level"] == "warning"
    assert new_log["reason"] == (
        f"evidence store evidence.sqlite {what} while state of an earlier log was there: "
        "log-head.json, policy-state.bin, 0000000000.cose"
    )
    assert new_log["previous_log"] == old.describe()
    # the old log's state went aside with its id; nothing of it was carried over
    tag = old.origin.rsplit("/", 1)[1]
    assert (state / f"policy-state.bin.{tag}").is_file()
    old_spool = tmp_path / "spool" / f"gw-test.{tag}"
    assert len(list(old_spool.glob("*.cose"))) == old.seq + 1  # not overwritten by the new log
    new = spool_evidence(tmp_path / "spool" / "gw-test")
    assert new[0].seq == 0 and new[0].checkpoint.origin != old.origin
    assert new[0].restart is not None  # signed: why the log is new, and which log it follows
    assert (new[0].restart.new_log, new[0].restart.previous_log) == (
        new_log["reason"],
        old.describe(),
    )
    assert all(e.restart is None for e in new[1:])
    pub = load_public_key(tmp_path / "keys" / "device.pub.pem")
    for spool in (old_spool, tmp_path / "spool" / "gw-test"):
        res = verify_paths([spool], [pub])
        assert res.ok, [str(f) for f in res.findings]
    # the new log replays from a fresh evaluator (the old log's state would say "seq -1")
    trust = TrustStore()
    trust.add(TrustedKey(pub, None, "device"))
    bundle = load_policy(tmp_path / "policies" / "cold-chain.yaml")
    rep = replay(state / "evidence.sqlite", bundle, trust, [0, 1, 2])
    assert rep.ok and rep.start_seq == 0, rep.text()


# -- windows the store refuses, at stop ----------------------------------------------------


@contextlib.contextmanager
def _write_locked(path: Path) -> Iterator[None]:
    """Another process holds the store's write lock: every write of the agent fails
    (SQLITE_BUSY, after the store's busy timeout)."""
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "db.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        yield
    finally:
        assert locker.stdin is not None and locker.stdout is not None
        locker.stdin.close()
        locker.stdout.close()
        locker.wait(10)


def _all_verified(tmp_path: Path, total_readings: int) -> list:
    evidence = spool_evidence(tmp_path / "spool")
    pub = load_public_key(tmp_path / "keys" / "device.pub.pem")
    res = verify_paths([tmp_path / "spool"], [pub])
    assert res.ok, [str(f) for f in res.findings]
    assert res.verified == len(evidence) and len({e.checkpoint.origin for e in evidence}) == 1
    assert sum(e.readings for e in evidence) == total_readings
    db = sqlite3.connect(tmp_path / "state" / "evidence.sqlite")
    try:
        records = [decode_record(r) for r in stored_records(db)]
    finally:
        db.close()
    assert len(records) == total_readings
    once = {(r.source, r.frame_seq, r.device_ms) for r in records}
    assert len(once) == len(records), "a reading was signed twice"
    trust = TrustStore()
    trust.add(TrustedKey(pub, None, "device"))
    bundle = load_policy(tmp_path / "policies" / "cold-chain.yaml")
    rep = replay(tmp_path / "state" / "evidence.sqlite", bundle, trust, range(len(evidence)))
    assert rep.ok, rep.text()  # same state digests and risk scores across the held windows
    return evidence


def test_windows_a_locked_store_refuses_are_saved_at_stop_and_signed_at_the_next_start(tmp_path):
    state = tmp_path / "state"
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        first = AgentProcess(cfg, "--log-format", "json", env=agent_env())
        try:
            first.wait_log("attestation seq 1 signed")
            with _write_locked(state / "evidence.sqlite"):
                first.wait_log("window(s) held in memory", timeout=30)
                assert first.stop(timeout=60) == 0, first.text()[-3000:]
        finally:
            first.stop()
        saved = [x for x in first.json_lines() if "saved to" in x["message"]]
        assert len(saved) == 1 and saved[0]["level"] == "warning", first.text()[-3000:]
        assert (state / HELD).is_file()
        second = AgentProcess(cfg, "--log-format", "json", env=agent_env())
        try:
            text = second.wait_log("the held windows are signed")
            second.wait_log("attestation seq", after=len(text))  # and live windows after them
        finally:
            assert second.stop() == 0, second.text()[-3000:]
    assert not (state / HELD).exists()
    (resumed,) = [x for x in second.json_lines() if x["message"].startswith("signing ")]
    assert resumed["windows_held"] == saved[0]["windows_held"] >= 1
    assert resumed["readings_held"] == saved[0]["readings_held"] > 0
    evidence = _all_verified(tmp_path, _signed_readings(first) + _signed_readings(second))
    marked = [e for e in evidence if any("signed after the restart" in d for d in e.degraded)]
    assert len(marked) == saved[0]["windows_held"]
    assert sum(e.readings for e in marked) == saved[0]["readings_held"]


def _signed_readings(agent: AgentProcess) -> int:
    """Readings in the windows the agent logged as signed."""
    lines = agent.json_lines()
    return sum(x["readings"] for x in lines if x["message"].startswith("attestation seq"))


# -- a full disk (a small tmpfs; root only) -------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mount failed: {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.parametrize("save", ["saved", "lost"])
def test_a_full_disk_at_stop_keeps_the_held_windows_or_says_how_many_were_lost(tmp_path, save):
    """ENOSPC, for real. The reserve beside the store gives the held windows room; where
    even that cannot be used (the state directory made immutable as well), the agent says
    how many windows and readings are lost and exits 3."""
    state = tmp_path / "state"
    with _tmpfs(state, "6m"), Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        first = AgentProcess(cfg, "--log-format", "json", env=agent_env())
        try:
            first.wait_log("attestation seq 1 signed")
            assert (state / RESERVE).stat().st_blocks * 512 >= 1 << 20  # really allocated
            filler = fill_filesystem(state)
            assert os.statvfs(state).f_bavail == 0
            text = first.wait_log("window(s) held in memory", timeout=30)
            assert "database or disk is full (0 KiB free on that filesystem)" in text
            if save == "lost":
                subprocess.run(["chattr", "+i", str(state)], check=True)
            code = first.stop(timeout=60)
        finally:
            first.stop()
        subprocess.run(["chattr", "-i", str(state)], check=True)
        lines = [json.loads(x) for x in first.text().splitlines() if x.startswith("{")]
        if save == "lost":
            assert code == 3, first.text()[-3000:]
            (lost,) = [x for x in lines if "are LOST" in x["message"]]
            assert lost["level"] == "error" and lost["windows_lost"] >= 1
            assert lost["readings_lost"] > 0
            counts = f"{lost['windows_lost']} window(s) with {lost['readings_lost']} reading(s)"
            assert counts in lost["message"]
            assert first.text().splitlines()[-1] == f"edgegov: error: {lost['message']}"
            assert not (state / HELD).exists()
            return
        assert code == 0, first.text()[-3000:]
        assert not (state / RESERVE).exists()  # given up to make room
        assert (state / HELD).is_file()
        filler.unlink()  # the operator frees space
        second = AgentProcess(cfg, "--log-format", "json", env=agent_env())
        try:
            text = second.wait_log("the held windows are signed")
            second.wait_log("attestation seq", after=len(text))
        finally:
            assert second.stop() == 0, second.text()[-3000:]
        assert (state / RESERVE).is_file()  # back for the next time
        _all_verified(tmp_path, _signed_readings(first) + _signed_readings(second))


# -- the held-windows file itself -----------------------------------------------------------


def test_a_held_windows_file_only_decodes_signed_by_this_device(tmp_path):
    signer = generate_key(tmp_path / "k.key")
    w = Window(1000, 2000, 3)
    w.add(Reading(1000, 7, 0, 1, (4.0, float("nan"), 1.0)))
    codes = np.array([[1], [0]], dtype=np.uint8)
    batch = BatchResult(codes, [[], [Episode(900, None, 9.5)]])
    w.results = WindowVerdicts(batch, (), (), 0, "ab" * 32, None)
    data = encode_held(
        HeldWindows("gw", "edgegov/gw/1", "cd" * 32, b"state", [(w, {"x": 1})]), signer
    )
    back = decode_held(data, signer.public, 3, ["ok", "hot"])
    ((w2, health),) = back.windows
    assert (w2.start_ms, w2.end_ms, w2.n, health) == (1000, 2000, 1, {"x": 1})
    assert w2.records[0].values[0] == 4.0 and w2.records[0].values[1] != w2.records[0].values[1]
    batch = w2.results.batch
    assert batch.codes.tolist() == [[1], [0]] and batch.episodes[1][0].peak == 9.5
    # the rules are summarised again from the held per-reading results
    assert [(r.rule_id, r.evaluated, r.violated) for r in w2.results.rules] == [
        ("ok", 1, 0),
        ("hot", 1, 1),
    ]
    assert w2.results.rules[1].episodes[0].peak == 9.5 and w2.results.state_in == "ab" * 32
    tampered = bytearray(data)
    tampered[-70] ^= 1
    with pytest.raises(StorageError):
        decode_held(bytes(tampered), signer.public, 3, ["ok", "hot"])
    with pytest.raises(StorageError, match="does not verify with the device key"):
        decode_held(data, generate_key(tmp_path / "o.key").public, 3, ["ok", "hot"])


def test_corruption_is_its_own_error(tmp_path):
    path, signer = _signed_store(tmp_path, windows=40, readings=50)
    _flip(path)
    with pytest.raises(StoreCorruptError, match=r"is corrupt \(SQLite: "):
        EvidenceStore(path, "gw", public_key=signer.public)


def test_a_store_with_one_row_per_reading_is_moved_to_one_row_per_window(tmp_path, caplog):
    """A store written before readings were kept per window (table ``readings``) opens:
    its rows become window rows, every reading still provable, the chain unchanged."""
    path, signer = _signed_store(tmp_path, windows=4, readings=10)
    db = sqlite3.connect(path)
    try:
        before = stored_records(db)
        db.execute("CREATE TABLE readings (idx INTEGER PRIMARY KEY, seq INTEGER, record BLOB)")
        for seq, first, stride, blob in db.execute(
            "SELECT seq, first_idx, stride, records FROM window_readings"
        ).fetchall():
            for k in range(len(blob) // stride):
                db.execute(
                    "INSERT INTO readings VALUES (?, ?, ?)",
                    (first + k, seq, blob[k * stride : (k + 1) * stride]),
                )
        db.execute("DELETE FROM readings WHERE idx = 25")  # a window partly shed: 20..24 kept
        db.execute("DROP TABLE window_readings")
        db.commit()
    finally:
        db.close()
    with caplog.at_level("WARNING", "edgegov.store"):
        store = EvidenceStore(path, "gw", public_key=signer.public)
    store.close()
    assert "raw readings moved to one row per window (4 window(s)); 4 reading(s)" in caplog.text
    db = sqlite3.connect(path)
    try:
        after = stored_records(db)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()
    assert "readings" not in tables
    assert after == before[:25] + before[30:]
    proof = read_retained(path, 3)
    assert proof.record == before[3]
