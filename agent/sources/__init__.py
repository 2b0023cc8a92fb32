"""Input sources: serial lines and buses -> readings, with honest data-quality records.

In: the configured ports (``agent.config.SourceConfig``) and the policy's channels. Out:
batches of :class:`~agent.sources.reading.Reading` handed to the pipeline, and each
source's per-window quality record. Nothing here knows the claims profile or the verifier.

* :class:`FramedSource` -- our framed protocol (firmware_bridge/PROTOCOL.md).
* :class:`TextSource` -- ``key=value,...`` or JSON lines, schema from config.
* :class:`ModbusSource` -- Modbus RTU polling with pymodbus.

Each runs its own thread (:class:`~agent.sources.link.PortSource`), reopens a
vanished port with capped exponential backoff and keeps a per-window
:class:`~agent.sources.quality.QualityLedger`, which the agent puts into the
attestation's health claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.config import SourceConfig
from agent.sources.framed import FramedSource, schema_problem
from agent.sources.link import Deliver, PolicyChannel, PortSource
from agent.sources.quality import QualityLedger, sum_counters, window_problems
from agent.sources.text import LineParser, TextSource

__all__ = [
    "FramedSource",
    "LineParser",
    "ModbusSource",
    "PolicyChannel",
    "PortSource",
    "QualityLedger",
    "TextSource",
    "make_source",
    "schema_problem",
    "sum_counters",
    "window_problems",
]

_KINDS: dict[str, type[PortSource]] = {"framed": FramedSource, "text": TextSource}


def __getattr__(name: str) -> Any:
    # pymodbus costs ~4 MiB of RSS: load it only for a gateway that polls Modbus
    if name == "ModbusSource":
        from agent.sources.modbus import ModbusSource

        return ModbusSource
    raise AttributeError(name)


def make_source(
    index: int,
    cfg: SourceConfig,
    channels: Sequence[PolicyChannel],
    deliver: Deliver,
    config_file: str = "",
) -> PortSource:
    """The source for *cfg*; ConfigError if it names channels the policy lacks."""
    if cfg.protocol == "modbus":
        from agent.sources.modbus import ModbusSource

        return ModbusSource(index, cfg, channels, deliver, config_file)
    return _KINDS[cfg.protocol](index, cfg, channels, deliver, config_file)
