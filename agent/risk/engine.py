"""The risk engine: a policy's models scored over batches of windows.

:class:`RiskEngine` scores every model of a policy over a batch of windows: features come
from ``native.features`` (see agent/risk/features.py) in one call per model, the model runs once
per batch, and each score carries its out-of-distribution finding: the inputs that lie
outside the per-input ranges seen in training (ONNX metadata ``feature_ranges``). The models
themselves are loaded, digest-checked and run by agent/risk/onnx_model.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from agent.errors import ModelError
from agent.evidence.claims import RiskResult
from agent.evidence.leaves import records_to_columns
from agent.risk.features import FeaturePlan, History

if TYPE_CHECKING:
    from agent.policy.model import PolicyBundle
    from agent.risk.onnx_model import RiskModel

__all__ = ["RiskEngine"]


class RiskEngine:
    """Scores a policy's models over batches of windows, keeping the history features need.

    ``score`` takes the windows in time order; each one's readings join the :class:`History`,
    each model's features for all windows are computed in one native call and scored in one
    ``session.run``. A window without readings, or whose features are not all finite (a
    channel without a valid reading, say), gets no score and a reason; so does every window
    of a batch whose ``session.run`` fails. The history keeps the longest duration any
    feature reaches back and, for lags, the last ``4 K + 16`` readings.
    """

    def __init__(self, models: Sequence[RiskModel], channels: Sequence[str]) -> None:
        index = {name: i for i, name in enumerate(channels)}
        self.models = tuple(models)
        plans = [FeaturePlan(m.features, index) for m in self.models]  # checks the channels
        # The history keeps only the channels some feature reads; the plans index its rows.
        used = sorted({r for p in plans for r in p.channel_rows})
        kept = {channels[r]: i for i, r in enumerate(used)}
        self.plans = tuple(FeaturePlan(m.features, kept) for m in self.models)
        lags = max((p.history_rows for p in self.plans), default=0)
        self.history = History(
            len(channels),
            keep_ms=max((p.history_ms for p in self.plans), default=0),
            keep_rows=4 * lags + 16 if lags else 0,
            rows=used,
        )

    @property
    def lookback(self) -> tuple[int, int]:
        """(ms, readings) the features reach back before a window: what :meth:`prime` needs."""
        return self.history.keep_ms, self.history.keep_rows

    def prime(self, records: Sequence[bytes], bundle: PolicyBundle) -> None:
        """Fill the history from stored reading records (after a start, a switch, a replay).

        Invalid readings are masked as when they arrived, so the history holds what it
        would hold had the agent run on without a break.
        """
        if not records:
            return
        ts, cols = records_to_columns(records, len(bundle.channels))
        bundle.mask_invalid(cols)
        self.history.append(ts, cols)
        self.history.trim()

    def score(
        self, windows: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> list[tuple[RiskResult, ...]]:
        """Risk results per window, for ``(timestamps, columns)`` windows in time order.

        ``columns`` is float64 (n_channels, n) with NaN for missing or invalid readings.
        """
        if not self.models:
            return [() for _ in windows]
        spans = self.history.extend(windows)
        lo = np.array([a for a, _ in spans], dtype=np.int64)
        hi = np.array([b for _, b in spans], dtype=np.int64)
        out: list[list[RiskResult]] = [[] for _ in windows]
        for model, plan in zip(self.models, self.plans):
            x = plan.compute(self.history.ts, self.history.cols, lo, hi)
            finite = np.isfinite(x).all(axis=1)
            rows = np.flatnonzero(finite & (hi > lo))
            scores: list[float] | None = None
            failure = ""
            if rows.size:
                try:
                    scores = model.score(x[rows]).tolist()
                except ModelError as e:
                    failure = str(e)
            outside = None
            if model.ranges is not None:
                outside = (x < model.ranges[0]) | (x > model.ranges[1])
                flagged = outside.any(axis=1).tolist()
            at = dict(zip(rows.tolist(), range(rows.size)))
            mid, provider = model.id, model.provider
            for w in range(len(windows)):
                k = at.get(w)
                if hi[w] == lo[w]:
                    result = RiskResult(mid, None, provider, "no readings in window")
                elif k is None:
                    bad = [plan.inputs[j] for j in np.flatnonzero(~np.isfinite(x[w]))]
                    reason = (
                        f"features {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} not "
                        "available (no valid readings for them)"
                    )
                    result = RiskResult(mid, None, provider, reason)
                elif scores is None:
                    result = RiskResult(mid, None, provider, failure)
                else:
                    ood: tuple[str, ...] | None = None
                    if outside is not None:
                        ood = (
                            tuple(model.inputs[j] for j in np.flatnonzero(outside[w]))
                            if flagged[w]
                            else ()
                        )
                    result = RiskResult(mid, scores[k], provider, ood=ood)
                out[w].append(result)
        self.history.trim()
        return [tuple(r) for r in out]
