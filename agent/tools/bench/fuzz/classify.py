"""Run one case through the auditor's verifier and say what became of it.

Outcomes (:data:`OUTCOMES`), first that applies:

- ``crash``: an exception came out of verify, analyze or rendering (text, JSON);
- ``invalid-json``: ``json.dumps(..., allow_nan=False)`` refused the analysis;
- ``rejected``: a finding names every file the mutation touched (in ``file``, in
  ``related`` -- a finding about two attestations names both -- or by name in its detail);
- ``wrong-file``: there are findings, but not about (all of) the files touched;
- ``accepted``: no finding, and what was signed again is in profile (a device may sign
  what it likes: only the chain, or nothing, can tell);
- ``accepted-identical``: no finding, and the signed bytes (protected header and payload)
  are the genuine ones: the envelope is malleable;
- ``undetected``: no finding, and the signed bytes changed (or a re-signed payload is out
  of profile): a forgery, or a hostile claims set, went through.
"""

from __future__ import annotations

import json
import time
import traceback
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

from agent.audit import analyze, format_result
from agent.audit.verify import Message, verify_messages
from agent.tools.bench.fuzz.envelope import signed_parts
from agent.tools.bench.fuzz.mutations import Case

__all__ = ["BAD_OUTCOMES", "OUTCOMES", "CaseResult", "classify", "run_case"]

OUTCOMES = (
    "rejected",
    "accepted-identical",
    "undetected",
    "wrong-file",
    "accepted",
    "crash",
    "invalid-json",
)
BAD_OUTCOMES = frozenset(OUTCOMES) - {"rejected", "accepted"}


class _Finding(Protocol):
    @property
    def file(self) -> str: ...
    @property
    def detail(self) -> str: ...


class _Result(Protocol):
    @property
    def findings(self) -> Sequence[_Finding]: ...


@dataclass(frozen=True)
class CaseResult:
    """What became of one case; ``fingerprint`` compares two runs of the same case."""

    outcome: str
    fingerprint: str
    intact: bool | None = None  # the in-process evidence verdict (None: it crashed)
    crash: str = ""  # exception type
    where: str = ""  # deepest frame in our code (and the deepest frame, if elsewhere)
    message: str = ""
    seconds: float = 0.0
    peak_bytes: int = 0


def _names(finding: _Finding, name: str) -> bool:
    return (
        finding.file == name
        or getattr(finding, "related", "") == name
        or PurePosixPath(name).name in finding.detail
    )


def classify(
    case: Case, result: _Result | None, *, crash: bool = False, invalid_json: bool = False
) -> str:
    """The outcome of ``case`` given the verifier's ``result`` (see the module docstring)."""
    if crash or result is None:
        return "crash"
    if invalid_json:
        return "invalid-json"
    names = case.names()
    findings = list(result.findings)
    if all(any(_names(f, names[t]) for f in findings) for t in case.targets):
        return "rejected"
    if findings:
        return "wrong-file"
    if case.resigned:
        return "accepted" if case.in_profile else "undetected"
    genuine = case.stream.files
    same = all(
        (parts := signed_parts(case.files[t])) is not None and parts == signed_parts(genuine[t])
        for t in case.targets
    )
    return "accepted-identical" if same else "undetected"


def _where(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    ours = [
        f
        for f in frames
        if ("/agent/" in f.filename or "/native/" in f.filename or f.filename.startswith("native"))
        and "/bench/fuzz/" not in f.filename
    ]

    def show(f: traceback.FrameSummary) -> str:
        parts = PurePosixPath(f.filename).parts
        for root in ("agent", "native"):
            if root in parts:
                parts = parts[len(parts) - 1 - parts[::-1].index(root) :]
                break
        else:
            parts = parts[-2:]
        return f"{'/'.join(parts)}:{f.lineno} {f.name}"

    out = show(ours[-1]) if ours else "?"
    if frames and (not ours or frames[-1] is not ours[-1]):
        out += f" -> {show(frames[-1])}"
    return out


def _fingerprint(outcome: str, result: Any, crash: str) -> str:
    if result is None:
        return f"{outcome}|crash:{crash}"
    verdict = "intact" if result.ok else "findings"
    found = sorted(
        f"{f.kind}:{PurePosixPath(f.file).name}:{f.seq}:{PurePosixPath(f.related).name}"
        for f in result.findings
    )
    return f"{outcome}|{verdict}|{crash}|{';'.join(found)}"


def run_case(case: Case, *, trace_memory: bool = False) -> CaseResult:
    """Verify, analyse and render ``case`` in-process, as ``edgegov audit verify`` does."""
    msgs = [Message(raw, name) for raw, name in zip(case.files, case.names())]
    result = None
    error: BaseException | None = None
    invalid_json = False
    if trace_memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result = verify_messages(msgs, [case.stream.public])
        an = analyze(result)
        format_result(an)
        doc = an.to_json()
        try:
            json.dumps(doc, allow_nan=False)
        except ValueError:  # NaN, infinity or a cycle: not JSON
            invalid_json = True
    except Exception as e:  # any exception out of verify, analyze or render is a finding
        error = e
    seconds = time.perf_counter() - t0
    peak = 0
    if trace_memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    crash = type(error).__name__ if error is not None else ""
    outcome = classify(
        case, None if error else result, crash=error is not None, invalid_json=invalid_json
    )
    return CaseResult(
        outcome,
        _fingerprint(outcome, None if error else result, crash),
        None if error or result is None else result.ok,
        crash,
        _where(error) if error is not None else "",
        repr(error)[:160] if error is not None else "",
        seconds,
        peak,
    )
