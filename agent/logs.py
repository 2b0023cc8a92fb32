"""Log output: plain text (default) or JSON lines, on stderr (journald keeps either).

``json``: one object per line with ``time`` (ISO 8601, UTC, milliseconds), ``level``,
``logger``, ``message``, then the structured fields the call site passed with
``extra=`` (``seq``, ``device``, ``reason``, ``source``, ``field``, ...) and, for an
exception, ``exception`` (the traceback).

Neither format ever shows a URL's password: ``mqtt://user:s3cret@host`` is written
``mqtt://user:***@host``, wherever it appears. Keys and PINs are never passed to a
logger at all (``agent.identity.keys``, ``agent.identity.pkcs11``); the tests grep both formats.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = [
    "FORMATS",
    "LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "redact",
    "set_level",
]

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

# scheme://user:password@ -> scheme://user:***@ (RFC 3986 §3.2.1 userinfo; '@' ends it)
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")

# What every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1:***@", text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))  # paths, enums, reason codes


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, tz=timezone.utc)
        doc: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = _clean(value)
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message``, as before, with URL passwords redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``fmt``, from ``level`` up."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {FORMATS}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """Change the level of every edgegov log line (a reload may do it live)."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {LEVELS}")
    logging.getLogger().setLevel(level.upper())
