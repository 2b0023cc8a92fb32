"""The whole agent at the machine's limit: readings per second through every stage.

* **From recorded bytes**, in one thread: a capture of the emulated cold-store device at
  1 kHz (device time) is fed to the agent's framed source in 64 KiB reads; windows of 5 s
  (device time: a reading's ``received_ms`` is the device time the chunk ends at, as if
  the capture arrived in real time) are closed, evaluated (the cold-chain policy with its
  10-minute aggregate, both ONNX models), signed, stored (SQLite) and spooled, exactly as
  ``edgegov run`` does it (``Agent._close``). Readings/s and CPU seconds per million
  readings; each stage's share of the time, so the next bottleneck is visible.
* **Through a real pty**: ``edgegov run`` as a process, the flood emulator writing to a
  pty as fast as the agent takes it; readings signed per second of the flood.
* **A 115,200-baud device**: ``edgegov run`` reading an emulated device at the rate the
  line carries (~360 frames/s): the agent process's CPU share of one core.
"""

from __future__ import annotations

import functools
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agent.identity.keys import generate_key
from agent.tools.bench.core import Row, proc_cpu_s, verdict
from firmware_bridge import Emulator, open_pty
from firmware_bridge.line import replay

_S = "pipeline"
_CHUNK = 65536
_RATE_HZ = 1000.0
_GOAL_WHOLE = 1_000_000.0
_GOAL_PTY = 300_000.0
_GOAL_CPU = 0.5  # % of a core at 115,200 baud


def _site(root: Path, port: str, window_s: float = 5.0) -> Path:
    """Key, the cold-chain policy (``window_s`` windows) with its two models, spool output."""
    configs = Path(str(resources.files("configs")))
    (root / "models").mkdir(parents=True, exist_ok=True)
    for model in (configs / "models").glob("*.onnx"):
        shutil.copy(model, root / "models" / model.name)
    (root / "policies").mkdir(exist_ok=True)
    text = (configs / "policies" / "cold-chain.yaml").read_text()
    if window_s != 5.0:
        import re

        text = re.sub(r"(?m)^(\s*seconds:\s*)[\d.]+", rf"\g<1>{window_s:g}", text)
    (root / "policies" / "cold-chain.yaml").write_text(text)
    generate_key(root / "keys" / "device.key")
    cfg = root / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "gw-bench", "key": "keys/device.key"},
                "fleet": "bench",
                "policy": "policies/cold-chain.yaml",
                "state_dir": "state",
                "sources": [{"name": "cold-room", "port": port}],
                "output": {"spool": "spool"},
                "log": {"level": "warning"},
            }
        )
    )
    return cfg


