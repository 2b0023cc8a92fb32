"""Flood, capture and replay: the emulator loading a reader through a real pty.

Every test reads the slave side of a real pty, as the agent does, and decodes with
the agent's own columnar decoder (``native.frames.BatchDecoder``) or the reference
:class:`FrameDecoder`. The rates printed are for the record, not asserted: they
depend on the machine.
"""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import firmware_bridge.line
from firmware_bridge import (
    Command,
    CommandCode,
    Data,
    Emulator,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    encode_frame,
    open_pty,
)
from firmware_bridge.emulate_cli import emulate_main
from firmware_bridge.line import replay
from native.frames import BatchDecoder
from tests.conftest import EMULATE, ROOT

START_MS = 1_700_000_000_000


class Reader:
    """Reads the slave side of a pty in a thread, keeping every byte (the agent's role)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.wire = bytearray()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            if not select.select([self.fd], [], [], 0.05)[0]:
                if self._done.is_set():
                    return
                continue
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the device side closed
                return
            if not chunk:
                return
            self.wire += chunk

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait_for(self, n_bytes: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.wire) < n_bytes and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> bytes:
        """Read what is left (until the line is quiet), stop, and return every byte read."""
        self._done.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "reader did not stop"
        os.close(self.fd)
        return bytes(self.wire)


@contextmanager
def reading(path: str) -> Iterator[Reader]:
    reader = Reader(path)
    try:
        yield reader
    finally:
        if not reader._done.is_set():
            reader.close()


def in_thread(fn: Callable[[], dict[str, int]]) -> tuple[threading.Thread, dict[str, int]]:
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(fn()), daemon=True)
    thread.start()
    return thread, result


def all_seqs(wire: bytes) -> tuple[list[int], list[Frame], dict[str, int], int]:
    """Decode *wire* as the agent does (``BatchDecoder``): every frame's seq in stream
    order, the frames other than DATA, the decoder's counters, and the readings."""
    decoder = BatchDecoder(3)
    batch = decoder.feed(wire)
    data_seqs = batch.frame_seq.tolist()
    samples = batch.frame_samples.tolist()
    seqs: list[int] = []
    others: list[Frame] = []
    pos = di = 0  # samples and DATA frames placed so far
    for sample_pos, frame in batch.others:
        while pos < sample_pos:
            seqs.append(data_seqs[di])
            pos += samples[di]
            di += 1
        seqs.append(frame.seq)
        others.append(frame)
    seqs += data_seqs[di:]
    return seqs, others, decoder.stats(), len(batch)


def report(what: str, counts: dict[str, int]) -> None:
    print(
        f"\n{what}: {counts['frames']} frames in {counts['wall_ms']} ms: "
        f"{counts['frames_per_s']} frames/s, {counts.get('readings_per_s', '-')} readings/s, "
        f"{counts['bytes_per_s'] / 1e6:.1f} MB/s"
    )


# --------------------------------------------------------------------------- flood (API)


def test_flood_through_a_pty_delivers_every_frame_in_order_and_faster_than_real_time():
    n = 30_000
    emulator = Emulator("normal", rate_hz=50)
    record = io.BytesIO()
    with open_pty() as pair, reading(pair.slave_path) as reader:
        thread, counts = in_thread(
            lambda: emulator.flood(pair.master_fd, threading.Event(), frames=n, record=record)
        )
        thread.join(60)
        assert not thread.is_alive(), "flood did not end after --frames"
        reader.wait_for(counts["bytes"])
        wire = reader.close()
    report("flood through a pty", counts)
    seqs, others, stats, readings = all_seqs(wire)
    assert seqs == list(range(n))  # HELLO first, then no gap, no duplicate, no reorder
    assert others[0].seq == 0 and others[0].body == emulator.hello()
    assert stats["crc_errors"] == stats["framing_errors"] == stats["bytes_discarded"] == 0
    assert counts["frames"] == n and counts["last_seq"] == n - 1
    assert counts["bytes"] == len(wire) and record.getvalue() == wire
    assert counts["readings"] == counts["data"] == readings
    assert counts["hello"] == 1 and counts["heartbeat"] == len(others) - 1
    # Device time advances at the configured rate: 20 ms per DATA frame at 50 Hz...
    frames = FrameDecoder().feed(wire)
    data_ms = [f.timestamp_ms for f in frames if isinstance(f.body, Data)]
    assert {b - a for a, b in zip(data_ms, data_ms[1:])} == {20}
    beats = [f for f in frames if isinstance(f.body, Heartbeat)]
    assert [f.body.uptime_s for f in beats] == list(range(1, len(beats) + 1))
    assert counts["device_ms"] == frames[-1].timestamp_ms - frames[0].timestamp_ms
    # ... and runs far ahead of the wall clock, which real time (1000 frames/s at most) cannot.
    assert counts["device_ms"] > 10 * counts["wall_ms"]


