"""``edgegov audit replay``: re-run stored windows and show the signed results are reproduced.

An attestation says which policy (digest) and models (digests) produced its verdict and
scores, and claim -70001/5 key 9 is the digest of the policy evaluator's state at the
window's start. The gateway's evidence store keeps every window's readings as the leaves of
the signed Merkle log. Replay takes the store, the policy bundle (with its model files) and
the device's trust anchors, and for each requested window:

1. verifies the attestations it needs (signature, device) and checks that the bundle and
   every model file have exactly the attested digests;
2. finds where to start: the latest window at or before it, under the same policy, whose
   state digest is that of a fresh evaluator (the agent's first window, or its first after
   a policy change); from there every window is replayed in order, so the stateful parts of
   the policy (``mean(x, 10m)``, ``for``/``clear``, ``duration_true``) and the features that
   look back (durations, lags) see what the agent saw;
3. checks every replayed window's readings against its signed checkpoint (the stored
   records, hashed as leaves onto the stored compact range, give the signed root), and the
   evaluator's state digest against the attested one before the window runs;
4. scores the models (one batch per model) and evaluates the rules, and compares each
   rule result and risk score with the attested one: bit for bit on the CPU provider; to
   within :data:`GPU_TOLERANCE` when the attestation says another provider scored it.

Nothing is trusted from the store that is not checked against a signature: a tampered
reading changes the Merkle root; a tampered attestation fails its signature.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import numpy as np

from agent.audit.trust import TrustStore
from agent.errors import Error, ModelError, VerificationError
from agent.evidence.claims import Evidence, RiskResult, RuleResult
from agent.evidence.leaves import record_leaf_hashes, records_to_columns
from agent.evidence.merkle import CompactRange
from agent.evidence.store_reader import StoredWindow, StoreReader
from agent.pipeline.evaluate import evaluate_windows
from agent.policy import PolicyBundle
from agent.risk.engine import RiskEngine
from agent.risk.onnx_model import RiskModel, load_declared

__all__ = ["GPU_TOLERANCE", "ReplayResult", "StoredInput", "WindowReplay", "replay"]

#: |replayed - attested| allowed when the attestation's score came from a non-CPU provider
GPU_TOLERANCE = 1e-5
_CPU = "CPUExecutionProvider"
#: windows scored per batch while replaying
_BATCH = 256


@dataclass(frozen=True)
class StoredInput:
    """One replayed window's input, verified: its store row, its attestation (signature
    checked), its timestamps and its readings as columns (checked against the signed
    checkpoint; an unmasked copy, the caller's to mask)."""

    row: StoredWindow
    evidence: Evidence
    timestamps: np.ndarray
    columns: np.ndarray


@dataclass
class WindowReplay:
    """One replayed window: what differs from its attestation (empty lists: reproduced)."""

    seq: int
    start_ms: int
    end_ms: int
    readings: int
    target: bool  # asked for (others are replayed to rebuild the state)
    state_ok: bool
    rules: list[RuleResult]
    risk: list[RiskResult]
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state_ok and not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "window": [self.start_ms, self.end_ms],
            "readings": self.readings,
            "target": self.target,
            "reproduced": self.ok,
            "state_reproduced": self.state_ok,
            "mismatches": self.mismatches,
            "rules": [
                {"rule": r.rule_id, "evaluated": r.evaluated, "violated": r.violated}
                for r in self.rules
            ],
            "risk": [
                {"model": r.model_id, "score": r.score, "provider": r.provider, "ood": r.ood}
                for r in self.risk
            ],
        }


