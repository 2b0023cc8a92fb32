"""Frames of the edgegov serial protocol: message types, encoding, stream decoding.

The wire format is specified in ``firmware_bridge/PROTOCOL.md``; section
numbers below (§n) refer to it. In short::

    raw  = version u8 | type u8 | seq u32 | timestamp_ms u64 | payload | crc32 u32
    wire = COBS(raw) 0x00

Error contract: :func:`encode_frame` raises ``ValueError`` when handed a frame
that cannot be represented (API misuse). :class:`FrameDecoder` never raises on
line data: corrupt input is counted in :class:`DecoderStats` and skipped.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import TypeAlias

from .cobs import decode as _cobs_decode
from .cobs import encode as _cobs_encode
from .cobs import max_encoded_len

__all__ = [
    "HEADER_LEN",
    "MAX_ENCODED_LEN",
    "MAX_FRAME_LEN",
    "MIN_FRAME_LEN",
    "PROTOCOL_VERSION",
    "Ack",
    "Body",
    "ChannelKind",
    "ChannelSpec",
    "Command",
    "CommandCode",
    "Data",
    "DecoderStats",
    "DeviceError",
    "Frame",
    "FrameDecoder",
    "Heartbeat",
    "Hello",
    "MsgType",
    "encode_frame",
    "parse_frame",
]

PROTOCOL_VERSION = 1
HEADER_LEN = 14  # version, type, seq, timestamp_ms (§1)
_CRC_LEN = 4
MIN_FRAME_LEN = HEADER_LEN + _CRC_LEN
MAX_FRAME_LEN = 256  # raw frame, header and CRC included (§1)
#: Longest COBS encoding of a raw frame; a longer run without 0x00 is garbage.
MAX_ENCODED_LEN = max_encoded_len(MAX_FRAME_LEN)  # 258

_HEADER = struct.Struct("<BBIQ")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CHANNEL_TAIL = struct.Struct("<Bff")  # kind, min, max
_DATA_HEAD = struct.Struct("<BBH")  # n_channels, n_samples, interval_ms


class MsgType(IntEnum):
    """Message type byte (§4). 0x0_ device -> agent, 0x8_ agent -> device."""

    HELLO = 0x01
    DATA = 0x02
    HEARTBEAT = 0x03
    ERROR = 0x04
    ACK = 0x81
    COMMAND = 0x82


class CommandCode(IntEnum):
    """``Command.code`` values defined by protocol version 1 (§4.6)."""

    SEND_HELLO = 1
    SET_SAMPLING_RATE = 2  # arg: u32 LE, millihertz
    ENTER_SAFE_STATE = 3
    USE_VERSION = 4  # arg: u8 protocol version (§6)


class ChannelKind(IntEnum):
    """What a channel's float32 values mean (§4.1)."""

    REAL = 0
    INTEGER = 1
    BOOLEAN = 2


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One measured channel announced in HELLO.

    ``unit`` is a UCUM code; ``kind`` says how to read the float32 values;
    ``min``/``max`` bound the physically valid range (±inf: unbounded).
    """

    name: str
    unit: str
    kind: ChannelKind = ChannelKind.REAL
    min: float = -math.inf
    max: float = math.inf


@dataclass(frozen=True, slots=True)
class Hello:
    """Sent first after every boot: who the device is and what DATA carries.

    ``max_version`` is the highest protocol version the device can speak (§6).
    """

    serial: str
    firmware: str
    channels: tuple[ChannelSpec, ...]
    max_version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Data:
    """``n_samples`` samples of every channel, sample-major, float32 on the wire.

    ``values`` holds sample 0's channels in HELLO order, then sample 1's, ...;
    sample ``k`` was taken at the frame's ``timestamp_ms + k * interval_ms``.
    """

    values: tuple[float, ...]
    n_samples: int = 1
    interval_ms: int = 0

    @property
    def n_channels(self) -> int:
        """Values per sample."""
        return len(self.values) // self.n_samples if self.n_samples else 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness, sent about once a second: seconds since device boot."""

    uptime_s: int


@dataclass(frozen=True, slots=True)
class DeviceError:
    """An error the device reports about itself (code, human-readable text)."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Agent -> device: acknowledges the device frame with sequence ``acked_seq``."""

    acked_seq: int


