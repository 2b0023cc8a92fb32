"""One attestation window: readings in, columnar batch and per-rule summaries out.

Readings arrive from the sources as small lists (one list per serial read);
the window keeps them column-wise so the policy evaluator and the risk
features run over typed arrays, never per reading in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.evidence.claims import RuleEpisode, RuleResult

if TYPE_CHECKING:
    from agent.policy.evaluator import BatchResult

__all__ = ["Reading", "Window", "summarise_rules"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample as the agent received it. ``values`` follow the policy's channel order."""

    received_ms: int  # agent clock, Unix ms: decides the window
    device_ms: int  # device clock from the frame
    source: int  # index of the serial source in the config
    frame_seq: int
    values: tuple[float, ...]


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
        self.results: tuple[Any, Any, int, str | None] | None = None

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


def summarise_rules(
    rule_ids: Sequence[str], batch: BatchResult, timestamps: np.ndarray
) -> tuple[RuleResult, ...]:
    """Per-rule counts from the evaluator's result for one window.

    ``batch.codes`` is (n_rules, n) uint8: 1 (condition holds), 0 (violated) or 2 (not
    evaluable); ``batch.episodes`` per rule, the violation episodes (start_ms, end_ms or
    None while open, peak) that the evaluator reported for this window.
    """
    results, episodes = batch.codes, batch.episodes
    out = []
    for i, rule_id in enumerate(rule_ids):
        row = results[i] if results.size else np.empty(0, dtype=np.uint8)
        violated_at = np.flatnonzero(row == 0)
        errors = int(np.count_nonzero(row == 2))
        first = int(timestamps[violated_at[0]]) if violated_at.size else None
        last = int(timestamps[violated_at[-1]]) if violated_at.size else None
        eps = tuple(RuleEpisode(e.start_ms, e.end_ms, e.peak) for e in episodes[i])
        out.append(
            RuleResult(
                rule_id, int(row.size) - errors, int(violated_at.size), errors, first, last, eps
            )
        )
    return tuple(out)
