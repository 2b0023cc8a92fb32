"""Per-source data-quality ledger: what arrived, what did not, and why.

Every source owns one :class:`QualityLedger`. Its reader thread records events
as they happen; the agent takes a snapshot at each window close
(:meth:`QualityLedger.take`), which resets the window's counts. Nothing is
inferred later: a sequence gap is recorded with the exact missing range, an
offline port with its start and end in wall-clock milliseconds (an interval
that spans a window boundary is split between the windows), and every
rejected byte, frame, line or poll is counted under a named reason.

The snapshot is a plain mapping for the attestation's health claim
(``docs/attestation-profile.md``, claim -70001/8).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["BASE_KEYS", "MAX_RANGES", "QualityLedger", "sum_counters", "window_problems"]

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

    def gap(self, first: int, last: int) -> None:
        """Frames ``first..last`` (inclusive, mod 2**32) never arrived."""
        with self._lock:
            self._counts["seq_gaps"] = self._counts.get("seq_gaps", 0) + 1
            missed = (last - first) % _SEQ_MOD + 1
            self._counts["frames_missed"] = self._counts.get("frames_missed", 0) + missed
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
            self._counts = dict.fromkeys(self._base, 0)
            self._gaps, self._offline, self._problems = [], [], []
            self._truncated = 0
            return rec


def sum_counters(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Integer counters summed over sources (the window totals)."""
    total: dict[str, int] = {}
    for rec in records:
        for key, v in rec.items():
            if isinstance(v, int) and not isinstance(v, bool):
                total[key] = total.get(key, 0) + v
    return dict(sorted(total.items()))


def window_problems(health: Mapping[str, Any]) -> tuple[str, ...]:
    """The degraded-evidence reasons in a window's health map, as ``source: reason``."""
    out: list[str] = []
    for rec in health.get("sources", ()):
        out.extend(f"source {rec['source']}: {p}" for p in rec.get("problems", ()))
    return tuple(out)
