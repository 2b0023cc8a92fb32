"""Columnar stream decoding of the serial protocol: the pure-Python twin.

Semantics shared with the compiled ``native._frames`` (tests hold them to
agreement on every input): bytes from one serial line go in; DATA samples
come out column-wise, ready for the policy evaluator, and every other valid
frame comes out parsed, in stream order. Framing, CRC, version and type
rules are those of ``firmware_bridge/PROTOCOL.md`` and of
:class:`firmware_bridge.FrameDecoder`, which this decoder agrees with frame
for frame; corrupt input is counted, never raised.

``resyncs`` counts the times the decoder was out of step (one or more
rejected segments or an oversized run) and got a valid frame again.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import numpy.typing as npt

from firmware_bridge.cobs import decode as cobs_decode
from firmware_bridge.frames import (
    MAX_ENCODED_LEN,
    MAX_FRAME_LEN,
    MIN_FRAME_LEN,
    Frame,
    MsgType,
    parse_frame,
)

__all__ = ["STAT_NAMES", "Batch", "BatchDecoder"]

#: Counter names, in the order :meth:`BatchDecoder.stats` lists them.
STAT_NAMES = (
    "frames_ok",
    "crc_errors",
    "framing_errors",
    "version_errors",
    "unknown_types",
    "bytes_discarded",
    "resyncs",
)

_HEAD = struct.Struct("<BBIQBBH")  # header + DATA n_channels, n_samples, interval_ms
_CRC = struct.Struct("<I")
_KNOWN = frozenset(MsgType)


class Batch:
    """What one :meth:`BatchDecoder.feed` produced.

    ``seq`` (uint32) and ``device_ms`` (int64) per sample: the frame's seq and
    ``timestamp_ms + k * interval_ms``. ``values`` is float64
    ``(n_channels, n_samples)``. ``others`` lists ``(sample_pos, frame)`` for
    every other valid frame (HELLO, HEARTBEAT, ..., and DATA whose channel
    count is not ``n_channels``): it came after the first ``sample_pos``
    samples. Per DATA frame decoded into columns, in order: ``frame_seq``
    (uint32) and ``frame_samples`` (uint16, its sample count), so duplicates
    and gaps are judged per frame. Device times wrap past 2**63 (int64).
    """

    __slots__ = ("device_ms", "frame_samples", "frame_seq", "others", "seq", "values")

    def __init__(
        self,
        seq: npt.NDArray[np.uint32],
        device_ms: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        others: list[tuple[int, Frame]],
        frame_seq: npt.NDArray[np.uint32],
        frame_samples: npt.NDArray[np.uint16],
    ) -> None:
        self.seq = seq
        self.device_ms = device_ms
        self.values = values
        self.others = others
        self.frame_seq = frame_seq
        self.frame_samples = frame_samples

    @property
    def data_frames(self) -> int:
        """DATA frames decoded into columns."""
        return int(self.frame_seq.shape[0])

    def __len__(self) -> int:
        return int(self.seq.shape[0])


class BatchDecoder:
    """Incremental decoder for one serial line (see the module docstring).

    Args:
        n_channels: values per sample that DATA must carry to be decoded into
            columns (from the device's HELLO); 0 sends every DATA to ``others``.
    """

    def __init__(self, n_channels: int = 0) -> None:
        if not 0 <= n_channels <= 255:
            raise ValueError(f"n_channels must be in [0, 255], got {n_channels}")
        self.n_channels = n_channels
        self._counts = [0] * len(STAT_NAMES)
        self._buf = b""
        self._synced = False
        self._skipping = False
        self._lost = False  # rejected something since the last good frame

    def stats(self) -> dict[str, int]:
        """Cumulative counters (names in :data:`STAT_NAMES`)."""
        return dict(zip(STAT_NAMES, self._counts))

    def set_channels(self, n_channels: int) -> None:
        """Change the channel count DATA must carry (after a HELLO)."""
        if not 0 <= n_channels <= 255:
            raise ValueError(f"n_channels must be in [0, 255], got {n_channels}")
        self.n_channels = n_channels

    def feed(self, data: bytes | bytearray | memoryview) -> Batch:
        """Consume *data*; return the samples and frames it completed."""
        c = self._counts
        data = bytes(data)
        if self._skipping:
            i = data.find(0)
            if i < 0:
                c[5] += len(data)
                return self._batch([], [], [], [], [], [])
            c[5] += i
            data = data[i + 1 :]
            self._skipping = False
            self._synced = True
        buf = self._buf + data if self._buf else data
        nc = self.n_channels
        seqs: list[int] = []
        times: list[int] = []
        values: list[float] = []
        others: list[tuple[int, Frame]] = []
        fseq: list[int] = []
        flen: list[int] = []
        start = 0
        while True:
            end = buf.find(0, start)
            if end < 0:
                break
            if end > start:
                seg = buf[start:end]
                raw = cobs_decode(seg) if len(seg) <= MAX_ENCODED_LEN else None
                if raw is None or not MIN_FRAME_LEN <= len(raw) <= MAX_FRAME_LEN:
                    self._reject(2, len(seg))
                elif zlib.crc32(memoryview(raw)[:-4]) != _CRC.unpack_from(raw, len(raw) - 4)[0]:
                    self._reject(1, len(seg))
                elif raw[0] != 1:
                    self._reject(3, len(seg), counted=True)
                elif raw[1] not in _KNOWN:
                    self._reject(4, len(seg), counted=True)
                elif (
                    raw[1] == 0x02
                    and nc > 0
                    and len(raw) >= 22
                    and raw[14] == nc
                    and raw[15] > 0
                    and len(raw) == 22 + 4 * nc * raw[15]
                ):
                    _, _, seq, ts, _, ns, interval = _HEAD.unpack_from(raw)
                    values.extend(struct.unpack_from(f"<{nc * ns}f", raw, 18))
                    for k in range(ns):
                        seqs.append(seq)
                        times.append((ts + k * interval) & 0xFFFF_FFFF_FFFF_FFFF)
                    fseq.append(seq)
                    flen.append(ns)
                    self._good()
                else:
                    frame = parse_frame(raw)
                    if frame is None:
                        self._reject(2, len(seg), counted=True)
                    else:
                        others.append((len(seqs), frame))
                        self._good()
            self._synced = True
            start = end + 1
        rest = buf[start:]
        if len(rest) > MAX_ENCODED_LEN:
            if self._synced:
                c[2] += 1
                self._lost = True
            c[5] += len(rest)
            rest = b""
            self._skipping = True
        self._buf = rest
        return self._batch(seqs, times, values, others, fseq, flen)

    def _good(self) -> None:
        c = self._counts
        c[0] += 1
        if self._lost:
            c[6] += 1
            self._lost = False

    def _reject(self, counter: int, nbytes: int, counted: bool = False) -> None:
        """Count a rejected segment; before sync only CRC-valid frames count (§2.3)."""
        c = self._counts
        if self._synced or counted:
            c[counter] += 1
            self._lost = True
        c[5] += nbytes

    def _batch(
        self,
        seqs: list[int],
        times: list[int],
        values: list[float],
        others: list[tuple[int, Frame]],
        fseq: list[int],
        flen: list[int],
    ) -> Batch:
        n = len(seqs)
        nc = self.n_channels
        vals = np.array(values, dtype=np.float64).reshape(n, nc).T if n else np.empty((nc, 0))
        return Batch(
            np.array(seqs, dtype=np.uint32),
            np.array(times, dtype=np.uint64).astype(np.int64),
            np.ascontiguousarray(vals),
            others,
            np.array(fseq, dtype=np.uint32),
            np.array(flen, dtype=np.uint16),
        )
