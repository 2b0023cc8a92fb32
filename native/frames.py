"""Columnar stream decoding of the serial protocol: compiled module or pure twin.

``native._frames`` (Cython) is used when it has been built and the
environment variable ``EDGEGOV_PURE`` is unset (or ``0``); otherwise
``native._frames_py``. Both implement the semantics documented in
``native._frames_py``. ``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

from native._frames_py import STAT_NAMES, Batch
from native._select import compiled_available

__all__ = ["IMPLEMENTATION", "STAT_NAMES", "Batch", "BatchDecoder"]

_PURE = not compiled_available("_frames")

if not _PURE:
    from native._frames import BatchDecoder
else:
    from native._frames_py import BatchDecoder

IMPLEMENTATION: str = "python" if _PURE else "cython"
