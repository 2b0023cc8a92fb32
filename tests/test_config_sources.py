"""The `sources:` of the agent config: every protocol; errors name file, field, reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent.config import (
    ExpectedChannel,
    ModbusRegister,
    ModbusSlave,
    SerialSettings,
    TextField,
    load_config,
)
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BASE = {
    "device": {"id": "gw-1", "key": "k"},
    "fleet": "f",
    "policy": "p.yaml",
    "state_dir": "s",
    "output": {"spool": "spool"},
}


def write(tmp_path: Path, sources: object) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(yaml.safe_dump({**BASE, "sources": sources}))
    for name in ("k", "p.yaml"):  # the files BASE names (their content is checked later)
        (tmp_path / name).touch()
    return p


def test_the_example_config_with_every_source_kind_enabled_loads(tmp_path: Path):
    from tests.pki import TestPKI

    text = (ROOT / "configs" / "agent.example.yaml").read_text()
    text = re.sub(r"^  # (- name|  )", lambda m: "  " + m.group(1), text, flags=re.M)
    text = re.sub(r"^    # (expect:|  - \{name)", lambda m: "    " + m.group(1), text, flags=re.M)
    text = text.replace("/etc/edgegov/", f"{tmp_path}/etc/")  # the files it names, made here
    pki = TestPKI(tmp_path / "etc")
    cert, key = pki.issue("gw-0001")
    cert.rename(tmp_path / "etc" / "device.pem")
    key.rename(tmp_path / "etc" / "device-tls.key")
    for name in ("keys/device.key", "policies/cold-chain.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    p = tmp_path / "agent.yaml"
    p.write_text(text)
    cfg = load_config(p)
    framed, txt, bus = cfg.sources
    assert framed.protocol == "framed" and framed.name == "cold-room"
    assert framed.expect == (ExpectedChannel("temperature", "Cel"), ExpectedChannel("door", "bool"))
    assert framed.reconnect_initial_s == 0.25 and framed.reconnect_max_s == 10
    assert txt.serial == SerialSettings("/dev/ttyUSB1", 9600)
    assert txt.text_format == "kv" and txt.fields[0] == TextField("rh", "humidity")
    assert bus.serial.parity == "E" and bus.poll_period_s == 1.0 and bus.response_timeout_s == 0.2
    assert bus.slaves == (
        ModbusSlave(
            1,
            (
                ModbusRegister("temperature", 0, "int16", "holding", 0.1, 0.0, "Cel"),
                ModbusRegister("door", 10, "uint16", "input"),
            ),
        ),
    )


def test_defaults_for_a_minimal_framed_source(tmp_path: Path):
    (src,) = load_config(write(tmp_path, [{"port": "/dev/ttyACM0"}])).sources
    assert src.protocol == "framed" and src.name == "source0" and src.baud == 115200
    assert src.serial == SerialSettings("/dev/ttyACM0", 115200, 8, "N", 1)


@pytest.mark.parametrize(
    ("sources", "field", "reason"),
    [
        ([{"port": "/dev/x", "protocol": "can"}], "sources[0].protocol", "not supported"),
        ([{"port": "/dev/x", "baud": 0}], "sources[0].baud", "must be positive"),
        ([{"port": "/dev/x", "parity": "X"}], "sources[0].parity", "must be one of"),
        ([{"port": "/dev/x", "stopbits": 3}], "sources[0].stopbits", "must be 1 or 2"),
        ([{"port": "/dev/x", "bytesize": 9}], "sources[0].bytesize", "5, 6, 7 or 8"),
        ([{"port": ""}], "sources[0].port", "device path"),
        ([{}], "sources[0].port", "required field is missing"),
        (
            [{"port": "/dev/x", "reconnect": {"initial_s": 2, "max_s": 1}}],
            "sources[0].reconnect.max_s",
            ">= initial_s",
        ),
        (
            [{"port": "/dev/x", "reconnect": {"initial_s": -1}}],
            "sources[0].reconnect.initial_s",
            "positive",
        ),
        ([{"port": "/dev/x", "fields": []}], "sources[0]", "unknown field(s) fields"),
        (
            [{"port": "/dev/x", "name": "a"}, {"port": "/dev/y", "name": "a"}],
            "sources[1].name",
            "used by another",
        ),
        (
            [{"port": "/dev/x", "protocol": "text"}],
            "sources[0].fields",
            "required field is missing",
        ),
        (
            [{"port": "/dev/x", "protocol": "text", "format": "xml", "fields": [{"channel": "t"}]}],
            "sources[0].format",
            "kv",
        ),
        (
            [{"port": "/dev/x", "protocol": "text", "fields": [{"channel": "t", "scale": "big"}]}],
            "sources[0].fields[0].scale",
            "expected int or float",
        ),
        (
            [{"port": "/dev/x", "protocol": "modbus", "slaves": []}],
            "sources[0].slaves",
            "at least one",
        ),
        (
            [{"port": "/dev/x", "protocol": "modbus", "slaves": [{"unit": 0, "registers": []}]}],
            "sources[0].slaves[0].unit",
            "1..247",
        ),
        (
            [
                {
                    "port": "/dev/x",
                    "protocol": "modbus",
                    "slaves": [{"unit": 1, "registers": [{"channel": "t", "address": 70000}]}],
                }
            ],
            "sources[0].slaves[0].registers[0].address",
            "0..65535",
        ),
        (
            [
                {
                    "port": "/dev/x",
                    "protocol": "modbus",
                    "slaves": [
                        {"unit": 1, "registers": [{"channel": "t", "address": 1, "type": "int64"}]}
                    ],
                }
            ],
            "sources[0].slaves[0].registers[0].type",
            "must be one of",
        ),
        (
            [
                {
                    "port": "/dev/x",
                    "protocol": "modbus",
                    "poll": {"period_s": 0},
                    "slaves": [{"unit": 1, "registers": [{"channel": "t", "address": 1}]}],
                }
            ],
            "sources[0].poll.period_s",
            "positive",
        ),
    ],
)
def test_bad_source_config_names_file_field_and_reason(tmp_path: Path, sources, field, reason):
    path = write(tmp_path, sources)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {field}"), msg
    assert reason in msg, msg
