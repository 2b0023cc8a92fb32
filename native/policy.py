"""Policy program evaluation: the compiled module, or its pure-Python twin.

``native._policy`` (Cython) is used when it has been built and the
environment variable ``EDGEGOV_PURE`` is unset (or ``0``); otherwise
``native._policy_py``. Both implement the same semantics, documented in
``native._policy_py``: the stateless program evaluator (``evaluate``,
``evaluate_many``) and the stateful kernels (``agg_update``,
``duration_update``, ``rule_update``). ``IMPLEMENTATION`` says which one is
in use. The program format both run (``Program``, opcodes, the kernels'
state layout) is ``native.policy_format``.
"""

from __future__ import annotations

from native._select import compiled_available
from native.policy_format import Program

__all__ = [
    "IMPLEMENTATION",
    "Program",
    "agg_update",
    "duration_update",
    "evaluate",
    "evaluate_many",
    "rule_update",
]

_PURE = not compiled_available("_policy")

if not _PURE:
    from native._policy import (
        agg_update,
        duration_update,
        evaluate,
        evaluate_many,
        rule_update,
    )
else:
    from native._policy_py import (
        agg_update,
        duration_update,
        evaluate,
        evaluate_many,
        rule_update,
    )

IMPLEMENTATION: str = "python" if _PURE else "cython"
