"""`edgegov audit report --html`: one self-contained HTML file, charts as inline SVG.

No scripts, no external fonts, styles or images: it opens offline in any browser and
prints. It renders the same :class:`~agent.audit.analysis.Analysis` as ``audit verify
--json``: findings first, then the two verdicts (evidence integrity; compliance per goal
with its owner, clause and rules, or per rule), then per device the period,
completeness, violation episodes, degraded windows, restarts, risk, configuration and
data quality.

Every number (and every name a number belongs to) sits in an element whose
``data-k`` is the JSON Pointer (RFC 6901) of its value in that JSON and whose ``data-f``
says how it is written (``int``, ``pct``, ``ts``, ``dur``, ``text``, ``key``, ``count``,
``num``): the report is checked against the JSON value by value
(``tests/test_report_html.py``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from agent import __version__
from agent.audit._format import dur, pct, ts
from agent.audit.analysis import Analysis, DeviceAnalysis
from agent.audit.self_tests_view import self_tests_html
from agent.audit.verify import AuditResult

__all__ = ["render_html"]

#: rows of one table (episodes, windows...) before "N more in the JSON"
MAX_ROWS = 500

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;
color:#1d2733;padding:0 1em}
h1{font-size:1.6em;margin:.2em 0}
h2{border-bottom:2px solid #d7dee6;padding-bottom:.2em;margin-top:2em}
.verdict{display:inline-block;padding:.25em .8em;border-radius:4px;color:#fff;font-weight:600}
.intact,.met{background:#1f8a4c}.findings,.violated{background:#c0392b}
.not-evaluable{background:#7f8c8d}.not-quality-assured{background:#d68910}
table{border-collapse:collapse;margin:.6em 0;width:100%}
td,th{border:1px solid #d7dee6;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f2f5f8}.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:0 .5em;border-radius:3px;color:#fff;font-weight:600}
figure{margin:1em 0}figcaption{font-size:.9em;color:#52606d}
svg text{font:11px system-ui,sans-serif;fill:#52606d}
.muted,.meta{color:#52606d}
"""

