"""Plain-text rendering of an audit result, for people reading a terminal."""

from __future__ import annotations

from datetime import datetime, timezone

from agent.audit.verify import AuditResult

__all__ = ["format_result"]


def _ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# What each health counter means, in a reader's words (docs/attestation-profile.md).
HEALTH_WORDS = {
    "crc_errors": "frames with a bad CRC (dropped)",
    "framing_errors": "malformed frames (dropped)",
    "unknown_types": "frames of an unknown type",
    "version_errors": "frames of an unknown protocol version",
    "bytes_discarded": "line bytes not part of a valid frame",
    "seq_gaps": "sequence gaps",
    "frames_missed": "frames missing in those gaps",
    "reboots": "device reboots",
    "offline_ms": "ms with the serial port unavailable",
    "data_before_hello": "readings before the device announced its channels (not used)",
    "unknown_channels": "device channels the policy does not know",
    "readings_out_of_range": "readings outside a channel's valid range (not used)",
    "out_of_range": "values outside the device's declared range",
    "readings_shed": "raw readings deleted to stay within the disk quota (no longer provable)",
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
        width = max([len(x) for x in [*d.rules, *d.risk]] or [0])
        for rule, r in d.rules.items():
            lines.append(
                f"  rule {rule:<{width}}  {r['violated']:>6} of {r['evaluated']:>6} readings "
                f"violated, in {r['windows_violated']} window(s)"
                + (
                    f"; {r['episodes']} episode(s), longest {r['longest_episode_ms'] / 1000:g} s"
                    if r.get("episodes")
                    else ""
                )
                + (
                    f"; still violated at the end (since {_ts(d.open_episodes[rule])})"
                    if rule in d.open_episodes
                    else ""
                )
                + (f"; {r['errors']} not evaluable" if r["errors"] else "")
            )
        for model, k in d.risk.items():
            if k["scored_windows"]:
                lines.append(
                    f"  risk {model:<{width}}  max {k['max']:.3f}, mean {k['mean']:.3f} over "
                    f"{k['scored_windows']} window(s) ({', '.join(k['providers'])})"
                )
                if k.get("out_of_distribution_windows"):
                    lines.append(
                        f"  {'':<{width + 5}}  inputs outside the training range in "
                        f"{k['out_of_distribution_windows']} window(s): scores there are "
                        "extrapolations"
                    )
                if k.get("ood_not_assessed_windows"):
                    lines.append(
                        f"  {'':<{width + 5}}  training range not known (model carries none): "
                        "out-of-distribution not assessed"
                    )
            else:
                lines.append(f"  risk {model:<{width}}  not scored")
        lines.append(f"  data quality   {d.health.get('frames_ok', 0)} frames ok")
        known = [k for k in HEALTH_WORDS if k in d.health]
        for key in known + sorted(set(d.health) - set(known)):
            v = d.health[key]
            if v and key not in _NOT_PROBLEMS:
                lines.append(f"                 {v} {HEALTH_WORDS.get(key, key)}")
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
