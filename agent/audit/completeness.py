"""Data completeness: readings received against readings expected, defined once.

The auditor's tools (``audit verify``, its JSON, the HTML report, goal thresholds) all
read completeness from here; ``docs/attestation-profile.md`` ("Data completeness")
states the same definition. It is counted per source record of a window's health
claim (-70001/8 ``sources``), in the unit the source's protocol counts in:

========  ===========  ===========================================================
protocol  received     expected
========  ===========  ===========================================================
framed    frames_ok    frames_ok + frames_missed + frames_unrecorded
text      lines_ok     lines_ok + parse_errors + overlong_lines + rate x dark time
modbus    polls_ok     polls_ok + poll_timeouts + poll_errors + rate x dark time
========  ===========  ===========================================================

*Framed* devices number their frames, so what they sent and we did not record is
counted exactly: frames lost on the line or while the port was away (``frames_missed``,
from the gaps the next frame reveals) and frames sent while the agent was not running
(``frames_unrecorded``). *Text* and *Modbus* sources have no such counter: the time
they could not be read -- ``offline_ms`` in the window, and at an agent restart the
source's ``no_data_ms`` (claim -70001/12) -- is "dark", and what they would have sent
then is estimated at the rate they delivered (lines or polls attempted) while online
over the whole period audited. A text line that yielded a reading counts as received
even when one of its fields was bad or missing (the channel is then NaN: the policy's
own ``completeness(channel, d)`` function and the rules' error counts see that).

A source's completeness is received / expected. When nothing is expected (0 of 0), it
is 0 if the source was dark for some of the time -- a sensor that is not there delivered
none of what it would have -- and undefined (None) otherwise: nothing was sent, and
nothing is known to be missing. A window's (or a period's) completeness is the mean over
its sources of theirs (undefined ones left out), so a dead sensor beside a good one
shows as 50 %, not hidden by the other's traffic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["KINDS", "Completeness", "WindowSources", "completeness", "measure", "protocol_of"]

#: protocol -> (the counter of what was received, the counters of what was not)
KINDS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "framed": ("frames_ok", ("frames_missed", "frames_unrecorded")),
    "text": ("lines_ok", ("parse_errors", "overlong_lines")),
    "modbus": ("polls_ok", ("poll_timeouts", "poll_errors")),
}


def protocol_of(record: Mapping[str, Any]) -> str | None:
    """A record's protocol, or the one its counters belong to (window totals of old evidence)."""
    proto = record.get("protocol")
    if type(proto) is str and proto in KINDS:
        return proto
    for kind, (ok, _) in KINDS.items():
        if ok in record:
            return kind
    return None


def completeness(received: float, expected: float, dark_ms: int) -> float | None:
    """``received / expected``; for 0 of 0, 0.0 if there was dark time, else None."""
    if expected > 0:
        return min(received / expected, 1.0)
    return 0.0 if dark_ms > 0 else None


class Completeness(NamedTuple):
    """Readings received and expected (in each source's unit), per source and in all, and
    the share: the mean of the sources' own shares (None: none is defined)."""

    received: int
    expected: float
    ratio: float | None
    sources: Mapping[str, tuple[int, float, float | None]]  # name -> received, expected, ratio

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "expected": round(self.expected, 3),
            "ratio": _round(self.ratio),
            "sources": {
                name: {"received": rx, "expected": round(exp, 3), "ratio": _round(r)}
                for name, (rx, exp, r) in self.sources.items()
            },
        }


class WindowSources(NamedTuple):
    """What :func:`measure` reads of one window: its length, its source records (the
    health claim's ``sources``, or the window totals when it has none) and, when the
    window states a restart, each source's time without data before it."""

    span_ms: int
    records: Sequence[Mapping[str, Any]]
    no_data_ms: Mapping[str, int]


def measure(windows: Sequence[WindowSources]) -> tuple[list[Completeness], Completeness]:
    """Completeness of each window and of all of them together (one device's period).

    Rates (text, Modbus) are each source's over the whole period: readings attempted per
    millisecond online. A source's share over the period is its total received over its
    total expected (a window with more traffic weighs more); dark time at a restart
    counts in the window that states the restart.
    """
    # per window: (source, received, attempted, dark ms, priced at a rate?) per record
    per: list[list[tuple[str, int, int, int, bool]]] = []
    attempted: dict[str, int] = {}
    online: dict[str, int] = {}
    for span, records, no_data in windows:
        row = []
        for rec in records:
            kind = protocol_of(rec)
            if kind is None:
                continue
            ok_key, lost_keys = KINDS[kind]
            rx = _int(rec.get(ok_key))
            att = rx
            for k in lost_keys:
                att += _int(rec.get(k))
            offline = min(_int(rec.get("offline_ms")), span)
            name = str(rec.get("source", kind))
            priced = kind != "framed"  # framed: the device's frame counter counts the loss
            row.append((name, rx, att, offline + (no_data.get(name, 0) if no_data else 0), priced))
            if priced:
                attempted[name] = attempted.get(name, 0) + att
                online[name] = online.get(name, 0) + span - offline
        per.append(row)
    rate = {s: (attempted[s] / online[s] if online[s] > 0 else 0.0) for s in attempted}
    out: list[Completeness] = []
    total: dict[str, list[Any]] = {}  # source -> received, expected, dark ms
    for row in per:
        srcs: dict[str, list[Any]] = {}  # this window's, by source
        for name, rx, att, dark, priced in row:
            # what the source would have sent: counted (framed), or priced at its rate
            exp = att + rate[name] * dark if priced else float(att)
            for acc in (srcs, total):
                t = acc.get(name)
                if t is None:
                    acc[name] = [rx, exp, dark]
                else:
                    t[0] += rx
                    t[1] += exp
                    t[2] += dark
        out.append(_combine(srcs))
    return out, _combine(total)


def _combine(srcs: Mapping[str, list[Any]]) -> Completeness:
    """Each source's share, their mean, and the totals (a loop: once per window)."""
    shares: dict[str, tuple[int, float, float | None]] = {}
    rx_all, exp_all, sum_r, n_r = 0, 0.0, 0.0, 0
    for name, (rx, exp, dark) in srcs.items():
        r = completeness(rx, exp, dark)
        shares[name] = (rx, exp, r)
        rx_all += rx
        exp_all += exp
        if r is not None:
            sum_r += r
            n_r += 1
    return Completeness(rx_all, exp_all, sum_r / n_r if n_r else None, shares)


def _round(r: float | None) -> float | None:
    return None if r is None else round(r, 6)


def _int(v: Any) -> int:
    return v if type(v) is int and v > 0 else 0