@dataclass
class ReplayResult:
    device: str
    origin: str
    policy: tuple[str, int, str]  # id, version, digest
    models: dict[str, tuple[str, str]]  # id -> (sha256, provider used here)
    start_seq: int
    windows: list[WindowReplay]

    @property
    def ok(self) -> bool:
        return all(w.ok for w in self.windows)

    def to_json(self) -> dict[str, Any]:
        pid, version, digest = self.policy
        return {
            "verdict": "REPRODUCED" if self.ok else "NOT REPRODUCED",
            "device": self.device,
            "log": self.origin,
            "policy": {"id": pid, "version": version, "sha256": digest},
            "models": {k: {"sha256": s, "provider": p} for k, (s, p) in self.models.items()},
            "replayed_from_seq": self.start_seq,
            "windows": [w.to_json() for w in self.windows],
        }

    def text(self) -> str:
        pid, version, digest = self.policy
        targets = [w for w in self.windows if w.target]
        lines = [
            f"replay of {self.device}, log {self.origin}",
            f"  policy  {pid} v{version} (sha256 {digest[:16]}...)",
        ]
        for mid, (sha, provider) in self.models.items():
            lines.append(f"  model   {mid} (sha256 {sha[:16]}...) on {provider}")
        total = sum(w.readings for w in self.windows)
        lines.append(
            f"  replayed seq {self.start_seq}..{self.windows[-1].seq}: {len(self.windows)} "
            f"window(s), {total} reading(s), each window's readings checked against its "
            "signed Merkle checkpoint"
        )
        if self.start_seq < targets[0].seq:
            lines.append(
                f"  (seq {self.start_seq} is the nearest earlier window that started from a "
                "fresh evaluator state; the windows before the target rebuild the state)"
            )
        for w in self.windows:
            if not w.target and w.ok:
                continue
            lines.append(
                f"seq {w.seq}: {w.readings} reading(s) - "
                + ("REPRODUCED" if w.ok else "NOT REPRODUCED")
                + ("" if w.target else " (replayed to rebuild the state)")
            )
            lines.append(
                "  state at the window's start: "
                + ("same digest as attested" if w.state_ok else "DIFFERS from the attested one")
            )
            for r in w.rules:
                lines.append(
                    f"  rule {r.rule_id}: {r.violated} of {r.evaluated} readings violated"
                    + (f", {r.errors} not evaluable" if r.errors else "")
                )
            for k in w.risk:
                if k.score is None:
                    lines.append(f"  risk {k.model_id}: not scored ({k.reason})")
                    continue
                ood = "not assessed" if k.ood is None else (", ".join(k.ood) if k.ood else "none")
                lines.append(
                    f"  risk {k.model_id}: {k.score!r} ({k.provider}); out of training range: {ood}"
                )
            lines.extend(f"  MISMATCH {m}" for m in w.mismatches)
        lines.append(
            "verdict: "
            + (
                "REPRODUCED - every rule result and risk score as attested"
                if self.ok
                else "NOT REPRODUCED - see the mismatches above"
            )
        )
        return "\n".join(lines)


def _verified(
    store: StoreReader, seq: int, trust: TrustStore, cache: dict[int, tuple[StoredWindow, Evidence]]
) -> tuple[StoredWindow, Evidence] | None:
    """Window ``seq``'s row and its verified attestation; None if the store lacks it."""
    hit = cache.get(seq)
    if hit is None:
        row = store.window(seq)
        if row is None:
            return None
        try:
            ev = trust.evidence(row.cose)
        except VerificationError as e:
            raise type(e)(f"seq {seq}: {e}") from e
        if ev.seq != seq:
            raise VerificationError(f"store row {seq} holds the attestation of seq {ev.seq}")
        hit = cache[seq] = (row, ev)
    return hit


def _check_config(ev: Evidence, bundle: PolicyBundle) -> None:
    c = ev.config
    if c.policy_digest != bundle.digest:
        raise Error(
            f"seq {ev.seq} was produced by policy {c.policy_id} v{c.policy_version} "
            f"(sha256 {c.policy_digest}); the bundle given is {bundle.id} v{bundle.version} "
            f"(sha256 {bundle.digest}): give the bundle that was in force"
        )
    declared = {m.id: m.sha256 for m in bundle.models}
    if dict(c.model_digests) != declared:
        raise Error(f"seq {ev.seq} names models {dict(c.model_digests)}; the bundle {declared}")
    if c.state_in is None:
        raise Error(
            f"seq {ev.seq} carries no evaluator-state digest (made by an agent without replay "
            "support); it cannot be replayed"
        )


