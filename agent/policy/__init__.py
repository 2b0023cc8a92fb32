"""Policy bundles and rule conditions (README.md, Policies and Risk models).

In: a policy bundle's YAML file (and the baselines it extends). Out: a
frozen :class:`PolicyBundle` and, per batch of readings, the rules' verdicts.

Load a bundle with :func:`load_policy`; run its rules over a stream of
batches with ``bundle.evaluator()`` (an :class:`Evaluator`, whose state --
windows, durations, open violations -- carries from batch to batch and can be
saved), or over one batch from a fresh state with :func:`evaluate_rules`.
Conditions are a subset of CEL, compiled once to a :class:`Program` that
``native.policy`` evaluates (compiled Cython module or its pure-Python twin;
the program format is ``native.policy_format``).

Modules, in the order the data goes through them:

* ``loader`` -- :func:`load_policy`: reads and validates the YAML, merges
  layers, compiles the rules; ``yaml_cursor`` -- typed reads from YAML nodes
  with file, line and column for every error; ``layering`` -- an override
  may only tighten the rule it replaces;
* ``model`` -- the bundle's data model (goals, channels, rules, models) and
  its canonical form (what the digest signs);
* ``parser`` and ``compiler`` -- CEL condition text to programs and the
  evaluation plan;
* ``evaluator`` -- the stateful evaluator over batches;
* ``lint`` (``edgegov policy check``) and ``csv_eval`` (rules over a CSV).
"""

from agent.policy.compiler import compile_condition
from agent.policy.evaluator import BatchResult, Episode, Evaluator, Plan
from agent.policy.loader import load_policy
from agent.policy.model import (
    Channel,
    Goal,
    ModelRef,
    PolicyBundle,
    Rule,
    evaluate_rules,
)
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
