"""The emulated device and the raw pty it talks through, end to end with pyserial."""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import serial

from firmware_bridge import (
    Command,
    CommandCode,
    Data,
    DeviceError,
    Emulator,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    encode_frame,
    open_pty,
)
from firmware_bridge.emulate_cli import emulate_main
from tests.conftest import EMULATE, ROOT

START_MS = 1_700_000_000_000
CONTROL_BYTES = bytes([0x0D, 0x0A, 0x03, 0x11, 0x13, 0x1A, 0x04, 0x7F, 0x00, 0xFF])


def take(emulator: Emulator, seconds: float) -> list[Frame]:
    """Decode what the emulator sends in its first *seconds* (device time)."""
    decoder = FrameDecoder()
    out: list[Frame] = []
    for t_ms, wire in emulator.frames(START_MS):
        if t_ms >= START_MS + seconds * 1000:
            return out
        out += decoder.feed(wire)
    raise AssertionError("unreachable")


def read_for(port: serial.Serial, decoder: FrameDecoder, seconds: float) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frames += decoder.feed(port.read(4096))
    return frames


@contextmanager
def running(emulator: Emulator, fd: int) -> Iterator[dict[str, int]]:
    """Run *emulator* on *fd* in a thread for the duration of the block."""
    stop = threading.Event()
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(emulator.run(fd, stop)), daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive(), "Emulator.run did not stop"