_COLORS = ("#2c6fbb", "#d35400", "#8e44ad", "#16a085", "#c0392b")
_FORMATS: dict[str, Callable[[Any], str]] = {
    "int": str,
    "num": lambda v: f"{v:.3f}",
    "pct": pct,
    "ts": ts,
    "dur": dur,
}


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _ptr(*parts: object) -> str:
    """A JSON Pointer (RFC 6901) from path segments."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _v(path: str, value: Any, f: str, cls: str = "") -> str:
    """One value of the JSON at ``path``, written as format ``f``."""
    if f in _FORMATS:
        text = "-" if value is None and f in ("int", "num") else _FORMATS[f](value)
    elif f == "count":
        text = str(len(value))
    elif f == "key":
        text = path.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~")
    else:
        text = "-" if value is None else str(value)
    c = f" class='{cls}'" if cls else ""
    return f"<span data-k='{_e(path)}' data-f='{f}'{c}>{_e(text)}</span>"


def _status(path: str, status: str) -> str:
    return _v(path, status, "text", "status " + status.replace(" ", "-"))


def _line_chart(
    title: str, series: dict[str, list[tuple[int, float | None]]], y_max: float = 1.0
) -> str:
    w, h, pad = 1000, 220, 40
    pts = [t for s in series.values() for t, _ in s]
    if not pts:
        return f"<p class='muted'>{_e(title)}: no data</p>"
    t0, t1 = min(pts), max(pts)
    span = max(t1 - t0, 1)

    def x(t: int) -> float:
        return pad + (w - 2 * pad) * (t - t0) / span

    def y(v: float) -> float:
        return h - pad - (h - 2 * pad) * min(max(v / y_max, 0.0), 1.0)

    parts = [
        f"<svg role='img' aria-label='{_e(title)}' viewBox='0 0 {w} {h}' width='100%' "
        f"xmlns='http://www.w3.org/2000/svg'>",
        f"<rect x='0' y='0' width='{w}' height='{h}' fill='#fff'/>",
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='#9aa5b1'/>",
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{h - pad}' stroke='#9aa5b1'/>",
        f"<text x='{pad - 6}' y='{y(y_max) + 4}' text-anchor='end'>{y_max:g}</text>",
        f"<text x='{pad - 6}' y='{h - pad + 4}' text-anchor='end'>0</text>",
        f"<text x='{pad}' y='{h - 12}'>{_e(ts(t0))}</text>",
        f"<text x='{w - pad}' y='{h - 12}' text-anchor='end'>{_e(ts(t1))}</text>",
    ]
    for i, (name, s) in enumerate(sorted(series.items())):
        color = _COLORS[i % len(_COLORS)]
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s if v is not None)
        if coords:
            parts.append(
                f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{coords}'/>"
            )
        parts.append(
            f"<text x='{w - pad - 4}' y='{pad + 14 * i}' text-anchor='end' "
            f"style='fill:{color}'>{_e(name)}</text>"
        )
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{_e(title)}</figcaption></figure>"


def _completeness_chart(i: int, d: DeviceAnalysis) -> str:
    """One bar per window: its completeness (``data-k`` names the value it draws)."""
    w, h, pad = 1000, 160, 40
    if not d.windows:
        return "<p class='muted'>no windows</p>"
    bw = (w - 2 * pad) / len(d.windows)
    parts = [
        f"<svg role='img' aria-label='data completeness per window' viewBox='0 0 {w} {h}' "
        "width='100%' xmlns='http://www.w3.org/2000/svg'>",
        f"<rect x='0' y='0' width='{w}' height='{h}' fill='#fff'/>",
        f"<text x='{pad - 6}' y='{pad + 4}' text-anchor='end'>100%</text>",
        f"<text x='{pad - 6}' y='{h - pad + 4}' text-anchor='end'>0</text>",
    ]
    for j, win in enumerate(d.windows):
        frac = win.completeness.ratio
        bh = (h - 2 * pad) * (1.0 if frac is None else max(0.0, min(frac, 1.0)))
        bh = max(bh, 2.0)  # a window with nothing received still shows (red, at the axis)
        color = (
            "#d7dee6"  # nothing expected: a pale full bar, not a gap
            if frac is None
            else "#1f8a4c"
            if frac >= 0.999
            else "#e67e22"
            if frac >= 0.9
            else "#c0392b"
        )
        if win.degraded:
            color = "#8e44ad" if frac is None or frac >= 0.9 else color
        parts.append(
            f"<rect data-k='{_ptr('devices', i, 'windows', j, 'completeness', 'ratio')}' "
            f"data-v='{'' if frac is None else frac!r}' x='{pad + j * bw:.1f}' "
            f"y='{h - pad - bh:.1f}' width='{max(bw - 1, 1):.1f}' height='{bh:.1f}' "
            f"fill='{color}'><title>seq {win.seq}: {_e(pct(frac))}"
            f"{' (degraded)' if win.degraded else ''}</title></rect>"
        )
    parts.append(
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='#9aa5b1'/>"
    )
    parts.append("</svg>")
    caption = (
        "readings received of those expected, per window (docs/attestation-profile.md, "
        "Data completeness); green: all, orange: most, red: less; purple: degraded evidence; "
        "grey: nothing expected"
    )
    return f"<figure>{''.join(parts)}<figcaption>{_e(caption)}</figcaption></figure>"


def _more(path: str, items: Sequence[Any]) -> str:
    if len(items) <= MAX_ROWS:
        return ""
    return (
        f"<p class='muted'>the first rows of {_v(path, items, 'count')}; "
        "every one is in the JSON (audit verify --json)</p>"
    )


def _findings(a: Analysis) -> str:
    rows = []
    for j, f in enumerate(a.findings[:MAX_ROWS]):
        p = _ptr("findings", j)
        label = " <span class='muted'>(unverified label)</span>" if f.label_from else ""
        rows.append(
            f"<tr><td>{_v(p + '/device', f.device, 'text')}{label}</td>"
            f"<td class='num'>{_v(p + '/seq', f.seq, 'int')}</td>"
            f"<td><code>{_v(p + '/kind', f.kind, 'text')}</code></td>"
            f"<td>{_v(p + '/detail', f.detail, 'text')}</td>"
            f"<td>{_v(p + '/file', f.file, 'text')}</td></tr>"
        )
    body = "".join(rows) or (
        "<tr><td colspan=5>none: every signature valid, every chain complete</td></tr>"
    )
    return (
        "<table><tr><th>device</th><th>seq</th><th>kind</th><th>detail</th><th>source</th>"
        f"</tr>{body}</table>{_more('/findings', a.findings)}"
    )


def _compliance(a: Analysis) -> str:
    rows = []
    for j, c in enumerate(a.compliance):
        p = _ptr("compliance", "items", j)
        devs = "".join(
            f"<li>{_v(f'{p}/devices/{k}/device', dv.device, 'text')}: "
            f"{_status(f'{p}/devices/{k}/status', dv.status)} "
            f"{_v(f'{p}/devices/{k}/reason', dv.reason, 'text')}; completeness "
            f"{_v(f'{p}/devices/{k}/completeness', dv.completeness, 'pct')} over "
            f"{_v(f'{p}/devices/{k}/windows', dv.windows, 'int')} window(s), "
            f"{_v(f'{p}/devices/{k}/quality_windows', dv.quality_windows, 'int')} with weak "
            "evidence</li>"
            for k, dv in enumerate(c.devices)
        )
        rules = ", ".join(_v(f"{p}/rules/{k}", r, "text") for k, r in enumerate(c.rules))
        if c.kind == "goal":
            who = (
                f"<td>{_v(p + '/description', c.description, 'text')}</td>"
                f"<td>{_v(p + '/stakeholder', c.stakeholder, 'text')}</td>"
                f"<td>{_v(p + '/source', c.source, 'text')}</td>"
                f"<td>{rules or 'none'}</td>"
                f"<td class='num'>{_v(p + '/min_completeness', c.min_completeness, 'pct')}</td>"
            )
        else:
            who = ""
        rows.append(
            f"<tr><td>{_v(p + '/id', c.id, 'text')}</td>{who}"
            f"<td>{_status(p + '/status', c.status)}<br>{_v(p + '/reason', c.reason, 'text')}"
            f"<ul>{devs}</ul></td></tr>"
        )
    if a.scope == "goals":
        head = (
            "<tr><th>goal</th><th>what must hold</th><th>owner</th><th>clause</th>"
            "<th>rules serving it</th><th>minimum completeness</th><th>status</th></tr>"
        )
        pol = a.policy or {}
        pp = "/compliance/policy/"
        note = (
            f"<p>per goal of policy {_v('/compliance/policy/id', pol.get('id'), 'text')} "
            f"v{_v('/compliance/policy/version', pol.get('version'), 'int')} "
            f"(<code>{_v('/compliance/policy/digest', pol.get('digest'), 'text')}</code>), "
            f"over {_v(pp + 'windows_judged', pol.get('windows_judged'), 'int')} "
            "window(s) signed under it; "
            f"{_v(pp + 'windows_other_policy', pol.get('windows_other_policy'), 'int')}"
            " under another policy, not judged</p>"
        )
    else:
        head = "<tr><th>rule</th><th>status</th></tr>"
        note = (
            "<p class='muted'>per rule: goals, with their owners, clauses and data "
            "thresholds, need the policy (audit report --policy BUNDLE.yaml)</p>"
        )
    body = "".join(rows) or "<tr><td colspan=7>nothing to judge</td></tr>"
    return f"{note}<table>{head}{body}</table>"


def _device(i: int, d: DeviceAnalysis) -> str:
    p = _ptr("devices", i)
    c = d.completeness
    rules = "".join(
        f"<tr><td>{_v(f'{p}/rules/{_esc(rule)}', None, 'key')}</td>"
        + "".join(
            f"<td class='num'>{_v(f'{p}/rules/{_esc(rule)}/{k}', r[k], f)}</td>"
            for k, f in (
                ("evaluated", "int"),
                ("violated", "int"),
                ("windows_violated", "int"),
                ("episodes", "int"),
                ("longest_episode_ms", "dur"),
                ("errors", "int"),
            )
        )
        + "</tr>"
        for rule, r in d.rules.items()
    )
    eps = "".join(
        f"<tr><td>{_v(f'{p}/episodes/{j}/rule', e.rule, 'text')}</td>"
        f"<td>{_v(f'{p}/episodes/{j}/goal', e.goal, 'text')}</td>"
        f"<td>{_v(f'{p}/episodes/{j}/start_ms', e.start_ms, 'ts')}</td>"
        + (
            f"<td>{_v(f'{p}/episodes/{j}/end_ms', e.end_ms, 'ts')}</td>"
            f"<td class='num'>{_v(f'{p}/episodes/{j}/duration_ms', e.duration_ms, 'dur')}</td>"
            if e.end_ms is not None
            else "<td>open when last reported, at "
            f"{_v(f'{p}/episodes/{j}/open_at_ms', e.open_at_ms, 'ts')}"
            "</td><td class='num'>ongoing</td>"
        )
        + f"<td class='num'>{_v(f'{p}/episodes/{j}/peak', e.peak, 'num')}</td>"
        f"<td class='num'>{_v(f'{p}/episodes/{j}/first_seq', e.first_seq, 'int')}.."
        f"{_v(f'{p}/episodes/{j}/last_seq', e.last_seq, 'int')}</td></tr>"
        for j, e in enumerate(d.episodes[:MAX_ROWS])
    )
    risk: dict[str, list[tuple[int, float | None]]] = {}
    for win in d.windows:
        for model, score in win.risk.items():
            risk.setdefault(model, []).append((win.end_ms, score))
    ood = "".join(_risk_row(f"{p}/risk/{_esc(m)}", k) for m, k in d.risk.items())
    degraded = "".join(
        f"<tr><td class='num'>{_v(f'{p}/degraded/runs/{j}/first_seq', r.first_seq, 'int')}.."
        f"{_v(f'{p}/degraded/runs/{j}/last_seq', r.last_seq, 'int')}</td>"
        f"<td class='num'>{_v(f'{p}/degraded/runs/{j}/windows', r.windows, 'int')}</td>"
        f"<td>{_v(f'{p}/degraded/runs/{j}/start_ms', r.start_ms, 'ts')}</td>"
        f"<td>{_v(f'{p}/degraded/runs/{j}/end_ms', r.end_ms, 'ts')}</td><td><ul>"
        + "".join(
            f"<li>{_v(f'{p}/degraded/runs/{j}/reasons/{n}', why, 'text')}</li>"
            for n, why in enumerate(r.reasons)
        )
        + "</ul></td></tr>"
        for j, r in enumerate(d.degraded[:MAX_ROWS])
    )
    rs = d.restarts
    rp = f"{p}/restarts"
    restarts = (
        f"<p>{_v(rp + '/count', rs.count, 'int')} restart(s), "
        f"{_v(rp + '/unclean', rs.unclean, 'int')} after an unclean stop; agent down "
        f"{_v(rp + '/down_ms', rs.down_ms, 'dur')} in all; readings of a window in progress: "
        f"{_v(rp + '/recovered_readings', rs.recovered_readings, 'int')} recovered, "
        f"{_v(rp + '/unrecorded_readings', rs.unrecorded_readings, 'int')} lost (and "
        f"{_v(rp + '/unrecorded_unknown', rs.unrecorded_unknown, 'int')} restart(s) that could "
        f"not tell); {_v(rp + '/frames_unrecorded', rs.frames_unrecorded, 'int')} frame(s) "
        "the devices sent while the agent was not running; "
        f"{_v(rp + '/new_logs', rs.new_logs, 'int')} new log(s) begun beside an earlier "
        f"log's state; {_v(rp + '/starts_unsigned', rs.starts_unsigned, 'int')} more start(s) "
        "by the bootcount that signed nothing</p>"
    )
    events = "".join(
        f"<tr><td class='num'>{_v(f'{rp}/events/{j}/seq', ev.seq, 'int')}</td>"
        f"<td>{_v(f'{rp}/events/{j}/started_ms', ev.started_ms, 'ts')}</td>"
        f"<td>{_v(f'{rp}/events/{j}/last_end_ms', ev.last_end_ms, 'ts')}</td>"
        f"<td class='num'>{_v(f'{rp}/events/{j}/down_ms', ev.down_ms, 'dur')}</td>"
        f"<td>{'clean' if ev.clean else 'unclean'}</td>"
        f"<td class='num'>"
        f"{_v(f'{rp}/events/{j}/recovered_readings', ev.recovered_readings, 'int')}"
        f" / {_v(f'{rp}/events/{j}/unrecorded_readings', ev.unrecorded_readings, 'int')}</td><td>"
        + ", ".join(
            f"{_v(f'{rp}/events/{j}/no_data_ms/{_esc(s)}', None, 'key')} "
            f"{_v(f'{rp}/events/{j}/no_data_ms/{_esc(s)}', ms, 'dur')}"
            for s, ms in ev.no_data_ms.items()
        )
        + (
            f"<br>new log: {_v(f'{rp}/events/{j}/new_log', ev.new_log, 'text')} (previous: "
            f"{_v(f'{rp}/events/{j}/previous_log', ev.previous_log, 'text')})"
            if ev.new_log
            else ""
        )
        + "</td></tr>"
        for j, ev in enumerate(rs.events[:MAX_ROWS])
    )
    if events:
        restarts += (
            "<table><tr><th>seq</th><th>agent started</th><th>last window before</th>"
            "<th>down</th><th>stop</th><th>recovered / lost</th><th>no data per source</th>"
            f"</tr>{events}</table>"
        )
    changes = "".join(
        f"<tr><td>{_v(f'{p}/config_changes/{j}/start_ms', ch['start_ms'], 'ts')}</td>"
        f"<td class='num'>{_v(f'{p}/config_changes/{j}/seq', ch['seq'], 'int')}</td>"
        f"<td>{_v(f'{p}/config_changes/{j}/policy', ch['policy'], 'text')}</td>"
        f"<td><code>{_v(f'{p}/config_changes/{j}/digest', ch['digest'], 'text')}</code></td></tr>"
        for j, ch in enumerate(d.config_changes)
    )
    health = "".join(
        f"<tr><td>{_v(f'{p}/health/{_esc(k)}', None, 'key')}</td>"
        f"<td class='num'>{_v(f'{p}/health/{_esc(k)}', v, 'int')}</td></tr>"
        for k, v in sorted(d.health.items())
    )
    policies = ", ".join(_v(f"{p}/policies/{j}", x, "text") for j, x in enumerate(d.policies))
    cs = f"{p}/completeness/sources/"
    per_source = "".join(
        f"<li>{_v(cs + _esc(n), None, 'key')}: {_v(cs + _esc(n) + '/ratio', r, 'pct')} ("
        f"{_v(cs + _esc(n) + '/received', rx, 'int')} of "
        f"{_v(cs + _esc(n) + '/expected', exp, 'num')})</li>"
        for n, (rx, exp, r) in c.sources.items()
    )
    if per_source:
        per_source = f"; per source (the share is their mean):<ul>{per_source}</ul>"
    return f"""
