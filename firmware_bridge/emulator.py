"""An emulated cold-chain sensor device speaking the edgegov serial protocol.

Used for demos, tests and soak runs: ``edgegov emulate --pty`` (the command line
is :mod:`firmware_bridge.emulate_cli`) gives the agent a serial port to read
without any hardware. The device reports three channels (temperature, humidity,
door), sends HELLO after boot, DATA at ``rate_hz`` and HEARTBEAT every second, and
obeys COMMANDs (PROTOCOL.md §4.6).

Output is deterministic given ``seed`` and the boot time: sensor noise and
line noise come from two seeded generators, so e.g. the ``garbage`` scenario
sends exactly the ``normal`` scenario's frames plus injected noise.

To load a receiver through its real input path, :meth:`Emulator.flood` sends the
same device's frames as fast as the line takes them (device time stays synthetic,
at ``rate_hz``), :meth:`Emulator.capture` writes them to a file, and
:func:`firmware_bridge.line.replay` sends a capture file's bytes (raw wire bytes, no
header) as fast as the line takes them.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import itertools
import math
import os
import random
import select
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .frames import (
    PROTOCOL_VERSION,
    ChannelKind,
    ChannelSpec,
    Command,
    CommandCode,
    Data,
    DeviceError,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    MsgType,
    encode_frame,
)
from .line import add_rates, pump
from .pty_pair import open_pty

__all__ = ["SCENARIOS", "Emulator", "SentFrame"]

#: Scenario names, in the order ``--help`` lists them.
SCENARIOS = (
    "normal",
    "excursion",
    "drift",
    "garbage",
    "noisy-line",
    "unplug",
    "reboot",
    "slow-trickle",
)
MAX_RATE_HZ = 1000.0

# ERROR codes 0x0001-0x00FF are defined by the protocol (PROTOCOL.md §4.4).
_ERR_UNKNOWN_COMMAND = 0x0001
_ERR_BAD_ARGUMENT = 0x0002
_ERR_SAFE_STATE = 0x0003

_HEARTBEAT_MS = 1000
_EXCURSION_PERIOD_S = 20.0
#: ``reboot``: the device resets this often (device time) and starts again at seq 0.
REBOOT_PERIOD_MS = 4000
#: ``unplug``: the port is there this long, then gone for UNPLUG_OFFLINE_S.
UNPLUG_ONLINE_S = 3.0
UNPLUG_OFFLINE_S = 1.0
#: ``slow-trickle``: pause between single bytes on the line.
TRICKLE_BYTE_S = 0.0005
#: Flood mode: frames are encoded into one buffer of this many frames per write
#: (about 36 KiB), so the per-frame cost is the encoder's, not a system call's.
FLOOD_CHUNK_FRAMES = 1024


_PROBE_B = ChannelSpec("probe_b", "Cel", ChannelKind.REAL, -40.0, 85.0)
_REF_CELL = ChannelSpec("ref_cell", "Cel", ChannelKind.REAL, -40.0, 85.0)


@dataclass(frozen=True, slots=True)
class _Emission:
    seq: int  # the frame's sequence number
    t_ms: int  # device time at which the bytes go out
    kind: MsgType
    wire: bytes  # what goes on the line (may include noise)
    garbage: int  # injected garbage bytes in ``wire``
    corrupted: bool  # frame bits flipped


class _Device:
    """The device state machine; one instance per emulated boot."""

    def __init__(self, emu: Emulator, start_ms: int) -> None:
        self.emu = emu
        self.boot_ms = start_ms
        self.origin_ms = start_ms  # never moves: maps device time to wall time
        self.boots = 1
        self.sensor_rng = random.Random(emu.seed)
        # the self-test channels' noise: its own generator, so the others stay as they were
        self.probe_rng = random.Random(f"edgegov-probes-{emu.seed}")
        self.line_rng = random.Random(f"edgegov-line-{emu.seed}")
        self.seq = 0
        self.rate_hz = emu.rate_hz
        self.data_base_ms = float(start_ms)
        self.data_k = 0  # index of the next DATA sample since data_base_ms
        self.next_hb_ms = start_ms + _HEARTBEAT_MS
        self.pending: list[Hello | DeviceError] = [emu.hello()]
        self.last_ms = start_ms
        self.door_open_until = -1.0
        self.safe_state = False
        self.first = True

    # -- sensors -------------------------------------------------------------
    def _sample(self, t_ms: int) -> Data:
        rng = self.sensor_rng
        s = (t_ms - self.boot_ms) / 1000.0
        temp = 5.0 + 0.3 * math.sin(2 * math.pi * s / 600.0) + rng.gauss(0.0, 0.05)
        humidity = 50.0 + 3.0 * math.sin(2 * math.pi * s / 900.0 + 1.0) + rng.gauss(0.0, 0.3)
        humidity = min(55.0, max(45.0, humidity))
        # Door opens about every two minutes for ~4 s.
        if s >= self.door_open_until and rng.random() < 1.0 / (120.0 * self.rate_hz):
            self.door_open_until = s + 4.0
        door = s < self.door_open_until
        scenario = self.emu.scenario
        if scenario == "excursion":
            # Every 20 s: door open at 7.5 s, temperature ramps to ~10.5 degC by
            # 10 s, holds ~5 s, recovers by 17 s. A real cold-chain excursion.
            p = s % _EXCURSION_PERIOD_S
            door = door or 7.5 <= p < 10.0
            if 8.0 <= p < 10.0:
                temp += 5.5 * (p - 8.0) / 2.0
            elif 10.0 <= p < 15.0:
                temp += 5.5 + 0.3 * math.sin(p)
            elif 15.0 <= p < 17.0:
                temp += 5.5 * (17.0 - p) / 2.0
        elif scenario == "drift":
            temp += 0.01 * s  # +0.6 degC per minute: a failing compressor
        values: tuple[float, ...] = (temp, humidity, 1.0 if door else 0.0)
        emu, prng = self.emu, self.probe_rng
        if emu.probe_offset is not None:  # a second probe beside the first, offset by that
            values += (temp + emu.probe_offset + prng.gauss(0.0, 0.02),)
        if emu.reference is not None:  # a reference cell at that value
            values += (emu.reference + prng.gauss(0.0, 0.002),)
        return Data(values)

    # -- commands ------------------------------------------------------------
    def handle(self, cmd: Command) -> None:
        """Apply a COMMAND from the agent; effects show in later emissions."""
        if cmd.code == CommandCode.SEND_HELLO:
            self.pending.append(self.emu.hello())
        elif cmd.code == CommandCode.SET_SAMPLING_RATE:
            mhz = struct.unpack("<I", cmd.arg)[0] if len(cmd.arg) == 4 else 0
            if not 0 < mhz <= MAX_RATE_HZ * 1000:
                reason = f"bad sampling rate {cmd.arg.hex()}"
                self.pending.append(DeviceError(_ERR_BAD_ARGUMENT, reason))
                return
            self.rate_hz = mhz / 1000.0
            self.data_base_ms = float(self.last_ms)
            self.data_k = 1
        elif cmd.code == CommandCode.USE_VERSION:
            # Only version 1 exists (PROTOCOL.md §6): confirm it with a HELLO.
            if cmd.arg == bytes([PROTOCOL_VERSION]):
                self.pending.append(self.emu.hello())
            else:
                self.pending.append(DeviceError(_ERR_BAD_ARGUMENT, f"version {cmd.arg.hex()}"))
        elif cmd.code == CommandCode.ENTER_SAFE_STATE:
            if not self.safe_state:
                self.safe_state = True
                self.pending.append(DeviceError(_ERR_SAFE_STATE, "entered safe state"))
        else:
            self.pending.append(DeviceError(_ERR_UNKNOWN_COMMAND, f"unknown command {cmd.code}"))

    # -- output --------------------------------------------------------------
    def _reboot(self, t_ms: int) -> None:
        """A reset: seq restarts at 0, HELLO first, after a fresh 0x00 (§2.3, §5)."""
        self.boots += 1
        self.boot_ms = t_ms
        self.seq = 0
        self.next_hb_ms = t_ms + _HEARTBEAT_MS
        self.pending = [self.emu.hello()]
        self.first = True

    def next(self, clean: bool = False) -> _Emission:
        """The next frame, as the line delivers it (``clean``: without line noise)."""
        if self.emu.scenario == "reboot" and self.last_ms - self.boot_ms >= REBOOT_PERIOD_MS:
            self._reboot(self.last_ms)
        if self.pending:
            t_ms = self.last_ms
            body: Hello | Data | Heartbeat | DeviceError = self.pending.pop(0)
        else:
            data_ms = self.data_base_ms + self.data_k * 1000.0 / self.rate_hz
            if data_ms <= self.next_hb_ms:
                t_ms = round(data_ms)
                self.data_k += 1
                body = self._sample(t_ms)
            else:
                t_ms = self.next_hb_ms
                self.next_hb_ms += _HEARTBEAT_MS
                body = Heartbeat((t_ms - self.boot_ms) // 1000)
        self.last_ms = t_ms
        frame = Frame(self.seq, t_ms, body)
        self.seq = (self.seq + 1) & 0xFFFF_FFFF
        wire = encode_frame(frame)
        kind = frame.type
        garbage, corrupted = 0, False
        rng = self.line_rng
        scenario = self.emu.scenario
        if clean:
            pass
        elif scenario == "garbage":
            if rng.random() < 0.05:
                junk = rng.randbytes(rng.randint(1, 40))
                garbage = len(junk)
                wire = junk + wire
            if rng.random() < 0.03:
                wire, corrupted = _flip_bits(wire, rng.randint(1, 3), rng), True
        elif scenario == "noisy-line" and rng.random() < 0.02:
            wire, corrupted = _flip_bits(wire, rng.randint(1, 2), rng), True
        if self.first:
            # A 0x00 ahead of the first frame after boot ends whatever partial
            # frame the receiver holds from before the reset (PROTOCOL.md §2.3).
            wire = b"\x00" + wire
            self.first = False
        return _Emission(frame.seq, t_ms, kind, wire, garbage, corrupted)


@dataclass(frozen=True, slots=True)
class SentFrame:
    """One frame the device numbered (``Emulator(ledger=True)``), in the order numbered.

    ``boot`` counts device boots from 1 (seq restarts at 0 in each); ``on_line`` is False
    for a frame the line could not take, or that the device sent while unplugged or as a
    run ended: numbered, never written. A receiver accounts for every frame up to the last
    one on the line (PROTOCOL.md §5).
    """

    boot: int
    seq: int
    t_ms: int  # device time, as in the frame
    kind: MsgType
    on_line: bool


_KIND_KEY = {
    MsgType.HELLO: "hello",
    MsgType.DATA: "data",
    MsgType.HEARTBEAT: "heartbeat",
    MsgType.ERROR: "error",
}  # the count each frame type adds to


def _counts(*keys: str) -> dict[str, int]:
    """A writer's counts, all zero, and ``last_seq`` -1 (no frame written yet)."""
    return {**dict.fromkeys(keys, 0), "last_seq": -1}


