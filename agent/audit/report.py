"""`edgegov audit report --html`: one self-contained HTML file, charts as inline SVG.

No scripts, no external fonts, styles or images: it opens offline in any
browser and prints. Per device: verdict, period, goals (rules) met or not,
violation episodes with durations, risk over time, data completeness, config
changes; then every finding.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from agent import __version__
from agent.audit.verify import AuditResult, DeviceReport

__all__ = ["render_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;
color:#1d2733;padding:0 1em}
h1{font-size:1.6em;margin:.2em 0}
h2{border-bottom:2px solid #d7dee6;padding-bottom:.2em;margin-top:2em}
.verdict{display:inline-block;padding:.25em .8em;border-radius:4px;color:#fff;font-weight:600}
.pass{background:#1f8a4c}.fail{background:#c0392b}
table{border-collapse:collapse;margin:.6em 0;width:100%}
td,th{border:1px solid #d7dee6;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f2f5f8}.num{text-align:right;font-variant-numeric:tabular-nums}
.met{color:#1f8a4c;font-weight:600}.notmet{color:#c0392b;font-weight:600}
figure{margin:1em 0}figcaption{font-size:.9em;color:#52606d}
svg text{font:11px system-ui,sans-serif;fill:#52606d}
.muted{color:#52606d}
"""

