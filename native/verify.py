"""Audit verifier hot path: the compiled module, or its pure-Python twin.

``native._verify`` (Cython) is used when built and ``EDGEGOV_PURE`` is unset
(or ``0``); otherwise ``native._verify_py``. Semantics are documented in
``native._verify_py``; ``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

from native._select import compiled_available
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
    "sig_structure",
    "split_sign1",
]

_PURE = not compiled_available("_verify")

if not _PURE:
    from native._verify import (
        claims_fields,
        consistency_error,
        evidence_from_claims,
        loads,
        loads_claims,
        sig_structure,
        split_sign1,
    )
else:
    from native._verify_py import (
        claims_fields,
        consistency_error,
        evidence_from_claims,
        loads,
        loads_claims,
        sig_structure,
        split_sign1,
    )

IMPLEMENTATION: str = "python" if _PURE else "cython"
