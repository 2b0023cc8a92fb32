"""Plain-text rendering of an audit, for people reading a terminal.

Findings first, then the two verdicts (evidence integrity; compliance per goal or rule),
then what each device's evidence says. Every number comes from the
:class:`~agent.audit.analysis.Analysis` (the JSON shows the same ones).
"""

from __future__ import annotations

from agent.audit._format import dur, pct, ts
from agent.audit.analysis import Analysis, DeviceAnalysis
from agent.audit.self_tests_view import self_tests_text
from agent.audit.verify import AuditResult
from agent.governance.text import governance_lines

__all__ = ["format_result"]

#: episodes, degraded runs and restarts listed per device before "... and N more"
MAX_LISTED = 10

# What each health counter means, in a reader's words (docs/attestation-profile.md).
HEALTH_WORDS = {
    "crc_errors": "frames with a bad CRC (dropped)",
    "framing_errors": "malformed frames (dropped)",
    "unknown_types": "frames of an unknown type",
    "version_errors": "frames of an unknown protocol version",
    "bytes_discarded": "line bytes not part of a valid frame",
    "seq_gaps": "sequence gaps",
    "frames_missed": "frames missing in those gaps",
    "frames_unrecorded": "frames the device sent while the agent was not running",
    "reboots": "device reboots",
    "offline_ms": "ms with a serial port unavailable (in the windows)",
    "data_before_hello": "readings before the device announced its channels (not used)",
    "unknown_channels": "device channels the policy does not know",
    "readings_out_of_range": "readings outside a channel's valid range (not used)",
    "out_of_range": "values outside the device's declared range",
    "readings_shed": "raw readings deleted to stay within the disk quota (no longer provable)",
    "readings_shed_overload": "readings shed: the agent could not keep up with the source",
    "resyncs": "resynchronisations after line noise",
    "duplicates": "duplicate frames (ignored)",
    "seq_resets": "sequence restarts without a HELLO",
    "quarantined": "readings withheld: device schema does not match the config",
    "samples_ok": "samples decoded",
    "lines_ok": "text lines parsed",
    "parse_errors": "text lines that did not parse",
    "bad_values": "text values that are not numbers",
    "missing_fields": "text lines missing a configured field",
    "unknown_fields": "text fields not in the configured schema",
    "overlong_lines": "text lines over the length limit (dropped)",
    "polls_ok": "Modbus polls answered",
    "poll_timeouts": "Modbus polls with no answer",
    "poll_errors": "Modbus polls answered with an error",
}
_NOT_PROBLEMS = {"frames_ok", "samples_ok", "lines_ok", "polls_ok"}


def format_result(res: Analysis | AuditResult) -> str:
    """The audit as text (an :class:`AuditResult` is analysed without a policy)."""
    a = res if isinstance(res, Analysis) else res.analysis
    lines: list[str] = []
    if a.findings:
        lines.append(f"FINDINGS ({len(a.findings)}):")
        lines.extend(f"  {f}" for f in a.findings)
        lines.append("")
    copies = (
        f", {a.redelivered} redelivered cop(ies) counted, not findings" if a.redelivered else ""
    )
    lines.append(
        f"checked {a.files} message(s): {a.verified} signature(s) valid, "
        f"{a.attestations} distinct attestation(s){copies}"
    )
    if a.intact:
        lines.append(
            "evidence:   INTACT - every signature valid, every chain complete and in order"
        )
    elif a.verified == 0 and not a.findings:
        lines.append("evidence:   FINDINGS - no attestations found")
    else:
        lines.append(f"evidence:   FINDINGS ({len(a.findings)}) - listed above")
    lines.extend(_compliance(a))
    lines.extend(governance_lines(a))
    if a.disclosure:  # an export bundle: what it discloses
        from agent.audit.bundle import disclosure_lines

        lines.extend(disclosure_lines(a.disclosure))
    for d in a.devices:
        lines.append("")
        lines.extend(_device(d))
    return "\n".join(lines)


def _compliance(a: Analysis) -> list[str]:
    if a.scope == "goals" and a.policy is not None:
        p = a.policy
        head = f"compliance: per goal of policy {p['id']} v{p['version']} ({p['digest'][:16]})"
        if p["windows_other_policy"]:
            head += f"; {p['windows_other_policy']} window(s) under another policy not judged"
    else:
        head = "compliance: per rule (goals, owners, clauses and data thresholds need --policy)"
    out = [head]
    width = max([len(c.id) for c in a.compliance] or [0])
    for c in a.compliance:
        out.append(f"  {c.kind} {c.id:<{width}}  {c.status.upper():<19}  {c.reason}")
        if c.kind == "goal":
            out.append(
                f"  {'':<{width + 5}}  owner: {c.stakeholder}; clause: {c.source}; "
                f"rules: {', '.join(c.rules) or 'none'}"
                + (
                    f"; minimum completeness {pct(c.min_completeness)}"
                    if c.min_completeness is not None
                    else ""
                )
            )
    if not a.compliance:
        out.append("  nothing to judge: no verified attestation")
    return out