@dataclass(frozen=True, slots=True)
class Command:
    """Agent -> device command; ``code`` is usually a :class:`CommandCode`."""

    code: int
    arg: bytes = b""


Body: TypeAlias = Hello | Data | Heartbeat | DeviceError | Ack | Command

_TYPE_OF_BODY: dict[type, MsgType] = {
    Hello: MsgType.HELLO,
    Data: MsgType.DATA,
    Heartbeat: MsgType.HEARTBEAT,
    DeviceError: MsgType.ERROR,
    Ack: MsgType.ACK,
    Command: MsgType.COMMAND,
}


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded (or to-be-encoded) frame: header fields and a typed body."""

    seq: int
    timestamp_ms: int
    body: Body

    @property
    def type(self) -> MsgType:
        """The message type implied by the body's class."""
        try:
            return _TYPE_OF_BODY[type(self.body)]
        except KeyError:
            raise ValueError(f"not a frame body: {type(self.body).__name__}") from None


# --------------------------------------------------------------------------- encoding


def _str_field(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be str, got {type(value).__name__}")
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"{what} is {len(raw)} bytes in UTF-8; at most 255 fit (§4)")
    return _U8.pack(len(raw)) + raw


def _uint(value: object, bits: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise ValueError(f"{what} must be an int in [0, 2**{bits}), got {value!r}")
    return value


def _payload(body: Body) -> bytes:
    if isinstance(body, Data):
        ns = _uint(body.n_samples, 8, "Data.n_samples")
        interval = _uint(body.interval_ms, 16, "Data.interval_ms")
        n = len(body.values)
        if ns == 0 or n % ns or n // ns > 255:
            raise ValueError(
                f"Data.values ({n}) must be n_samples ({ns}, >= 1) times n_channels (<= 255)"
            )
        try:
            return _DATA_HEAD.pack(n // ns, ns, interval) + struct.pack(f"<{n}f", *body.values)
        except (struct.error, OverflowError, TypeError) as e:
            raise ValueError(f"DATA values must be floats in float32 range: {e}") from e
    if isinstance(body, Heartbeat):
        return _U32.pack(_uint(body.uptime_s, 32, "Heartbeat.uptime_s"))
    if isinstance(body, Hello):
        n = len(body.channels)
        if n > 255:
            raise ValueError(f"HELLO announces at most 255 channels, got {n}")
        parts = [
            _str_field(body.serial, "Hello.serial"),
            _str_field(body.firmware, "Hello.firmware"),
            _U8.pack(_uint(body.max_version, 8, "Hello.max_version")),
            _U8.pack(n),
        ]
        for i, ch in enumerate(body.channels):
            if not isinstance(ch, ChannelSpec):
                raise ValueError(f"Hello.channels[{i}] must be a ChannelSpec")
            parts.append(_str_field(ch.name, f"Hello.channels[{i}].name"))
            parts.append(_str_field(ch.unit, f"Hello.channels[{i}].unit"))
            kind = _uint(ch.kind, 8, f"Hello.channels[{i}].kind")
            try:
                parts.append(_CHANNEL_TAIL.pack(kind, ch.min, ch.max))
            except (struct.error, OverflowError, TypeError) as e:
                raise ValueError(f"Hello.channels[{i}] range must be float32: {e}") from e
        return b"".join(parts)
    if isinstance(body, DeviceError):
        code = _uint(body.code, 16, "DeviceError.code")
        return _U16.pack(code) + _str_field(body.message, "DeviceError.message")
    if isinstance(body, Ack):
        return _U32.pack(_uint(body.acked_seq, 32, "Ack.acked_seq"))
    if isinstance(body, Command):
        code = _uint(body.code, 8, "Command.code")
        arg = body.arg
        if not isinstance(arg, (bytes, bytearray)) or len(arg) > 255:
            raise ValueError("Command.arg must be bytes of length <= 255")
        return _U8.pack(code) + _U8.pack(len(arg)) + bytes(arg)
    raise ValueError(f"not a frame body: {type(body).__name__}")


def encode_frame(frame: Frame) -> bytes:
    """Encode *frame* for the wire: ``COBS(raw frame) + b"\\x00"``.

    Raises:
        ValueError: a field is out of range, a string is longer than 255 bytes
            in UTF-8, or the raw frame would exceed ``MAX_FRAME_LEN`` bytes.
    """
    seq = _uint(frame.seq, 32, "Frame.seq")
    ts = _uint(frame.timestamp_ms, 64, "Frame.timestamp_ms")
    raw = _HEADER.pack(PROTOCOL_VERSION, frame.type, seq, ts) + _payload(frame.body)
    if len(raw) + _CRC_LEN > MAX_FRAME_LEN:
        raise ValueError(
            f"{frame.type.name} frame would be {len(raw) + _CRC_LEN} bytes; "
            f"the maximum is {MAX_FRAME_LEN} (§1)"
        )
    return _cobs_encode(raw + _U32.pack(zlib.crc32(raw))) + b"\x00"


# --------------------------------------------------------------------------- decoding


class _Malformed(Exception):
    """Internal: a CRC-valid frame whose payload does not parse (counted)."""


def _read_str(raw: bytes, off: int, end: int) -> tuple[str, int]:
    if off >= end:
        raise _Malformed
    stop = off + 1 + raw[off]
    if stop > end:
        raise _Malformed
    return raw[off + 1 : stop].decode("utf-8"), stop  # UnicodeDecodeError is counted


def _parse_hello(raw: bytes, off: int, end: int) -> Hello:
    serial, off = _read_str(raw, off, end)
    firmware, off = _read_str(raw, off, end)
    if off + 2 > end:
        raise _Malformed
    max_version, n = raw[off], raw[off + 1]
    off += 2
    channels = []
    for _ in range(n):
        name, off = _read_str(raw, off, end)
        unit, off = _read_str(raw, off, end)
        if off + _CHANNEL_TAIL.size > end:
            raise _Malformed
        kind, lo, hi = _CHANNEL_TAIL.unpack_from(raw, off)
        off += _CHANNEL_TAIL.size
        if kind not in _KINDS:
            raise _Malformed
        channels.append(ChannelSpec(name, unit, ChannelKind(kind), lo, hi))
    if off != end:
        raise _Malformed
    return Hello(serial, firmware, tuple(channels), max_version)


_KINDS = frozenset(int(k) for k in ChannelKind)


def _parse_data(raw: bytes, off: int, end: int) -> Data:
    if off + _DATA_HEAD.size > end:
        raise _Malformed
    nc, ns, interval = _DATA_HEAD.unpack_from(raw, off)
    n = nc * ns
    if ns == 0 or off + _DATA_HEAD.size + 4 * n != end:
        raise _Malformed
    return Data(struct.unpack_from(f"<{n}f", raw, off + _DATA_HEAD.size), ns, interval)


def _parse_heartbeat(raw: bytes, off: int, end: int) -> Heartbeat:
    if end - off != 4:
        raise _Malformed
    return Heartbeat(_U32.unpack_from(raw, off)[0])


def _parse_error(raw: bytes, off: int, end: int) -> DeviceError:
    if end - off < 3:
        raise _Malformed
    message, stop = _read_str(raw, off + 2, end)
    if stop != end:
        raise _Malformed
    return DeviceError(_U16.unpack_from(raw, off)[0], message)


def _parse_ack(raw: bytes, off: int, end: int) -> Ack:
    if end - off != 4:
        raise _Malformed
    return Ack(_U32.unpack_from(raw, off)[0])


def _parse_command(raw: bytes, off: int, end: int) -> Command:
    if end - off < 2 or off + 2 + raw[off + 1] != end:
        raise _Malformed
    return Command(raw[off], raw[off + 2 : end])


_PARSERS: dict[int, Callable[[bytes, int, int], Body]] = {
    MsgType.HELLO: _parse_hello,
    MsgType.DATA: _parse_data,
    MsgType.HEARTBEAT: _parse_heartbeat,
    MsgType.ERROR: _parse_error,
    MsgType.ACK: _parse_ack,
    MsgType.COMMAND: _parse_command,
}


def parse_frame(raw: bytes) -> Frame | None:
    """Parse a raw frame whose CRC, version and type have been checked.

    Returns ``None`` when the payload does not have the shape of its type
    (§4): wrong lengths, truncation, trailing bytes, invalid UTF-8, unknown
    channel kind. Used by :class:`FrameDecoder` and the columnar decoders in
    ``native``, so every decoder judges payloads identically.
    """
    _, mtype, seq, ts = _HEADER.unpack_from(raw)
    try:
        return Frame(seq, ts, _PARSERS[mtype](raw, HEADER_LEN, len(raw) - _CRC_LEN))
    except (_Malformed, UnicodeDecodeError, KeyError):
        return None


@dataclass(slots=True)
class DecoderStats:
    """What a :class:`FrameDecoder` has seen so far (all counters only grow).

    ``frames_ok``: frames delivered. ``crc_errors``: CRC mismatch.
    ``framing_errors``: invalid COBS, raw frame shorter than 18 or longer than
    256 bytes, more than ``MAX_ENCODED_LEN`` bytes without a delimiter, or a
    CRC-valid frame whose payload does not parse (length fields, truncation,
    trailing bytes, invalid UTF-8). ``version_errors``: CRC-valid frame with a
    version other than 1. ``unknown_types``: CRC-valid frame of an unknown type.
    ``bytes_discarded``: every non-delimiter byte that did not end up in a
    delivered frame -- rejected frames, oversized runs, and the partial frame
    in front of the first 0x00 of the stream.
    """

    frames_ok: int = 0
    crc_errors: int = 0
    framing_errors: int = 0
    unknown_types: int = 0
    version_errors: int = 0
    bytes_discarded: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (field order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class FrameDecoder:
    """Incremental decoder for a byte stream from one serial line.

    Feed it whatever the port returns; it keeps a partial frame between calls,
    returns complete good frames, and counts everything else in :attr:`stats`.
    It never raises on line data.

    Stream start (§2.3): the receiver may have joined mid-frame, so the bytes
    before the first 0x00 are only accepted if they form a CRC-valid frame;
    otherwise they are discarded silently (``bytes_discarded``), not counted as
    an error. Devices send a 0x00 before their first frame after boot.
    """

    __slots__ = ("_buf", "_skipping", "_synced", "stats")

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._buf = b""
        self._synced = False  # seen a delimiter yet
        self._skipping = False  # inside an oversized run, dropping until 0x00

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume *data*; return the frames it completed, in order."""
        stats = self.stats
        data = bytes(data)
        if self._skipping:
            i = data.find(0)
            if i < 0:
                stats.bytes_discarded += len(data)
                return []
            stats.bytes_discarded += i
            data = data[i + 1 :]
            self._skipping = False
            self._synced = True
        buf = self._buf + data if self._buf else data
        out: list[Frame] = []
        start = 0
        find = buf.find
        while True:
            end = find(0, start)
            if end < 0:
                break
            if end > start:  # two delimiters in a row: empty frame, ignored
                frame = self._segment(buf[start:end])
                if frame is not None:
                    out.append(frame)
            self._synced = True
            start = end + 1
        rest = buf[start:]
        if len(rest) > MAX_ENCODED_LEN:
            # No valid frame is this long: drop it now rather than buffer
            # without bound, and drop the rest of the run up to the next 0x00.
            if self._synced:
                stats.framing_errors += 1
            stats.bytes_discarded += len(rest)
            rest = b""
            self._skipping = True
        self._buf = rest
        return out

    def _segment(self, seg: bytes) -> Frame | None:
        """Decode one delimiter-free segment; count and drop it if bad."""
        stats = self.stats
        raw = _cobs_decode(seg) if len(seg) <= MAX_ENCODED_LEN else None
        if raw is None or not MIN_FRAME_LEN <= len(raw) <= MAX_FRAME_LEN:
            if self._synced:
                stats.framing_errors += 1
            stats.bytes_discarded += len(seg)
            return None
        end = len(raw) - _CRC_LEN
        if zlib.crc32(raw[:end]) != _U32.unpack_from(raw, end)[0]:
            if self._synced:
                stats.crc_errors += 1
            stats.bytes_discarded += len(seg)
            return None
        # From here on the bytes are what the sender sent: count even before sync.
        if raw[0] != PROTOCOL_VERSION:
            stats.version_errors += 1
        elif raw[1] not in _PARSERS:
            stats.unknown_types += 1
        else:
            frame = parse_frame(raw)
            if frame is None:
                stats.framing_errors += 1
            else:
                stats.frames_ok += 1
                return frame
        stats.bytes_discarded += len(seg)
        return None
