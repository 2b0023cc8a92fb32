"""One attestation window: readings in, a columnar batch out.

Readings arrive from the sources as column batches (one per serial read); the
window keeps the batches and joins them once, so the policy evaluator, the risk
features and the Merkle leaves run over typed arrays, never per reading in Python. Its verdicts
(``agent.pipeline.evaluate``) are set once the policy has run over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from agent.sources.reading import Reading, ReadingBatch

if TYPE_CHECKING:
    from agent.pipeline.evaluate import WindowVerdicts

__all__ = ["Window"]


class Window:
    """The readings of [start_ms, end_ms): the sources' batches, joined once when read."""

    def __init__(self, start_ms: int, end_ms: int, n_channels: int) -> None:
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.n_channels = n_channels
        self._parts: list[ReadingBatch] = []
        self.n = 0
        self.journaled = (
            0  # records[:journaled] are in the store's journal (agent.evidence.journal)
        )
        # Set once the policy has run over this window (a retried window is not re-run:
        # the evaluator's state has already advanced past it).
        self.results: WindowVerdicts | None = None

    def add_batch(self, batch: ReadingBatch) -> None:
        if len(batch):
            self._parts.append(batch)
            self.n += len(batch)

    def add(self, r: Reading) -> None:
        """One reading (a held window read back, tests): the slow path."""
        self.add_batch(ReadingBatch.of([r], self.n_channels))

    @property
    def records(self) -> ReadingBatch:
        """Every reading, in arrival order (the parts are joined on the first read)."""
        if len(self._parts) != 1:
            self._parts = [ReadingBatch.concat(self._parts, self.n_channels)]
        return self._parts[0]

    @property
    def timestamps(self) -> np.ndarray:
        return self.records.received_ms.astype(np.int64)

    @property
    def columns(self) -> np.ndarray:
        """A C-contiguous float64 copy, (n_channels, n_readings); NaN = missing."""
        return np.ascontiguousarray(self.records.values.T, dtype=np.float64)
