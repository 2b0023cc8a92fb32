"""An emulated cold-chain sensor device speaking the edgegov serial protocol.

Used for demos, tests and soak runs: ``edgegov emulate --pty`` gives the agent
a serial port to read without any hardware. The device reports three channels
(temperature, humidity, door), sends HELLO after boot, DATA at ``rate_hz`` and
HEARTBEAT every second, and obeys COMMANDs (PROTOCOL.md §4.6).

Output is deterministic given ``seed`` and the boot time: sensor noise and
line noise come from two seeded generators, so e.g. the ``garbage`` scenario
sends exactly the ``normal`` scenario's frames plus injected noise.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import math
import os
import random
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

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
from .pty_pair import open_pty

__all__ = ["SCENARIOS", "Emulator", "SentFrame", "emulate_main"]

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
        return Data((temp, humidity, 1.0 if door else 0.0))

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

    def _note(self, device: _Device, e: _Emission, on_line: bool) -> None:
        if self.sent is not None:
            self.sent.append(SentFrame(device.boots, e.seq, e.t_ms, e.kind, on_line))

    def hello(self) -> Hello:
        """The HELLO body this device sends."""
        return Hello(self.serial, self.firmware, self.CHANNELS)

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
        counts = dict.fromkeys(
            (
                "frames",
                "hello",
                "data",
                "heartbeat",
                "error",
                "bytes",
                "garbage_bytes",
                "corrupted_frames",
                "dropped_frames",
                "commands",
                "acks",
                "reader_gone",
            ),
            0,
        )
        counts["last_seq"] = -1
        kind_key = {
            MsgType.HELLO: "hello",
            MsgType.DATA: "data",
            MsgType.HEARTBEAT: "heartbeat",
            MsgType.ERROR: "error",
        }
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
                if e.kind in kind_key:
                    counts[kind_key[e.kind]] += 1
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
                    if e.kind in kind_key:
                        counts[kind_key[e.kind]] += 1
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


# --------------------------------------------------------------------------- CLI


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgegov emulate",
        description="Emulate a sensor device speaking the edgegov serial protocol.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  edgegov emulate --pty --scenario excursion\n"
            "      prints the pty path, e.g. /dev/pts/7; point the agent's serial port at it\n"
            "  edgegov emulate --port /dev/ttyUSB1 --rate 5 --seconds 60\n\n"
            "scenarios: normal (5 degC +/- noise), excursion (to ~10.5 degC for ~5 s every\n"
            "20 s), drift (+0.6 degC/min), garbage (normal plus junk bytes and bit-flipped\n"
            "frames), noisy-line (bit flips in ~2% of frames), unplug (the pty vanishes for 1 s\n"
            "every 3 s; give --link), reboot (device resets every 4 s), slow-trickle (one\n"
            "byte per write)"
        ),
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--pty", action="store_true", help="create a pseudo-terminal and print its path"
    )
    where.add_argument("--port", metavar="DEV", help="write to an existing serial device")
    parser.add_argument(
        "--link",
        metavar="PATH",
        help="with --pty: reach the pty through this symlink (stable across unplugs)",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="normal", help="default: normal")
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=20.0,
        metavar="HZ",
        help=f"DATA frames per second, at most {MAX_RATE_HZ:g} (default: 20)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="noise seed (default: 0)")
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=None,
        metavar="N",
        help="stop after N seconds (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--serial", default="EMU-0001", help="device serial in HELLO (default: EMU-0001)"
    )
    parser.add_argument(
        "--baud", type=int, default=115200, help="with --port: baud rate (default: 115200)"
    )
    return parser


def emulate_main(argv: list[str] | None = None) -> int:
    """``edgegov emulate``; *argv* excludes the program and subcommand names.

    Returns 0 on a clean stop (``--seconds`` elapsed, Ctrl-C, SIGTERM), 2 on a
    usage error, 1 if ``--port`` cannot be opened or goes away.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed usage and the reason
        return e.code if isinstance(e.code, int) else 2
    if args.rate > MAX_RATE_HZ:
        parser.print_usage(sys.stderr)
        print(f"edgegov emulate: error: --rate must be at most {MAX_RATE_HZ:g}", file=sys.stderr)
        return 2
    emulator = Emulator(args.scenario, args.rate, args.seed, serial=args.serial)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Ctrl-C and SIGTERM end the run cleanly (handlers can only be set in the main thread).
    in_main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if in_main else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        if args.pty and (args.link or args.scenario == "unplug"):
            link = args.link or f"/tmp/edgegov-emu-{os.getpid()}"
            counts = emulator.serve_pty(
                link, stop, args.seconds, lambda path: _announce(emulator, path)
            )
        elif args.pty:
            with open_pty() as pair:
                _announce(emulator, pair.slave_path)
                counts = emulator.run(pair.master_fd, stop, args.seconds)
        else:
            import serial  # pyserial; only needed for --port

            try:
                port = serial.Serial(args.port, baudrate=args.baud, timeout=0, write_timeout=0)
            except (serial.SerialException, OSError, ValueError) as e:
                print(f"edgegov emulate: cannot open {args.port}: {e}", file=sys.stderr)
                return 1
            with port:
                _announce(emulator, args.port)
                counts = emulator.run(port.fileno(), stop, args.seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = ", ".join(f"{k} {v}" for k, v in counts.items() if v > 0)
    if counts["reader_gone"]:
        print(f"edgegov emulate: {args.port} went away ({summary})", file=sys.stderr)
        return 1
    print(f"edgegov emulate: stopped ({summary})", file=sys.stderr)
    return 0


def _announce(emulator: Emulator, path: str) -> None:
    print(
        f"emulated device {emulator.serial} on {path} "
        f"(scenario {emulator.scenario}, {emulator.rate_hz:g} Hz); Ctrl-C to stop",
        flush=True,
    )
