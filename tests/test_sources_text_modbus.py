"""Text-line and Modbus RTU sources over real ptys (a real pymodbus RTU server for Modbus)."""

from __future__ import annotations

import asyncio
import math
import os
import select
import threading
import time
from collections.abc import Iterator

import pytest

from agent.config import ModbusRegister, ModbusSlave, SerialSettings, SourceConfig, TextField
from agent.sources import make_source
from agent.sources.modbus import decode_register
from firmware_bridge import open_pty
from tests.test_sources_framed import POLICY, Sink, wait_for


def text_source(port: str, fmt: str) -> tuple[object, Sink]:
    sink = Sink()
    fields = (TextField("t", "temperature"), TextField("h", "humidity", 0.1, 0.0))
    cfg = SourceConfig(
        SerialSettings(port), "text", "txt", 0.05, 0.4, text_format=fmt, fields=fields
    )
    return make_source(1, cfg, POLICY, sink, "agent.yaml"), sink


@pytest.mark.parametrize(
    ("fmt", "lines"),
    [
        (
            "kv",
            [b"t=5.5,h=480", b"t=6,h=500,x=1", b"garbage", b"t=abc,h=490", b"h=470", b"t=200,h=1"],
        ),
        (
            "json",
            [
                b'{"t": 5.5, "h": 480}',
                b'{"t": 6, "h": 500, "x": 1}',
                b"[1, 2",
                b'{"t": "abc", "h": 490}',
                b'{"h": 470}',
                b'{"t": 200, "h": 1}',
            ],
        ),
    ],
)
def test_text_lines_over_a_pty_become_readings_and_bad_lines_are_counted(fmt, lines):
    with open_pty() as pair:
        src, sink = text_source(pair.slave_path, fmt)
        src.start()
        assert src.connected.wait(3)
        time.sleep(0.1)
        payload = (
            b"partial-line-from-before\n"
            + b"\r\n".join(lines)
            + b"\n"
            + b"\xff\xfe\n"
            + b"y" * 2000
            + b"\n"
        )
        for i in range(0, len(payload), 7):  # trickled, split anywhere
            os.write(pair.master_fd, payload[i : i + 7])
        assert wait_for(lambda: sink.count() >= 5)
        time.sleep(0.1)
        src.stop()
    vals = [r.values[:2] for r in sink.readings]
    assert vals[0] == (5.5, 48.0) and vals[1] == (6.0, 50.0)
    assert math.isnan(vals[2][0]) and vals[2][1] == 49.0
    assert math.isnan(vals[3][0]) and vals[3][1] == 47.0
    assert vals[4] == (200.0, 0.1)
    assert [r.frame_seq for r in sink.readings] == [1, 2, 3, 4, 5]
    h = src.take_health()
    assert h["lines_ok"] == 5 and h["parse_errors"] == 2  # garbage + not UTF-8
    assert h["unknown_fields"] == 1 and h["bad_values"] == 1 and h["missing_fields"] == 1
    assert h["out_of_range"] == 1 and h["overlong_lines"] == 1


# --------------------------------------------------------------------------- Modbus


class NullModem:
    """Two raw ptys joined back to back: a serial cable between two programs.

    Requests from ``a`` addressed to a unit in *dead_units* never reach ``b``:
    a device on the bus that has died and answers nothing.
    """

    def __init__(self, dead_units: tuple[int, ...] = ()) -> None:
        self.dead = dead_units
        self.a, self.b = open_pty(), open_pty()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        fds = {self.a.master_fd: self.b.master_fd, self.b.master_fd: self.a.master_fd}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(fds), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                    if fd == self.a.master_fd and data and data[0] in self.dead:
                        continue
                    os.write(fds[fd], data)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.a.close()
        self.b.close()


@pytest.fixture
def modbus_bus() -> Iterator[str]:
    """A real pymodbus RTU server with slaves 1 and 2 on one end; yields the other end.

    (pymodbus data blocks start at address 1 for protocol register 0.)
    """
    from pymodbus.datastore import (
        ModbusDeviceContext,
        ModbusSequentialDataBlock,
        ModbusServerContext,
    )
    from pymodbus.server import ModbusSerialServer

    cable = NullModem(dead_units=(3,))
    hr1 = [0] * 20
    hr1[0] = 55  # temperature x0.1 -> 5.5
    hr1[1], hr1[2] = 0x4248, 0x0000  # float32 50.0 (humidity)
    hr2 = [0] * 20
    hr2[4] = 1  # door
    devices = {
        1: ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, hr1)),
        2: ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, hr2)),
    }
    context = ModbusServerContext(devices=devices, single=False)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, ModbusSerialServer] = {}

    async def main() -> None:
        server = ModbusSerialServer(context, port=cable.b.slave_path, baudrate=115200)
        holder["server"] = server
        loop.call_soon(started.set)
        await server.serve_forever()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert started.wait(5)
    time.sleep(0.3)
    try:
        yield cable.a.slave_path
    finally:
        fut = asyncio.run_coroutine_threadsafe(holder["server"].shutdown(), loop)
        fut.result(5)
        t.join(5)
        loop.close()
        cable.close()


def test_modbus_polls_real_slaves_and_a_silent_one_does_not_stall_them(modbus_bus):
    sink = Sink()
    slaves = (
        ModbusSlave(
            1,
            (
                ModbusRegister("temperature", 0, "int16", scale=0.1),
                ModbusRegister("humidity", 1, "float32"),
            ),
        ),
        ModbusSlave(3, (ModbusRegister("humidity", 0),)),  # dead: never answers
        ModbusSlave(2, (ModbusRegister("door", 4),)),
    )
    cfg = SourceConfig(
        SerialSettings(modbus_bus, 115200),
        "modbus",
        "bus",
        0.05,
        0.4,
        poll_period_s=0.1,
        response_timeout_s=0.15,
        slaves=slaves,
    )
    src = make_source(2, cfg, POLICY, sink, "agent.yaml")
    src.start()
    time.sleep(3.0)
    src.stop()
    by_slave = {"t": [], "door": []}
    for r in sink.readings:
        if not math.isnan(r.values[0]):
            assert r.values[0] == pytest.approx(5.5) and r.values[1] == 50.0
            by_slave["t"].append(r)
        elif r.values[2] == 1.0:
            by_slave["door"].append(r)
    # ~30 cycles in 3 s; the silent slave costs 0.15 s only every 10th cycle after 3 misses.
    assert len(by_slave["t"]) >= 18 and len(by_slave["door"]) >= 18
    h = src.take_health()
    assert h["polls_ok"] == len(sink.readings)
    assert 3 <= h["poll_timeouts"] <= 8, h
    assert any("slave 3 is silent" in p for p in h["problems"])


@pytest.mark.parametrize(
    ("typ", "words", "value"),
    [
        ("int16", [0xFFFE], -2.0),
        ("uint16", [0xFFFE], 65534.0),
        ("int32", [0xFFFF, 0xFFFD], -3.0),
        ("uint32", [0x0001, 0x0000], 65536.0),
        ("float32", [0x40A0, 0x0000], 5.0),
    ],
)
def test_register_types_decode_big_endian_with_scale_and_offset(typ, words, value):
    reg = ModbusRegister("x", 0, typ, scale=2.0, offset=1.0)
    assert decode_register(reg, words) == value * 2.0 + 1.0
