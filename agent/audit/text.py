"""Plain-text rendering of an audit result, for people reading a terminal."""

from __future__ import annotations

from datetime import datetime, timezone

from agent.audit.verify import AuditResult

__all__ = ["format_result"]


def _ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_result(res: AuditResult) -> str:
    lines = [f"checked {res.files} file(s): {res.verified} signature(s) valid"]
    for d in res.devices:
        lines.append("")
        lines.append(f"device {d.device}  (log {d.origin})")
        lines.append(f"  signed by      {d.signer}")
        lines.append(f"  attestations   {d.attestations}  (seq {d.first_seq}..{d.last_seq})")
        lines.append(f"  period         {_ts(d.period_start_ms)} -> {_ts(d.period_end_ms)}")
        lines.append(f"  readings       {d.readings}  (Merkle log size {d.log_size})")
        lines.append(f"  policy         {', '.join(d.policies)}")
        for rule, r in d.rules.items():
            lines.append(f"  rule {rule:<20} {r['violated']:>6} of {r['evaluated']:>6} readings "
                         f"violated, in {r['windows_violated']} window(s)"
                         + (f"; {r['errors']} not evaluable" if r["errors"] else ""))
        for model, k in d.risk.items():
            if k["scored_windows"]:
                lines.append(f"  risk {model:<20} max {k['max']:.3f}, mean {k['mean']:.3f} over "
                             f"{k['scored_windows']} window(s) ({', '.join(k['providers'])})")
            else:
                lines.append(f"  risk {model:<20} not scored")
        bad = {k: v for k, v in d.health.items() if v and k != "frames_ok"}
        lines.append(f"  data quality   {d.health.get('frames_ok', 0)} frames ok"
                     + ("; " + ", ".join(f"{k} {v}" for k, v in sorted(bad.items())) if bad else ""))
        if d.degraded_windows:
            lines.append(f"  degraded       {d.degraded_windows} window(s) (see --json)")
    lines.append("")
    if res.findings:
        lines.append(f"FINDINGS ({len(res.findings)}):")
        lines.extend(f"  {f}" for f in res.findings)
        lines.append("verdict: FAIL")
    elif res.verified == 0:
        lines.append("verdict: FAIL (no attestations found)")
    else:
        lines.append("verdict: PASS - every signature valid, chain complete and in order")
    return "\n".join(lines)
