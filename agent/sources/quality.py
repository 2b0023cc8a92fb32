"""Per-source data-quality ledger: what arrived, what did not, and why.

Every source owns one :class:`QualityLedger`. Its reader thread records events
as they happen; the agent takes a snapshot at each window close
(:meth:`QualityLedger.take`), which resets the window's counts. Nothing is
inferred later: a sequence gap is recorded with the exact missing range, an
offline port with its start and end in wall-clock milliseconds (an interval
that spans a window boundary is split between the windows), and every
rejected byte, frame, line or poll is counted under a named reason.

The snapshot is a plain mapping for the attestation's health claim
(``docs/attestation-profile.md``, claim -70001/8). :meth:`QualityLedger.peek` reads it
without resetting, so the agent can keep what a window has counted so far in the
evidence store's journal; after a crash the next agent process hands it back with
:meth:`QualityLedger.restore` and signs it (``agent.evidence.journal``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "BASE_KEYS",
    "MAX_RANGES",
    "PORT_OFFLINE",
    "QualityLedger",
    "merge_records",
    "sum_counters",
    "window_problems",
]

#: At most this many gap ranges and offline intervals are listed per window;
#: the counts stay exact, and ``ranges_truncated`` says how many were cut.
MAX_RANGES = 32
_SEQ_MOD = 1 << 32

#: Counters every window record of a protocol carries, zero or not, so that
#: "no CRC errors" is stated rather than implied by absence.
BASE_KEYS = {
    "framed": (
        "frames_ok",
        "samples_ok",
        "crc_errors",
        "framing_errors",
        "version_errors",
        "unknown_types",
        "bytes_discarded",
        "resyncs",
        "seq_gaps",
        "frames_missed",
        "frames_unrecorded",
        "duplicates",
        "reboots",
        "seq_resets",
        "data_before_hello",
        "quarantined",
        "out_of_range",
        "offline_ms",
    ),
    "text": (
        "lines_ok",
        "parse_errors",
        "bad_values",
        "missing_fields",
        "unknown_fields",
        "overlong_lines",
        "out_of_range",
        "offline_ms",
    ),
    "modbus": ("polls_ok", "poll_timeouts", "poll_errors", "out_of_range", "offline_ms"),
}


class QualityLedger:
    """Thread-safe data-quality counters of one source for the current window."""

    def __init__(self, name: str, protocol: str, port: str) -> None:
        self.name, self.protocol, self.port = name, protocol, port
        self._lock = threading.Lock()
        self._base = BASE_KEYS.get(protocol, ("offline_ms",))
        self._counts: dict[str, int] = dict.fromkeys(self._base, 0)
        self._gaps: list[list[int]] = []
        self._offline: list[list[int]] = []
        self._offline_since: int | None = None
        self._problems: list[str] = []
        self._device: str | None = None
        self._truncated = 0

    def add(self, key: str, n: int = 1) -> None:
        """Add *n* to counter *key*."""
        if n:
            with self._lock:
                self._counts[key] = self._counts.get(key, 0) + n

    def add_many(self, counts: Mapping[str, int]) -> None:
        """Add several counters at once."""
        with self._lock:
            for key, n in counts.items():
                if n:
                    self._counts[key] = self._counts.get(key, 0) + n

    def gap(self, first: int, last: int, *, unrecorded: bool = False) -> None:
        """Frames ``first..last`` (inclusive, mod 2**32) never arrived.

        ``unrecorded``: they were sent while no agent process was recording (between the
        last frame the evidence accounts for and the first one after a restart), counted
        as ``frames_unrecorded``; otherwise lost while this agent was reading
        (``frames_missed``). Either way the range is listed in ``gaps``.
        """
        key = "frames_unrecorded" if unrecorded else "frames_missed"
        with self._lock:
            self._counts["seq_gaps"] = self._counts.get("seq_gaps", 0) + 1
            missed = (last - first) % _SEQ_MOD + 1
            self._counts[key] = self._counts.get(key, 0) + missed
            if len(self._gaps) < MAX_RANGES:
                self._gaps.append([first, last])
            else:
                self._truncated += 1

    def offline(self, now_ms: int) -> None:
        """The port went away (or could not be opened) at *now_ms*."""
        with self._lock:
            if self._offline_since is None:
                self._offline_since = now_ms

    def online(self, now_ms: int) -> None:
        """The port is back at *now_ms*; closes the offline interval."""
        with self._lock:
            if self._offline_since is not None:
                self._close_interval(self._offline_since, now_ms)
                self._offline_since = None

    def problem(self, reason: str) -> None:
        """Something that makes this window's evidence weaker (listed once per window)."""
        with self._lock:
            if reason not in self._problems:
                self._problems.append(reason)

    def device(self, serial: str | None) -> None:
        """The device identity this source currently reads (from HELLO)."""
        with self._lock:
            self._device = serial

    def _close_interval(self, start: int, end: int) -> None:
        self._counts["offline_ms"] = self._counts.get("offline_ms", 0) + max(0, end - start)
        if len(self._offline) < MAX_RANGES:
            self._offline.append([start, end])
        else:
            self._truncated += 1

    def take(self, now_ms: int) -> dict[str, Any]:
        """This window's record; resets counts, ranges and problems for the next one."""
        with self._lock:
            if self._offline_since is not None:  # still offline: split at the boundary
                self._close_interval(self._offline_since, now_ms)
                self._offline_since = now_ms
            rec = _with_offline_problem(self._record())
            self._counts = dict.fromkeys(self._base, 0)
            self._gaps, self._offline, self._problems = [], [], []
            self._truncated = 0
            return rec

    def peek(self, now_ms: int) -> dict[str, Any]:
        """The record :meth:`take` would return now, without resetting anything (an open
        offline interval is shown closed at *now_ms*, and stays open)."""
        with self._lock:
            rec = self._record()
            if self._offline_since is not None:
                rec["offline_ms"] += max(0, now_ms - self._offline_since)
                if len(rec["offline"]) < MAX_RANGES:
                    rec["offline"] = [*rec["offline"], [self._offline_since, now_ms]]
                else:
                    rec["ranges_truncated"] = rec.get("ranges_truncated", 0) + 1
            return _with_offline_problem(rec)

    def restore(self, rec: Mapping[str, Any]) -> None:
        """Add a record :meth:`peek` gave an earlier agent process, which it could not sign
        (it was killed), to this window's: counters, ranges, problems and the device."""
        with self._lock:
            merged = merge_records(self._record(), rec)
            self._counts = {k: v for k, v in merged.items() if _is_count(v)}
            self._gaps, self._offline = merged["gaps"], merged["offline"]
            self._problems = merged["problems"]
            self._truncated = merged.get("ranges_truncated", 0)
            self._device = merged["device"]

    def _record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "source": self.name,
            "protocol": self.protocol,
            "port": self.port,
            "device": self._device,
            **dict(sorted(self._counts.items())),
            "gaps": self._gaps,
            "offline": self._offline,
            "problems": self._problems,
        }
        if self._truncated:
            rec["ranges_truncated"] = self._truncated
        return rec


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def merge_records(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """One source's two records as one: counters added, ranges and problems joined (at most
    :data:`MAX_RANGES` ranges, the rest counted in ``ranges_truncated``); ``b``'s device
    wins where it names one. ``a`` gives source, protocol and port."""
    out: dict[str, Any] = {k: a[k] for k in ("source", "protocol", "port")}
    out["device"] = b.get("device") or a.get("device")
    counts: dict[str, int] = {}
    for rec in (a, b):
        for k, v in rec.items():
            if _is_count(v) and k != "ranges_truncated":
                counts[k] = counts.get(k, 0) + v
    out.update(sorted(counts.items()))
    truncated = a.get("ranges_truncated", 0) + b.get("ranges_truncated", 0)
    for key in ("gaps", "offline"):
        joined = [list(r) for r in (*a.get(key, ()), *b.get(key, ()))]
        truncated += max(0, len(joined) - MAX_RANGES)
        out[key] = joined[:MAX_RANGES]
    out["problems"] = list(dict.fromkeys((*a.get("problems", ()), *b.get("problems", ()))))
    if truncated:
        out["ranges_truncated"] = truncated
    return out


def sum_counters(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Integer counters summed over sources (the window totals)."""
    total: dict[str, int] = {}
    for rec in records:
        for key, v in rec.items():
            if isinstance(v, int) and not isinstance(v, bool):
                total[key] = total.get(key, 0) + v
    return dict(sorted(total.items()))


#: the problem a source states when its port was away for a while in a window (a sensor
#: that is unplugged, or was never there): its evidence is weaker, so the window says so
PORT_OFFLINE = "port unavailable (no readings while it was away; see offline)"
PORT_OFFLINE_MIN_MS = 1000  # shorter: the port opening at a start, a quick replug


def _with_offline_problem(rec: dict[str, Any]) -> dict[str, Any]:
    if rec.get("offline_ms", 0) >= PORT_OFFLINE_MIN_MS and PORT_OFFLINE not in rec["problems"]:
        rec["problems"] = [*rec["problems"], PORT_OFFLINE]
    return rec


def window_problems(health: Mapping[str, Any]) -> tuple[str, ...]:
    """The degraded-evidence reasons in a window's health map, as ``source: reason``."""
    out: list[str] = []
    for rec in health.get("sources", ()):
        out.extend(f"source {rec['source']}: {p}" for p in rec.get("problems", ()))
    return tuple(out)