class _Stages:
    """Wall time spent in named stages (nested stages are subtracted from their parent)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list[float]] = []  # per open stage: [start, time in children]

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*a, **kw)
            finally:
                start, inner = self._stack.pop()
                spent = time.perf_counter() - start
                self.seconds[name] = self.seconds.get(name, 0.0) + spent - inner
                if self._stack:
                    self._stack[-1][1] += spent

        return timed


@contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _capture(frames: int) -> tuple[bytes, list[int]]:
    """The emulator's bytes for ``frames`` frames at 1 kHz, and the device time (ms) each
    ``_CHUNK``-byte read ends at (what a reader of the live device would have seen)."""
    from native.frames import BatchDecoder

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "capture.bin"
        Emulator(rate_hz=_RATE_HZ, seed=7).capture(path, frames, start_ms=1_700_000_000_000)
        data = path.read_bytes()
    dec = BatchDecoder(3)
    clock, last = [], 1_700_000_000_000
    for i in range(0, len(data), _CHUNK):
        b = dec.feed(data[i : i + _CHUNK])
        for _pos, frame in b.others:  # a HELLO: the decoder learns the channel count
            body = frame.body
            if hasattr(body, "channels"):
                dec.set_channels(len(body.channels))
        if len(b):
            last = int(b.device_ms[-1])
        clock.append(last)
    return data, clock


def _whole(frames: int, window_s: float = 5.0) -> tuple[int, float, float, dict[str, float]]:
    """(readings, wall s, CPU s, seconds per stage) through a real Agent, one thread, in
    windows of ``window_s`` seconds of device time."""
    from agent.config import load_config
    from agent.evidence import attester
    from agent.evidence.claims import encode_claims
    from agent.evidence.leaves import WindowRecords, encode_window
    from agent.pipeline import evaluate
    from agent.pipeline.runner import Agent
    from agent.pipeline.window import Window
    from agent.sources import FramedSource

    data, clock = _capture(frames)
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(load_config(_site(Path(tmp), "/dev/null", window_s)))
        try:
            src = agent.sources[0]
            assert isinstance(src, FramedSource)
            now = [clock[0]]
            src.clock = lambda: now[0]
            st = _Stages()
            with (
                _patched(src, "feed", st.wrap("decode and readings", src.feed)),
                _patched(agent, "_add", st.wrap("window assembly", agent._add)),
                _patched(agent.risk, "score", st.wrap("risk models", agent.risk.score)),
                _patched(agent.evaluator, "run", st.wrap("policy evaluator", agent.evaluator.run)),
                _patched(
                    evaluate,
                    "summarise_rules",
                    st.wrap("policy evaluator", evaluate.summarise_rules),
                ),
                _patched(agent.attester, "attest", st.wrap("attest", agent.attester.attest)),
                _patched(attester, "encode_window", st.wrap("leaves", encode_window)),
                _patched(
                    WindowRecords, "leaf_hashes", st.wrap("leaves", WindowRecords.leaf_hashes)
                ),
                _patched(attester, "encode_claims", st.wrap("claims", encode_claims)),
                _patched(agent.store, "commit", st.wrap("store (SQLite)", agent.store.commit)),
                _patched(agent.signer, "sign", st.wrap("sign", agent.signer.sign)),
                _patched(agent, "_publish", st.wrap("outbox (spool)", agent._publish)),
            ):
                n_ch = len(agent.policy.channels)
                span = int(window_s * 1000)
                window = Window(clock[0], clock[0] + span, n_ch)
                w0, c0 = time.perf_counter(), time.process_time()
                agent.publisher.start(agent.store.pending())
                for k, i in enumerate(range(0, len(data), _CHUNK)):
                    now[0] = clock[k]
                    src.feed(data[i : i + _CHUNK])
                    while True:
                        try:
                            agent._add(window, agent._queue.get_nowait())
                        except queue.Empty:
                            break
                    while now[0] >= window.end_ms:
                        nxt = Window(window.end_ms, window.end_ms + span, n_ch)
                        agent._close(window, nxt)
                        window = nxt
                agent._close(window)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            readings = agent.stats.readings
        finally:
            agent.publisher.stop(timeout=5.0)
            agent.store.close()
    st.seconds["other (loop, health, journal, policy state)"] = max(
        0.0, wall - sum(st.seconds.values())
    )
    return readings, wall, cpu, st.seconds


def _spooled_readings(spool: Path) -> int:
    from agent.evidence.claims import parse_claims
    from agent.evidence.cose import decode_sign1

    return sum(
        parse_claims(decode_sign1(f.read_bytes()).claims()).readings for f in spool.rglob("*.cose")
    )


def _run_agent(cfg: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _wait_port_open(proc: Any, seconds: float) -> None:
    """Until the agent has had time to start and open its port (no log parsing here:
    the flood waits for a reader itself, and HELLO is asked for again)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)


def _stop(proc: Any) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return str(err.decode(errors="replace")) if err else ""


def _readings_in(data: bytes) -> int:
    """DATA samples in wire bytes, as the agent's decoder counts them."""
    from native.frames import BatchDecoder

    dec, n = BatchDecoder(3), 0
    for i in range(0, len(data), 1 << 20):
        n += len(dec.feed(data[i : i + (1 << 20)]))
    return n


def _pty(seconds: float, replayed: bool = False) -> tuple[int, float, int, float]:
    """(readings signed, seconds of flood, readings sent, writer CPU s) through
    ``edgegov run``. The writer is the flood emulator generating frames as it goes, or
    (``replayed``) :func:`~firmware_bridge.line.replay` of a flood captured first: the
    same bytes with no encoding on the way, so the agent, not the writer, sets the pace."""
    with tempfile.TemporaryDirectory() as tmp, open_pty() as pty:
        root = Path(tmp)
        cfg = _site(root, pty.slave_path, window_s=1.0)
        doc = yaml.safe_load(cfg.read_text())
        doc["evidence"] = {"intake_readings": 10_000_000}  # measure speed, not shedding
        cfg.write_text(yaml.safe_dump(doc))
        if replayed:
            frames = int(_GOAL_PTY * seconds * 1.5)  # more than the agent can take
            Emulator(rate_hz=_RATE_HZ, seed=3).capture(root / "flood.bin", frames)
        proc = _run_agent(cfg)
        _wait_port_open(proc, 3.0)
        stop = threading.Event()
        cpu0 = time.process_time()
        if replayed:
            sent = replay(pty.master_fd, root / "flood.bin", stop, seconds=seconds)
            sent["readings"] = _readings_in((root / "flood.bin").read_bytes()[: sent["bytes"]])
        else:
            sent = Emulator(rate_hz=_RATE_HZ, seed=3).flood(pty.master_fd, stop, seconds=seconds)
        writer_cpu = time.process_time() - cpu0
        time.sleep(1.0)
        err = _stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"edgegov run exited {proc.returncode}: {err[-500:]}")
        return (
            _spooled_readings(root / "spool"),
            sent["wall_ms"] / 1000,
            sent["readings"],
            writer_cpu,
        )


