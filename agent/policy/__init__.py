"""Policy bundles and rule conditions (PRODUCT.md §4).

Load a bundle with :func:`load_policy`; run its rules over a stream of
batches with ``bundle.evaluator()`` (an :class:`Evaluator`, whose state --
windows, durations, open violations -- carries from batch to batch and can be
saved), or over one batch from a fresh state with :func:`evaluate_rules`.
Conditions are a subset of CEL, compiled once to a :class:`Program` that
``native.policy`` evaluates (compiled Cython module or its pure-Python twin).
"""

from agent.policy.bundle import (
    Channel,
    Goal,
    ModelRef,
    PolicyBundle,
    Rule,
    evaluate_rules,
    load_policy,
)
from agent.policy.compiler import compile_condition
from agent.policy.evaluator import BatchResult, Episode, Evaluator, Plan
from native.policy import Program

__all__ = [
    "BatchResult",
    "Channel",
    "Episode",
    "Evaluator",
    "Goal",
    "ModelRef",
    "Plan",
    "PolicyBundle",
    "Program",
    "Rule",
    "compile_condition",
    "evaluate_rules",
    "load_policy",
]
