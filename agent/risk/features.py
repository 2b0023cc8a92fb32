"""Risk-model input features: the spec language, the compiled plan and the reading history.

A model's declaration in the policy lists its features in input order. Each one is

* ``AGG(channel)``: an aggregate over the attestation window's own readings;
* ``AGG(channel, DUR)``: the same aggregate over the trailing ``DUR`` (``500ms``, ``30s``,
  ``10m``, ``1h``, ``1d``) at the window's last reading, exactly the readings the policy
  language's ``mean(x, 10m)`` sees at that reading, so it reaches back into earlier windows;
* ``lag(channel, K)``: the channel's ``K`` most recent valid readings, most recent first,
  as ``K`` consecutive inputs (``K`` from 1 to :data:`MAX_LAG`).

``AGG`` is one of :data:`AGGREGATES`, the policy language's window aggregates. The numbers
come from ``native.features`` (Cython, with a pure-Python twin that defines the semantics):
one call fills the whole (windows x inputs) tensor, with no Python loop per reading.

Features that reach back (durations, lags) need readings from before the window. A
:class:`History` keeps them: after each batch it drops the readings no feature can need
again. Which readings it keeps is a function of the reading stream alone, so the agent, an
agent restarted from its evidence store and ``edgegov audit replay`` compute the same
features from the same readings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.errors import ModelError
from native import features as _native

__all__ = [
    "AGGREGATES",
    "MAX_LAG",
    "Feature",
    "FeaturePlan",
    "History",
    "parse_feature",
]

#: aggregate name -> op code of native.features
AGGREGATES: dict[str, int] = {
    "mean": _native.F_MEAN,
    "min": _native.F_MIN,
    "max": _native.F_MAX,
    "stddev": _native.F_STDDEV,
    "count": _native.F_COUNT,
    "rate": _native.F_RATE,
    "delta": _native.F_DELTA,
    "completeness": _native.F_COMPLETENESS,
}
MAX_LAG = 256
#: longest trailing duration a feature may ask for (the history is held in memory)
MAX_DURATION_MS = 86_400_000

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SPEC_RE = re.compile(
    r"(?P<agg>[a-z_]+)\(\s*(?P<channel>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?:,\s*(?P<arg>[^()]*?)\s*)?\)"
)
_DURATION_RE = re.compile(r"(?P<n>[0-9]+)(?P<unit>ms|s|m|h|d)")
_FORMS = (
    "AGG(channel), AGG(channel, DURATION) with AGG one of "
    + ", ".join(AGGREGATES)
    + ", or lag(channel, K)"
)


@dataclass(frozen=True)
class Feature:
    """One declared feature; ``lags`` > 0 for ``lag(channel, K)``, which fills K inputs."""

    spec: str
    agg: str
    channel: str
    dur_ms: int = 0  # 0: the window's own readings
    lags: int = 0

    @property
    def width(self) -> int:
        return self.lags or 1

    def inputs(self) -> list[str]:
        """Names of the model inputs this feature fills, e.g. ``lag(t, 2)[0]``."""
        if not self.lags:
            return [self.spec]
        return [f"{self.spec}[{k}]" for k in range(self.lags)]


def parse_feature(spec: str) -> Feature:
    """Parse one feature spec (see the module docstring).

    Raises:
        ModelError: the spec is not one of the forms, names an unknown aggregate, or has a
            bad duration or lag count; the message says which and what is expected.
    """
    m = _SPEC_RE.fullmatch(spec.strip())
    if m is None:
        raise ModelError(f"feature {spec!r} is not of the form {_FORMS}")
    agg, channel, arg = m["agg"], m["channel"], m["arg"]
    if agg == "lag":
        if arg is None or not arg.isdigit() or not 1 <= int(arg) <= MAX_LAG:
            raise ModelError(
                f"feature {spec!r}: lag(channel, K) needs K, a whole number from 1 to {MAX_LAG}"
            )
        return Feature(spec, agg, channel, lags=int(arg))
    if agg not in AGGREGATES:
        raise ModelError(
            f"feature {spec!r}: unknown aggregate {agg!r}; expected one of "
            f"{', '.join(AGGREGATES)} or lag"
        )
    if arg is None:
        return Feature(spec, agg, channel)
    d = _DURATION_RE.fullmatch(arg)
    if d is None:
        raise ModelError(f"feature {spec!r}: {arg!r} is not a duration such as 500ms, 30s, 10m, 1h")
    ms = int(d["n"]) * _UNIT_MS[d["unit"]]
    if not 0 < ms <= MAX_DURATION_MS:
        raise ModelError(f"feature {spec!r}: the duration must be more than 0 and at most 1d")
    return Feature(spec, agg, channel, dur_ms=ms)


class FeaturePlan:
    """A model's features compiled against the policy's channels.

    Attributes:
        features: the parsed features, in declaration order.
        inputs: the model-input names, one per column (lags expanded).
        history_ms: how far back before a window's last reading a feature reaches.
        history_rows: how many readings back a lag feature reaches.
    """

    def __init__(self, specs: Sequence[str], channel_index: Mapping[str, int]) -> None:
        self.features = tuple(parse_feature(s) for s in specs)
        chan, op, dur, arg = [], [], [], []
        for f in self.features:
            row = channel_index.get(f.channel)
            if row is None:
                raise ModelError(
                    f"feature {f.spec!r} needs channel {f.channel!r}, which is not among the "
                    f"policy's channels {sorted(channel_index)}"
                )
            for k in range(f.width):
                chan.append(row)
                op.append(_native.F_LAG if f.lags else AGGREGATES[f.agg])
                dur.append(f.dur_ms)
                arg.append(k)
        self.inputs = tuple(name for f in self.features for name in f.inputs())
        self._chan = np.array(chan, dtype=np.int32)
        self._op = np.array(op, dtype=np.int32)
        self._dur = np.array(dur, dtype=np.int64)
        self._arg = np.array(arg, dtype=np.int32)
        self.history_ms = max((f.dur_ms for f in self.features), default=0)
        self.history_rows = max((f.lags for f in self.features), default=0)

    @property
    def width(self) -> int:
        return len(self.inputs)

    def compute(
        self,
        ts: npt.NDArray[np.int64],
        cols: npt.NDArray[np.float64],
        lo: npt.NDArray[np.int64],
        hi: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float32]:
        """Features of the windows ``[lo[w], hi[w])`` of the readings: float32 (W, width).

        ``ts`` must be non-decreasing (a :class:`History` ensures it); NaN = no reading.
        """
        out = np.empty((lo.shape[0], self.width), dtype=np.float32)
        _native.window_features(ts, cols, lo, hi, self._chan, self._op, self._dur, self._arg, out)
        return out


class History:
    """The recent readings that duration and lag features need, column-wise.

    ``append`` adds a window's readings and returns its index range in :attr:`ts` /
    :attr:`cols`; ``trim`` then drops every reading that is both older than ``keep_ms``
    before the newest one and not among the newest ``keep_rows``. A clock that steps back
    is clamped (a reading never gets an earlier time than the one before it), as the
    policy evaluator does.
    """

    def __init__(self, n_channels: int, keep_ms: int, keep_rows: int) -> None:
        self.keep_ms = keep_ms
        self.keep_rows = keep_rows
        self.ts = np.empty(0, dtype=np.int64)
        self.cols = np.empty((n_channels, 0), dtype=np.float64)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def append(self, ts: npt.NDArray[np.int64], cols: npt.NDArray[np.float64]) -> tuple[int, int]:
        """Add one window's readings; return their index range."""
        return self.extend([(ts, cols)])[0]

    def extend(
        self, windows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]
    ) -> list[tuple[int, int]]:
        """Add several windows' readings (one copy in all); return each one's index range."""
        spans = []
        at = len(self)
        for ts, _cols in windows:
            spans.append((at, at + int(ts.shape[0])))
            at += int(ts.shape[0])
        if at == len(self):
            return spans
        t = np.concatenate([self.ts, *(np.asarray(ts, dtype=np.int64) for ts, _ in windows)])
        # self.ts is already non-decreasing, so this clamps only the new readings, and
        # never to earlier than the last reading kept.
        self.ts = np.maximum.accumulate(t)
        self.cols = np.ascontiguousarray(
            np.concatenate(
                [self.cols, *(np.asarray(c, dtype=np.float64) for _, c in windows)], axis=1
            )
        )
        return spans

    def trim(self) -> None:
        n = len(self)
        if n == 0:
            return
        limit = int(self.ts[-1]) - self.keep_ms
        first = int(np.searchsorted(self.ts, limit, side="right"))  # ts[first] > limit
        first = min(first, max(0, n - self.keep_rows))
        if first:
            self.ts = self.ts[first:].copy()
            self.cols = np.ascontiguousarray(self.cols[:, first:])
