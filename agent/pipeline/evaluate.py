"""One window's verdicts: mask → risk → rules → summary, the same for the agent and replay.

The agent signs what this computes (``agent.pipeline.runner``), and ``edgegov audit
replay`` recomputes it from the stored readings to check the signed verdicts
(``agent.audit.replay``): both call :func:`evaluate_windows`, so the two cannot drift.

Per batch of windows in time order: readings outside a channel's valid range are masked
(NaN) and counted; every model scores every window in one call per model (its features
need the look-back across windows); then, window by window, the rules run over the
masked readings with the window's scores, and their results are summarised per rule.
The evaluator's state digest before each window and after it are kept: the attestation
carries the first (claim -70001/5 key 9), the journal's commit of the window the second.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from agent.evidence.claims import RiskResult, RuleEpisode, RuleResult, SelfTestResult
from agent.pipeline.self_tests import run_self_tests
from agent.policy import BatchResult, Evaluator, PolicyBundle
from agent.risk.engine import RiskEngine

__all__ = ["WindowVerdicts", "evaluate_windows", "summarise_rules"]


@dataclass(frozen=True)
class WindowVerdicts:
    """What the policy and the models say of one window.

    ``batch`` is the evaluator's raw result (per reading), kept so a window whose
    signing failed can be held and signed later (``agent.pipeline.held_windows``);
    ``rules`` is its summary per rule, what the attestation carries.
    """

    batch: BatchResult
    rules: tuple[RuleResult, ...]
    risk: tuple[RiskResult, ...]
    out_of_range: int  # readings outside a channel's valid range: masked, not evaluated
    state_in: str | None  # SHA-256 (hex) of the evaluator state the window started from
    state_after: str | None  # SHA-256 (hex) of the evaluator state after it (None: not known)
    self_tests: tuple[SelfTestResult, ...] = ()  # the self-tests due in it (claim -70001/13)


def evaluate_windows(
    bundle: PolicyBundle,
    evaluator: Evaluator,
    engine: RiskEngine,
    windows: Sequence[tuple[np.ndarray, np.ndarray]],
    ran: Sequence[Collection[str]] | None = None,
    bounds: Sequence[tuple[int, int]] | None = None,
) -> list[WindowVerdicts]:
    """The verdicts of ``windows`` (``(timestamps, columns)``, in time order).

    ``columns`` (float64, n_channels x n) are masked in place. ``ran``: per window, the
    models whose results count (replay: those the attestation has; a model the agent had
    refused did not run); ``None``: every model's. ``bounds``: per window, its
    ``[start_ms, end_ms)``, to run the self-tests due in it (``agent.pipeline.self_tests``;
    ``None``: none run). The evaluator's state moves on.
    """
    out_of_range = [sum(bundle.mask_invalid(cols)[1].values()) for _ts, cols in windows]
    risks = engine.score(windows)
    rule_ids = [r.id for r in bundle.rules]
    state_in = evaluator.state_digest()
    out = []
    for i, ((ts, cols), risk) in enumerate(zip(windows, risks)):
        if ran is not None:
            risk = tuple(r for r in risk if r.model_id in ran[i])
        batch = evaluator.run(ts, cols, {r.model_id: r.score for r in risk})
        after = evaluator.state_digest()
        rules = summarise_rules(rule_ids, batch, ts)
        tests = run_self_tests(bundle, *bounds[i], cols) if bounds is not None else ()
        out.append(
            WindowVerdicts(batch, rules, tuple(risk), out_of_range[i], state_in, after, tests)
        )
        state_in = after
    return out


def summarise_rules(
    rule_ids: Sequence[str], batch: BatchResult, timestamps: np.ndarray
) -> tuple[RuleResult, ...]:
    """Per-rule counts from the evaluator's result for one window.

    ``batch.codes`` is (n_rules, n) uint8: 1 (condition holds), 0 (violated) or 2 (not
    evaluable); ``batch.episodes`` per rule, the violation episodes (start_ms, end_ms or
    None while open, peak) that the evaluator reported for this window.
    """
    results, episodes = batch.codes, batch.episodes
    out = []
    for i, rule_id in enumerate(rule_ids):
        row = results[i] if results.size else np.empty(0, dtype=np.uint8)
        violated_at = np.flatnonzero(row == 0)
        errors = int(np.count_nonzero(row == 2))
        first = int(timestamps[violated_at[0]]) if violated_at.size else None
        last = int(timestamps[violated_at[-1]]) if violated_at.size else None
        eps = tuple(RuleEpisode(e.start_ms, e.end_ms, e.peak) for e in episodes[i])
        out.append(
            RuleResult(
                rule_id, int(row.size) - errors, int(violated_at.size), errors, first, last, eps
            )
        )
    return tuple(out)
