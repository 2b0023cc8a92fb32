"""Restarts are evidence (issue 12, observation 1): ``kill -9`` of the real agent at random
moments, while an emulated device sends 20 frames/s on a real pty and a text probe prints
lines on another, then a restart each time. The signed evidence must account for every
frame the device numbered, exactly: frames received (``frames_ok``) plus frames declared
lost (``frames_missed``: on the line; ``frames_unrecorded``: while no agent recorded) equal
the frames the emulator put out, and each frame's reading is in the Merkle log at most once,
never also declared lost. Every start states its restart (claim -70001/12).

The first half drives the framed source and the ledger directly with real encoded bytes.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml

from agent.audit import verify_paths
from agent.audit.replay import replay
from agent.audit.trust import TrustedKey, TrustStore
from agent.evidence.claims import Evidence
from agent.evidence.journal import FLUSH_S, Journal, SourceMark
from agent.evidence.leaves import LeafRecord, decode_record, record_leaf_hashes
from agent.evidence.merkle import CompactRange
from agent.evidence.store import EvidenceStore
from agent.evidence.store_reader import stored_records
from agent.identity.keys import load_public_key
from agent.policy import load_policy
from agent.sources.framed import REBOOTED_UNSEEN, WENT_BACK_UNSEEN
from agent.sources.quality import QualityLedger
from agent.sources.reading import Reading
from firmware_bridge import Emulator, open_pty
from tests.agent_process import AgentProcess, agent_env, spool_evidence
from tests.test_agent_e2e import make_site
from tests.test_sources_framed import HELLO, d, source, w

FRAMED, TEXT = "cold-room", "probe"


# --------------------------------------------------------------------------- the source


def test_the_first_frame_after_a_restart_counts_what_was_sent_meanwhile_as_unrecorded():
    src, sink = source()
    src.resume(100)
    src.feed(b"\x00" + d(105) + d(106) + d(110))
    h = src.take_health()
    assert h["gaps"] == [[101, 104], [107, 109]]
    assert h["frames_unrecorded"] == 4  # sent while no agent recorded
    assert h["frames_missed"] == 3  # lost on the line while this agent read
    assert h["seq_gaps"] == 2 and h["problems"] == []
    assert [r.frame_seq for r in sink.readings] == []  # no HELLO yet: withheld, counted
    assert h["data_before_hello"] == 3 and h["frames_ok"] == 3


def test_continuing_exactly_where_the_last_run_stopped_declares_nothing():
    src, sink = source()
    src.resume(100)
    src.feed(b"\x00" + w(101, HELLO) + d(102))
    h = src.take_health()
    assert h["frames_unrecorded"] == h["frames_missed"] == h["seq_gaps"] == 0
    assert h["gaps"] == [] and [r.frame_seq for r in sink.readings] == [102]


def test_a_device_reboot_while_no_agent_recorded_is_said_not_counted():
    src, sink = source()
    src.resume(100)
    src.feed(b"\x00" + w(0, HELLO) + d(1) + d(2))
    h = src.take_health()
    assert h["reboots"] == 1 and h["frames_unrecorded"] == 0 and h["gaps"] == []
    assert h["problems"] == [REBOOTED_UNSEEN.format(after=101)]
    assert [r.frame_seq for r in sink.readings] == [1, 2]


def test_a_counter_that_went_back_across_a_restart_is_said_not_counted():
    src, _ = source()
    src.resume(5000)
    src.feed(b"\x00" + w(7, HELLO) + d(8))  # the reboot's HELLO at seq 0 was not received
    h = src.take_health()
    assert h["seq_resets"] == 1 and h["frames_unrecorded"] == 0 and h["gaps"] == []
    assert h["problems"] == [WENT_BACK_UNSEEN.format(last=5000, seq=7)]


def test_a_peeked_record_restored_in_a_new_ledger_is_signed_as_if_never_interrupted():
    before = QualityLedger("s0", "framed", "/dev/x")
    before.add("frames_ok", 7)
    before.gap(3, 4)
    before.gap(10, 19, unrecorded=True)
    before.problem("p")
    before.device("DEV-1")
    before.offline(1000)
    peek = before.peek(1500)
    assert peek["offline"] == [[1000, 1500]] and peek["offline_ms"] == 500
    assert before.peek(1500) == peek  # nothing was reset
    after = QualityLedger("s0", "framed", "/dev/x")
    after.add("frames_ok", 2)
    after.problem("p")
    after.restore(peek)
    rec = after.take(2000)
    assert rec["frames_ok"] == 9 and rec["frames_missed"] == 2 and rec["frames_unrecorded"] == 10
    assert rec["seq_gaps"] == 2 and rec["gaps"] == [[3, 4], [10, 19]]
    assert rec["offline"] == [[1000, 1500]] and rec["offline_ms"] == 500
    assert rec["problems"] == ["p"] and rec["device"] == "DEV-1"


# --------------------------------------------------------------------------- the journal


def _crashed_journal(tmp_path: Path) -> None:
    """A store whose agent journaled 3 readings (frames 10-12) and was killed."""
    store = EvidenceStore(tmp_path / "evidence.sqlite", "gw-j")
    journal = Journal(store, [(FRAMED, "framed")], ["t", "h", "door"])
    journal.begin(1000)
    ledger = QualityLedger(FRAMED, "framed", "/dev/x")
    ledger.add_many({"frames_ok": 4, "samples_ok": 3})
    rs = [Reading(2000 + i, 0, 0, 10 + i, (1.0, 2.0, 0.0)) for i in range(3)]
    journal.write([(2000, rs)], [SourceMark(FRAMED, "framed", 13, ledger.peek(2003))])
    store.close()  # no clean_stop: as if killed


def _restart(tmp_path: Path, channels=("t", "h", "door"), held=None):
    store = EvidenceStore(tmp_path / "evidence.sqlite", "gw-j")
    try:
        return Journal(store, [(FRAMED, "framed")], channels).begin(9000, held)
    finally:
        store.close()


def test_after_a_crash_the_journal_gives_back_readings_counts_and_the_frame_counter(tmp_path):
    _crashed_journal(tmp_path)
    rec = _restart(tmp_path)
    assert [(r.received_ms, r.frame_seq, r.values) for r in rec.readings] == [
        (2000 + i, 10 + i, (1.0, 2.0, 0.0)) for i in range(3)
    ]
    mark = rec.marks[FRAMED]
    assert mark.last_seq == 13 and mark.pending is not None and mark.pending["frames_ok"] == 4
    r = rec.restart
    assert not r.clean and r.recovered_readings == 3 and r.unrecorded_readings is None
    assert r.sources[0].last_frame_seq == 13 and r.sources[0].no_data_ms == 9000 - 2002
    again = _restart(tmp_path)  # killed again before signing: still there
    assert len(again.readings) == 3 and again.marks[FRAMED].last_seq == 13


def test_a_journal_for_other_channels_is_dropped_and_declared_not_recorded(tmp_path):
    _crashed_journal(tmp_path)
    rec = _restart(tmp_path, channels=("t", "h"))
    assert rec.readings == [] and rec.marks == {}
    r = rec.restart
    assert r.recovered_readings == 0 and r.unrecorded_readings is None
    assert r.sources[0].last_frame_seq is None  # what it counted went with them
    assert _restart(tmp_path, channels=("t", "h")).readings == []  # and it is gone


def test_a_journal_superseded_by_held_windows_is_not_signed_twice(tmp_path):
    _crashed_journal(tmp_path)  # its run stopped with windows held to the end at 5000
    rec = _restart(tmp_path, held=(5000, {FRAMED: 4800}))
    assert rec.readings == [] and rec.marks == {}
    (sd,) = rec.restart.sources
    assert sd.last_frame_seq is None and sd.no_data_ms == 9000 - 4800
    assert not rec.restart.clean and rec.restart.unrecorded_readings is None


# --------------------------------------------------------------------------- the real agent


class FramedDevice:
    """The emulator on a real pty, started once an agent has the port open."""

    def __init__(self, master_fd: int) -> None:
        self.stop_event = threading.Event()
        self.counts: dict[str, int] = {}
        emu = Emulator("normal", rate_hz=20.0, seed=3)
        self.thread = threading.Thread(
            target=lambda: self.counts.update(emu.run(master_fd, self.stop_event)), daemon=True
        )
        self.thread.start()

    def stop(self) -> dict[str, int]:
        self.stop_event.set()
        self.thread.join(5)
        assert self.counts, "the emulator did not report what it sent"
        return self.counts


class LineDevice:
    """A text probe: ``t=...,h=...`` lines at 10 Hz on a real pty (a full line is dropped)."""

    def __init__(self) -> None:
        self.pty = open_pty()
        self.path = self.pty.slave_path
        self.stop_event = threading.Event()
        os.set_blocking(self.pty.master_fd, False)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k = 0
        while not self.stop_event.wait(0.1):
            k += 1
            try:
                os.write(self.pty.master_fd, f"t={4 + k % 3},h={50 + k % 5}\n".encode())
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EIO):
                    raise

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(2)
        self.pty.close()


def _site(tmp_path: Path, framed_port: str, text_port: str) -> Path:
    cfg = make_site(tmp_path, window_s=1.0, output={"spool": "spool"}, port=framed_port)
    doc = yaml.safe_load(cfg.read_text())
    doc["sources"] = [
        {"name": FRAMED, "port": framed_port},
        {
            "name": TEXT,
            "protocol": "text",
            "port": text_port,
            "format": "kv",
            "fields": [
                {"field": "t", "channel": "temperature"},
                {"field": "h", "channel": "humidity"},
            ],
        },
    ]
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def _start(cfg: Path) -> AgentProcess:
    agent = AgentProcess(cfg, env=agent_env())
    agent.wait_log("evidence log", timeout=60)  # the store is open: this start is counted
    return agent


def _run_with_kills(tmp_path: Path, kills: int, seed: int) -> dict:
    """Start, kill -9 ``kills`` times (one SIGTERM restart halfway), stop cleanly."""
    rng = random.Random(seed)
    kill_ms: list[int] = []  # when each killed process died
    clean_boot = 0  # the boot that follows the SIGTERM stop halfway
    text = LineDevice()
    try:
        with open_pty() as fpty:
            cfg = _site(tmp_path, fpty.slave_path, text.path)
            agent = _start(cfg)
            agent.wait_log(f"source {FRAMED}: ", timeout=30)  # the port is open: seq 0 is seen
            device = FramedDevice(fpty.master_fd)
            processes = 1
            for k in range(kills):
                if k == 0:  # mid-window, with readings journaled: they must be recovered
                    agent.wait_log("attestation seq", timeout=30)
                    time.sleep(FLUSH_S + 0.1)
                else:
                    time.sleep(rng.uniform(0.2, 3.0))
                os.kill(agent.pid, signal.SIGKILL)
                kill_ms.append(int(time.time() * 1000))
                assert agent.stop() == -signal.SIGKILL
                time.sleep(rng.uniform(0.1, 1.5))  # no agent
                agent, processes = _start(cfg), processes + 1
                if k == kills // 2:  # a clean stop and start in between
                    agent.wait_log("attestation seq", timeout=30)
                    assert agent.stop() == 0, agent.text()[-2000:]
                    agent, processes = _start(cfg), processes + 1
                    clean_boot = processes
            after = len(agent.text())
            agent.wait_log("attestation seq", timeout=30, after=after)
            counts = device.stop()  # the device stops first: the agent reads all it sent
            time.sleep(0.5)
            assert agent.stop() == 0, agent.text()[-2000:]
    finally:
        text.close()
    return {
        "processes": processes,
        "kill_ms": kill_ms,
        "clean_boot": clean_boot,
        "counts": counts,
        "spool": tmp_path / "spool",
        "store": tmp_path / "state" / "evidence.sqlite",
        "key": tmp_path / "keys" / "device.pub.pem",
        "policy": tmp_path / "policies" / "cold-chain.yaml",
        "seed": seed,
    }


def _records(store: Path) -> list[bytes]:
    db = sqlite3.connect(f"{store.as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        records = stored_records(db)
    finally:
        db.close()
    rows = [(decode_record(r).index, r) for r in records]
    assert [i for i, _ in rows] == list(range(len(rows))), "readings are missing from the store"
    return [bytes(r) for _, r in rows]


def _health(ev: Evidence, name: str) -> dict:
    (rec,) = [h for h in ev.source_health if h["source"] == name]
    return dict(rec)


def _check(run: dict) -> None:
    why = f"(seed {run['seed']})"
    res = verify_paths([run["spool"]], [load_public_key(run["key"])])
    assert res.ok, [str(f) for f in res.findings]
    evs = spool_evidence(run["spool"])
    assert [e.seq for e in evs] == list(range(len(evs))), why
    raw = _records(run["store"])
    records: list[LeafRecord] = [decode_record(r) for r in raw]

    # The readings in the store are the signed log: same leaves, same root.
    log = CompactRange()
    log.extend(record_leaf_hashes(raw))
    assert (log.size, log.root()) == (evs[-1].checkpoint.size, evs[-1].checkpoint.root), why
    assert sum(e.readings for e in evs) == len(records)

    # Every start counted, and stated once: in the first attestation of its process.
    assert evs[-1].bootcount == run["processes"], why
    firsts = {}
    for e in evs:
        firsts.setdefault(e.bootcount, e)
        assert (e.restart is not None) == (firsts[e.bootcount] is e), (e.seq, why)
    first = evs[0].restart
    assert first is not None and first.last_end_ms is None and first.clean and not first.sources
    restarts = [e for e in evs[1:] if e.restart is not None]
    assert restarts, why
    kill_ms, clean_boot = run["kill_ms"], run["clean_boot"]
    for e in restarts:
        r = e.restart
        assert r is not None
        prev = evs[e.seq - 1]
        assert r.last_end_ms == prev.window_end_ms and e.window_start_ms >= prev.window_end_ms
        assert r.clean == (e.bootcount == clean_boot), (e.seq, e.bootcount, r, why)
        if r.clean:
            assert r.recovered_readings == 0 and r.unrecorded_readings == 0
        else:
            assert r.unrecorded_readings is None  # what arrived after the last flush: unknown
        assert [s.source for s in r.sources] == [FRAMED, TEXT]
        # recovered readings open this window; what was recorded before the stop precedes it
        before = records[: e.checkpoint.prev_size + r.recovered_readings]
        for i, sd in enumerate(r.sources):
            mine = [x for x in before if x.source == i]
            if mine:  # exactly: from the last reading recorded before the stop
                assert sd.no_data_ms == r.started_ms - mine[-1].received_ms, (sd, why)
            if not r.clean:  # no agent since the kill before this start, at least
                died = max(k for k in kill_ms if k <= r.started_ms)
                assert sd.no_data_ms >= r.started_ms - died, (sd, died, why)
        framed, text = r.sources
        assert text.last_frame_seq is None  # lines have no device counter
        assert framed.last_frame_seq is not None
        assert framed.last_frame_seq >= max(x.frame_seq for x in before if x.source == 0)
    recovered = [e.restart.recovered_readings for e in restarts if e.restart is not None]
    assert recovered[0] > 0, (recovered, why)  # the first kill was mid-window, journaled

    # Every frame the device numbered is accounted for, exactly.
    sent = run["counts"]["last_seq"] + 1
    hs = [_health(e, FRAMED) for e in evs]
    assert not any(h.get("ranges_truncated") for h in hs)
    ok = sum(h["frames_ok"] - h["duplicates"] for h in hs)
    missed = sum(h["frames_missed"] for h in hs)
    unrecorded = sum(h["frames_unrecorded"] for h in hs)
    assert ok + missed + unrecorded == sent, (ok, missed, unrecorded, sent, run["counts"], why)
    assert sum(h["reboots"] + h["seq_resets"] for h in hs) == 0 and not any(
        h["problems"] for h in hs
    )
    gaps = [(a, b) for h in hs for a, b in h["gaps"]]
    declared = set().union(*(range(a, b + 1) for a, b in gaps)) if gaps else set()
    assert len(declared) == missed + unrecorded, "gap ranges overlap"  # each frame once
    seqs = [x.frame_seq for x in records if x.source == 0]
    assert len(set(seqs)) == len(seqs), "a frame's reading is in the log twice"
    assert not declared & set(seqs), "a frame is in the log and declared lost"
    assert max(seqs) < sent
    assert sum(h["samples_ok"] for h in hs) == len(seqs)  # each reading received is in the log
    # and the device sent ~21 frames/s while no agent ran: they are the unrecorded ones
    dark_ms = [
        r.started_ms - max(k for k in kill_ms if k <= r.started_ms)
        for e in restarts
        if (r := e.restart) is not None and not r.clean
    ]
    assert unrecorded >= 15 * sum(dark_ms) / 1000, (unrecorded, dark_ms, why)

    # Recovered readings were evaluated once, from the state after the last signed window:
    # every window, across every restart, replays bit for bit (rules, risk, state digests).
    trust = TrustStore()
    trust.add(TrustedKey(load_public_key(run["key"]), None, "device"))
    res = replay(run["store"], load_policy(run["policy"]), trust, range(len(evs)))
    assert res.ok and all(w.state_ok for w in res.windows), res.text()


_SLOW_COMMIT = """
# Injected into the agent under test: from seq 1 on, a commit waits 30 s after the policy
# state of its window was saved (the marker file says when), so the test can kill -9 the
# agent exactly between evaluating a window and signing it.
import pathlib, time
import agent.evidence.attester as a
_attest = a.Attester.attest
def attest(self, *args, **kw):
    if self.store.state.next_seq >= 1:
        pathlib.Path({marker!r}).touch()
        time.sleep(30)
    return _attest(self, *args, **kw)
