"""``edgegov emulate``: the command line of the emulated sensor device.

Parses the flags (:func:`emulate_main` is the entry point ``agent.cli`` hands
``edgegov emulate ...`` to), opens the line (a pty, a serial port or a capture
file) and drives an :class:`~firmware_bridge.emulator.Emulator` on it in real time,
as a flood or a capture, or replays a capture with :func:`~firmware_bridge.line.replay`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import os
import signal
import struct
import sys
import termios
import threading
import time
from types import FrameType

from .emulator import MAX_RATE_HZ, SCENARIOS, Emulator, _relink
from .line import replay
from .pty_pair import open_pty

__all__ = ["emulate_main"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
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
            "  edgegov emulate --port /dev/ttyUSB1 --rate 5 --seconds 60\n"
            "  edgegov emulate --pty --flood --seconds 30\n"
            "      loads the agent: frames as fast as the pty takes them, then the rate\n"
            "  edgegov emulate --capture normal.bin --frames 1000000\n"
            "  edgegov emulate --pty --replay normal.bin\n"
            "      the same bytes on every run, as fast as the pty takes them\n\n"
            "scenarios: normal (5 degC +/- noise), excursion (to ~10.5 degC for ~5 s every\n"
            "20 s), drift (+0.6 degC/min), garbage (normal plus junk bytes and bit-flipped\n"
            "frames), noisy-line (bit flips in ~2% of frames), unplug (the pty vanishes for 1 s\n"
            "every 3 s; give --link), reboot (device resets every 4 s), slow-trickle (one\n"
            "byte per write)\n\n"
            "flood: the device of the scenario, without waiting for the clock. Device time\n"
            "still advances 1/rate s per DATA frame, so it runs ahead of the wall clock by\n"
            "the flood's speed-up. Until a reader opens the pty its buffer fills and the\n"
            "flood waits; pyserial discards those bytes (HELLO included) when it opens the\n"
            "port, and the agent asks for HELLO, which the device sends.\n\n"
            "capture files hold the raw wire bytes as sent (0x00-delimited COBS frames), no\n"
            "header. A replay sends them once, unchanged: the device cannot answer COMMANDs\n"
            "(they are counted), so open the port before the replay starts to see its HELLO."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--pty", action="store_true", help="create a pseudo-terminal and print its path"
    )
    where.add_argument("--port", metavar="DEV", help="write to an existing serial device")
    where.add_argument(
        "--capture",
        metavar="FILE",
        help="write the device's first --frames N frames to FILE, as fast as possible (no line)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--flood",
        action="store_true",
        help="write frames as fast as the line takes them instead of at --rate in real time",
    )
    mode.add_argument(
        "--replay",
        metavar="FILE",
        help="write the capture FILE's bytes as fast as the line takes them, then stop",
    )
    parser.add_argument(
        "--link",
        metavar="PATH",
        help="with --pty: reach the pty through this symlink (stable across unplugs)",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default=None, help="default: normal")
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        metavar="HZ",
        help=f"DATA frames per second of device time, at most {MAX_RATE_HZ:g} (default: 20)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, metavar="N", help="noise seed (default: 0)"
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=None,
        metavar="N",
        help="stop after N seconds of wall time (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--frames",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with --flood or --capture: stop after N frames (seq 0..N-1)",
    )
    parser.add_argument(
        "--record",
        metavar="FILE",
        help="with --flood: also write every byte put on the line to FILE (a capture)",
    )
    parser.add_argument("--serial", default=None, help="device serial in HELLO (default: EMU-0001)")
    parser.add_argument(
        "--probe-offset",
        type=float,
        metavar="DEGC",
        help="add a second temperature probe, probe_b, reading this much off (self-tests)",
    )
    parser.add_argument(
        "--reference",
        type=float,
        metavar="DEGC",
        help="add a reference-cell channel, ref_cell, at this value (self-tests)",
    )
    parser.add_argument(
        "--baud", type=int, default=115200, help="with --port: baud rate (default: 115200)"
    )
    return parser


def _usage_problem(args: argparse.Namespace) -> str | None:
    """Why the parsed flags do not make sense together, or None (argparse cannot say)."""
    if not (args.pty or args.port or args.capture):
        return "one of the arguments --pty --port is required (or --capture FILE)"
    if args.rate is not None and args.rate > MAX_RATE_HZ:
        return f"--rate must be at most {MAX_RATE_HZ:g}"
    if args.replay is not None:
        for flag in (
            "scenario", "rate", "seed", "serial", "frames", "record", "probe_offset", "reference",
        ):  # fmt: skip
            if getattr(args, flag) is not None:
                name = flag.replace("_", "-")
                return f"--{name}: not with --replay (the capture's bytes are sent as they are)"
    if args.capture is not None:
        if args.frames is None:
            return "--capture needs --frames N (how many frames to write)"
        if args.seconds is not None:
            return "--seconds: not with --capture (give --frames; it covers N / --rate s)"
        if args.record is not None:
            return "--record: not with --capture (the capture file is the record)"
    elif args.frames is not None and not args.flood:
        return "--frames: only with --flood or --capture (a real-time run stops after --seconds)"
    if args.record is not None and not args.flood:
        return "--record: only with --flood"
    if (args.flood or args.capture) and args.scenario in ("slow-trickle", "unplug"):
        what = "--flood" if args.flood else "--capture"
        return f"--scenario {args.scenario}: not with {what} (it paces or cuts the line itself)"
    return None


def emulate_main(argv: list[str] | None = None) -> int:
    """``edgegov emulate``; *argv* excludes the program and subcommand names.

    Returns 0 on a clean stop (``--seconds`` or ``--frames`` reached, the end of a
    ``--replay``, Ctrl-C, SIGTERM), 2 on a usage error, 1 if ``--port`` cannot be opened
    or the line goes away, or a capture file cannot be read or written.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed usage and the reason
        return e.code if isinstance(e.code, int) else 2
    problem = _usage_problem(args)
    if problem is not None:
        parser.print_usage(sys.stderr)
        print(f"edgegov emulate: error: {problem}", file=sys.stderr)
        return 2
    emulator = Emulator(
        args.scenario or "normal",
        20.0 if args.rate is None else args.rate,
        args.seed or 0,
        serial=args.serial or "EMU-0001",
        probe_offset=args.probe_offset,
        reference=args.reference,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Ctrl-C and SIGTERM end the run cleanly (handlers can only be set in the main thread).
    in_main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if in_main else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    where = args.port or args.capture
    try:
        with contextlib.ExitStack() as files:
            try:
                if args.replay is not None:
                    # Open it now: a missing capture is reported before any pty appears.
                    files.enter_context(open(args.replay, "rb"))
                record = (
                    None if args.record is None else files.enter_context(open(args.record, "wb"))
                )
                sink = (
                    None if args.capture is None else files.enter_context(open(args.capture, "wb"))
                )
            except OSError as e:
                print(f"edgegov emulate: cannot open {e.filename}: {e.strerror}", file=sys.stderr)
                return 1

            def drive(fd: int) -> dict[str, int]:
                if args.replay is not None:
                    return replay(fd, args.replay, stop, args.seconds)
                if args.flood or sink is not None:
                    return emulator.flood(fd, stop, args.frames, args.seconds, record)
                return emulator.run(fd, stop, args.seconds)

            def announce(path: str) -> None:
                nonlocal where
                where = path
                if args.replay is not None:
                    size = os.path.getsize(args.replay)
                    print(
                        f"replay of {args.replay} on {path} ({size} bytes, as fast as the line "
                        "takes them); Ctrl-C to stop",
                        flush=True,
                    )
                else:
                    _announce(emulator, path, args.flood)

            if sink is not None:
                counts = drive(sink.fileno())
            elif args.pty and (args.flood or args.replay is not None):
                with open_pty() as pair:
                    if args.link:
                        _relink(args.link, pair.slave_path)
                        files.callback(os.unlink, args.link)
                    announce(args.link or pair.slave_path)
                    counts = drive(pair.master_fd)
                    if not counts["reader_gone"]:
                        _let_reader_drain(pair.slave_path)
            elif args.pty and (args.link or args.scenario == "unplug"):
                link = args.link or f"/tmp/edgegov-emu-{os.getpid()}"
                counts = emulator.serve_pty(link, stop, args.seconds, announce)
            elif args.pty:
                with open_pty() as pair:
                    announce(pair.slave_path)
                    counts = drive(pair.master_fd)
            else:
                import serial  # pyserial; only needed for --port

                try:
                    port = serial.Serial(args.port, baudrate=args.baud, timeout=0, write_timeout=0)
                except (serial.SerialException, OSError, ValueError) as e:
                    print(f"edgegov emulate: cannot open {args.port}: {e}", file=sys.stderr)
                    return 1
                with port:
                    announce(args.port)
                    counts = drive(port.fileno())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = ", ".join(f"{k} {v}" for k, v in counts.items() if v > 0)
    if counts["reader_gone"]:
        print(f"edgegov emulate: {where} went away ({summary})", file=sys.stderr)
        return 1
    if "frames_per_s" in counts:
        print(_rate_line(args, counts), file=sys.stderr)
    print(f"edgegov emulate: stopped ({summary})", file=sys.stderr)
    return 0


def _let_reader_drain(slave_path: str, patience_s: float = 1.0, quiet_s: float = 0.05) -> None:
    """Wait while a reader is still taking bytes queued on the pty at *slave_path*.

    Closing a pty discards what its reader has not read yet, and a flood ends with a
    full queue: without this wait the last few thousand frames written (and counted)
    would never reach the reader. Returns once the queue has stayed empty for
    *quiet_s* (the kernel moves written bytes into the queue a little later, so one
    empty look is not enough), or once it has not shrunk for *patience_s* (no reader,
    or a stalled one).
    """
    try:
        fd = os.open(slave_path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        queued, since = -1, time.monotonic()
        while True:
            now = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            if now != queued:
                queued, since = now, time.monotonic()
            elif time.monotonic() - since > (quiet_s if now == 0 else patience_s):
                return
            time.sleep(0.005)
    except OSError:
        return
    finally:
        os.close(fd)


def _rate_line(args: argparse.Namespace, counts: dict[str, int]) -> str:
    """What a flood, capture or replay achieved, in the units a bench compares."""
    what = "replay" if args.replay is not None else "capture" if args.capture else "flood"
    wall = counts["wall_ms"] / 1000
    line = f"edgegov emulate: {what} wrote {counts['frames']} frames"
    if "readings" in counts:
        line += f", {counts['readings']} readings"
    line += f", {counts['bytes'] / 1e6:.1f} MB in {wall:.2f} s: {counts['frames_per_s']} frames/s"
    if "readings_per_s" in counts:
        line += f", {counts['readings_per_s']} readings/s"
    line += f", {counts['bytes_per_s'] / 1e6:.1f} MB/s"
    if "device_ms" in counts:
        line += f" (device time {counts['device_ms'] / 1000:.0f} s)"
    return line


def _announce(emulator: Emulator, path: str, flood: bool = False) -> None:
    how = ", flood: as fast as the line takes them" if flood else ""
    print(
        f"emulated device {emulator.serial} on {path} "
        f"(scenario {emulator.scenario}, {emulator.rate_hz:g} Hz{how}); Ctrl-C to stop",
        flush=True,
    )