def _start(
    store: StoreReader,
    first_target: int,
    bundle: PolicyBundle,
    trust: TrustStore,
    cache: dict[int, tuple[StoredWindow, Evidence]],
    fresh: str,
) -> int:
    """The latest seq <= first_target under the same policy that began from a fresh state."""
    seq = first_target
    while True:
        hit = _verified(store, seq, trust, cache)
        if hit is None:
            raise Error(
                f"seq {seq} is not in {store.path} (pruned by retention?): the evaluator state "
                f"seq {first_target} started from cannot be rebuilt"
            )
        ev = hit[1]
        if seq == first_target or ev.config.policy_digest == bundle.digest:
            _check_config(ev, bundle)  # the target itself: say which policy was in force
        else:
            raise Error(
                f"seq {seq} ran under another policy and no window from seq {seq + 1} to "
                f"{first_target} started from a fresh evaluator state: the state cannot be "
                "rebuilt"
            )
        if ev.config.state_in == fresh:
            return seq
        seq -= 1


def _load_models(bundle: PolicyBundle, providers: Sequence[str]) -> list[RiskModel]:
    out = []
    for ref in bundle.models:
        try:
            out.append(load_declared(ref, providers))
        except ModelError as e:
            raise Error(f"cannot replay: {e}") from e
    return out


