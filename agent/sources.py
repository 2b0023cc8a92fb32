"""Serial sources: read framed data with pyserial, keep honest health counters.

Each source runs in its own thread: it opens the port, feeds bytes to the
:class:`~firmware_bridge.FrameDecoder`, maps each device's channels onto the
policy's channels by name (from the device's HELLO), and hands lists of
:class:`~agent.window.Reading` to the agent. A port that disappears is
reopened with capped exponential backoff, and the time it was gone is counted
(``offline_ms``), never hidden. Sequence jumps are counted as gaps; a HELLO
with a restarted sequence is a device reboot, not a gap.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

import serial

from agent.window import Reading
from firmware_bridge import Command, CommandCode, Data, Frame, FrameDecoder, Hello, encode_frame

__all__ = ["SerialSource"]

log = logging.getLogger("edgegov.source")

_SEQ_MOD = 1 << 32
_HEALTH_KEYS = (
    "frames_ok",
    "crc_errors",
    "framing_errors",
    "unknown_types",
    "version_errors",
    "bytes_discarded",
    "seq_gaps",
    "frames_missed",
    "reboots",
    "offline_ms",
    "data_before_hello",
    "unknown_channels",
)


class SerialSource:
    """One serial port carrying the framed protocol."""

    def __init__(
        self,
        index: int,
        port: str,
        baud: int,
        channels: Sequence[str],
        deliver: Callable[[list[Reading]], None],
        *,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.index = index
        self.port = port
        self.baud = baud
        self.channels = tuple(channels)
        self.deliver = deliver
        self.max_backoff_s = max_backoff_s
        self.decoder = FrameDecoder()
        self.device_serial: str | None = None
        self._map: tuple[int, ...] | None = (
            None  # device channel i -> policy channel index (-1: unknown)
        )
        self._last_seq: int | None = None
        self._hello_requested = 0.0
        self._cmd_seq = 0  # our own frame counter towards the device
        self._counts = dict.fromkeys(_HEALTH_KEYS, 0)
        self._offline_since: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{index}", daemon=True)
        self._ser: serial.Serial | None = None
        self.connected = threading.Event()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def health(self) -> dict[str, int]:
        """Cumulative counters for this source (the agent reports per-window deltas)."""
        with self._lock:
            h = dict(self._counts)
            for k, v in self.decoder.stats.as_dict().items():
                if k in h:
                    h[k] = v
            if self._offline_since is not None:
                h["offline_ms"] += int((time.monotonic() - self._offline_since) * 1000)
        return h

    # -- the reader thread ---------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.25
        self._offline_since = time.monotonic()
        while not self._stop.is_set():
            try:
                self._ser = serial.Serial(self.port, self.baud, timeout=0.1)
            except (serial.SerialException, OSError) as e:
                log.warning(
                    "serial %s: cannot open (%s); retrying in %.1f s", self.port, e, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self._mark_online()
            backoff = 0.25
            # pyserial flushes the input on open, so a HELLO sent earlier is gone: ask again.
            self._request_hello(self._ser)
            try:
                self._read_loop(self._ser)
            except (serial.SerialException, OSError) as e:
                log.warning("serial %s: lost the port (%s); the gap is recorded", self.port, e)
            finally:
                self._ser.close()
                self.connected.clear()
                with self._lock:
                    if self._offline_since is None:
                        self._offline_since = time.monotonic()

    def _mark_online(self) -> None:
        with self._lock:
            if self._offline_since is not None:
                self._counts["offline_ms"] += int((time.monotonic() - self._offline_since) * 1000)
                self._offline_since = None
        self.connected.set()
        log.info("serial %s: open at %d baud", self.port, self.baud)

    def _read_loop(self, ser: serial.Serial) -> None:
        while not self._stop.is_set():
            chunk = ser.read(1)  # blocks up to the port timeout, then take what is buffered
            if not chunk:
                continue
            waiting = ser.in_waiting
            if waiting:
                chunk += ser.read(waiting)
            frames = self.decoder.feed(chunk)
            if frames:
                readings = self._handle(frames, int(time.time() * 1000), ser)
                if readings:
                    self.deliver(readings)

    def _handle(self, frames: list[Frame], now_ms: int, ser: serial.Serial) -> list[Reading]:
        out: list[Reading] = []
        for f in frames:
            body = f.body
            if isinstance(body, Hello):
                self._on_hello(f, body)
                continue
            self._check_seq(f.seq)
            if isinstance(body, Data):
                if self._map is None:  # schema unknown: count it, never guess the channels
                    with self._lock:
                        self._counts["data_before_hello"] += 1
                    if time.monotonic() - self._hello_requested > 1.0:
                        self._request_hello(ser)
                    continue
                out.append(
                    Reading(
                        now_ms,
                        f.timestamp_ms,
                        self.index,
                        f.seq,
                        self._to_policy_order(body.values),
                    )
                )
        return out

    def _request_hello(self, ser: serial.Serial) -> None:
        self._hello_requested = time.monotonic()
        self._cmd_seq = (self._cmd_seq + 1) % _SEQ_MOD
        ser.write(
            encode_frame(
                Frame(self._cmd_seq, int(time.time() * 1000), Command(CommandCode.SEND_HELLO))
            )
        )

    def _on_hello(self, f: Frame, hello: Hello) -> None:
        names = [c.name for c in hello.channels]
        mapping = tuple(self.channels.index(n) if n in self.channels else -1 for n in names)
        with self._lock:
            if self._last_seq is not None and f.seq == 0:
                self._counts["reboots"] += 1
            self._counts["unknown_channels"] = sum(1 for m in mapping if m < 0)
        self._last_seq = f.seq
        self._map = mapping
        if hello.serial != self.device_serial:
            log.info(
                "serial %s: device %s firmware %s, channels %s",
                self.port,
                hello.serial,
                hello.firmware,
                ", ".join(f"{c.name} [{c.unit}]" for c in hello.channels),
            )
        self.device_serial = hello.serial

    def _check_seq(self, seq: int) -> None:
        if self._last_seq is not None:
            expected = (self._last_seq + 1) % _SEQ_MOD
            if seq != expected:
                with self._lock:
                    self._counts["seq_gaps"] += 1
                    self._counts["frames_missed"] += (seq - expected) % _SEQ_MOD
        self._last_seq = seq

    def _to_policy_order(self, values: tuple[float, ...]) -> tuple[float, ...]:
        out = [math.nan] * len(self.channels)
        assert self._map is not None
        for dev_i, pol_i in enumerate(self._map):
            if pol_i >= 0 and dev_i < len(values):
                out[pol_i] = values[dev_i]
        return tuple(out)
