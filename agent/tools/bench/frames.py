"""Frame decoding: compiled vs pure twin from a buffer, from a real pty, and CPU at 115200 baud.

* 32-byte DATA frames (2 channels, one sample) decoded into columnar batches
  from one buffer: the Cython decoder and its pure-Python twin (README.md and ``edgegov bench``:
  >= 2,000,000 frames/s compiled and >= 20x the twin).
* The same frames written by a thread into a real pty and read with pyserial
  into columnar batches (>= 300,000 frames/s).
* A framed source reading an emulated device at the rate a 115200 baud line
  carries (~360 frames/s), into a window: CPU of this process over the run
  (time.process_time; the emulator runs in a separate process), as % of a core.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time

import serial

from agent.tools.bench.core import Row, timeit, verdict
from firmware_bridge import Data, Frame, encode_frame, open_pty

_S = "frames"


def _stream(n: int) -> bytes:
    frames = [
        encode_frame(Frame(i, 1_700_000_000_000 + i, Data((5.0 + i % 7, 50.0)))) for i in range(n)
    ]
    assert len(frames[1000]) == 32
    return b"\x00" + b"".join(frames)


def _pty_rate(stream: bytes, n: int, compiled: object) -> float:
    """Frames/s from a writer thread through a real pty and pyserial into batches."""
    with open_pty() as pair:
        port = serial.Serial(pair.slave_path, 115200, timeout=0.05)
        got = 0
        done = threading.Event()

        def write() -> None:
            view = memoryview(stream)
            while view:
                k = os.write(pair.master_fd, view[:65536])
                view = view[k:]
            done.set()

        dec = compiled.BatchDecoder(2)  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        while got < n:
            chunk = port.read(max(1, port.in_waiting))
            if not chunk and done.is_set() and not port.in_waiting:
                break
            got += len(dec.feed(chunk))
        dt = time.perf_counter() - t0
        writer.join(5)
        port.close()
    if got < n:
        raise RuntimeError(f"pty bench lost frames: {got} of {n}")
    return got / dt


def _cpu_at_115200(seconds: float) -> tuple[float, int]:
    """% of one core this process spends reading an emulated 115200-baud device."""
    from agent.config import SerialSettings, SourceConfig
    from agent.pipeline.window import Window
    from agent.policy.model import Channel
    from agent.sources import FramedSource
    from agent.sources.reading import ReadingBatch

    code = (
        "import sys; from firmware_bridge.emulate_cli import emulate_main; "
        "sys.exit(emulate_main(sys.argv[1:]))"
    )
    # ~33-byte DATA frames at 340 Hz plus a heartbeat: ~11,300 bytes/s = a 115200 baud line.
    emu = subprocess.Popen(
        [sys.executable, "-c", code, "--pty", "--rate", "340", "--seconds", str(seconds + 3)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert emu.stdout is not None
        line = emu.stdout.readline()
        path = line.split(" on ", 1)[1].split(" ", 1)[0]
        window = Window(0, 1, 3)
        lock = threading.Lock()

        def deliver(batch: ReadingBatch) -> None:
            with lock:
                window.add_batch(batch)

        channels = [
            Channel("temperature", "Cel", -40, 85),
            Channel("humidity", "%RH", 0, 100),
            Channel("door", "bool", 0, 1),
        ]
        src = FramedSource(0, SourceConfig(SerialSettings(path)), channels, deliver)
        src.start()
        src.connected.wait(3)
        time.sleep(0.5)
        n0 = window.n
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        c1, t1 = time.process_time(), time.perf_counter()
        n1 = window.n
        src.stop()
    finally:
        emu.terminate()
        emu.wait(5)
    return 100.0 * (c1 - c0) / (t1 - t0), int((n1 - n0) / (t1 - t0))


def run(quick: bool) -> list[Row]:
    compiled = importlib.import_module("native._frames")
    twin = importlib.import_module("native._frames_py")
    n = 100_000 if quick else 400_000
    stream = _stream(n)
    c_rate = timeit(lambda: compiled.BatchDecoder(2).feed(stream), n, repeat=3)
    small = stream[: 32 * 20_000 + 1]
    p_rate = timeit(lambda: twin.BatchDecoder(2).feed(small), 20_000, repeat=1)
    pty_n = 300_000 if quick else 1_000_000
    pty_rate = _pty_rate(_stream(pty_n), pty_n, compiled)
    cpu, rate = _cpu_at_115200(2.0 if quick else 5.0)
    return [
        Row(_S, "pure-python twin (32-byte DATA)", p_rate, "frames/s"),
        Row(
            _S,
            "cython decoder (32-byte DATA)",
            c_rate,
            "frames/s",
            baseline="pure-python twin (32-byte DATA)",
            target=20.0,
            note=f"target >= 2,000,000/s: {verdict(c_rate >= 2e6)}",
        ),
        Row(
            _S,
            "pty + pyserial -> columnar batches",
            pty_rate,
            "frames/s",
            note=f"target >= 300,000/s: {verdict(pty_rate >= 3e5)}",
        ),
        Row(
            _S,
            "agent CPU reading a 115200-baud device",
            cpu,
            "% of core",
            note=f"{rate} readings/s; target < 2%: {verdict(cpu < 2.0)}",
        ),
    ]
