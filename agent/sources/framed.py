"""Framed-protocol sources (firmware_bridge/PROTOCOL.md) over pyserial.

Bytes go through the columnar :class:`native.frames.BatchDecoder`; DATA
samples become readings in the policy's channel order, every other frame is
handled in stream order. What this module decides (PROTOCOL.md §5):

* **Sequence**: next = last + 1 mod 2**32 is fine; a forward jump is a gap
  with its exact missing range; a seq seen among the last
  :data:`DUPLICATE_WINDOW` frames is a duplicate (dropped, counted); any
  other backward jump without HELLO is an unannounced restart
  (``seq_resets``, HELLO requested).
* **Reboot**: HELLO with seq 0 after frames from the same device -- a reboot,
  not a gap.
* **Restart of the agent**: :meth:`FramedSource.resume` gives the last frame the
  evidence accounts for; the first frame after it reveals the frames sent while no
  agent was recording (``frames_unrecorded``, a ``gaps`` range). If the device
  rebooted meanwhile, those before its reboot cannot be counted: said as a problem.
* **Schema**: HELLO must agree with the config (``expect``) or, if none is
  given, with the policy's channels of the same name (unit); a valid range
  must be a real interval and names unique. Otherwise the source is
  *quarantined*: an ALERT is logged, its readings are counted and withheld
  from the policy, and the window's evidence is marked degraded.
* Values outside the policy channel's valid range are counted
  (``out_of_range``) and passed on unchanged, so rules still see them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import serial

from agent.config import SourceConfig
from agent.sources.link import Deliver, PolicyChannel, PortSource, now_ms
from agent.sources.reading import ReadingBatch
from firmware_bridge import Command, CommandCode, Data, Frame, Hello, encode_frame
from native.frames import Batch, BatchDecoder

__all__ = ["DUPLICATE_WINDOW", "FramedSource", "schema_problem"]

log = logging.getLogger("edgegov.source")

DUPLICATE_WINDOW = 64
_SEQ_MOD = 1 << 32
_HALF = 1 << 31
_HELLO_RETRY_S = 1.0
REBOOTED_UNSEEN = (
    "the device rebooted while no agent was recording: the frames it sent from seq {after} "
    "until its reboot cannot be counted"
)
WENT_BACK_UNSEEN = (
    "the device frame counter went back from {last} to {seq} while no agent was recording "
    "(a reboot whose HELLO was not received?): the frames sent meanwhile cannot be counted"
)
# A line is read in pauses long enough for about _BATCH_BYTES to gather (at most
# _COALESCE_S), so that the per-read work is shared by many frames: each read costs
# ~0.7 ms of CPU on a gateway-class core however little it holds (a thread waking with
# cold caches). A 115,200-baud device is read five times a second (the agent's reader
# under 0.5 % of a core; reading it 20 times a second cost 1.5 %), 1 kHz of 3-channel
# DATA about 18 times. A line faster than _BATCH_BYTES per _MIN_PAUSE_S is busy: read as
# fast as it delivers, never paused (a pty never reports more than its 4 KiB buffer
# waiting, whatever the device sends, so the measured rate decides, not one read).
_COALESCE_S = 0.2  # at most this much latency added on a slow line
_MIN_PAUSE_S = 0.01
_BATCH_BYTES = 2048
_BUSY_BYTES_PER_S = _BATCH_BYTES / _MIN_PAUSE_S
_BUSY_READ_BYTES = 1 << 16  # one read(2) on a busy line takes up to this much


def schema_problem(hello: Hello, expected: Sequence[tuple[str, str]], strict: bool) -> str | None:
    """Why *hello* does not match *expected* ``(name, unit)`` pairs, or None.

    *strict*: every expected channel must be announced (config ``expect``);
    otherwise only channels the device does announce are checked (policy).
    """
    names = [c.name for c in hello.channels]
    if len(set(names)) != len(names):
        return f"HELLO repeats a channel name ({', '.join(names)})"
    for c in hello.channels:
        if math.isnan(c.min) or math.isnan(c.max) or c.min > c.max:
            return f"HELLO channel {c.name!r} has an invalid range [{c.min}, {c.max}]"
    units = {c.name: c.unit for c in hello.channels}
    for name, unit in expected:
        if name not in units:
            if strict:
                return f"HELLO lacks channel {name!r} (expected in config)"
            continue
        if units[name] != unit:
            return f"channel {name!r} is in {units[name]!r} on the device, {unit!r} expected"
    return None


def _one_frame(frame: Frame, body: Data) -> Batch:
    """A Batch holding one DATA frame decoded by the Python codec."""
    ns, nc = body.n_samples, body.n_channels
    return Batch(
        np.full(ns, frame.seq, dtype=np.uint32),
        np.array(
            [frame.timestamp_ms + k * body.interval_ms for k in range(ns)], dtype=np.uint64
        ).astype(np.int64),
        np.array(body.values, dtype=np.float64).reshape(ns, nc).T.copy(),
        [],
        np.array([frame.seq], dtype=np.uint32),
        np.array([ns], dtype=np.uint16),
    )


class FramedSource(PortSource):
    """One serial port carrying the framed protocol."""

    def __init__(
        self,
        index: int,
        cfg: SourceConfig,
        channels: Sequence[PolicyChannel],
        deliver: Deliver,
        config_file: str = "",
    ) -> None:
        super().__init__(index, cfg, channels, deliver, config_file)
        if cfg.expect:
            for j, e in enumerate(cfg.expect):
                self._channel(e.name, f"expect[{j}].name")
            self._expected = [(e.name, e.unit) for e in cfg.expect]
        else:
            self._expected = [(c.name, c.unit) for c in self.channels]
        self._low = np.array([c.low for c in self.channels], dtype=np.float64)
        self._high = np.array([c.high for c in self.channels], dtype=np.float64)
        self.device_serial: str | None = None
        self.decoder = BatchDecoder(0)
        self._map: np.ndarray | None = None  # device channel -> policy index (-1 unknown)
        self._quarantine: str | None = None
        self._last_seq: int | None = None
        self._resumed = False  # _last_seq came from an earlier agent process
        self._recent: deque[int] = deque(maxlen=DUPLICATE_WINDOW)
        self._stats_seen: dict[str, int] = {}
        self._hello_requested = 0.0
        self._cmd_seq = 0
        self._ser: serial.Serial | None = None

    # -- port ------------------------------------------------------------------------
    def _serve(self, handle: object) -> None:
        assert isinstance(handle, serial.Serial)
        ser = handle
        # A new connection: drop any partial frame from before, keep counting.
        self._fold_stats()
        self.decoder = BatchDecoder(self.decoder.n_channels)
        self._stats_seen = {}
        self._ser = ser
        self._request_hello()  # pyserial flushed the input: a HELLO sent earlier is gone
        fd = _fd_of(ser)
        rate = 0.0  # bytes a second, measured over the last _COALESCE_S or more
        since, got = time.monotonic(), 0
        while not self._stop.is_set():
            busy = rate > _BUSY_BYTES_PER_S
            chunk = _read_now(fd) if busy and fd is not None else b""
            if not chunk:
                chunk = ser.read(1)  # up to the port timeout, then take what is buffered
                if not chunk:
                    rate, since, got = 0.0, time.monotonic(), 0
                    continue
                if not busy:
                    time.sleep(_pause(rate))
                waiting = ser.in_waiting
                if waiting:
                    chunk += ser.read(waiting)
            got += len(chunk)
            now = time.monotonic()
            if now - since >= _COALESCE_S:
                rate, since, got = got / (now - since), now, 0
            self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        """Decode *chunk* and deliver its readings (the reader thread's work)."""
        with self.stream_lock:  # the chunk's counts and readings go out together
            batch = self.decoder.feed(chunk)
            received = self.clock()
            out: list[ReadingBatch] = []
            pos = 0
            for sample_pos, frame in batch.others:
                self._samples(batch, pos, sample_pos, received, out)
                pos = sample_pos
                self._control(frame, received, out)
            self._samples(batch, pos, len(batch), received, out)
            self._fold_stats()
            if out:
                self.deliver(ReadingBatch.concat(out, len(self.channels)))

    @property
    def last_seq(self) -> int | None:
        return self._last_seq

    def resume(self, last_seq: int | None) -> None:
        self._last_seq, self._resumed = last_seq, last_seq is not None

    def _fold_stats(self) -> None:
        now = self.decoder.stats()
        seen = self._stats_seen
        self.ledger.add_many({k: v - seen.get(k, 0) for k, v in now.items()})
        self._stats_seen = now

    def _request_hello(self) -> None:
        """COMMAND 1 (send HELLO) to the device, when a port is open."""
        self._hello_requested = time.monotonic()
        ser = self._ser
        if ser is None:
            return
        self._cmd_seq = (self._cmd_seq + 1) % _SEQ_MOD
        cmd = Frame(self._cmd_seq, now_ms(), Command(CommandCode.SEND_HELLO))
        ser.write(encode_frame(cmd))

    def _ask_hello_again(self) -> None:
        """Request HELLO, unless a request went out less than _HELLO_RETRY_S ago."""
        if time.monotonic() - self._hello_requested > _HELLO_RETRY_S:
            self._request_hello()

    def _before_hello(self, n: int) -> None:
        """*n* samples arrived before any HELLO: counted, not used; ask for the schema."""
        self.ledger.add("data_before_hello", n)
        self._ask_hello_again()

    # -- sequence numbers --------------------------------------------------------------
    def _track(self, seq: int, hello: bool) -> bool:
        """Judge one frame's seq; False if it is a duplicate (drop it)."""
        last = self._last_seq
        if last is not None and self._resumed:
            self._resumed = False
            self._first_after_restart(last, seq, hello)
        elif last is not None:
            if hello and seq == 0:
                self.ledger.add("reboots")
                self._recent.clear()
            else:
                d = (seq - last - 1) % _SEQ_MOD
                if d and d < _HALF:
                    self.ledger.gap((last + 1) % _SEQ_MOD, (seq - 1) % _SEQ_MOD)
                elif d:
                    if seq in self._recent:
                        self.ledger.add("duplicates")
                        return False
                    self.ledger.add("seq_resets")
                    self._recent.clear()
                    if not hello:
                        self._request_hello()
        self._last_seq = seq
        self._recent.append(seq)
        return True

    def _in_sequence(self, seqs: np.ndarray) -> bool:
        """Take ``seqs`` at once if each follows the last one (the common case: no gap,
        duplicate, reset or first frame after a restart to judge); False: judge them one
        by one (:meth:`_track`), nothing taken."""
        last = self._last_seq
        if last is None or self._resumed or not len(seqs):
            return False
        expected = (np.arange(1, len(seqs) + 1, dtype=np.int64) + last) % _SEQ_MOD
        if not np.array_equal(seqs.astype(np.int64, copy=False), expected):
            return False
        self._last_seq = int(seqs[-1])
        self._recent.extend(seqs[-DUPLICATE_WINDOW:].tolist())
        return True

    def _first_after_restart(self, last: int, seq: int, hello: bool) -> None:
        """The first frame since an earlier agent process accounted for frames up to
        ``last``: what lies between was sent while no agent was recording."""
        d = (seq - last - 1) % _SEQ_MOD
        if hello and seq == 0:
            self.ledger.add("reboots")
            self.ledger.problem(REBOOTED_UNSEEN.format(after=(last + 1) % _SEQ_MOD))
        elif d and d < _HALF:
            self.ledger.gap((last + 1) % _SEQ_MOD, (seq - 1) % _SEQ_MOD, unrecorded=True)
        elif d:
            self.ledger.add("seq_resets")
            self.ledger.problem(WENT_BACK_UNSEEN.format(last=last, seq=seq))
            if not hello:
                self._request_hello()

    # -- frames ------------------------------------------------------------------------
    def _control(self, frame: Frame, received: int, out: list[ReadingBatch]) -> None:
        body = frame.body
        if isinstance(body, Data) and self._map is not None and body.n_channels == len(self._map):
            # Decoded before the decoder learnt this schema (same chunk as the HELLO).
            self._samples(_one_frame(frame, body), 0, body.n_samples, received, out)
            return
        if not self._track(frame.seq, isinstance(body, Hello)):
            return
        if isinstance(body, Hello):
            self._on_hello(body)
        elif isinstance(body, Data) and self._map is None:
            self._before_hello(body.n_samples)
        elif isinstance(body, Data):
            # DATA whose channel count is not the announced schema's: never guess.
            self.ledger.add("schema_mismatch_samples", body.n_samples)
            self.ledger.problem("DATA does not match the channels announced in HELLO")
            self._ask_hello_again()

    def _on_hello(self, hello: Hello) -> None:
        names = [c.name for c in hello.channels]
        self._map = np.array([self.channel_index.get(n, -1) for n in names], dtype=np.intp)
        self.ledger.add("unknown_channels", int(np.count_nonzero(self._map < 0)))
        self.decoder.set_channels(len(names))
        problem = schema_problem(hello, self._expected, strict=bool(self.cfg.expect))
        if problem != self._quarantine:
            if problem:
                log.error(
                    "ALERT source %s: device %s schema rejected: %s; its readings are "
                    "quarantined and the evidence is marked degraded",
                    self.cfg.name,
                    hello.serial,
                    problem,
                )
            else:
                log.info("source %s: device schema accepted", self.cfg.name)
        self._quarantine = problem
        if hello.serial != self.device_serial:
            log.info(
                "source %s: device %s firmware %s, channels %s",
                self.cfg.name,
                hello.serial,
                hello.firmware,
                ", ".join(f"{c.name} [{c.unit}]" for c in hello.channels),
            )
        self.device_serial = hello.serial
        self.ledger.device(hello.serial)

    def _samples(self, b: Batch, lo: int, hi: int, received: int, out: list[ReadingBatch]) -> None:
        if hi <= lo:
            return
        # Which frames hold samples lo..hi: walk frame_samples (cumulative).
        ends = np.cumsum(b.frame_samples, dtype=np.int64)
        f_lo = int(np.searchsorted(ends, lo, side="right"))
        f_hi = int(np.searchsorted(ends, hi, side="left")) + 1
        keep = np.ones(hi - lo, dtype=bool)
        fseq = b.frame_seq
        if not self._in_sequence(fseq[f_lo:f_hi]):
            for f in range(f_lo, f_hi):
                if not self._track(int(fseq[f]), False):
                    start = int(ends[f] - b.frame_samples[f])
                    keep[max(start, lo) - lo : int(ends[f]) - lo] = False
        n = int(np.count_nonzero(keep))
        if not n:
            return
        if self._map is None:
            self._before_hello(n)
            return
        if self._quarantine is not None:
            self.ledger.add("quarantined", n)
            self.ledger.problem(f"readings quarantined: {self._quarantine}")
            return
        whole = n == hi - lo
        vals = b.values[:, lo:hi] if whole else b.values[:, lo:hi][:, keep]
        rows = np.full((n, len(self.channels)), np.nan)  # readings x policy channels
        known = self._map >= 0
        rows[:, self._map[known]] = vals[known].T
        with np.errstate(invalid="ignore"):
            bad = (rows < self._low) | (rows > self._high)
        self.ledger.add("out_of_range", int(np.count_nonzero(bad)))
        self.ledger.add("samples_ok", n)
        seqs = b.seq[lo:hi] if whole else b.seq[lo:hi][keep]
        dev = b.device_ms[lo:hi] if whole else b.device_ms[lo:hi][keep]
        out.append(ReadingBatch.from_columns(received, dev, self.index, seqs, rows))


def _pause(rate: float) -> float:
    """Seconds to let a line at ``rate`` bytes a second gather about _BATCH_BYTES."""
    if rate <= 0.0:
        return _COALESCE_S
    return min(_COALESCE_S, max(_MIN_PAUSE_S, _BATCH_BYTES / rate))


def _fd_of(ser: serial.Serial) -> int | None:
    """The port's file descriptor, where it has one (a local tty; not a ``socket://`` or
    ``rfc2217://`` URL)."""
    try:
        fd = ser.fileno()
    except (AttributeError, OSError, ValueError, serial.SerialException):
        return None
    return fd if isinstance(fd, int) else None


def _read_now(fd: int) -> bytes:
    """What the busy line has buffered, in one read(2) (pyserial's ``read`` costs a
    ``select`` and an ``ioctl`` more); empty when nothing is waiting (the port is open
    non-blocking with VMIN 0: no data reads as b"", and a line that is gone is found by
    the ``ser.read`` that follows, as pyserial detects it).

    Raises:
        serial.SerialException: the read failed (e.g. EIO: the line is gone).
    """
    try:
        return os.read(fd, _BUSY_READ_BYTES)
    except BlockingIOError:
        return b""
    except OSError as e:
        raise serial.SerialException(f"read failed: {e}") from e