def test_flood_stop_ends_on_a_whole_frame_and_counts_exactly_what_was_written():
    emulator = Emulator("normal", rate_hz=20, ledger=True)
    stop = threading.Event()
    with open_pty() as pair, reading(pair.slave_path) as reader:
        thread, counts = in_thread(lambda: emulator.flood(pair.master_fd, stop))
        reader.wait_for(200_000)
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "flood did not stop"
        reader.wait_for(counts["bytes"])
        wire = reader.close()
    report("flood until stopped", counts)
    seqs, _, stats, _ = all_seqs(wire)
    assert wire[-1:] == b"\x00" and len(wire) == counts["bytes"]
    assert seqs == list(range(counts["frames"])) and counts["last_seq"] == counts["frames"] - 1
    assert stats["framing_errors"] == stats["crc_errors"] == 0
    assert emulator.sent is not None
    on_line = [s.seq for s in emulator.sent if s.on_line]
    assert on_line == seqs  # the ledger says exactly which frames reached the line


def test_flood_obeys_a_command_read_back_between_writes():
    emulator = Emulator("normal", rate_hz=20)
    stop = threading.Event()
    with open_pty() as pair, reading(pair.slave_path) as reader:
        thread, counts = in_thread(lambda: emulator.flood(pair.master_fd, stop, seconds=20))
        reader.wait_for(50_000)
        reader.write(encode_frame(Frame(0, 0, Command(CommandCode.SEND_HELLO))))
        watch, seen, hellos = BatchDecoder(3), 0, 0
        deadline = time.monotonic() + 10
        while hellos < 2 and time.monotonic() < deadline:  # until the answer is on the line
            time.sleep(0.02)
            new = bytes(reader.wire[seen:])
            seen += len(new)
            hellos += sum(isinstance(f.body, Hello) for _, f in watch.feed(new).others)
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "flood did not stop"
        reader.wait_for(counts["bytes"])
        wire = reader.close()
    seqs, others, _, _ = all_seqs(wire)
    hello_seqs = [f.seq for f in others if isinstance(f.body, Hello)]
    assert hello_seqs[0] == 0 and len(hello_seqs) == 2 and hello_seqs[1] > 0
    assert counts["commands"] == 1 and counts["hello"] == 2
    assert seqs == list(range(len(seqs)))


def test_flood_refuses_scenarios_that_pace_or_cut_the_line():
    for scenario in ("slow-trickle", "unplug"):
        with pytest.raises(ValueError, match="cannot flood"):
            Emulator(scenario).flood(0, threading.Event(), frames=1)


# ------------------------------------------------------------------- capture and replay


def test_capture_is_the_devices_wire_bytes_and_costs_no_clock_time(tmp_path):
    path = tmp_path / "normal.bin"
    counts = Emulator("normal", rate_hz=20, seed=4).capture(path, 50_000, start_ms=START_MS)
    expected = Emulator("normal", rate_hz=20, seed=4).frames(START_MS)
    assert path.read_bytes() == b"".join(next(expected)[1] for _ in range(50_000))
    assert counts["frames"] == 50_000 and counts["bytes"] == path.stat().st_size
    assert counts["device_ms"] > 2000 * 1000  # ~2,380 s of device time ...
    assert counts["wall_ms"] < 60_000  # ... without waiting for it


@pytest.mark.parametrize("scenario", ["normal", "garbage", "reboot"])
def test_a_capture_replayed_through_a_pty_decodes_to_the_same_frames(scenario, tmp_path):
    path = tmp_path / f"{scenario}.bin"
    Emulator(scenario, rate_hz=100, seed=7).capture(path, 20_000, start_ms=START_MS)
    captured = path.read_bytes()
    direct = FrameDecoder()
    expected = direct.feed(captured)
    with open_pty() as pair, reading(pair.slave_path) as reader:
        thread, counts = in_thread(lambda: replay(pair.master_fd, path, threading.Event()))
        thread.join(60)
        assert not thread.is_alive(), "replay did not end at the end of the file"
        reader.wait_for(len(captured))
        wire = reader.close()
    report(f"replay of a {scenario} capture", counts)
    through = FrameDecoder()
    assert through.feed(wire) == expected
    assert through.stats == direct.stats  # the noise too, byte for byte
    assert wire == captured and counts["bytes"] == len(captured) and counts["reader_gone"] == 0
    assert counts["frames"] == len([p for p in captured.split(b"\x00") if p])
    if scenario == "normal":
        assert direct.stats.crc_errors == direct.stats.framing_errors == 0
        assert [f.seq for f in expected] == list(range(20_000))