def _relink(link: str, target: str) -> None:
    """Point the symlink *link* at *target* atomically (rename over the old one)."""
    tmp = f"{link}.{os.getpid()}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _flip_bits(wire: bytes, n: int, rng: random.Random) -> bytes:
    buf = bytearray(wire)
    for _ in range(n):
        bit = rng.randrange(len(buf) * 8)
        buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf)


class Emulator:
    """An emulated sensor device (see the module docstring).

    Args:
        scenario: one of :data:`SCENARIOS`.
        rate_hz: DATA frames per second, in (0, 1000].
        seed: seeds sensor noise and injected line noise.
        serial, firmware: what HELLO announces.
        ledger: keep a :class:`SentFrame` for every frame numbered, in :attr:`sent`
            (fault tests compare it with what the receiver recorded and declared).
        probe_offset: if given, a fourth channel ``probe_b``: a second temperature probe
            reading ``temperature`` + this offset (a drifted probe: a large one), with its
            own noise; for redundant-probe self-tests (``docs/self-tests.md``).
        reference: if given, a channel ``ref_cell``: a reference cell the firmware reads,
            at this value (degC) with a little noise; for reference self-tests.

    Raises:
        ValueError: unknown scenario or rate out of range.
    """

    CHANNELS = (
        ChannelSpec("temperature", "Cel", ChannelKind.REAL, -40.0, 85.0),
        ChannelSpec("humidity", "%RH", ChannelKind.REAL, 0.0, 100.0),
        ChannelSpec("door", "bool", ChannelKind.BOOLEAN, 0.0, 1.0),
    )

    def __init__(
        self,
        scenario: str = "normal",
        rate_hz: float = 20.0,
        seed: int = 0,
        serial: str = "EMU-0001",
        firmware: str = "emu-1.0.0",
        ledger: bool = False,
        probe_offset: float | None = None,
        reference: float | None = None,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        if not 0.0 < rate_hz <= MAX_RATE_HZ:
            raise ValueError(f"rate_hz must be in (0, {MAX_RATE_HZ:g}], got {rate_hz!r}")
        self.scenario = scenario
        self.rate_hz = float(rate_hz)
        self.seed = seed
        self.serial = serial
        self.firmware = firmware
        self.sent: list[SentFrame] | None = [] if ledger else None
        self.probe_offset = probe_offset
        self.reference = reference
        self.channels = (
            self.CHANNELS
            + (_PROBE_B,) * (probe_offset is not None)
            + (_REF_CELL,) * (reference is not None)
        )

    def _note(self, device: _Device, e: _Emission, on_line: bool) -> None:
        if self.sent is not None:
            self.sent.append(SentFrame(device.boots, e.seq, e.t_ms, e.kind, on_line))

    def hello(self) -> Hello:
        """The HELLO body this device sends."""
        return Hello(self.serial, self.firmware, self.channels)

    def frames(self, start_ms: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(device time ms, wire bytes)`` forever, for a boot at *start_ms*.

        HELLO first (seq 0, preceded by one 0x00), then DATA at ``rate_hz`` and
        HEARTBEAT every 1000 ms. The concatenated bytes are exactly what the
        device puts on the line, noise of the scenario included.
        """
        device = _Device(self, start_ms)
        while True:
            e = device.next()
            yield e.t_ms, e.wire

    def run(
        self,
        fd: int,
        stop: threading.Event,
        duration_s: float | None = None,
        _device: _Device | None = None,
        _t0: float | None = None,
    ) -> dict[str, int]:
        """Emit frames to *fd* in real time until *stop*, *duration_s*, or reader loss.

        Boots the device at the current wall-clock time (ms since the Unix
        epoch). Reads COMMANDs the agent writes back on *fd* and obeys them;
        reading also keeps the agent's writes from filling the pty. Like a
        UART, the line does not wait: a frame the fd cannot take is dropped.

        Returns counts: ``frames`` written (any type), ``hello``, ``data``,
        ``heartbeat``, ``error``, ``bytes``, ``garbage_bytes``,
        ``corrupted_frames``, ``dropped_frames``, ``commands``, ``acks``,
        ``reader_gone`` (1 if the fd failed with EIO/EPIPE, i.e. the other
        side went away), and ``last_seq``: the sequence number of the last frame
        written (-1: none). Without a reboot, frames ``0..last_seq`` are every
        frame the device numbered and put out or dropped: what a receiver can
        account for (PROTOCOL.md §5).
        """
        counts = _counts(
            "frames", "hello", "data", "heartbeat", "error", "bytes", "garbage_bytes",
            "corrupted_frames", "dropped_frames", "commands", "acks", "reader_gone",
        )  # fmt: skip
        t0 = time.monotonic() if _t0 is None else _t0
        spoiled = False  # the line spoiled the last frame written (junk or flipped bits)
        device = _Device(self, int(time.time() * 1000)) if _device is None else _device
        trickle = self.scenario == "slow-trickle"
        deadline = None if duration_s is None else time.monotonic() + duration_s
        decoder = FrameDecoder()
        old_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, old_flags | os.O_NONBLOCK)
        try:
            while not stop.is_set():
                e = device.next()
                due = t0 + (e.t_ms - device.origin_ms) / 1000.0
                if deadline is not None and due > deadline:
                    self._note(device, e, False)
                    self._serve(fd, deadline, stop, device, decoder, counts)
                    break
                if not self._serve(fd, due, stop, device, decoder, counts):
                    self._note(device, e, False)
                    break
                if not (_trickle(fd, e.wire) if trickle else _write_frame(fd, e.wire)):
                    counts["dropped_frames"] += 1
                    self._note(device, e, False)
                    continue
                self._note(device, e, True)
                counts["frames"] += 1
                counts["last_seq"] = e.seq
                counts["bytes"] += len(e.wire)
                counts["garbage_bytes"] += e.garbage
                counts["corrupted_frames"] += e.corrupted
                if e.kind in _KIND_KEY:
                    counts[_KIND_KEY[e.kind]] += 1
                spoiled = bool(e.garbage or e.corrupted)
            if spoiled and stop.is_set():
                # Stopped right after a spoiled frame: end on an intact one, so the gap
                # it leaves shows (nothing after it would: no receiver can account for a
                # spoiled last frame, and the fault table would blame the agent for it).
                e = device.next(clean=True)
                written = _write_frame(fd, e.wire)
                self._note(device, e, written)
                if written:
                    counts["frames"] += 1
                    counts["last_seq"] = e.seq
                    counts["bytes"] += len(e.wire)
                    if e.kind in _KIND_KEY:
                        counts[_KIND_KEY[e.kind]] += 1
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EPIPE, errno.EBADF, errno.ENXIO):
                raise
            counts["reader_gone"] = 1
        finally:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, old_flags)
            except OSError:
                pass
        return counts

    def serve_pty(
        self,
        link: str,
        stop: threading.Event,
        duration_s: float | None = None,
        on_ready: Callable[[str], None] | None = None,
        hold: threading.Barrier | None = None,
    ) -> dict[str, int]:
        """Run on ptys reached through the symlink *link*, like a udev by-id name.

        In the ``unplug`` scenario the pty disappears every
        ``UNPLUG_ONLINE_S`` seconds for ``UNPLUG_OFFLINE_S`` (the link is
        removed, then points at a new pty), while the device keeps running:
        what it sends meanwhile is lost, so the agent sees an offline interval
        and a sequence gap. Other scenarios serve one pty until the end.
        Returns :meth:`run`'s counts summed (``last_seq``: the newest), plus ``unplugs``.

        *hold*, a two-party barrier: once *stop* ends the run, the pty stays open until
        another thread meets the barrier, so a reader still gets every byte already
        written (fault tests stop the device first, then the agent).
        """
        t0 = time.monotonic()
        device = _Device(self, int(time.time() * 1000))
        end = None if duration_s is None else t0 + duration_s
        total: dict[str, int] = {"unplugs": 0}
        while not stop.is_set() and (end is None or time.monotonic() < end):
            with open_pty() as pair:
                _relink(link, pair.slave_path)
                if on_ready is not None:
                    on_ready(link)
                    on_ready = None
                left = None if end is None else end - time.monotonic()
                span = (
                    left
                    if self.scenario != "unplug"
                    else (UNPLUG_ONLINE_S if left is None else min(left, UNPLUG_ONLINE_S))
                )
                counts = self.run(pair.master_fd, stop, span, device, t0)
                if hold is not None and stop.is_set():
                    try:
                        hold.wait()
                    except threading.BrokenBarrierError:  # its timeout, or abort(): go
                        pass
                os.unlink(link)
            for k, v in counts.items():
                if k == "last_seq":  # a position, not a count: the newest one
                    total[k] = v if v >= 0 else total.get(k, -1)
                else:
                    total[k] = total.get(k, 0) + v
            if self.scenario != "unplug" or stop.is_set():
                break
            total["unplugs"] += 1
            # Unplugged: the device runs on, its frames go nowhere.
            if stop.wait(UNPLUG_OFFLINE_S):
                break
            now_dev = device.origin_ms + (time.monotonic() - t0) * 1000.0
            while device.last_ms < now_dev:
                self._note(device, device.next(), False)
        return total

    def flood(
        self,
        fd: int,
        stop: threading.Event,
        frames: int | None = None,
        seconds: float | None = None,
        record: BinaryIO | None = None,
        start_ms: int | None = None,
        chunk_frames: int = FLOOD_CHUNK_FRAMES,
    ) -> dict[str, int]:
        """Write frames to *fd* as fast as it takes them, to load a receiver.

        The same device as :meth:`run` (HELLO first after a 0x00, DATA, a HEARTBEAT
        per second of device time, the scenario's noise, COMMANDs obeyed), but nothing
        waits for the clock: frames are encoded *chunk_frames* at a time into one
        buffer and written in large blocking writes, so the line (or the reader behind
        it) sets the pace. Device time still advances ``1000 / rate_hz`` ms per DATA
        frame from *start_ms* (default: now), so readings and time stamps stay
        plausible; it runs ahead of the wall clock by the flood's speed-up. COMMANDs
        take effect from the next buffer (they are read between writes, on a tty only).

        Ends after *frames* frames numbered (seq ``0..frames-1`` without a reboot), on
        *stop*, or after *seconds* of wall time; a stop or the deadline cuts no frame.
        *record*: a binary file that gets every byte put on the line, in order: a
        capture for :func:`~firmware_bridge.line.replay`. ``slow-trickle`` and
        ``unplug`` pace or cut the line themselves, so they cannot flood.

        Returns :meth:`run`'s counts (no ``dropped_frames``: a flood waits for the
        line instead of dropping), plus ``readings`` (DATA samples, one per DATA frame),
        ``device_ms`` (device time covered), ``wall_ms``, ``frames_per_s``,
        ``readings_per_s`` and ``bytes_per_s``.

        Raises:
            ValueError: a scenario that cannot flood, or *frames*/*chunk_frames* < 1.
        """
        if self.scenario in ("slow-trickle", "unplug"):
            raise ValueError(f"scenario {self.scenario!r} cannot flood (it paces or cuts the line)")
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames!r}")
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames!r}")
        counts = _counts(
            "frames", "hello", "data", "heartbeat", "error", "readings", "bytes",
            "garbage_bytes", "corrupted_frames", "commands", "acks", "reader_gone",
        )  # fmt: skip
        device = _Device(self, int(time.time() * 1000) if start_ms is None else start_ms)
        decoder = FrameDecoder()

        def on_input(chunk: bytes) -> None:
            for frame in decoder.feed(chunk):
                if isinstance(frame.body, Command):
                    counts["commands"] += 1
                    device.handle(frame.body)
                elif frame.type is MsgType.ACK:
                    counts["acks"] += 1

        listen = on_input if os.isatty(fd) else None
        numbered = 0
        last: _Emission | None = None  # the last frame on the line
        old_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, old_flags | os.O_NONBLOCK)
        t0 = time.monotonic()
        deadline = None if seconds is None else t0 + seconds
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                n = chunk_frames if frames is None else min(chunk_frames, frames - numbered)
                if n <= 0:
                    break
                batch = [device.next() for _ in range(n)]
                numbered += n
                buf = b"".join([e.wire for e in batch])
                done, gone = pump(fd, buf, stop, deadline, listen)
                if record is not None:
                    record.write(buf[:done])
                counts["bytes"] += done
                if done < len(buf):  # stopped mid-buffer: which frames are on the line
                    ends = list(itertools.accumulate(len(e.wire) for e in batch))
                    on_line = bisect.bisect_right(ends, done)
                    written, lost = batch[:on_line], batch[on_line:]
                else:
                    written, lost = batch, []
                for e in written:
                    counts[_KIND_KEY[e.kind]] += 1
                    if e.garbage or e.corrupted:
                        counts["garbage_bytes"] += e.garbage
                        counts["corrupted_frames"] += e.corrupted
                if written:
                    last = written[-1]
                    counts["frames"] += len(written)
                    counts["last_seq"] = last.seq
                if self.sent is not None:
                    for e in written:
                        self._note(device, e, True)
                    for e in lost:
                        self._note(device, e, False)
                if gone:
                    counts["reader_gone"] = 1
                    break
                if lost:
                    break
            stopped = frames is None or numbered < frames
            if stopped and not counts["reader_gone"] and last and (last.garbage or last.corrupted):
                # As in run(): end on an intact frame, so the spoiled one shows as a gap.
                e = device.next(clean=True)
                done, gone = pump(fd, e.wire, threading.Event(), None, None)
                if record is not None:
                    record.write(e.wire[:done])
                counts["bytes"] += done
                self._note(device, e, done == len(e.wire))
                if done == len(e.wire):
                    counts["frames"] += 1
                    counts[_KIND_KEY[e.kind]] += 1
                    counts["last_seq"] = e.seq
                    last = e
        finally:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, old_flags)
        counts["readings"] = counts["data"]
        counts["device_ms"] = 0 if last is None else last.t_ms - device.origin_ms
        add_rates(counts, time.monotonic() - t0)
        return counts

    def capture(
        self,
        path: str | os.PathLike[str],
        frames: int,
        start_ms: int | None = None,
    ) -> dict[str, int]:
        """Write the device's first *frames* frames, as wire bytes, to the file *path*.

        A flood into a file: no line, no clock, so a capture of minutes of device time
        takes a fraction of a second. The file holds exactly the bytes :meth:`frames`
        yields (raw wire bytes, no header): the input for
        :func:`~firmware_bridge.line.replay`. Returns :meth:`flood`'s counts.
        """
        with open(path, "wb") as f:
            return self.flood(f.fileno(), threading.Event(), frames=frames, start_ms=start_ms)

    @staticmethod
    def _serve(
        fd: int,
        until: float,
        stop: threading.Event,
        device: _Device,
        decoder: FrameDecoder,
        counts: dict[str, int],
    ) -> bool:
        """Wait until monotonic time *until*, handling incoming frames; False on stop."""
        while True:
            left = until - time.monotonic()
            if stop.is_set():
                return False
            if left <= 0:
                return True
            readable, _, _ = select.select([fd], [], [], min(left, 0.1))
            if not readable:
                continue
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:  # EOF: the other side is gone
                raise OSError(errno.EIO, "end of file on emulator fd")
            for frame in decoder.feed(chunk):
                if isinstance(frame.body, Command):
                    counts["commands"] += 1
                    device.handle(frame.body)
                elif frame.type is MsgType.ACK:
                    counts["acks"] += 1


def _trickle(fd: int, wire: bytes) -> bool:
    """``slow-trickle``: one byte per write, with a pause, so every read splits frames."""
    for i in range(len(wire)):
        if not _write_frame(fd, wire[i : i + 1]):
            return False
        time.sleep(TRICKLE_BYTE_S)
    return True


def _write_frame(fd: int, wire: bytes) -> bool:
    """Write *wire* to the non-blocking *fd*; False if the line could not take it.

    Finishes a partially written frame (waiting briefly) so one full buffer
    does not cut a frame in half and cost the next one too.
    """
    try:
        done = os.write(fd, wire)
    except BlockingIOError:
        return False
    deadline = time.monotonic() + 0.5
    while done < len(wire):
        if time.monotonic() > deadline:
            return False
        select.select([], [fd], [], 0.05)
        try:
            done += os.write(fd, wire[done:])
        except BlockingIOError:
            continue
    return True
