"""Readings as salted Merkle leaves: the record layout, salts and fast leaf hashing.

One record per reading, fixed binary layout, big-endian (docs/attestation-profile.md)::

    salt        16 bytes   SHAKE256(window secret)[16 j : 16 j + 16], j = position in window
    index       uint64     leaf index in the device log (gapless from 0 per origin)
    received_ms int64      agent clock, Unix ms
    device_ms   int64      device clock from the frame
    source      uint16     serial source index in the agent config
    frame_seq   uint32     frame sequence number from the device
    n           uint16     number of values
    values      n x float64 (IEEE 754; NaN = channel not reported)

leaf hash = SHA-256(0x00 || record) (RFC 9162 §2.1.1). The salt makes each leaf a
hiding commitment: an inclusion proof reveals its sibling *hashes*, and without
salts low-entropy neighbouring readings could be brute-forced from them. One
XOF call per window derives every salt, so salting costs almost nothing; the
proof for one reading discloses only that reading's salt, never the secret.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.sources.reading import Reading, ReadingBatch
from native.hashing import leaf_hashes as native_leaf_hashes

__all__ = [
    "LeafRecord",
    "WindowRecords",
    "decode_record",
    "encode_columns",
    "encode_records",
    "encode_window",
    "leaf_hashes",
    "record_leaf_hashes",
    "records_to_columns",
    "split_records",
    "window_salts",
]

SALT_BYTES = 16
_HEAD = struct.Struct(">16sQqqHIH")


def _dtype(n_values: int, prefix: bool = True) -> np.dtype:
    return np.dtype(
        [("prefix", "u1")] * prefix  # 0x00, so each leaf hash input is one contiguous slice
        + [
            ("salt", "S16"),
            ("index", ">u8"),
            ("received_ms", ">i8"),
            ("device_ms", ">i8"),
            ("source", ">u2"),
            ("frame_seq", ">u4"),
            ("n", ">u2"),
            ("values", ">f8", (n_values,)),
        ]
    )


def window_salts(secret: bytes, count: int) -> bytes:
    """``count`` 16-byte salts from one per-window secret (SHAKE256 as a PRF stream)."""
    return hashlib.shake_256(b"edgegov-leaf-salts\x00" + secret).digest(SALT_BYTES * count)


@dataclass(frozen=True)
class LeafRecord:
    """A decoded record: what a disclosed reading says."""

    salt: bytes
    index: int
    received_ms: int
    device_ms: int
    source: int
    frame_seq: int
    values: tuple[float, ...]


def encode_columns(
    first_index: int,
    secret: bytes,
    received_ms: np.ndarray,
    device_ms: np.ndarray,
    source: np.ndarray,
    frame_seq: np.ndarray,
    values: np.ndarray,
) -> tuple[bytes, int]:
    """Records for readings in typed arrays (``values`` is readings x channels).

    Returns the records, each preceded by the 0x00 leaf prefix, back to back,
    and the stride; :func:`leaf_hashes` hashes them.
    """
    a = _records(first_index, secret, received_ms, device_ms, source, frame_seq, values, True)
    return a.tobytes(), a.dtype.itemsize


def _records(
    first_index: int,
    secret: bytes,
    received_ms: np.ndarray,
    device_ms: np.ndarray,
    source: np.ndarray,
    frame_seq: np.ndarray,
    values: np.ndarray,
    prefix: bool,
) -> np.ndarray:
    """The records as one structured array (:func:`_dtype`), salted and indexed."""
    n = len(received_ms)
    n_values = values.shape[1] if values.ndim == 2 else 0
    a = np.zeros(n, _dtype(n_values, prefix))
    a["salt"] = np.frombuffer(window_salts(secret, n), "S16")
    a["index"] = np.arange(first_index, first_index + n, dtype=np.uint64)
    a["received_ms"] = received_ms
    a["device_ms"] = device_ms
    a["source"] = source
    a["frame_seq"] = frame_seq
    a["n"] = n_values
    if n_values:
        a["values"] = values
    return a


def encode_records(first_index: int, secret: bytes, readings: Sequence[Reading]) -> list[bytes]:
    """Records (without the leaf prefix) for one window's readings."""
    if not readings:
        return []
    if not isinstance(readings, ReadingBatch):
        widths = {len(r.values) for r in readings}
        if len(widths) != 1:
            raise ValueError("every reading of a window has the same channels")
        readings = ReadingBatch.of(readings, widths.pop())
    return encode_window(first_index, secret, readings).records()


