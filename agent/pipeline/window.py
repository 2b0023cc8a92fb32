"""One attestation window: readings in, a columnar batch out.

Readings arrive from the sources as small lists (one list per serial read);
the window keeps them column-wise so the policy evaluator and the risk
features run over typed arrays, never per reading in Python. Its verdicts
(``agent.pipeline.evaluate``) are set once the policy has run over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from agent.sources.reading import Reading

if TYPE_CHECKING:
    from agent.pipeline.evaluate import WindowVerdicts

__all__ = ["Window"]


class Window:
    """Accumulates readings for [start_ms, end_ms) in growable typed arrays."""

    def __init__(self, start_ms: int, end_ms: int, n_channels: int) -> None:
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.n_channels = n_channels
        self._ts = np.empty(256, dtype=np.int64)
        self._cols = np.empty((n_channels, 256), dtype=np.float64)
        self.n = 0
        self.records: list[Reading] = []
        self.journaled = (
            0  # readings[:journaled] are in the store's journal (agent.evidence.journal)
        )
        # Set once the policy has run over this window (a retried window is not re-run:
        # the evaluator's state has already advanced past it).
        self.results: WindowVerdicts | None = None

    def add(self, r: Reading) -> None:
        if self.n == self._ts.shape[0]:
            self._grow()
        self._ts[self.n] = r.received_ms
        self._cols[:, self.n] = r.values
        self.n += 1
        self.records.append(r)

    def _grow(self) -> None:
        cap = self._ts.shape[0] * 2
        ts = np.empty(cap, dtype=np.int64)
        ts[: self.n] = self._ts[: self.n]
        cols = np.empty((self.n_channels, cap), dtype=np.float64)
        cols[:, : self.n] = self._cols[:, : self.n]
        self._ts, self._cols = ts, cols

    @property
    def timestamps(self) -> np.ndarray:
        return self._ts[: self.n]

    @property
    def columns(self) -> np.ndarray:
        """A C-contiguous float64 copy, (n_channels, n_readings); NaN = missing."""
        return np.array(self._cols[:, : self.n], order="C")
