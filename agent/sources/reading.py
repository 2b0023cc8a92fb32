"""What every source yields: readings, as the agent received them, in columns.

Sources (framed, text, Modbus) decode their line into a :class:`ReadingBatch` per read and
hand it to the pipeline, which keeps it in columns from the decoder to the evidence store:
window assembly, masking, the policy evaluator, the risk features and the Merkle leaves all
work on its typed arrays, never on one Python object per reading. :class:`Reading` is one
row of it, for the places that handle a few readings at a time (a disclosed reading, a
held window read back, tests). Nothing here knows the claims profile or the verifier.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, overload

import numpy as np
import numpy.typing as npt

__all__ = ["Reading", "ReadingBatch", "reading_dtype"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample as the agent received it. ``values`` follow the policy's channel order."""

    received_ms: int  # agent clock, Unix ms: decides the window
    device_ms: int  # device clock from the frame
    source: int  # index of the serial source in the config
    frame_seq: int
    values: tuple[float, ...]


@lru_cache(maxsize=16)
def reading_dtype(n_channels: int) -> np.dtype[Any]:
    """One reading as a row: little-endian, fixed size (also the journal's row layout)."""
    return np.dtype(
        [
            ("received_ms", "<i8"),
            ("device_ms", "<i8"),
            ("source", "<u2"),
            ("frame_seq", "<u8"),
            ("values", "<f8", (n_channels,)),
        ]
    )


class ReadingBatch(Sequence[Reading]):
    """Readings in one structured array (:func:`reading_dtype`), in arrival order.

    The columns (``received_ms``, ``device_ms``, ``source``, ``frame_seq``: 1-D;
    ``values``: readings x channels) are views, not copies. As a sequence it yields
    :class:`Reading` objects: the slow path, for the few places that want one.
    """

    __slots__ = ("rows",)

    def __init__(self, rows: npt.NDArray[Any]) -> None:
        self.rows = rows

    # -- building ----------------------------------------------------------------------
    @classmethod
    def empty(cls, n_channels: int) -> ReadingBatch:
        return cls(np.empty(0, reading_dtype(n_channels)))

    @classmethod
    def from_columns(
        cls,
        received_ms: npt.ArrayLike,
        device_ms: npt.ArrayLike,
        source: int,
        frame_seq: npt.ArrayLike,
        values: npt.ArrayLike,
    ) -> ReadingBatch:
        """``values``: readings x channels (float64; NaN = not reported)."""
        vals = np.asarray(values, dtype=np.float64)
        n, n_ch = vals.shape
        rows = np.empty(n, reading_dtype(n_ch))
        rows["received_ms"] = received_ms
        rows["device_ms"] = device_ms
        rows["source"] = source
        rows["frame_seq"] = frame_seq
        rows["values"] = vals
        return cls(rows)

    @classmethod
    def of(cls, readings: Sequence[Reading], n_channels: int) -> ReadingBatch:
        """Readings as a batch (each must have ``n_channels`` values)."""
        if isinstance(readings, ReadingBatch):
            return readings
        n = len(readings)
        rows = np.empty(n, reading_dtype(n_channels))
        if n:
            rows["received_ms"] = [r.received_ms for r in readings]
            rows["device_ms"] = [r.device_ms for r in readings]
            rows["source"] = [r.source for r in readings]
            rows["frame_seq"] = [r.frame_seq for r in readings]
            rows["values"] = np.array([r.values for r in readings], dtype=np.float64).reshape(
                n, n_channels
            )
        return cls(rows)

    @classmethod
    def concat(cls, batches: Sequence[ReadingBatch], n_channels: int) -> ReadingBatch:
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return cls.empty(n_channels)
        return cls(np.concatenate([b.rows for b in batches]))

    # -- columns -----------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        shape = self.rows.dtype["values"].shape
        return int(shape[0]) if shape else 1

    @property
    def received_ms(self) -> npt.NDArray[np.int64]:
        return self.rows["received_ms"]

    @property
    def device_ms(self) -> npt.NDArray[np.int64]:
        return self.rows["device_ms"]

    @property
    def source(self) -> npt.NDArray[np.uint16]:
        return self.rows["source"]

    @property
    def frame_seq(self) -> npt.NDArray[np.uint64]:
        return self.rows["frame_seq"]

    @property
    def values(self) -> npt.NDArray[np.float64]:
        """Readings x channels."""
        return self.rows["values"].reshape(len(self.rows), self.n_channels)

    def split(self, end_ms: int) -> tuple[ReadingBatch, ReadingBatch]:
        """(received before ``end_ms``, at or after it), each in arrival order."""
        late = self.rows["received_ms"] >= end_ms
        if not late.any():
            return self, ReadingBatch(self.rows[:0])
        if late.all():
            return ReadingBatch(self.rows[:0]), self
        return ReadingBatch(self.rows[~late]), ReadingBatch(self.rows[late])

    # -- a sequence of Reading (the slow path) ---------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> Reading: ...
    @overload
    def __getitem__(self, i: slice) -> ReadingBatch: ...
    def __getitem__(self, i: int | slice) -> Reading | ReadingBatch:
        if isinstance(i, slice):
            return ReadingBatch(self.rows[i])
        r = self.rows[i]
        return Reading(
            int(r["received_ms"]),
            int(r["device_ms"]),
            int(r["source"]),
            int(r["frame_seq"]),
            tuple(float(v) for v in np.atleast_1d(r["values"])),
        )

    def __iter__(self) -> Iterator[Reading]:
        rows = self.rows
        vals = self.values.tolist()
        for rx, dev, src, seq, v in zip(
            rows["received_ms"].tolist(),
            rows["device_ms"].tolist(),
            rows["source"].tolist(),
            rows["frame_seq"].tolist(),
            vals,
        ):
            yield Reading(rx, dev, src, seq, tuple(v))

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same readings (a list of :class:`Reading` too)."""
        if isinstance(other, ReadingBatch):
            return bool(self.rows.tobytes() == other.rows.tobytes()) and (
                self.rows.dtype == other.rows.dtype
            )
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable arrays

    def __repr__(self) -> str:
        return f"ReadingBatch({len(self)} readings x {self.n_channels} channels)"