a.Attester.attest = attest
"""


def test_a_kill_between_evaluating_and_signing_a_window_evaluates_it_once(tmp_path):
    """Killed while committing a window (after its state digest was staged), the restart
    must continue from the state after the last *signed* window, or the recovered readings
    of that window are evaluated twice (and replay shows a different state)."""
    inject, marker = tmp_path / "inject", tmp_path / "staged"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_SLOW_COMMIT.format(marker=str(marker)))
    text = LineDevice()
    try:
        with open_pty() as fpty:
            cfg = _site(tmp_path, fpty.slave_path, text.path)
            agent = AgentProcess(cfg, env=agent_env(PYTHONPATH=str(inject)))
            agent.wait_log(f"source {FRAMED}: ", timeout=60)
            device = FramedDevice(fpty.master_fd)
            deadline = time.monotonic() + 30
            while not marker.exists():
                assert time.monotonic() < deadline and agent.proc.poll() is None, agent.text()
                time.sleep(0.02)
            os.kill(agent.pid, signal.SIGKILL)
            agent.stop()
            agent = _start(cfg)
            log = agent.wait_log("attestation seq 2 signed", timeout=30)
            device.stop()
            assert agent.stop() == 0
    finally:
        text.close()
    trust = TrustStore()
    trust.add(TrustedKey(load_public_key(tmp_path / "keys" / "device.pub.pem"), None, "device"))
    bundle = load_policy(tmp_path / "policies" / "cold-chain.yaml")
    evs = spool_evidence(tmp_path / "spool")
    res = replay(tmp_path / "state" / "evidence.sqlite", bundle, trust, range(len(evs)))
    assert res.ok and all(w.state_ok for w in res.windows), res.text()
    assert evs[1].restart is not None and evs[1].restart.recovered_readings > 0
    assert "is not the one after the last signed window" not in log


def test_kill_9_at_random_moments_loses_no_frame_without_a_signed_declaration(tmp_path):
    _check(_run_with_kills(tmp_path, kills=5, seed=int(os.environ.get("EDGEGOV_KILL_SEED", 12))))


@pytest.mark.soak
def test_thirty_kills_at_random_moments_keep_the_accounting_exact(tmp_path):
    _check(_run_with_kills(tmp_path, kills=30, seed=int(os.environ.get("EDGEGOV_KILL_SEED", 30))))