_COLORS = ("#2c6fbb", "#d35400", "#8e44ad", "#16a085", "#c0392b")


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dur(ms: int) -> str:
    s = ms // 1000
    return (
        f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"
        if s >= 3600
        else (f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{ms / 1000:.1f} s")
    )


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
        f"<text x='{pad}' y='{h - 12}'>{_e(_ts(t0))}</text>",
        f"<text x='{w - pad}' y='{h - 12}' text-anchor='end'>{_e(_ts(t1))}</text>",
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


def _bar_chart(title: str, bars: Sequence[tuple[int, float]]) -> str:
    """Bars of a 0..1 fraction per window (data completeness)."""
    w, h, pad = 1000, 160, 40
    if not bars:
        return f"<p class='muted'>{_e(title)}: no data</p>"
    bw = (w - 2 * pad) / len(bars)
    parts = [
        f"<svg role='img' aria-label='{_e(title)}' viewBox='0 0 {w} {h}' width='100%' "
        f"xmlns='http://www.w3.org/2000/svg'>",
        f"<rect x='0' y='0' width='{w}' height='{h}' fill='#fff'/>",
        f"<text x='{pad - 6}' y='{pad + 4}' text-anchor='end'>100%</text>",
        f"<text x='{pad - 6}' y='{h - pad + 4}' text-anchor='end'>0</text>",
    ]
    for i, (_, frac) in enumerate(bars):
        bh = (h - 2 * pad) * max(0.0, min(frac, 1.0))
        color = "#1f8a4c" if frac >= 0.999 else "#e67e22" if frac >= 0.9 else "#c0392b"
        parts.append(
            f"<rect x='{pad + i * bw:.1f}' y='{h - pad - bh:.1f}' width='{max(bw - 1, 1):.1f}' "
            f"height='{bh:.1f}' fill='{color}'/>"
        )
    parts.append(
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='#9aa5b1'/>"
    )
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{_e(title)}</figcaption></figure>"


def _episodes(d: DeviceReport) -> list[dict[str, Any]]:
    """Runs of consecutive windows in which a rule was violated."""
    out: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    for w in d.timeline:
        for rule in list(open_):
            if rule not in w["violated"]:
                out.append(open_.pop(rule))
        for rule, n in w["violated"].items():
            ep = open_.setdefault(
                rule, {"rule": rule, "start": w["start_ms"], "end": w["end_ms"], "readings": 0}
            )
            ep["end"] = w["end_ms"]
            ep["readings"] += n
    out.extend(open_.values())
    return sorted(out, key=lambda e: (e["start"], e["rule"]))


def _device(d: DeviceReport, res: AuditResult) -> str:
    findings = [f for f in res.findings if f.device == d.device]
    rows = []
    for rule, r in sorted(d.rules.items()):
        met = r["violated"] == 0
        rows.append(
            f"<tr><td>{_e(rule)}</td><td class='{'met' if met else 'notmet'}'>"
            f"{'met' if met else 'NOT met'}</td><td class='num'>{r['evaluated']}</td>"
            f"<td class='num'>{r['violated']}</td><td class='num'>{r['windows_violated']}</td></tr>"
        )
    eps = _episodes(d)
    ep_rows = "".join(
        f"<tr><td>{_e(e['rule'])}</td><td>{_e(_ts(e['start']))}</td><td>{_e(_ts(e['end']))}</td>"
        f"<td class='num'>{_e(_dur(e['end'] - e['start']))}</td>"
        f"<td class='num'>{e['readings']}</td></tr>"
        for e in eps
    )
    risk: dict[str, list[tuple[int, float | None]]] = {}
    for w in d.timeline:
        for model, score in w["risk"].items():
            risk.setdefault(model, []).append((w["end_ms"], score))
    complete = []
    for w in d.timeline:
        total = w["frames_ok"] + w["frame_problems"]
        span = max(w["end_ms"] - w["start_ms"], 1)
        frac = (w["frames_ok"] / total if total else (1.0 if w["readings"] else 0.0)) * (
            1 - min(w["offline_ms"] / span, 1.0)
        )
        complete.append((w["end_ms"], frac))
    changes = []
    last = None
    for w in d.timeline:
        if w["policy_digest"] != last:
            changes.append(
                f"<tr><td>{_e(_ts(w['start_ms']))}</td><td class='num'>{w['seq']}</td>"
                f"<td>{_e(w['policy'])}</td><td><code>{_e(w['policy_digest'][:16])}</code></td></tr>"
            )
            last = w["policy_digest"]
    ood_rows = "".join(
        f"<tr><td>{_e(m)}</td><td class='num'>{k['scored_windows']}</td><td class='num'>"
        + (
            "not assessed (the model has no training ranges)"
            if k.get("ood_not_assessed_windows")
            else str(k.get("out_of_distribution_windows", 0))
        )
        + f"</td><td>{_e(', '.join(k['providers']))}</td></tr>"
        for m, k in d.risk.items()
    )
    verdict = "pass" if not findings else "fail"
    return f"""
<section>
<h2>Device {_e(d.device)} <span class="verdict {verdict}">{verdict.upper()}</span></h2>
<p class="muted">log {_e(d.origin)} &middot; signed by {_e(d.signer)}</p>
<table><tr><th>period</th>
<td>{_e(_ts(d.period_start_ms))} &rarr; {_e(_ts(d.period_end_ms))}</td></tr>
<tr><th>attestations</th><td>{d.attestations} (seq {d.first_seq}..{d.last_seq})</td></tr>
<tr><th>readings</th><td>{d.readings} (Merkle log size {d.log_size})</td></tr>
<tr><th>policy</th><td>{_e(", ".join(d.policies))}</td></tr></table>
<h3>Goals</h3>
<table><tr><th>rule</th><th>goal</th><th>evaluated</th><th>violated</th><th>windows</th></tr>
{"".join(rows) or "<tr><td colspan=5>no rules</td></tr>"}</table>
<h3>Violation episodes</h3>
<table><tr><th>rule</th><th>from</th><th>to</th><th>duration</th><th>readings</th></tr>
{ep_rows or "<tr><td colspan=5>none</td></tr>"}</table>
<h3>Risk over time</h3>
{_line_chart("risk score per model (0..1), one point per window", risk)}
<table><tr><th>model</th><th>windows scored</th>
<th>of them with inputs outside the training range</th><th>execution provider</th></tr>
{ood_rows or "<tr><td colspan=4>no models</td></tr>"}</table>
<h3>Data completeness</h3>
{_bar_chart("share of frames received intact and time online, per window", complete)}
<h3>Configuration changes</h3>
<table><tr><th>from</th><th>seq</th><th>policy</th><th>digest</th></tr>{"".join(changes)}</table>
</section>"""


def render_html(res: AuditResult, title: str = "edgegov audit report") -> str:
    """The report as one HTML document (UTF-8 text)."""
    findings = "".join(
        f"<tr><td>{_e(f.device)}</td><td class='num'>{'' if f.seq is None else f.seq}</td>"
        f"<td><code>{_e(f.kind)}</code></td><td>{_e(f.detail)}</td><td>{_e(f.file)}</td></tr>"
        for f in res.findings
    )
    verdict = "pass" if res.ok else "fail"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p><span class="verdict {verdict}">{verdict.upper()}</span>
{res.verified} of {res.files} attestation(s) verified &middot; {len(res.devices)} device log(s)
&middot; {len(res.findings)} finding(s) &middot; generated {now} by edgegov {_e(__version__)}</p>
{"".join(_device(d, res) for d in res.devices)}
<h2>Findings</h2>
<table><tr><th>device</th><th>seq</th><th>kind</th><th>detail</th><th>source</th></tr>
{findings or "<tr><td colspan=5>none: every signature valid, every chain complete</td></tr>"}
</table>
</body></html>
"""
