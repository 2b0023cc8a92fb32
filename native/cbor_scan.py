"""CBOR structure scan: the compiled module, or its pure-Python twin.

``native._cbor_scan`` (Cython) is used when built and ``EDGEGOV_PURE`` is unset
(or ``0``); otherwise ``native._cbor_scan_py``. ``IMPLEMENTATION`` says which.
"""

from __future__ import annotations

from native._cbor_scan_py import MAX_DEPTH_LIMIT, MESSAGES
from native._select import compiled_available

__all__ = ["IMPLEMENTATION", "MAX_DEPTH_LIMIT", "MESSAGES", "scan"]

_PURE = not compiled_available("_cbor_scan")

if not _PURE:
    from native._cbor_scan import scan
else:
    from native._cbor_scan_py import scan

IMPLEMENTATION: str = "python" if _PURE else "cython"
