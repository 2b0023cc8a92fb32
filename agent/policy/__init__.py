"""Policy bundles and rule conditions (PRODUCT.md §4).

Load a bundle with :func:`load_policy`; evaluate its rules over a batch of
readings with :func:`evaluate_rules`. Conditions are a subset of CEL, compiled
once to a :class:`Program` that ``native.policy`` evaluates (compiled Cython
module or its pure-Python twin).
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
from native.policy import Program

__all__ = [
    "Channel",
    "Goal",
    "ModelRef",
    "PolicyBundle",
    "Program",
    "Rule",
    "compile_condition",
    "evaluate_rules",
    "load_policy",
]
