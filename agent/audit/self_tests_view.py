"""The self-tests of one device (``agent.audit.self_tests``) as text and as HTML.

The HTML follows ``report.py``'s convention: every value sits in an element whose
``data-k`` is its JSON Pointer in ``audit verify --json``; the caller passes its value
writer (``report._v``) so the two renderings of a value cannot differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.audit._format import dur, ts
from agent.audit.self_tests import DeviceSelfTests

__all__ = ["self_tests_html", "self_tests_text"]

_MAX_LISTED = 10


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def self_tests_text(st: DeviceSelfTests | None) -> list[str]:
    """Lines for ``audit verify``'s device section (none when no self-test is known)."""
    if st is None or not st.tests:
        return []
    passed = sum(t.passed for t in st.tests)
    failed = sum(t.failed for t in st.tests)
    where = "declared by the policy" if st.source == "policy" else "seen in the evidence"
    lines = [
        f"  self-tests     {len(st.tests)} ({where}): {passed} passed, {failed} FAILED, "
        f"{len(st.overdue)} OVERDUE span(s)"
    ]
    for t in st.tests:
        goal = f", goal {t.goal}" if t.goal else ""
        lines.append(
            f"  self-test {t.id}: {t.kind} {' vs '.join(t.channels)}, every {dur(t.every_ms)}"
            f"{goal}: {t.passed} passed, {t.failed} failed, last {ts(t.last_ms)}"
        )
        for f in t.failures[:_MAX_LISTED]:
            lines.append(
                f"                 FAILED seq {f.seq} at {ts(f.time_ms)}: observed "
                f"{_num(f.observed)}, reference {_num(f.reference)}, error {_num(f.error)} "
                f"(tolerance {f.tolerance:g})" + (f"; {f.reason}" if f.reason else "")
            )
        if len(t.failures) > _MAX_LISTED:
            lines.append(f"                 ... and {len(t.failures) - _MAX_LISTED} more failures")
        for o in [o for o in st.overdue if o.test == t.id][:_MAX_LISTED]:
            lines.append(
                f"                 OVERDUE {ts(o.from_ms)} -> {ts(o.to_ms)}: {dur(o.span_ms)} "
                f"without a result" + (" (to the end of the evidence)" if o.open else "")
            )
    if st.source == "evidence":
        lines.append("                 (a declared self-test that never ran needs --policy)")
    return lines


def self_tests_html(p: str, st: DeviceSelfTests | None, v: Callable[[str, Any, str], str]) -> str:
    """The device's "Self-tests" section; ``p`` is the device's JSON Pointer, ``v`` the
    report's value writer (pointer, value, format)."""
    q = f"{p}/self_tests"
    if st is None or not st.tests:
        return "<h3>Self-tests</h3><p class='muted'>none declared or recorded</p>"
    rows = []
    for j, t in enumerate(st.tests):
        tp = f"{q}/tests/{j}"
        chans = ", ".join(v(f"{tp}/channels/{n}", c, "text") for n, c in enumerate(t.channels))
        fails = "".join(
            f"<li>seq {v(f'{tp}/failures/{k}/seq', f.seq, 'int')} at "
            f"{v(f'{tp}/failures/{k}/time_ms', f.time_ms, 'ts')}: observed "
            f"{v(f'{tp}/failures/{k}/observed', f.observed, 'num')}, reference "
            f"{v(f'{tp}/failures/{k}/reference', f.reference, 'num')}, error "
            f"{v(f'{tp}/failures/{k}/error', f.error, 'num')} (tolerance "
            f"{v(f'{tp}/failures/{k}/tolerance', f.tolerance, 'num')}) "
            f"{v(f'{tp}/failures/{k}/reason', f.reason or None, 'text') if f.reason else ''}"
            "</li>"
            for k, f in enumerate(t.failures[: _MAX_LISTED * 10])
        )
        rows.append(
            f"<tr><td>{v(tp + '/id', t.id, 'text')}</td><td>{v(tp + '/kind', t.kind, 'text')}"
            f"</td><td>{chans}</td><td>{v(tp + '/goal', t.goal, 'text')}</td>"
            f"<td class='num'>{v(tp + '/every_ms', t.every_ms, 'dur')}</td>"
            f"<td class='num'>{v(tp + '/passed', t.passed, 'int')}</td>"
            f"<td class='num'>{v(tp + '/failed', t.failed, 'int')}</td>"
            f"<td>{v(tp + '/last_ms', t.last_ms, 'ts')}<ul>{fails}</ul></td></tr>"
        )
    late = "".join(
        f"<tr><td>{v(f'{q}/overdue/{k}/test', o.test, 'text')}</td>"
        f"<td>{v(f'{q}/overdue/{k}/from_ms', o.from_ms, 'ts')}</td>"
        f"<td>{v(f'{q}/overdue/{k}/to_ms', o.to_ms, 'ts')}</td>"
        f"<td class='num'>{v(f'{q}/overdue/{k}/span_ms', o.span_ms, 'dur')}</td>"
        f"<td class='num'>{v(f'{q}/overdue/{k}/every_ms', o.every_ms, 'dur')}</td></tr>"
        for k, o in enumerate(st.overdue)
    )
    note = (
        "<p class='muted'>self-tests seen in the evidence only: one the policy declares "
        "that never ran shows with the policy</p>"
        if st.source == "evidence"
        else ""
    )
    return (
        "<h3>Self-tests</h3>"
        f"{note}<table><tr><th>self-test</th><th>kind</th><th>channels</th><th>goal</th>"
        "<th>every</th><th>passed</th><th>failed</th><th>last result; failures</th></tr>"
        f"{''.join(rows)}</table>"
        "<p>overdue: no result for longer than the period plus one window (grace "
        f"{v(q + '/grace_ms', st.grace_ms, 'dur')})</p>"
        "<table><tr><th>self-test</th><th>from</th><th>to</th><th>without a result</th>"
        "<th>period</th></tr>"
        f"{late or '<tr><td colspan=5>none</td></tr>'}</table>"
    )
