"""Storage faults through the real agent: a full disk, and evidence state that was damaged
while it was stopped (a state row edited, the store deleted or emptied, bytes flipped).

A full disk is real ENOSPC: the state directory is a small tmpfs filled to the last
byte, which needs root (``mount``); elsewhere the row says it was not run. The damage
is done to the files as it happens on a gateway, with the agent stopped; the row records
what the agent did at the next start: refused (its exit status and message), recovered
(the log continues), or began a new log with a signed claim naming the old one.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from agent.tools.bench.faults.harness import Harness, row
from agent.tools.bench.faults.measure import Attestations, AuditView, SignedLog
from agent.tools.bench.faults.table import FaultRow

__all__ = ["CORRUPTIONS", "corrupt_state", "corruption", "disk_full", "fill_filesystem"]


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``path``; None, or why it could not be."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "a full disk needs a small tmpfs, and mounting one needs root"
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return None if r.returncode == 0 else f"mount tmpfs failed: {r.stderr.strip()}"


def fill_filesystem(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def _not_run(scenario: str, fault: str, why: str) -> FaultRow:
    return FaultRow(
        scenario=scenario,
        fault=fault,
        iterations=0,
        attestations=Attestations(0, 0, 0, 0, 0, 0),
        readings=None,
        audit=AuditView(-1),
        detected=f"not run: {why}",
    )


def disk_full(workdir: Path, quick: bool) -> list[FaultRow]:
    """The state directory's filesystem fills up twice: once freed while the agent runs
    (it holds the windows in memory, then signs them), once still full at a stop (it
    saves them to ``held-windows.cbor``, using the reserve, and signs them at the next
    start, once space was freed)."""
    fault = "disk full (twice: freed while running; full at a stop)"
    h = Harness(workdir, [("sensor", "normal")])
    state = h.site.state
    why = _mount_tmpfs(state, "6m")
    if why is not None:
        h.close()
        return [_not_run("disk-full", fault, why)]
    # after every part: a copy of the state for a post-mortem, then the tmpfs goes
    h.on_close(lambda: shutil.copytree(state, workdir / "state-after", dirs_exist_ok=True))
    h.on_close(lambda: subprocess.run(["umount", "-l", str(state)], capture_output=True))
    try:
        agent = h.start_agent()
        agent.wait_signed(2)
        # 1: full while running, freed 2 s later
        at = agent.wait_log("attestation seq", timeout=30)
        filler = fill_filesystem(state)
        agent.wait_log("window(s) held in memory", timeout=30, after=at)
        time.sleep(2.0)
        filler.unlink()
        n = len(agent.signed())
        agent.wait_signed(n + 3, timeout=30)  # the held ones, then live ones
        # 2: full at a stop; freed before the next start
        at = len(agent.text())
        filler = fill_filesystem(state)
        agent.wait_log("window(s) held in memory", timeout=30, after=at)
        time.sleep(1.0)
        rc = agent.stop(timeout=60)
        saved = "saved to" in agent.text()[at:]
        kept = "held windows saved" if saved else "nothing saved"
        h.agent_notes.append(f"stopped while full: exit {rc}, {kept}")
        filler.unlink()
        agent = h.start_agent()
        agent.wait_log("the held windows are signed", timeout=30)
        agent.wait_signed(len(agent.signed()) + 1)
        h.stop_agent(agent)
        m = h.measure()
    finally:
        h.close()

    def expect(audit: AuditView, logs: list[SignedLog]) -> list[str]:
        out = [] if saved and rc == 0 else [f"full at a stop: exit {rc}, saved {saved}"]
        if not audit.degraded_windows:
            out.append("no degraded window: the held windows are not visible to the auditor")
        return out

    return [row(m, "disk-full", fault, 2, expect=expect)]


#: name -> (what the table calls it, what the agent should do: refuse | continue | new log)
CORRUPTIONS: dict[str, tuple[str, str]] = {
    "state-behind": ("state row behind (next_seq lowered)", "continue"),
    "state-ahead": ("state row ahead (next_seq raised)", "refuse"),
    "store-deleted": ("evidence store deleted", "new log"),
    "store-emptied": ("evidence store emptied", "new log"),
    "byte-flips": ("200 random bit flips in the store", "refuse"),
}


def _damage(state: Path, how: str) -> None:
    store = state / "evidence.sqlite"
    if how in ("state-behind", "state-ahead", "store-emptied", "byte-flips"):
        db = sqlite3.connect(store, timeout=10)
        try:
            if how == "state-behind":
                db.execute("UPDATE state SET next_seq = 1")
            elif how == "state-ahead":
                db.execute("UPDATE state SET next_seq = next_seq + 4")
            elif how == "store-emptied":
                for table in ("state", "attestations", "window_readings", "outbox"):
                    db.execute(f"DELETE FROM {table}")
            db.commit()
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
        finally:
            db.close()
    if how == "store-deleted":
        for f in state.glob("evidence.sqlite*"):
            f.unlink()
    elif how == "byte-flips":
        data = bytearray(store.read_bytes())
        rnd = random.Random(12)
        for _ in range(200):  # past the first page: the header stays readable
            i = rnd.randrange(4096, len(data))
            data[i] ^= 1 << rnd.randrange(8)
        store.write_bytes(bytes(data))


def _first_sentence(text: str) -> str:
    """What the agent said, up to its first ':' after the path, or '. '."""
    text = text.split(": ", 1)[-1] if text.startswith("/") else text
    return text.split(". ")[0][:200]


def corrupt_state(workdir: Path, quick: bool) -> list[FaultRow]:
    """One row per kind of damage, each on its own copy of a gateway that ran 3 windows."""
    return [row for how in CORRUPTIONS for row in corruption(workdir / how, how)]


def corruption(workdir: Path, how: str) -> list[FaultRow]:
    """One kind of damage (a key of :data:`CORRUPTIONS`) on its own gateway."""
    label, should = CORRUPTIONS[how]
    h = Harness(workdir, [("sensor", "normal")])
    try:
        agent = h.start_agent()
        agent.wait_signed(3)
        h.stop_agent(agent)
        h.snapshot_store()  # what was signed, before the damage
        _damage(h.site.state, how)
        # the sensor runs on under a new name: its frames are accounted on their own
        h.configure([("sensor-after", "normal")])
        agent = h.start_agent(wait=False)
        rc = agent.wait_exit(20) if should == "refuse" else None
        if rc is None:
            agent.wait_log("evidence log", timeout=60)
            for name, dev in h.devices:
                agent.wait_log(f"source {name}: {dev.link} open", timeout=30)
                dev.go()
            agent.wait_signed(2)
            text = agent.text()
            h.stop_agent(agent)
            if "rebuilt from attestations" in text:
                did = "recovered the state from the verified attestations"
            elif "starting a new evidence log" in text and "while state of an earlier log" in text:
                did = "began a new log, naming the old one in its first attestation"
            else:
                did = "carried on"
        else:
            agent.stop()
            said = [x for x in agent.text().splitlines() if x.startswith("edgegov: error: ")]
            why = said[-1].removeprefix("edgegov: error: ") if said else "no message"
            did = f"refused (exit {rc}): {_first_sentence(why)}"
        h.agent_notes.append(did)
        m = h.measure()
    finally:
        h.close()

    def expect(audit: AuditView, logs: list[SignedLog]) -> list[str]:
        wanted = {"refuse": "refused", "continue": "recovered", "new log": "began a new log"}[
            should
        ]
        out = [] if did.startswith(wanted) else [f"expected the agent to {should}; it {did}"]
        if should == "new log" and not audit.new_logs:
            out.append("audit verify shows no new log declared")
        return out

    def words(audit: AuditView, logs: list[SignedLog]) -> list[str]:
        return [f"the agent {did.split(':')[0].split(',')[0]}"]

    return [row(m, "corrupt-state", label, 1, expect=expect, extra=words)]