def test_replay_stops_on_request_after_a_whole_frame(tmp_path, monkeypatch):
    # Reads of 1,000 bytes cut frames everywhere: a stop between two must still cut none.
    monkeypatch.setattr(firmware_bridge.line, "REPLAY_CHUNK_BYTES", 1000)
    path = tmp_path / "big.bin"
    Emulator("normal").capture(path, 300_000, start_ms=START_MS)
    stop = threading.Event()
    with open_pty() as pair, reading(pair.slave_path) as reader:
        thread, counts = in_thread(lambda: replay(pair.master_fd, path, stop))
        reader.wait_for(100_000)
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "replay did not stop"
        reader.wait_for(counts["bytes"])
        wire = reader.close()
    assert 0 < len(wire) == counts["bytes"] < path.stat().st_size
    assert wire == path.read_bytes()[: len(wire)] and wire[-1:] == b"\x00"
    assert len(FrameDecoder().feed(wire)) == counts["frames"]


# --------------------------------------------------------------------------- the CLI


def cli_through_pty(*args: str) -> tuple[bytes, str, int]:
    """Run ``edgegov emulate --pty ARGS``, read its pty to the end: (bytes, stderr, rc)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", EMULATE, "--pty", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        path = re.search(r" on (/dev/\S+) ", line)
        assert path, line
        with reading(path.group(1)) as reader:
            rc = proc.wait(timeout=60)
            wire = reader.close()
        return wire, proc.communicate()[1], rc
    finally:
        proc.kill()
        proc.communicate()


def test_emulate_flood_cli_sends_n_frames_and_reports_the_rate():
    wire, err, rc = cli_through_pty("--flood", "--frames", "20000", "--rate", "100")
    assert rc == 0, err
    print("\n" + err.splitlines()[0])
    m = re.search(
        r"flood wrote (\d+) frames, (\d+) readings, .* (\d+) frames/s, (\d+) readings/s", err
    )
    assert m, err
    seqs, _, stats, readings = all_seqs(wire)
    assert int(m.group(1)) == 20_000 and seqs == list(range(20_000))
    assert int(m.group(2)) == readings and stats["crc_errors"] == 0


def test_emulate_capture_then_replay_cli(tmp_path):
    path = tmp_path / "c.bin"
    assert emulate_main(["--capture", str(path), "--frames", "5000", "--seed", "2"]) == 0
    wire, err, rc = cli_through_pty("--replay", str(path))
    assert rc == 0, err
    assert "replay wrote 5000 frames" in err
    assert wire == path.read_bytes()
    assert [f.seq for f in FrameDecoder().feed(wire)] == list(range(5000))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --pty --port is required"),
        (["--pty", "--frames", "5"], "--frames: only with --flood or --capture"),
        (["--pty", "--flood", "--frames", "0"], "--frames: must be at least 1"),
        (["--pty", "--record", "x.bin"], "--record: only with --flood"),
        (["--pty", "--flood", "--replay", "x.bin"], "not allowed with argument --flood"),
        (["--pty", "--replay", "x.bin", "--rate", "5"], "--rate: not with --replay"),
        (["--capture", "x.bin"], "--capture needs --frames N"),
        (["--capture", "x.bin", "--pty"], "not allowed with argument"),
        (["--pty", "--flood", "--scenario", "slow-trickle"], "--scenario slow-trickle: not"),
    ],
)
def test_flood_usage_errors_exit_2_with_a_reason(argv, message, capsys):
    assert emulate_main(argv) == 2
    assert message in capsys.readouterr().err


def test_replay_of_a_missing_capture_exits_1_before_any_pty(capsys, tmp_path):
    assert emulate_main(["--pty", "--replay", str(tmp_path / "none.bin")]) == 1
    out = capsys.readouterr()
    assert "cannot open" in out.err and "none.bin" in out.err and out.out == ""
