"""``edgegov policy check``: what a loaded bundle gets wrong without being invalid.

A bundle that does not load (syntax, types, unknown channels or functions,
a rule without a known goal, a loosening layer) is an error raised by the
loader. A bundle that loads can still mislead; each of these is a finding:

* a rule that can never be violated (its condition is constantly true) or
  is always violated (constantly false) -- unreachable as a check;
* a rule that duplicates an earlier one (same condition, durations, clear);
* a goal that no rule and no risk model serves;
* a channel that no rule, measure or model feature uses;
* a declared risk model that no rule reads with ``risk()`` is *not* a
  finding: models also feed the attestation's risk claim.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.policy.model import PolicyBundle
from agent.risk.features import parse_feature
from native import policy_format as fmt
from native.policy import Program

__all__ = ["Finding", "check_models", "lint"]


@dataclass(frozen=True)
class Finding:
    kind: str  # unreachable, always-violated, duplicate, goal-without-rule, unused-channel, ...
    subject: str  # "rule temp-2-8", "goal keep-cold", "channel door"
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


def _constant(program: Program) -> bool | None:
    if len(program) != 1 or int(program.opcodes[0]) != fmt.LOAD_BOOL:
        return None
    return bool(program.operands[0])


def lint(bundle: PolicyBundle) -> list[Finding]:
    """Findings for a loaded bundle, in the order of the file."""
    out: list[Finding] = []
    seen: dict[tuple[object, ...], str] = {}
    for r in bundle.rules:
        const = _constant(r.program)
        if const is True:
            out.append(
                Finding(
                    "unreachable",
                    f"rule {r.id}",
                    f"can never be violated: `{r.condition}` is always true",
                )
            )
        elif const is False:
            out.append(
                Finding(
                    "always-violated",
                    f"rule {r.id}",
                    f"is violated by every reading: `{r.condition}` is always false",
                )
            )
        key = (
            r.program.opcodes.tobytes(),
            r.program.operands.tobytes(),
            r.program.consts.tobytes(),
            r.for_ms,
            r.clear_condition,
            r.clear_ms,
        )
        if key in seen:
            out.append(
                Finding(
                    "duplicate",
                    f"rule {r.id}",
                    f"unreachable as a separate check: it is the same as rule {seen[key]}",
                )
            )
        else:
            seen[key] = r.id
    served = {r.goal for r in bundle.rules} | {m.goal for m in bundle.models}
    for g in bundle.goals:
        if g.id not in served:
            out.append(
                Finding(
                    "goal-without-rule",
                    f"goal {g.id}",
                    "no rule or risk model serves it, so nothing shows whether it is met",
                )
            )
    # (a feature naming an undeclared channel is refused by the loader)
    features = {parse_feature(f).channel for m in bundle.models for f in m.features}
    checked = {ch for t in bundle.self_tests for ch in t.channels}
    for c in bundle.channels:
        if c.name not in bundle.used_channels | features | checked:
            out.append(
                Finding(
                    "unused-channel",
                    f"channel {c.name}",
                    "declared but used by no rule, measure, model feature or self-test",
                )
            )
    return out


def check_models(bundle: PolicyBundle) -> list[Finding]:
    """Load each declared model as the agent would (digest, opset, signature, trial run).

    A model that would be refused is a finding, with the reason; so is one without
    training ranges (its scores would never be flagged as out of distribution).
    """
    from agent.errors import ModelError
    from agent.risk.onnx_model import load_declared  # onnxruntime: only with models to check

    out: list[Finding] = []
    for ref in bundle.models:
        try:
            model = load_declared(ref)
        except ModelError as e:
            out.append(
                Finding(
                    "model-refused", f"model {ref.id}", str(e).removeprefix(f"model {ref.id}: ")
                )
            )
            continue
        if model.ranges is None:
            out.append(
                Finding(
                    "model-without-ranges",
                    f"model {ref.id}",
                    "the file carries no feature_ranges metadata: out-of-distribution inputs "
                    "will not be flagged",
                )
            )
    return out
