"""Policy program evaluation: the compiled module, or its pure-Python twin.

``native._policy`` (Cython) is used when it has been built and the
environment variable ``EDGEGOV_PURE`` is unset (or ``0``); otherwise
``native._policy_py``. Both implement the same semantics, documented in
``native._policy_py``. ``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

import os

from native._policy_py import Program

__all__ = ["IMPLEMENTATION", "Program", "evaluate", "evaluate_many"]

_PURE = os.environ.get("EDGEGOV_PURE", "") not in ("", "0")

if not _PURE:
    try:
        from native._policy import evaluate, evaluate_many
    except ImportError:  # not built (no compiler at install time): fall back
        _PURE = True

if _PURE:
    from native._policy_py import evaluate, evaluate_many

IMPLEMENTATION: str = "python" if _PURE else "cython"
