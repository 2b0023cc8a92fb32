"""CBOR structure scan: the compiled module, or its pure-Python twin.

``native._cbor_scan`` (Cython) is used when built and ``EDGEGOV_PURE`` is unset
(or ``0``); otherwise ``native._cbor_scan_py``. ``IMPLEMENTATION`` says which.
"""

from __future__ import annotations

import os

from native._cbor_scan_py import MAX_DEPTH_LIMIT, MESSAGES

__all__ = ["IMPLEMENTATION", "MAX_DEPTH_LIMIT", "MESSAGES", "scan"]

_PURE = os.environ.get("EDGEGOV_PURE", "") not in ("", "0")

if not _PURE:
    try:
        from native._cbor_scan import scan
    except ImportError:  # not built (no compiler at install time): fall back
        _PURE = True

if _PURE:
    from native._cbor_scan_py import scan

IMPLEMENTATION: str = "python" if _PURE else "cython"
