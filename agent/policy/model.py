"""The policy bundle's data model: frozen, typed values, and their canonical form.

A bundle (README.md, Policies and Risk models) declares the *goals* (outcomes, who is accountable,
which clause they come from), the *channels* (name, unit, valid range; their
order is the row order of the ``columns`` input), the *rules* (the means: a
CEL condition serving a goal), the *risk models* (pinned by SHA-256) and the
attestation *window*. Example: ``configs/policies/cold-chain.yaml``. The
values here are what ``agent.policy.loader`` builds from that YAML once it
has validated it; nothing else constructs a :class:`PolicyBundle`.

Rules may carry ``for`` (violated only once the condition has been false
that long), ``clear`` (hysteresis: a ``condition`` and/or a ``for`` that
must hold before a violation ends), ``measure``/``peak`` (what the peak of
a violation episode is), and an ``explain`` template. Channels have a
``type`` (double or bool) and a valid ``range``: readings outside it are
data-quality findings, treated as missing.

The *canonical form* (what gets signed) is deterministic JSON of the parsed
content, so reformatting the YAML (comments, key order, quoting, block
scalars, ``85`` vs ``85.0``) does not change ``digest``, while any change to
the content does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.policy.evaluator import Evaluator, Plan, mask_invalid
from native.policy import Program

__all__ = [
    "CANONICAL_FORMAT",
    "CHANNEL_TYPES",
    "EXPLAIN_FIELDS",
    "PLACEHOLDER",
    "SELF_TEST_KINDS",
    "SEVERITIES",
    "Channel",
    "Goal",
    "ModelCard",
    "ModelRef",
    "PolicyBundle",
    "Rule",
    "SelfTest",
    "evaluate_rules",
]

#: Identifies the canonical form; bump if its shape changes.
CANONICAL_FORMAT = "edgegov-policy/4"  # 4: goals[].min_completeness
SEVERITIES = ("info", "warning", "critical")
#: ``self_tests[].kind``: two channels compared, or one channel against a reference value
SELF_TEST_KINDS = ("redundant", "reference")
CHANNEL_TYPES = ("double", "bool")
#: placeholders an ``explain`` template may use
EXPLAIN_FIELDS = ("rule", "goal", "severity", "start", "end", "duration", "peak")
#: a ``{placeholder}`` in an ``explain`` template
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Goal:
    """A measurable outcome, who answers for it, and where it comes from.

    ``min_completeness`` (0..1, optional) is the data availability below which the
    goal cannot be judged: ``audit verify --policy`` reports it *not evaluable* when
    fewer readings were received than that share of those expected
    (``agent.audit.completeness``). None: only a goal with no evaluated reading is.

    ``explain_within_ms`` (optional, ``explain_within: 72h``): how long after a violation
    episode of one of its rules starts an accountable person has to sign an explanation
    (``edgegov explain``); past it, the audit lists the deviation as unexplained.
    """

    id: str
    description: str
    stakeholder: str
    source: str
    min_completeness: float | None = None
    explain_within_ms: int | None = None


@dataclass(frozen=True)
class Channel:
    """A sensor channel: CEL identifier, unit, valid range ``[low, high]``.

    ``calibration_required`` (``calibration: required``): the goals this channel serves
    are judged *not quality-assured*, never *met*, for any window not covered by a valid
    calibration certificate of the device's sensor on this channel (``agent.governance``).
    """

    name: str
    unit: str
    low: float
    high: float
    type: str = "double"
    calibration_required: bool = False


@dataclass(frozen=True)
class Rule:
    """A compiled rule; ``line`` is where the rule starts in the bundle file."""

    id: str
    goal: str
    severity: str
    condition: str
    explain: str
    line: int
    program: Program = field(compare=False, repr=False)
    for_ms: int = 0
    clear_condition: str | None = None
    clear_ms: int = 0
    measure: str | None = None
    peak: str = "max"
    origin: str = ""  # file that defined (or last overrode) this rule
    explain_within_ms: int | None = None  # overrides the goal's (``explain_within``)
    channels: tuple[str, ...] = field(default=(), compare=False)  # the condition reads them

    def explain_text(
        self, start_ms: int, end_ms: int | None, peak: float | None, *, goal: str = ""
    ) -> str:
        """The ``explain`` template filled in for one violation episode."""
        values = {
            "rule": self.id,
            "goal": goal or self.goal,
            "severity": self.severity,
            "start": _iso(start_ms),
            "end": _iso(end_ms) if end_ms is not None else "ongoing",
            "duration": _span(end_ms - start_ms) if end_ms is not None else "ongoing",
            "peak": "n/a" if peak is None else f"{peak:g}",
        }
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], self.explain)


@dataclass(frozen=True)
class ModelCard:
    """The short model card a declaration carries (the full one is ``document``)."""

    training_data: str
    intended_use: str
    limits: str
    evaluation: str = ""
    document: str = ""  # path of the full card, relative to the bundle, as written


@dataclass(frozen=True)
class ModelRef:
    """A risk model pinned by digest; ``path`` resolved relative to the bundle.

    ``opset`` is the ai.onnx opset the file must import, ``input`` the name of its one
    input (float32 [N, inputs]), ``output`` the name of the score and ``meaning`` what the
    score means; ``threshold`` is the decision threshold on it.
    """

    id: str
    path: Path
    sha256: str
    features: tuple[str, ...]
    output: str
    threshold: float
    goal: str
    opset: int = 17
    input: str = "features"
    meaning: str = ""
    card: ModelCard | None = None


@dataclass(frozen=True)
class SelfTest:
    """A scheduled self-test (``docs/self-tests.md``), due every ``every_ms``.

    ``redundant``: two channels measuring the same quantity (``channels`` = (a, b));
    error = |mean(a) - mean(b)|. ``reference``: one channel against ``reference``;
    error = mean(channel) - reference. Passed when |error| <= ``tolerance`` (in the
    channels' unit). ``goal``: the goal whose evidence quality it supports, if any.
    """

    id: str
    kind: str
    channels: tuple[str, ...]
    tolerance: float
    every_ms: int
    reference: float | None = None
    goal: str | None = None
    line: int = field(default=0, compare=False)

    def canonical(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "channels": list(self.channels),
            "tolerance": self.tolerance,
            "every_ms": self.every_ms,
            "reference": self.reference,
            "goal": self.goal,
        }


@dataclass(frozen=True)
class PolicyBundle:
    id: str
    version: int
    description: str
    goals: tuple[Goal, ...]
    channels: tuple[Channel, ...]
    rules: tuple[Rule, ...]
    models: tuple[ModelRef, ...]
    window_seconds: float
    digest: str
    source: Path
    extends: tuple[dict[str, Any], ...] = ()
    plan: Plan | None = field(default=None, compare=False, repr=False)
    used_channels: frozenset[str] = frozenset()
    used_models: frozenset[str] = frozenset()
    self_tests: tuple[SelfTest, ...] = ()

    def evaluator(self) -> Evaluator:
        """A fresh stateful evaluator for this bundle."""
        assert self.plan is not None
        return Evaluator(self.plan)

    def mask_invalid(
        self, columns: npt.NDArray[np.float64]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Set readings outside their channel's valid range to NaN, in place (see
        :func:`agent.policy.evaluator.mask_invalid`); returns (missing, out_of_range)."""
        assert self.plan is not None
        return mask_invalid(self.plan.channels, columns)

    def channel_index(self, name: str) -> int:
        """Row of channel ``name`` in the ``columns`` input; KeyError if undeclared."""
        for i, ch in enumerate(self.channels):
            if ch.name == name:
                return i
        raise KeyError(name)

    def canonical_bytes(self) -> bytes:
        """Deterministic UTF-8 JSON of the bundle content (what ``digest`` hashes)."""
        doc = {
            "format": CANONICAL_FORMAT,
            "policy": {"id": self.id, "version": self.version, "description": self.description},
            "goals": [
                {
                    "id": g.id,
                    "description": g.description,
                    "stakeholder": g.stakeholder,
                    "source": g.source,
                    "min_completeness": g.min_completeness,
                    **_optional("explain_within_ms", g.explain_within_ms),
                }
                for g in self.goals
            ],
            "channels": [
                {
                    "name": c.name,
                    "unit": c.unit,
                    "range": [c.low, c.high],
                    "type": c.type,
                    **_optional("calibration", "required" if c.calibration_required else None),
                }
                for c in self.channels
            ],
            "rules": [
                {
                    "id": r.id,
                    "goal": r.goal,
                    "severity": r.severity,
                    "condition": r.condition,
                    "explain": r.explain,
                    "for_ms": r.for_ms,
                    "clear": {"condition": r.clear_condition, "for_ms": r.clear_ms},
                    "measure": r.measure,
                    "peak": r.peak,
                    **_optional("explain_within_ms", r.explain_within_ms),
                }
                for r in self.rules
            ],
            "extends": list(self.extends),
            "models": [
                {
                    "id": m.id,
                    "file": m.path.name,
                    "sha256": m.sha256,
                    "opset": m.opset,
                    "input": m.input,
                    "features": list(m.features),
                    "output": m.output,
                    "meaning": m.meaning,
                    "threshold": m.threshold,
                    "goal": m.goal,
                    "card": dataclasses.asdict(m.card) if m.card else None,
                }
                for m in self.models
            ],
            "window": {"seconds": self.window_seconds},
        }
        if self.self_tests:  # absent when none: the digests of bundles without stay as they were
            doc["self_tests"] = [t.canonical() for t in self.self_tests]
        return json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")


def evaluate_rules(
    bundle: PolicyBundle,
    columns: npt.ArrayLike,
    timestamps: npt.ArrayLike | None = None,
    scores: dict[str, float | None] | None = None,
) -> npt.NDArray[np.uint8]:
    """Evaluate every rule over one batch from a fresh state: uint8 (n_rules, n).

    1 holds, 0 violated, 2 error. ``columns`` is float64 (n_channels, n) in
    ``bundle.channels`` order, NaN where a value is missing; ``timestamps``
    (Unix ms) default to one reading per second. For a stream, keep one
    :meth:`PolicyBundle.evaluator` and feed it batch after batch.
    """
    cols = np.asarray(columns, dtype=np.float64)
    n = cols.shape[1] if cols.ndim == 2 else 0
    ts = np.arange(n, dtype=np.int64) * 1000 if timestamps is None else timestamps
    return bundle.evaluator().run(ts, cols, scores).codes


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _span(ms: int) -> str:
    s = ms / 1000
    if s < 120:
        return f"{s:g} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _optional(key: str, value: Any) -> dict[str, Any]:
    """A canonical field added after the first format: present only when set, so the
    digest of every bundle that does not use it stays what it was."""
    return {} if value is None else {key: value}