<section>
<h2>Device {_v(p + "/device", d.device, "text")}</h2>
<p class="muted">log {_v(p + "/origin", d.origin, "text")} &middot; signed by
{_v(p + "/signer", d.signer, "text")}</p>
<table><tr><th>period</th>
<td>{_v(p + "/period_start_ms", d.period_start_ms, "ts")} &rarr;
{_v(p + "/period_end_ms", d.period_end_ms, "ts")}</td></tr>
<tr><th>attestations</th><td>{_v(p + "/attestations", d.attestations, "int")} (seq
{_v(p + "/first_seq", d.first_seq, "int")}..{_v(p + "/last_seq", d.last_seq, "int")}),
{_v(p + "/redelivered", d.redelivered, "int")} redelivered cop(ies) counted, not findings</td></tr>
<tr><th>readings</th><td>{_v(p + "/readings", d.readings, "int")} (Merkle log size
{_v(p + "/log_size", d.log_size, "int")})</td></tr>
<tr><th>data completeness</th><td>{_v(p + "/completeness/ratio", c.ratio, "pct")}:
{_v(p + "/completeness/received", c.received, "int")} received of
{_v(p + "/completeness/expected", c.expected, "num")} expected{per_source}</td></tr>
<tr><th>policy</th><td>{policies}</td></tr>
</table>
<h3>Rules</h3>
<table><tr><th>rule</th><th>readings evaluated</th><th>violated</th><th>windows violated</th>
<th>episodes</th><th>longest</th><th>not evaluable</th></tr>
{rules or "<tr><td colspan=7>no rules</td></tr>"}</table>
<h3>Violation episodes</h3>
<table><tr><th>rule</th><th>goal</th><th>from</th><th>to</th><th>duration</th><th>peak</th>
<th>seq</th></tr>
{eps or "<tr><td colspan=7>none</td></tr>"}</table>{_more(p + "/episodes", d.episodes)}
<h3>Data completeness</h3>
{_completeness_chart(i, d)}
<h3>Degraded evidence</h3>
<p>{_v(p + "/degraded/windows", d.degraded_windows, "int")} window(s) degraded</p>
<table><tr><th>seq</th><th>windows</th><th>from</th><th>to</th><th>why</th></tr>
{degraded or "<tr><td colspan=5>none</td></tr>"}</table>{_more(p + "/degraded/runs", d.degraded)}
{self_tests_html(p, d.self_tests, _v)}
<h3>Restarts</h3>
{restarts}
<h3>Risk over time</h3>
{_line_chart("risk score per model (from zero to one), one point per window", risk)}
<table><tr><th>model</th><th>windows scored</th><th>max</th><th>mean</th>
<th>windows with inputs outside the training range</th><th>execution provider</th></tr>
{ood or "<tr><td colspan=6>no models</td></tr>"}</table>
<h3>Configuration changes</h3>
<table><tr><th>from</th><th>seq</th><th>policy</th><th>digest</th></tr>{changes}</table>
<h3>Data quality counters</h3>
<table><tr><th>counter</th><th>sum over the period</th></tr>{health}</table>
</section>"""


def _risk_row(p: str, k: dict[str, Any]) -> str:
    providers = ", ".join(_v(f"{p}/providers/{n}", v, "text") for n, v in enumerate(k["providers"]))
    ood, unknown = "out_of_distribution_windows", "ood_not_assessed_windows"
    return (
        f"<tr><td>{_v(p, None, 'key')}</td>"
        f"<td class='num'>{_v(p + '/scored_windows', k['scored_windows'], 'int')}</td>"
        f"<td class='num'>{_v(p + '/max', k['max'], 'num')}</td>"
        f"<td class='num'>{_v(p + '/mean', k['mean'], 'num')}</td>"
        f"<td class='num'>{_v(f'{p}/{ood}', k[ood], 'int')}"
        f" (not assessed in {_v(f'{p}/{unknown}', k[unknown], 'int')})"
        f"</td><td>{providers}</td></tr>"
    )


def _esc(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _governance(a: Analysis) -> str:
    """Deviations and explanations, calibration cover, evidence-quality scores."""
    g = a.governance
    if g is None:
        return ""
    gp = "/governance"
    counts = g.counts()
    rows = []
    for j, d in enumerate(g.deviations[:MAX_ROWS]):
        p = _ptr("governance", "deviations", "items", j)
        ex = d.explanation
        if ex is None:
            said = "<span class='muted'>no explanation</span>"
        else:
            said = (
                f"by {_v(p + '/explanation/signer', ex.signer, 'text')} "
                f"({_v(p + '/explanation/role', ex.role, 'text')}) at "
                f"{_v(p + '/explanation/signed_ms', ex.signed_ms, 'ts')}"
                + (" <b>after the deadline</b>" if d.late else "")
                + f"<br>cause: {_v(p + '/explanation/cause', ex.cause, 'text')}"
                f"<br>action: {_v(p + '/explanation/action', ex.action, 'text')}"
                f"<br>product: {_v(p + '/explanation/disposition', ex.disposition, 'text')}"
                + (f"<br>{_v(p + '/explanation/text', ex.text, 'text')}" if ex.text else "")
            )
        status = "met" if d.status == "explained" else (
            "not-quality-assured" if d.status == "awaiting explanation" else "violated"
        )  # fmt: skip
        rows.append(
            f"<tr><td><code>{_v(p + '/id', d.id, 'text')}</code></td>"
            f"<td>{_v(p + '/goal', d.goal, 'text')}</td>"
            f"<td>{_v(p + '/start_ms', d.start_ms, 'ts')}</td>"
            f"<td>{_v(p + '/due_ms', d.due_ms, 'ts') if d.due_ms is not None else 'none set'}</td>"
            f"<td>{_v(p + '/status', d.status, 'text', 'status ' + status)}</td>"
            f"<td>{said}</td></tr>"
        )
    devs = "".join(rows) or "<tr><td colspan=6>no violation episode in the evidence</td></tr>"
    cal = (
        "".join(
            f"<tr><td>{_v(f'{gp}/calibration/channels/{j}/device', c.device, 'text')}</td>"
            f"<td>{_v(f'{gp}/calibration/channels/{j}/channel', c.channel, 'text')}</td>"
            f"<td>{_v(f'{gp}/calibration/channels/{j}/status', c.status, 'text')}</td>"
            f"<td class='num'>{_v(f'{gp}/calibration/channels/{j}/covered', c.covered, 'int')} of "
            f"{_v(f'{gp}/calibration/channels/{j}/windows', c.windows, 'int')}</td>"
            f"<td>{_v(f'{gp}/calibration/channels/{j}/detail', c.detail, 'text')}</td></tr>"
            for j, c in enumerate(g.calibration)
        )
        or "<tr><td colspan=5>no channel requires a calibration certificate</td></tr>"
    )
    certs = "".join(
        f"<tr><td>{_v(f'{gp}/calibration/certificates/{j}/certificate', c.certificate, 'text')}"
        f"</td><td>{_v(f'{gp}/calibration/certificates/{j}/device', c.device, 'text')}</td>"
        f"<td>{_v(f'{gp}/calibration/certificates/{j}/channel', c.channel, 'text')}</td>"
        f"<td>{_v(f'{gp}/calibration/certificates/{j}/sensor', c.sensor, 'text')}</td>"
        f"<td>{_v(f'{gp}/calibration/certificates/{j}/valid_from_ms', c.valid_from_ms, 'ts')}"
        f" .. {_v(f'{gp}/calibration/certificates/{j}/valid_until_ms', c.valid_until_ms, 'ts')}"
        f"</td><td>{_v(f'{gp}/calibration/certificates/{j}/issuer', c.issuer, 'text')}</td></tr>"
        for j, c in enumerate(g.certificates)
    )
    scores = []
    for j, sc in enumerate(a.scores()):
        p = _ptr("governance", "scores", j)
        terms = "".join(
            f"<tr><td>{_v(f'{p}/terms/{k}/term', t.name, 'text')}</td>"
            f"<td class='num'>{_v(f'{p}/terms/{k}/value', t.value, 'pct')}</td>"
            f"<td class='num'>{_v(f'{p}/terms/{k}/weight', t.weight, 'int')}</td>"
            f"<td class='num'>{_v(f'{p}/terms/{k}/points', t.points, 'num')}</td>"
            f"<td>{_v(f'{p}/terms/{k}/basis', t.basis, 'text')}</td></tr>"
            for k, t in enumerate(sc.terms)
        )
        scores.append(
            f"<h3>{_v(p + '/device', sc.device, 'text')}: "
            f"{_v(p + '/score', sc.score, 'num')} points of a hundred</h3><table><tr><th>term</th>"
            f"<th>value</th><th>weight</th><th>points</th><th>from</th></tr>{terms}</table>"
        )
    return (
        "<h2>Governance</h2>"
        f"<p>as of {_v(gp + '/as_of_ms', g.as_of_ms, 'ts')}: "
        f"{_v(gp + '/statements', g.statements, 'int')} signed statement(s) given, "
        f"{_v(gp + '/statements_refused', len(g.findings), 'int')} refused (see findings)</p>"
        "<h3>Deviations: "
        + ", ".join(
            f"{_v(_ptr('governance', 'deviations', 'counts', k), n, 'int')} {k}"
            for k, n in counts.items()
        )
        + "</h3>"
        "<table><tr><th>deviation</th><th>goal</th><th>start</th><th>explain by</th>"
        f"<th>status</th><th>explanation</th></tr>{devs}</table>"
        f"{_more(gp + '/deviations/items', g.deviations)}"
        "<h3>Calibration</h3><table><tr><th>device</th><th>channel</th><th>status</th>"
        f"<th>windows covered</th><th>detail</th></tr>{cal}</table>"
        + (
            "<table><tr><th>certificate</th><th>device</th><th>channel</th><th>sensor</th>"
            f"<th>valid</th><th>issuer</th></tr>{certs}</table>"
            if certs
            else ""
        )
        + "<h3>Evidence-quality score</h3>"
        + "".join(scores)
    )


def _disclosure(a: Analysis) -> str:
    """What each export bundle given discloses (``agent.audit.bundle``)."""
    if not a.disclosure:
        return ""
    parts = ["<h2>Disclosure bundles</h2>"]
    for j, b in enumerate(a.disclosure):
        p = _ptr("disclosure", j)
        rows = []
        for k, d in enumerate(b["devices"]):
            q = f"{p}/devices/{k}/"
            rows.append(
                f"<tr><td>{_v(q + 'device', d['device'], 'text')}</td><td class='num'>"
                f"{_v(q + 'first_seq', d['first_seq'], 'int')} .. "
                f"{_v(q + 'last_seq', d['last_seq'], 'int')}</td><td class='num'>"
                f"{_v(q + 'readings_disclosed', d['readings_disclosed'], 'int')} of "
                f"{_v(q + 'readings_in_windows', d['readings_in_windows'], 'int')}</td>"
                f"<td class='num'>{_v(q + 'log_size', d['log_size'], 'int')}</td></tr>"
            )
        parts.append(
            f"<p>bundle <code>{_v(p + '/bundle', b['bundle'], 'text')}</code>, site "
            f"{_v(p + '/site', b['site'], 'text')}, period {_v(p + '/from', b['from'], 'text')}"
            f" .. {_v(p + '/until', b['until'], 'text')}; exported by "
            f"{_v(p + '/exported_by', b['exported_by'], 'text')} at "
            f"{_v(p + '/exported_at', b['exported_at'], 'text')} (the manifest is an index, "
            "unsigned: everything it lists is signed)</p><table><tr><th>device</th>"
            "<th>windows (seq)</th><th>readings disclosed</th><th>Merkle log size</th></tr>"
            f"{''.join(rows)}</table>"
        )
    return "".join(parts)


def render_html(res: Analysis | AuditResult, title: str = "edgegov audit report") -> str:
    """The report as one HTML document (UTF-8 text); an :class:`AuditResult` is analysed
    without a policy."""
    a = res if isinstance(res, Analysis) else res.analysis
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="meta">generated {now} by edgegov {_e(__version__)}</p>
<h2>Findings</h2>
{_findings(a)}
<h2>Evidence: <span class="verdict {a.evidence}">{_v("/evidence", a.evidence, "text")}</span></h2>
<p>{_v("/files", a.files, "int")} message(s) checked, {_v("/verified", a.verified, "int")}
signature(s) valid: {_v("/attestations", a.attestations, "int")} distinct attestation(s),
{_v("/redelivered", a.redelivered, "int")} redelivered cop(ies) counted, not findings;
{_v("/findings", a.findings, "count")} finding(s); {_v("/devices", a.devices, "count")}
device log(s)</p>
<h2>Compliance</h2>
{_compliance(a)}
{_governance(a)}
{_disclosure(a)}
{"".join(_device(i, d) for i, d in enumerate(a.devices))}
</body></html>
"""