def _baud_cpu(seconds: float) -> tuple[float, float]:
    """(% of a core, readings/s) of ``edgegov run`` on a device at 115,200 baud."""
    rate = 115_200 / 10 / 32  # 10 bits a byte, ~32 bytes a 3-channel DATA frame
    with tempfile.TemporaryDirectory() as tmp, open_pty() as pty:
        root = Path(tmp)
        cfg = _site(root, pty.slave_path)
        proc = _run_agent(cfg)
        _wait_port_open(proc, 3.0)
        stop = threading.Event()
        emu = Emulator(rate_hz=rate, seed=4)
        counts: dict[str, int] = {}
        writer = threading.Thread(
            target=lambda: counts.update(emu.run(pty.master_fd, stop, duration_s=seconds + 4))
        )
        writer.start()
        time.sleep(3.0)  # settled: the port open, the first windows signed
        c0, t0 = proc_cpu_s(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu, wall = proc_cpu_s(proc.pid) - c0, time.monotonic() - t0
        stop.set()
        writer.join(10)
        err = _stop(proc)
        if proc.returncode != 0 or not counts.get("data"):
            raise RuntimeError(
                f"115,200-baud run: agent exit {proc.returncode}, emulator {counts}: {err[-500:]}"
            )
    return 100.0 * cpu / wall, counts["data"] / (seconds + 4)  # the emulator's whole run


def run(quick: bool) -> list[Row]:
    frames = 300_000 if quick else 2_000_000
    readings, wall, cpu, stages = _whole(frames)
    long_readings, long_wall, long_cpu, _ = _whole(frames, window_s=60.0)
    flood = _pty(5.0 if quick else 15.0)
    replayed = _pty(5.0 if quick else 15.0, replayed=True)
    baud = _baud_cpu(10.0 if quick else 30.0)
    rows = _rows(readings, wall, cpu, stages, flood, replayed, baud)
    rows.insert(
        2,
        Row(
            _S,
            "  the same in 60 s windows (per-window costs spread)",
            long_readings / long_wall,
            "readings/s",
            baseline="goal: 1,000,000 readings/s",
            target=1.0,
            note=f"{long_cpu / long_readings * 1e6:.1f} CPU s per million: what each reading "
            "costs; the 5 s row adds each window's fixed costs (fsyncs, models, signing)",
        ),
    )
    return rows


def _rows(
    readings: int,
    wall: float,
    cpu: float,
    stages: dict[str, float],
    flood: tuple[int, float, int, float],
    replayed: tuple[int, float, int, float],
    baud: tuple[float, float],
) -> list[Row]:
    rows = [
        Row(_S, "goal: 1,000,000 readings/s", _GOAL_WHOLE, "readings/s"),
        Row(
            _S,
            "whole pipeline from recorded bytes (1 thread)",
            readings / wall,
            "readings/s",
            baseline="goal: 1,000,000 readings/s",
            target=1.0,
            note=f"{readings:,} readings, {cpu / readings * 1e6:.1f} CPU s per million",
        ),
    ]
    total = sum(stages.values())
    for name, s in sorted(stages.items(), key=lambda kv: -kv[1]):
        rows.append(Row(_S, f"  share: {name}", 100.0 * s / total, "% time", note=f"{s:.2f} s"))
    goal = "goal: 300,000 readings/s through a pty"
    rows.append(Row(_S, goal, _GOAL_PTY, "readings/s"))
    for name, (signed, flood_s, sent, writer_cpu) in (
        ("edgegov run, replayed flood capture on a pty", replayed),
        ("edgegov run, live flood emulator on a pty", flood),
    ):
        busy = 100.0 * writer_cpu / flood_s
        rows.append(
            Row(
                _S,
                name,
                signed / flood_s,
                "readings/s",
                baseline=goal,
                target=1.0,
                note=f"{signed:,} of {sent:,} readings sent signed; writer {busy:.0f} % of a core",
            )
        )
    share, rate = baud
    rows += [
        Row(_S, "goal: 0.5 % of a core at 115,200 baud", _GOAL_CPU, "% core"),
        Row(
            _S,
            "edgegov run at 115,200 baud: CPU share",
            share,
            "% core",
            note=f"{rate:.0f} frames/s; goal at most {_GOAL_CPU} %: " + verdict(share <= _GOAL_CPU),
        ),
    ]
    return rows
