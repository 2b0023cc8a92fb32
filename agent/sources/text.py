"""Text-line sources for off-the-shelf sensors: ``key=value,...`` or JSON lines.

The channel schema comes from config (``fields``: line key -> policy
channel, with scale and offset). One line is one reading, stamped with the
agent clock (such devices have none) and numbered by the source, so the
record is still unique. Every line that does not parse is counted with its
reason; nothing is guessed:

``lines_ok``, ``parse_errors`` (not ``k=v`` / not a JSON object / not
UTF-8), ``bad_values`` (a configured key whose value is not a finite
number: that channel is NaN), ``missing_fields`` (a configured key absent:
NaN), ``unknown_fields`` (keys not in config, ignored), ``overlong_lines``
(over :data:`MAX_LINE` bytes, dropped), ``out_of_range``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import serial

from agent.config import SourceConfig
from agent.sources.link import Deliver, PolicyChannel, PortSource
from agent.sources.reading import Reading, ReadingBatch

__all__ = ["MAX_LINE", "LineParser", "TextSource"]

MAX_LINE = 1024


class LineParser:
    """Turns one text line into policy-ordered values, counting every problem."""

    def __init__(
        self,
        fmt: str,
        fields: dict[str, tuple[int, float, float]],
        n_channels: int,
        ranges: Sequence[tuple[float, float]],
    ) -> None:
        self.fmt = fmt
        self.fields = fields  # key -> (channel index, scale, offset)
        self.n = n_channels
        self.ranges = ranges

    def _pairs(self, text: str) -> dict[str, object] | None:
        if self.fmt == "json":
            try:
                obj = json.loads(text)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
        pairs: dict[str, object] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or not key:
                return None
            pairs[key] = value.strip()
        return pairs

    def parse(self, line: bytes, counts: dict[str, int]) -> tuple[float, ...] | None:
        """Values in policy order, or None (counted) if the line is unusable."""
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            counts["parse_errors"] = counts.get("parse_errors", 0) + 1
            return None
        if not text:
            return None
        pairs = self._pairs(text)
        if pairs is None:
            counts["parse_errors"] = counts.get("parse_errors", 0) + 1
            return None
        values = [math.nan] * self.n
        seen = 0
        for key, raw in pairs.items():
            spec = self.fields.get(key)
            if spec is None:
                counts["unknown_fields"] = counts.get("unknown_fields", 0) + 1
                continue
            seen += 1
            idx, scale, offset = spec
            try:
                if isinstance(raw, bool):
                    raise ValueError(raw)
                v = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                v = math.nan
            if not math.isfinite(v):
                counts["bad_values"] = counts.get("bad_values", 0) + 1
                continue
            v = v * scale + offset
            lo, hi = self.ranges[idx]
            if not lo <= v <= hi:
                counts["out_of_range"] = counts.get("out_of_range", 0) + 1
            values[idx] = v
        missing = len(self.fields) - seen
        if missing:
            counts["missing_fields"] = counts.get("missing_fields", 0) + missing
        counts["lines_ok"] = counts.get("lines_ok", 0) + 1
        return tuple(values)


class TextSource(PortSource):
    """A serial port carrying one reading per line."""

    def __init__(
        self,
        index: int,
        cfg: SourceConfig,
        channels: Sequence[PolicyChannel],
        deliver: Deliver,
        config_file: str = "",
    ) -> None:
        super().__init__(index, cfg, channels, deliver, config_file)
        fields = {
            f.field: (self._channel(f.channel, f"fields[{j}].channel"), f.scale, f.offset)
            for j, f in enumerate(cfg.fields)
        }
        ranges = [(c.low, c.high) for c in self.channels]
        self.parser = LineParser(cfg.text_format, fields, len(self.channels), ranges)
        self._buf = b""
        self._overlong = False  # True: drop bytes up to the next newline
        self._line_no = 0

    def _serve(self, handle: object) -> None:
        assert isinstance(handle, serial.Serial)
        # Joined mid-line: bytes before the first newline may be the tail of a line,
        # not a reading; they are skipped, uncounted (as for frames, PROTOCOL.md §2.3).
        self._buf = b""
        self._overlong = True
        while not self._stop.is_set():
            chunk = handle.read(1)
            if not chunk:
                continue
            if handle.in_waiting:
                chunk += handle.read(handle.in_waiting)
            self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        """Split *chunk* into lines and deliver their readings."""
        with self.stream_lock:  # the chunk's counts and readings go out together
            self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        if self._overlong:  # dropping the rest of a line (too long, or joined mid-line)
            i = chunk.find(b"\n")
            if i < 0:
                return
            chunk, self._overlong = chunk[i + 1 :], False
        lines = (self._buf + chunk).split(b"\n")
        self._buf = lines.pop()
        counts: dict[str, int] = {}
        received = self.clock()
        out: list[Reading] = []
        for line in lines:
            if len(line) > MAX_LINE:
                counts["overlong_lines"] = counts.get("overlong_lines", 0) + 1
                continue
            values = self.parser.parse(line, counts)
            if values is not None:
                self._line_no += 1
                out.append(Reading(received, received, self.index, self._line_no, values))
        if len(self._buf) > MAX_LINE:
            counts["overlong_lines"] = counts.get("overlong_lines", 0) + 1
            self._buf = b""
            self._overlong = True
        self.ledger.add_many(counts)
        if out:
            self.deliver(ReadingBatch.of(out, len(self.channels)))