def _window_input(
    store: StoreReader, row: StoredWindow, ev: Evidence, bundle: PolicyBundle
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The window's readings as columns, checked against its signed checkpoint (masked,
    like everything else the agent did with them, by ``evaluate_windows``)."""
    records = store.records(row.seq)
    problems = []
    if len(records) != ev.readings:
        problems.append(
            f"the store holds {len(records)} of the window's {ev.readings} readings (shed by "
            "the disk quota or pruned): it cannot be replayed"
        )
    else:
        log = CompactRange(row.size_before, cbor2.loads(row.log_before))
        log.extend(record_leaf_hashes(records))
        cp = ev.checkpoint
        if log.size != cp.size or log.root() != cp.root:
            problems.append(
                "the stored readings do not hash to the window's signed Merkle checkpoint "
                "(altered or reordered readings)"
            )
    ts, cols = records_to_columns(records, len(bundle.channels))
    return ts, cols, problems


def _compare(w: WindowReplay, ev: Evidence) -> None:
    attested_rules = {r.rule_id: r for r in ev.rules}
    for r in w.rules:
        a = attested_rules.pop(r.rule_id, None)
        if a is None:
            w.mismatches.append(f"rule {r.rule_id}: not in the attestation")
        elif a != r:
            w.mismatches.append(f"rule {r.rule_id}: replayed {r}, attested {a}")
    w.mismatches.extend(f"rule {rid}: attested but not replayed" for rid in attested_rules)
    attested_risk = {r.model_id: r for r in ev.risk}
    for k in w.risk:
        att = attested_risk.pop(k.model_id, None)
        if att is None:
            w.mismatches.append(f"risk {k.model_id}: not in the attestation")
            continue
        if (att.score is None) != (k.score is None):
            w.mismatches.append(
                f"risk {k.model_id}: replayed {k.score!r} ({k.reason or 'scored'}), attested "
                f"{att.score!r} ({att.reason or 'scored'})"
            )
        elif att.score is not None and k.score is not None:
            exact = att.provider == _CPU and k.provider == _CPU
            if exact and att.score != k.score:
                w.mismatches.append(
                    f"risk {k.model_id}: replayed {k.score!r}, attested {att.score!r} (both on "
                    f"the CPU provider, so they must be identical)"
                )
            elif not exact and abs(att.score - k.score) > GPU_TOLERANCE:
                w.mismatches.append(
                    f"risk {k.model_id}: replayed {k.score!r} on {k.provider}, attested "
                    f"{att.score!r} on {att.provider} (more than {GPU_TOLERANCE} apart)"
                )
            if att.ood != k.ood:
                w.mismatches.append(
                    f"risk {k.model_id}: inputs out of training range replayed {k.ood}, "
                    f"attested {att.ood}"
                )
    w.mismatches.extend(f"risk {mid}: attested but not replayed" for mid in attested_risk)


def replay(
    store_path: Path,
    bundle: PolicyBundle,
    trust: TrustStore,
    seqs: Sequence[int] = (),
    providers: Sequence[str] = (_CPU,),
    alongside: Callable[[Sequence[StoredInput]], None] | None = None,
) -> ReplayResult:
    """Replay the windows ``seqs`` (default: the newest) of the store; see the module doc.

    ``alongside``, if given, is called with every batch of replayed windows (the ones that
    rebuild the state too, in order), before the bundle evaluates them: what ``edgegov
    policy preview`` runs a proposed bundle over (``agent.governance.preview``).

    Raises:
        Error: the store cannot be read, a window is not there, the bundle or a model is
            not the one in force, or the starting state cannot be rebuilt.
        VerificationError: an attestation needed does not verify with ``trust``.
    """
    store = StoreReader(store_path)
    try:
        first, last = store.bounds()
        if last is None:
            raise Error(f"{store_path}: the store holds no attestations")
        targets = sorted(set(seqs)) or [last]
        for s in targets:
            if not store.has(s):
                raise Error(f"seq {s} is not in {store_path} (it holds seq {first} to {last})")
        cache: dict[int, tuple[StoredWindow, Evidence]] = {}
        evaluator = bundle.evaluator()
        fresh = evaluator.state_digest()
        start = _start(store, targets[0], bundle, trust, cache, fresh)
        first_ev = cache[start][1]
        models = _load_models(bundle, providers)
        engine = RiskEngine(models, [c.name for c in bundle.channels])
        engine.prime(store.records_before(start, *engine.lookback), bundle)
        wanted = set(targets)
        windows: list[WindowReplay] = []
        replayed = range(start, targets[-1] + 1)
        for k in range(0, len(replayed), _BATCH):
            inputs = []
            for s in replayed[k : k + _BATCH]:
                hit = _verified(store, s, trust, cache)
                if hit is None:
                    raise Error(f"seq {s} is missing from {store_path}: the chain has a gap")
                row, ev = hit
                _check_config(ev, bundle)
                inputs.append((row, ev, *_window_input(store, row, ev, bundle)))
            if alongside is not None:
                alongside([StoredInput(r, e, ts, cols.copy()) for r, e, ts, cols, _p in inputs])
            verdicts = evaluate_windows(
                bundle,
                evaluator,
                engine,
                [(ts, cols) for _row, _ev, ts, cols, _p in inputs],
                # a model the agent had refused (no result in the attestation) did not run
                ran=[{r.model_id for r in ev.risk} for _row, ev, _ts, _cols, _p in inputs],
                bounds=[(ev.window_start_ms, ev.window_end_ms) for _r, ev, _t, _c, _p in inputs],
            )
            for (row, ev, ts, _cols, problems), v in zip(inputs, verdicts):
                state_ok = v.state_in == ev.config.state_in
                w = WindowReplay(
                    row.seq, row.start_ms, row.end_ms, len(ts), row.seq in wanted, state_ok,
                    list(v.rules), list(v.risk), list(problems),
                )  # fmt: skip
                _compare(w, ev)
                if v.self_tests != ev.self_tests:
                    w.mismatches.append(
                        f"self-tests: replayed {list(v.self_tests)}, attested {list(ev.self_tests)}"
                    )
                windows.append(w)
                cache.pop(row.seq, None)
        return ReplayResult(
            device=first_ev.device_id,
            origin=first_ev.checkpoint.origin,
            policy=(bundle.id, bundle.version, bundle.digest),
            models={m.id: (m.sha256, m.provider) for m in models},
            start_seq=start,
            windows=windows,
        )
    except sqlite3.Error as e:
        raise Error(f"{store_path}: cannot read the evidence store: {e}") from e
    finally:
        store.close()
