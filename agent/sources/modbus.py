"""Modbus RTU sources: poll slaves' register maps with pymodbus.

Each poll cycle reads every configured slave once (one request per slave and
register table when the addresses fit in one read of at most 125 registers)
and delivers one reading per answering slave, in policy channel order (NaN
for channels of other slaves). A slave is given ``poll.timeout_s`` to
answer, once (no retries); a slave that misses :data:`SILENT_AFTER` polls
in a row is *silent*: it is then tried only every :data:`SILENT_RETRY_EVERY`
cycles, so one dead device on the bus costs the others almost nothing.
Counted per window: ``polls_ok``, ``poll_timeouts``, ``poll_errors``
(exception responses, undecodable replies), ``out_of_range``, and a
degraded-evidence problem while a slave is silent. A port that vanishes is
handled like any other (reopen with backoff, offline interval recorded).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.config import ModbusRegister, ModbusSlave, SourceConfig
from agent.sources.link import Deliver, PolicyChannel, PortSource
from agent.sources.reading import Reading, ReadingBatch

__all__ = ["SILENT_AFTER", "SILENT_RETRY_EVERY", "ModbusSource", "decode_register"]

log = logging.getLogger("edgegov.source")

SILENT_AFTER = 3
SILENT_RETRY_EVERY = 10
_MAX_READ = 125  # registers per read (Modbus application protocol §6.3)
_FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


def decode_register(reg: ModbusRegister, words: Sequence[int]) -> float:
    """The scaled value of *reg* from its 16-bit *words* (big-endian word order)."""
    raw = b"".join(struct.pack(">H", w & 0xFFFF) for w in words[: reg.words])
    (v,) = struct.unpack(_FORMATS[reg.type], raw)
    return float(v) * reg.scale + reg.offset


@dataclass
class _SlaveState:
    misses: int = 0
    silent: bool = False


class ModbusSource(PortSource):
    """A Modbus RTU bus polled by the agent (the agent is the master)."""

    def __init__(
        self,
        index: int,
        cfg: SourceConfig,
        channels: Sequence[PolicyChannel],
        deliver: Deliver,
        config_file: str = "",
    ) -> None:
        super().__init__(index, cfg, channels, deliver, config_file)
        self._targets = {
            (sl.unit_id, r.address, r.table): self._channel(
                r.channel, f"slaves[{i}].registers[{j}].channel"
            )
            for i, sl in enumerate(cfg.slaves)
            for j, r in enumerate(sl.registers)
        }
        self._state = {sl.unit_id: _SlaveState() for sl in cfg.slaves}
        self._polls = 0

    def _open(self) -> object:
        s = self.cfg.serial
        if not os.path.exists(s.port):
            raise OSError(f"{s.port} does not exist")
        client = ModbusSerialClient(
            s.port,
            baudrate=s.baud,
            bytesize=s.bytesize,
            parity=s.parity,
            stopbits=s.stopbits,
            timeout=self.cfg.response_timeout_s,
            retries=0,
        )
        if not client.connect():
            client.close()  # type: ignore[no-untyped-call]
            raise OSError(f"cannot open {s.port}")
        return client

    def _serve(self, handle: object) -> None:
        assert isinstance(handle, ModbusSerialClient)
        period = self.cfg.poll_period_s
        next_t = time.monotonic()
        cycle = 0
        while not self._stop.is_set():
            out: list[Reading] = []
            for slave in self.cfg.slaves:
                st = self._state[slave.unit_id]
                if st.silent and cycle % SILENT_RETRY_EVERY:
                    self.ledger.problem(f"modbus slave {slave.unit_id} is silent")
                    continue
                values = self._poll(handle, slave, st)
                if values is not None:
                    self._polls += 1
                    t = self.clock()
                    out.append(Reading(t, t, self.index, self._polls, values))
            if out:
                self.deliver(ReadingBatch.of(out, len(self.channels)))
            if not os.path.exists(self.cfg.serial.port):
                raise OSError(f"{self.cfg.serial.port} disappeared")
            cycle += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:  # behind (slow bus): skip, never burst
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def _poll(
        self, client: ModbusSerialClient, slave: ModbusSlave, st: _SlaveState
    ) -> tuple[float, ...] | None:
        values = [math.nan] * len(self.channels)
        try:
            for table in ("holding", "input"):
                regs = [r for r in slave.registers if r.table == table]
                if regs:
                    self._read(client, slave.unit_id, table, regs, values)
        except ConnectionException as e:
            raise OSError(str(e)) from e
        except ModbusIOException:
            self.ledger.add("poll_timeouts")
            self._missed(slave.unit_id, st)
            return None
        except (ModbusException, struct.error, ValueError) as e:
            self.ledger.add("poll_errors")
            log.warning("source %s: slave %d: %s", self.cfg.name, slave.unit_id, e)
            self._missed(slave.unit_id, st)
            return None
        self.ledger.add("polls_ok")
        if st.silent:
            log.info("source %s: slave %d answers again", self.cfg.name, slave.unit_id)
        st.misses, st.silent = 0, False
        return tuple(values)

    def _missed(self, unit: int, st: _SlaveState) -> None:
        st.misses += 1
        if st.misses >= SILENT_AFTER and not st.silent:
            st.silent = True
            log.warning(
                "source %s: slave %d missed %d polls; polling it every %d cycles",
                self.cfg.name,
                unit,
                st.misses,
                SILENT_RETRY_EVERY,
            )
        if st.silent:
            self.ledger.problem(f"modbus slave {unit} is silent")

    def _read(
        self,
        client: ModbusSerialClient,
        unit: int,
        table: str,
        regs: list[ModbusRegister],
        values: list[float],
    ) -> None:
        lo = min(r.address for r in regs)
        hi = max(r.address + r.words for r in regs)
        spans = (
            [(lo, hi, regs)]
            if hi - lo <= _MAX_READ
            else [(r.address, r.address + r.words, [r]) for r in regs]
        )
        read = client.read_holding_registers if table == "holding" else client.read_input_registers
        for start, end, group in spans:
            resp = read(start, count=end - start, device_id=unit)
            if resp.isError():
                raise ModbusException(f"{table} registers {start}..{end - 1}: {resp}")
            words = resp.registers
            if len(words) != end - start:
                raise ValueError(f"expected {end - start} registers, got {len(words)}")
            for r in group:
                v = decode_register(r, words[r.address - start :])
                idx = self._targets[(unit, r.address, r.table)]
                ch = self.channels[idx]
                if not ch.low <= v <= ch.high:
                    self.ledger.add("out_of_range")
                values[idx] = v