def _device(d: DeviceAnalysis) -> list[str]:
    lines = [f"device {d.device}  (log {d.origin})", f"  signed by      {d.signer}"]
    copies = f", {d.redelivered} redelivered" if d.redelivered else ""
    lines.append(f"  attestations   {d.attestations}  (seq {d.first_seq}..{d.last_seq}{copies})")
    lines.append(f"  period         {ts(d.period_start_ms)} -> {ts(d.period_end_ms)}")
    lines.append(f"  readings       {d.readings}  (Merkle log size {d.log_size})")
    c = d.completeness
    per = [f"{n} {pct(r)} ({rx} of {exp:.0f})" for n, (rx, exp, r) in c.sources.items()]
    lines.append(
        f"  completeness   {pct(c.ratio)}  "
        + (
            f"(mean over sources: {', '.join(per)})"
            if len(per) > 1
            else f"({c.received} of {c.expected:.0f} expected, counted as the source counts: "
            "frames, lines or polls)"
        )
    )
    lines.append(f"  policy         {', '.join(d.policies)}")
    width = max([len(x) for x in [*d.rules, *d.risk]] or [0])
    for rule, agg in d.rules.items():
        lines.append(
            f"  rule {rule:<{width}}  {agg['violated']:>6} of {agg['evaluated']:>6} readings "
            f"violated, in {agg['windows_violated']} window(s)"
            + (f"; {agg['episodes']} episode(s)" if agg["episodes"] else "")
            + (f", longest {dur(agg['longest_episode_ms'])}" if agg["longest_episode_ms"] else "")
            + (f"; {agg['errors']} not evaluable" if agg["errors"] else "")
        )
    for e in d.episodes[:MAX_LISTED]:
        span = (
            f"{ts(e.start_ms)} -> {ts(e.end_ms)}  ({dur(e.duration_ms)})"
            if e.end_ms is not None
            else f"{ts(e.start_ms)} -> open when last reported, at {ts(e.open_at_ms)}"
        )
        peak = "" if e.peak is None else f", peak {e.peak:g}"
        lines.append(f"  episode        {e.rule}: {span}{peak}")
    if len(d.episodes) > MAX_LISTED:
        lines.append(f"                 ... and {len(d.episodes) - MAX_LISTED} more (see --json)")
    for model, k in d.risk.items():
        if k["scored_windows"]:
            lines.append(
                f"  risk {model:<{width}}  max {k['max']:.3f}, mean {k['mean']:.3f} over "
                f"{k['scored_windows']} window(s) ({', '.join(k['providers'])})"
            )
            if k["out_of_distribution_windows"]:
                lines.append(
                    f"  {'':<{width + 5}}  inputs outside the training range in "
                    f"{k['out_of_distribution_windows']} window(s): scores there are "
                    "extrapolations"
                )
            if k["ood_not_assessed_windows"]:
                lines.append(
                    f"  {'':<{width + 5}}  training range not known (model carries none): "
                    "out-of-distribution not assessed"
                )
        else:
            lines.append(f"  risk {model:<{width}}  not scored")
    if d.degraded_windows:
        lines.append(f"  degraded       {d.degraded_windows} window(s):")
        for run in d.degraded[:MAX_LISTED]:
            lines.append(
                f"                 seq {run.first_seq}..{run.last_seq} ({run.windows} window(s), "
                f"{ts(run.start_ms)} -> {ts(run.end_ms)}): {'; '.join(run.reasons)}"
            )
        if len(d.degraded) > MAX_LISTED:
            lines.append(f"                 ... and {len(d.degraded) - MAX_LISTED} more runs")
    rs = d.restarts
    if rs.count or rs.frames_unrecorded:
        unknown = (
            f" (+ {rs.unrecorded_unknown} restart(s) that could not say)"
            if (rs.unrecorded_unknown)
            else ""
        )
        new_logs = f", {rs.new_logs} new log(s)" if rs.new_logs else ""
        silent = (
            f"; {rs.starts_unsigned} more start(s) by the bootcount signed nothing"
            if rs.starts_unsigned
            else ""
        )
        lines.append(
            f"  restarts       {rs.count} ({rs.unclean} unclean{new_logs}), agent down "
            f"{dur(rs.down_ms)}, {rs.recovered_readings} reading(s) recovered, "
            f"{rs.unrecorded_readings} of a window in progress lost{unknown}, "
            f"{rs.frames_unrecorded} frame(s) sent while down{silent}"
        )
        for ev in rs.events[:MAX_LISTED]:
            dark = ", ".join(f"{s} {dur(ms)}" for s, ms in ev.no_data_ms.items())
            if ev.new_log:
                lines.append(
                    f"                 seq {ev.seq}: NEW LOG started {ts(ev.started_ms)}: "
                    f"{ev.new_log} (previous log: {ev.previous_log}; its end is not known here)"
                )
                continue
            stop = "clean" if ev.clean else "unclean"
            lines.append(
                f"                 seq {ev.seq}: started {ts(ev.started_ms)}, "
                f"down {dur(ev.down_ms)}, {stop} stop; no data: {dark or '-'}"
            )
    lines.extend(self_tests_text(d.self_tests))
    known = [k for k in HEALTH_WORDS if k in d.health]
    problems = [
        f"{d.health[key]} {HEALTH_WORDS.get(key, key)}"
        for key in known + sorted(set(d.health) - set(known))
        if d.health[key] and key not in _NOT_PROBLEMS
    ]
    lines.append(f"  data quality   {problems[0] if problems else 'no problem counted'}")
    lines.extend(f"                 {p}" for p in problems[1:])
    return lines
