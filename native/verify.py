"""Audit verifier hot path: the compiled module, or its pure-Python twin.

``native._verify`` (Cython) is used when built and ``EDGEGOV_PURE`` is unset
(or ``0``); otherwise ``native._verify_py``. Semantics are documented in
``native._verify_py``; ``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

import os

from native._verify_py import ClaimsError, ClaimsFields, ClaimsTypes

__all__ = [
    "IMPLEMENTATION",
    "ClaimsError",
    "ClaimsFields",
    "ClaimsTypes",
    "claims_fields",
    "consistency_error",
    "evidence_from_claims",
    "loads",
    "loads_claims",
    "loads_claims_within",
    "sig_structure",
    "split_sign1",
]

_PURE = os.environ.get("EDGEGOV_PURE", "") not in ("", "0")

if not _PURE:
    try:
        from native._verify import (
            claims_fields,
            consistency_error,
            evidence_from_claims,
            loads,
            loads_claims,
            loads_claims_within,
            sig_structure,
            split_sign1,
        )
    except ImportError:  # not built (no compiler at install time): fall back
        _PURE = True

if _PURE:
    from native._verify_py import (
        claims_fields,
        consistency_error,
        evidence_from_claims,
        loads,
        loads_claims,
        loads_claims_within,
        sig_structure,
        split_sign1,
    )

IMPLEMENTATION: str = "python" if _PURE else "cython"
