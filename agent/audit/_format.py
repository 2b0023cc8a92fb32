"""How the text and HTML renderings write the analysis's numbers (exact to the ms)."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["dur", "pct", "ts"]


def ts(ms: int | None) -> str:
    """A Unix-ms instant, UTC, to the millisecond (``-`` for none)."""
    if ms is None:
        return "-"
    t = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return f"{t:%Y-%m-%d %H:%M:%S}.{ms % 1000:03d} UTC"


def dur(ms: int | None) -> str:
    """A duration: ``1.598 s`` below a minute, ``2h 03m 04.500s`` / ``3m 04.500s`` above."""
    if ms is None:
        return "-"
    if ms < 60_000:
        return f"{ms / 1000:.3f} s"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    sec = f"{rest // 1000:02d}.{rest % 1000:03d}s"
    return f"{h}h {m:02d}m {sec}" if h else f"{m}m {sec}"


def pct(ratio: float | None) -> str:
    """A 0..1 share as a percentage with one decimal (``n/a`` for none)."""
    return "n/a" if ratio is None else f"{ratio * 100:.1f} %"