def read_exactly(fd: int, n: int, timeout: float = 2.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            got += os.read(fd, n - len(got))
    return got


# --------------------------------------------------------------------------- the pty


def test_pty_is_raw_before_any_reader_configures_it():
    with open_pty() as pair:
        # A reader that does not touch termios (not pyserial) sees the line as created.
        fd = os.open(pair.slave_path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(pair.master_fd, CONTROL_BYTES)
            assert read_exactly(fd, len(CONTROL_BYTES)) == CONTROL_BYTES  # no ICRNL/IXON/ISIG
            assert not select.select([pair.master_fd], [], [], 0.1)[0]  # no ECHO back
            os.write(fd, CONTROL_BYTES)  # agent -> device
            assert read_exactly(pair.master_fd, len(CONTROL_BYTES)) == CONTROL_BYTES  # no OPOST
        finally:
            os.close(fd)


def test_control_bytes_pass_through_pyserial_unmangled_both_ways():
    with open_pty() as pair, serial.Serial(pair.slave_path, timeout=1) as port:
        payload = CONTROL_BYTES * 8 + bytes(range(256))
        os.write(pair.master_fd, payload)
        assert port.read(len(payload)) == payload
        port.write(payload)
        assert read_exactly(pair.master_fd, len(payload)) == payload


def test_device_side_keeps_running_while_the_agent_closes_and_reopens_the_port():
    emulator = Emulator("normal", rate_hz=50)
    with open_pty() as pair, running(emulator, pair.master_fd) as counts:
        time.sleep(0.2)  # nobody has the port open yet
        for _ in range(2):
            with serial.Serial(pair.slave_path, timeout=0.05) as port:
                frames = read_for(port, FrameDecoder(), 0.3)
            assert sum(isinstance(f.body, Data) for f in frames) >= 10
        fd = os.open(pair.slave_path, os.O_RDWR | os.O_NOCTTY)
        try:  # still raw after pyserial closed it
            lflag = termios.tcgetattr(fd)[3]
            assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
        finally:
            os.close(fd)
    assert counts["reader_gone"] == 0 and counts["dropped_frames"] == 0
    assert pair.closed and not os.path.exists(pair.slave_path)


# ------------------------------------------------------------------ emulator over a real pty


def test_emulator_over_a_real_pty_sends_hello_then_consecutive_frames():
    emulator = Emulator("normal", rate_hz=50)
    with open_pty() as pair, serial.Serial(pair.slave_path, timeout=0.05) as port:
        decoder = FrameDecoder()
        with running(emulator, pair.master_fd) as counts:
            frames = read_for(port, decoder, 1.3)
    assert frames[0].seq == 0
    assert frames[0].body == Hello("EMU-0001", "emu-1.0.0", Emulator.CHANNELS)
    assert [f.seq for f in frames] == list(range(len(frames)))  # no gaps
    data = [f.body for f in frames if isinstance(f.body, Data)]
    assert len(data) >= 50 and all(len(d.values) == 3 for d in data)
    assert any(isinstance(f.body, Heartbeat) for f in frames)
    assert decoder.stats.crc_errors == decoder.stats.framing_errors == 0
    assert counts["frames"] >= len(frames) and counts["corrupted_frames"] == 0


def test_garbage_scenario_over_a_pty_counts_errors_and_still_delivers_data():
    emulator = Emulator("garbage", rate_hz=200, seed=3)
    with open_pty() as pair, serial.Serial(pair.slave_path, timeout=0.05) as port:
        decoder = FrameDecoder()
        with running(emulator, pair.master_fd) as counts:
            frames = read_for(port, decoder, 1.0)
    stats = decoder.stats
    assert stats.crc_errors + stats.framing_errors > 0
    assert stats.bytes_discarded > 0
    assert sum(isinstance(f.body, Data) for f in frames) >= 100
    assert counts["garbage_bytes"] > 0


def test_emulator_obeys_commands_sent_back_through_the_pty():
    emulator = Emulator("normal", rate_hz=20)
    with open_pty() as pair, serial.Serial(pair.slave_path, timeout=0.05) as port:
        decoder = FrameDecoder()
        with running(emulator, pair.master_fd) as counts:
            read_for(port, decoder, 0.2)
            port.write(encode_frame(Frame(0, 0, Command(CommandCode.SEND_HELLO))))
            port.write(encode_frame(Frame(1, 0, Command(99))))
            frames = read_for(port, decoder, 0.4)
    bodies = [f.body for f in frames]
    assert emulator.hello() in bodies
    assert any(isinstance(b, DeviceError) and b.code == 0x0001 for b in bodies)
    assert counts["commands"] == 2


def test_set_sampling_rate_command_changes_the_data_rate():
    emulator = Emulator("normal", rate_hz=10)
    with open_pty() as pair, serial.Serial(pair.slave_path, timeout=0.05) as port:
        decoder = FrameDecoder()
        with running(emulator, pair.master_fd):
            slow = read_for(port, decoder, 0.5)
            rate = (100_000).to_bytes(4, "little")  # 100 Hz in mHz
            port.write(encode_frame(Frame(0, 0, Command(CommandCode.SET_SAMPLING_RATE, rate))))
            read_for(port, decoder, 0.1)
            fast = read_for(port, decoder, 0.5)
    n_slow = sum(isinstance(f.body, Data) for f in slow)
    n_fast = sum(isinstance(f.body, Data) for f in fast)
    assert n_slow <= 8 and n_fast >= 30


def test_run_returns_when_the_reader_side_is_gone():
    master, slave = os.openpty()
    os.close(slave)  # no reader at all: writes to the master fail with EIO
    try:
        t0 = time.monotonic()
        counts = Emulator().run(master, threading.Event(), duration_s=5)
        assert counts["reader_gone"] == 1 and time.monotonic() - t0 < 2
    finally:
        os.close(master)


def test_run_stops_after_duration():
    with open_pty() as pair:
        t0 = time.monotonic()
        counts = Emulator(rate_hz=20).run(pair.master_fd, threading.Event(), duration_s=0.5)
        elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 2.0
    assert 9 <= counts["data"] <= 12 and counts["hello"] == 1 and counts["reader_gone"] == 0


# --------------------------------------------------------------------------- emulate_main (the CLI)


def test_emulate_pty_prints_the_path_and_serves_a_device_there():
    proc = subprocess.Popen(
        [sys.executable, "-c", EMULATE, "--pty", "--seconds", "1", "--rate", "50"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        prefix = "emulated device EMU-0001 on "
        assert line.startswith(prefix)
        assert line.endswith(" (scenario normal, 50 Hz); Ctrl-C to stop\n")
        path = line[len(prefix) :].split(" ")[0]
        with serial.Serial(path, timeout=0.05) as port:
            # pyserial flushes input on open, so ask for the HELLO we may have missed.
            port.write(encode_frame(Frame(0, 0, Command(CommandCode.SEND_HELLO))))
            frames = read_for(port, FrameDecoder(), 0.5)
        assert any(f.body == Hello("EMU-0001", "emu-1.0.0", Emulator.CHANNELS) for f in frames)
        assert sum(isinstance(f.body, Data) for f in frames) >= 10
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_emulate_stops_cleanly_on_ctrl_c_or_sigterm(sig):
    proc = subprocess.Popen(
        [sys.executable, "-c", EMULATE, "--pty"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("emulated device EMU-0001 on /dev/")
        proc.send_signal(sig)
        assert proc.wait(timeout=3) == 0
        assert "stopped" in proc.communicate()[1]
    finally:
        proc.kill()
        proc.communicate()


def test_emulate_port_writes_to_an_existing_serial_device(capsys):
    with open_pty() as pair:
        argv = ["--port", pair.slave_path, "--seconds", "0.3", "--serial", "EMU-0042"]
        assert emulate_main(argv) == 0
        wire = read_exactly(pair.master_fd, 4096, timeout=0.3)
    frames = FrameDecoder().feed(wire)
    assert frames[0].body == Hello("EMU-0042", "emu-1.0.0", Emulator.CHANNELS)
    assert sum(isinstance(f.body, Data) for f in frames) >= 5
    assert f"emulated device EMU-0042 on {pair.slave_path}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --pty --port is required"),
        (["--pty", "--port", "/dev/null"], "not allowed with"),
        (["--pty", "--scenario", "nope"], "invalid choice: 'nope'"),
        (["--pty", "--rate", "0"], "must be a positive number"),
        (["--pty", "--rate", "5000"], "--rate must be at most 1000"),
        (["--pty", "--seconds", "x"], "not a number"),
    ],
)
def test_emulate_usage_errors_exit_2_with_a_reason(argv, message, capsys):
    assert emulate_main(argv) == 2
    assert message in capsys.readouterr().err


def test_emulate_port_that_cannot_be_opened_exits_1(capsys, tmp_path):
    assert emulate_main(["--port", str(tmp_path / "no-such-tty")]) == 1
    assert "cannot open" in capsys.readouterr().err


def test_emulate_help_shows_an_example(capsys):
    assert emulate_main(["--help"]) == 0
    assert "edgegov emulate --pty --scenario excursion" in capsys.readouterr().out


# ------------------------------------------------------- scenarios (device time, no pty)


def temperatures(frames: list[Frame]) -> list[tuple[float, float]]:
    return [
        ((f.timestamp_ms - START_MS) / 1000, f.body.values[0])
        for f in frames
        if isinstance(f.body, Data)
    ]


def test_frames_are_deterministic_for_a_seed_and_differ_across_seeds():
    def first(seed: int) -> list[tuple[int, bytes]]:
        return list(itertools.islice(Emulator("garbage", seed=seed).frames(START_MS), 500))

    assert first(1) == first(1)
    assert first(1) != first(2)


def test_frames_schedule_hello_data_at_rate_and_a_heartbeat_each_second():
    frames = take(Emulator(rate_hz=20), 10)
    assert frames[0].body == Emulator().hello() and frames[0].seq == 0
    assert [f.seq for f in frames] == list(range(len(frames)))
    data = [f for f in frames if isinstance(f.body, Data)]
    assert len(data) == 200
    assert {b.timestamp_ms - a.timestamp_ms for a, b in itertools.pairwise(data)} == {50}
    beats = [f for f in frames if isinstance(f.body, Heartbeat)]
    assert [f.body.uptime_s for f in beats] == list(range(1, 10))
    assert [f.timestamp_ms - START_MS for f in beats] == [1000 * i for i in range(1, 10)]


def test_first_frame_after_boot_is_preceded_by_a_delimiter():
    _, first = next(Emulator().frames(START_MS))
    assert first[:1] == b"\x00"
    assert first[1:] == encode_frame(Frame(0, START_MS, Emulator().hello()))


def test_normal_scenario_holds_about_5_degrees_with_the_door_mostly_shut():
    frames = take(Emulator("normal", rate_hz=5), 600)
    temps = [t for _, t in temperatures(frames)]
    assert min(temps) > 4.3 and max(temps) < 5.7
    humid = [f.body.values[1] for f in frames if isinstance(f.body, Data)]
    assert min(humid) >= 45 and max(humid) <= 55 and max(humid) - min(humid) > 3
    door = [f.body.values[2] for f in frames if isinstance(f.body, Data)]
    assert set(door) == {0.0, 1.0} and 0 < sum(door) / len(door) < 0.2


def test_excursion_scenario_rises_above_10_degrees_for_about_5_s_every_20_s():
    series = temperatures(take(Emulator("excursion", rate_hz=10), 60))
    for cycle in range(3):
        window = [(s, t) for s, t in series if 20 * cycle <= s < 20 * (cycle + 1)]
        hot = [s for s, t in window if t > 10.0]
        assert 4.0 <= max(hot) - min(hot) <= 6.5  # one ~5 s excursion per cycle
        assert max(t for _, t in window) < 11.5
        assert all(t < 6.0 for s, t in window if s < min(hot) - 2.5 or s > max(hot) + 2.5)


def test_drift_scenario_warms_steadily():
    series = temperatures(take(Emulator("drift", rate_hz=2), 600))
    first_minute = [t for s, t in series if s < 60]
    last_minute = [t for s, t in series if s >= 540]
    assert sum(last_minute) / len(last_minute) - sum(first_minute) / len(first_minute) > 4.5


def test_garbage_scenario_is_the_normal_stream_plus_counted_noise():
    clean = {f.seq: f for f in take(Emulator("normal", seed=5), 60)}
    decoder = FrameDecoder()
    noisy = []
    for t_ms, wire in Emulator("garbage", seed=5).frames(START_MS):
        if t_ms >= START_MS + 60_000:
            break
        noisy += decoder.feed(wire)
    assert all(clean[f.seq] == f for f in noisy)  # noise adds errors, never wrong frames
    assert 0.85 * len(clean) < len(noisy) < len(clean)
    assert decoder.stats.crc_errors + decoder.stats.framing_errors > 0.03 * len(clean)


def test_noisy_line_corrupts_about_2_percent_of_frames():
    emitted = 0
    decoder = FrameDecoder()
    for t_ms, wire in Emulator("noisy-line", seed=11).frames(START_MS):
        if t_ms >= START_MS + 300_000:
            break
        emitted += 1
        decoder.feed(wire)
    lost = emitted - decoder.stats.frames_ok
    assert 0.01 * emitted < lost < 0.04 * emitted


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"scenario": "x"}, "unknown scenario"), ({"rate_hz": 0}, "rate_hz")]
)
def test_emulator_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Emulator(**kwargs)
