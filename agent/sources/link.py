"""The life of one port: open, serve, lose it, back off, reopen -- and record it all.

:class:`PortSource` is the base of every source. Its thread opens the port
(pyserial, settings from config), hands it to the subclass's ``_serve``
until the port fails or the agent stops, and reopens it with capped
exponential backoff (``reconnect.initial_s`` doubling up to
``reconnect.max_s``). The time the port was unavailable is recorded in the
:class:`~agent.sources.quality.QualityLedger` as an offline interval with
wall-clock start and end, never hidden.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import serial

from agent.config import SourceConfig
from agent.errors import ConfigError
from agent.sources.quality import QualityLedger
from agent.sources.reading import ReadingBatch

__all__ = ["Deliver", "PolicyChannel", "PortSource", "now_ms"]

log = logging.getLogger("edgegov.source")

Deliver = Callable[[ReadingBatch], None]


class PolicyChannel(Protocol):
    """What a source needs to know of a policy channel."""

    @property
    def name(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def low(self) -> float: ...
    @property
    def high(self) -> float: ...


def now_ms() -> int:
    """Wall-clock Unix time in ms (the agent clock of readings and intervals)."""
    return int(time.time() * 1000)


class PortSource:
    """Base class: one configured source with its reader thread and ledger.

    Subclasses implement :meth:`_serve` (read until the port fails) and may
    override :meth:`_open` / :meth:`_close` for ports not opened by pyserial.
    """

    def __init__(
        self,
        index: int,
        cfg: SourceConfig,
        channels: Sequence[PolicyChannel],
        deliver: Deliver,
        config_file: str = "",
    ) -> None:
        self.index = index
        self.cfg = cfg
        self.port = cfg.serial.port
        self.channels = tuple(channels)
        self.channel_index = {c.name: i for i, c in enumerate(self.channels)}
        self.deliver = deliver
        self.config_file = config_file
        self.clock: Callable[[], int] = now_ms  # a reading's received_ms (a replay sets its own)
        self.ledger = QualityLedger(cfg.name, cfg.protocol, cfg.serial.port)
        self.connected = threading.Event()
        self.tried = threading.Event()  # the first open has been attempted (either way)
        # Held by the reader thread while one chunk's ledger updates and readings go out,
        # and by the agent around a ledger snapshot and the queue drain that goes with
        # it: every reading delivered before a snapshot is in the agent's window, none
        # after (agent.evidence.journal). Modbus polls do not take it (they block on the bus).
        self.stream_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{cfg.name}", daemon=True)

    def _channel(self, name: str, field: str) -> int:
        """Index of policy channel *name*; ConfigError naming the field if unknown."""
        try:
            return self.channel_index[name]
        except KeyError:
            raise ConfigError(
                f"{self.config_file}: sources[{self.index}].{field}: channel {name!r} is not "
                f"in the policy (channels: {', '.join(self.channel_index)})"
            ) from None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def take_health(self, at_ms: int | None = None) -> dict[str, object]:
        """This window's quality record (and reset), see QualityLedger.take."""
        return self.ledger.take(now_ms() if at_ms is None else at_ms)

    @property
    def last_seq(self) -> int | None:
        """The device frame counter of the last frame accounted for (framed sources)."""
        return None

    def resume(self, last_seq: int | None) -> None:
        """Continue from an earlier agent process whose evidence accounts for frames up to
        ``last_seq`` (framed sources: the next frame reveals what was sent meanwhile).
        Call before :meth:`start`."""

    # -- the thread ----------------------------------------------------------------
    def _open(self) -> object:
        s = self.cfg.serial
        return serial.Serial(
            s.port,
            s.baud,
            bytesize=s.bytesize,
            parity=s.parity,
            stopbits=s.stopbits,
            timeout=0.1,
        )

    def _close(self, handle: object) -> None:
        close = getattr(handle, "close", None)
        if close is not None:
            close()

    def _serve(self, handle: object) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        cfg = self.cfg
        where = {"source": cfg.name, "port": self.port}  # structured log fields (agent.logs)
        backoff = cfg.reconnect_initial_s
        self.ledger.offline(now_ms())  # offline until the first open succeeds
        while not self._stop.is_set():
            try:
                handle = self._open()
            except (serial.SerialException, OSError, ValueError) as e:
                self.tried.set()
                self.ledger.add("reopen_failures")
                log.warning(
                    "source %s (%s): cannot open (%s); retrying in %.2f s",
                    cfg.name,
                    self.port,
                    e,
                    backoff,
                    extra={**where, "reason": str(e)},
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max_s)
                continue
            self.ledger.online(now_ms())
            self.connected.set()
            self.tried.set()
            backoff = cfg.reconnect_initial_s
            log.info("source %s: %s open (%s)", cfg.name, self.port, cfg.protocol, extra=where)
            try:
                self._serve(handle)
            except (serial.SerialException, OSError) as e:
                self.ledger.add("port_lost")
                log.warning(
                    "source %s: lost %s (%s); the gap is recorded",
                    cfg.name,
                    self.port,
                    e,
                    extra={**where, "reason": str(e)},
                )
            finally:
                self.connected.clear()
                if not self._stop.is_set():
                    self.ledger.offline(now_ms())
                try:
                    self._close(handle)
                except (serial.SerialException, OSError):
                    pass
        self.ledger.online(now_ms())  # a stop is not an outage
