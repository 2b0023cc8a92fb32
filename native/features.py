"""Risk-model features over windows of readings: compiled module or pure twin.

``native._features`` (Cython) is used when it has been built and the environment variable
``EDGEGOV_PURE`` is unset (or ``0``); otherwise ``native._features_py``. Both implement the
semantics documented in ``native._features_py`` (which aggregates, over which readings).
``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

from native._features_py import (
    F_COMPLETENESS,
    F_COUNT,
    F_DELTA,
    F_LAG,
    F_MAX,
    F_MEAN,
    F_MIN,
    F_RATE,
    F_STDDEV,
)
from native._select import compiled_available

__all__ = [
    "F_COMPLETENESS",
    "F_COUNT",
    "F_DELTA",
    "F_LAG",
    "F_MAX",
    "F_MEAN",
    "F_MIN",
    "F_RATE",
    "F_STDDEV",
    "IMPLEMENTATION",
    "window_features",
]

_PURE = not compiled_available("_features")

if not _PURE:
    from native._features import window_features
else:
    from native._features_py import window_features

IMPLEMENTATION: str = "python" if _PURE else "cython"