@dataclass(frozen=True)
class WindowRecords:
    """One window's records back to back (the layout above, no leaf prefix): how the
    evidence store keeps a window's readings (one row per window, not per reading)."""

    blob: bytes
    stride: int  # bytes per record

    @property
    def n(self) -> int:
        return len(self.blob) // self.stride if self.stride else 0

    def records(self) -> list[bytes]:
        return split_records(self.blob, self.stride)

    def leaf_hashes(self) -> list[bytes]:
        """SHA-256(0x00 || record) of each record (``native.hashing``, in one call)."""
        hashes = native_leaf_hashes(self.blob, self.stride) if self.blob else b""
        return [hashes[i : i + 32] for i in range(0, len(hashes), 32)]


def split_records(blob: bytes, stride: int) -> list[bytes]:
    """Records stored back to back, one by one."""
    return [blob[i : i + stride] for i in range(0, len(blob), stride)]


def encode_window(first_index: int, secret: bytes, readings: ReadingBatch) -> WindowRecords:
    """The records of one window's readings (salted, indexed from ``first_index``)."""
    a = _records(
        first_index,
        secret,
        readings.received_ms,
        readings.device_ms,
        readings.source,
        readings.frame_seq & 0xFFFFFFFF,
        readings.values,
        False,
    )
    return WindowRecords(a.tobytes(), a.dtype.itemsize)


def leaf_hashes(buf: bytes, stride: int) -> list[bytes]:
    """SHA-256 of each ``stride``-byte slice (each already starts with 0x00)."""
    mv = memoryview(buf)
    sha = hashlib.sha256
    return [sha(mv[i : i + stride]).digest() for i in range(0, len(buf), stride)]


def record_leaf_hashes(records: Sequence[bytes]) -> list[bytes]:
    """SHA-256(0x00 || record) of each record (``native.hashing`` in one call when the
    records have one size, as a window's do)."""
    if records and len({len(r) for r in records}) == 1 and len(records[0]):
        return WindowRecords(b"".join(records), len(records[0])).leaf_hashes()
    sha = hashlib.sha256
    return [sha(b"\x00" + r).digest() for r in records]


def records_to_columns(records: Sequence[bytes], n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Received times (int64) and values (float64 channels x readings) of stored records.

    Raises:
        ValueError: a record does not have the layout above or not ``n_channels`` values.
    """
    size = _HEAD.size + 8 * n_channels
    for r in records:
        if len(r) != size:
            raise ValueError(
                f"a stored reading record has {len(r)} bytes; with {n_channels} channel(s) "
                f"it must have {size}"
            )
    a = np.frombuffer(b"".join(records), _dtype(n_channels, prefix=False))
    ts = a["received_ms"].astype(np.int64)
    cols = np.ascontiguousarray(a["values"].astype(np.float64).reshape(len(records), n_channels).T)
    return ts, cols


def decode_record(record: bytes) -> LeafRecord:
    """Parse a disclosed record; ValueError if it does not have the layout above."""
    if len(record) < _HEAD.size:
        raise ValueError(f"a leaf record has at least {_HEAD.size} bytes, got {len(record)}")
    salt, index, rx, dev, src, fseq, n = _HEAD.unpack_from(record)
    if len(record) != _HEAD.size + 8 * n:
        raise ValueError(f"leaf record says {n} values but has {len(record)} bytes")
    values = struct.unpack_from(f">{n}d", record, _HEAD.size)
    return LeafRecord(salt, index, rx, dev, src, fseq, tuple(values))
