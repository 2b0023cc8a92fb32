"""The agent's local configuration file (YAML) as frozen, typed objects.

Example (``configs/agent.example.yaml``)::

    device: {id: gw-0001, key: keys/device.key}
    fleet: site-a
    policy: /etc/edgegov/policies/cold-chain.yaml
    state_dir: /var/lib/edgegov
    sources:
      - {port: /dev/ttyUSB0, baud: 115200, protocol: framed}
    output:
      mqtt: {url: "mqtts://broker.example:8883", ca: ca.pem, cert: dev.pem, key: dev.key}
      # or: spool: /var/lib/edgegov/spool
      # a cluster, tried in order with failover, and MQTT 3.1.1 (default 5):
      #   mqtt: {url: ["mqtt://node-1:1883", "mqtt://node-2:1883"], version: "3.1.1"}
    risk: {providers: [CPUExecutionProvider], threads: 1}

Relative paths are relative to the config file. Every error starts with the config
file's resolved path and the full field path (``/etc/edgegov/agent.yaml:
sources[0].reconnect.max_s: …``) and says what was expected.

:func:`load_config` checks what can be checked without side effects, in two passes:
first every field's type and value (the broker URL included), then the files the config
names (device key and certificate, PKCS#11 module, TLS files, TUF root: they exist and
are readable; TLS files load as the MQTT clients load them). The policy bundle is the
agent's to load (``agent.pipeline.runner.Agent`` loads it, and the key, before it writes anything).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from agent.errors import ConfigError
from agent.logs import LEVELS as _LOG_LEVELS
from agent.transport.options import MqttVersion, parse_version

__all__ = [
    "AgentConfig",
    "ExpectedChannel",
    "ModbusRegister",
    "ModbusSlave",
    "MqttOutput",
    "SerialSettings",
    "SourceConfig",
    "TextField",
    "TufSettings",
    "load_config",
]

_PROTOCOLS = ("framed", "text", "modbus")
_PARITIES = ("N", "E", "O", "M", "S")
_TEXT_FORMATS = ("kv", "json")
_REGISTER_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_REGISTER_TABLES = ("holding", "input")
_TOPIC_UNSAFE = "+#/\x00"  # never inside one MQTT topic level


@dataclass(frozen=True)
class SerialSettings:
    """How to open the port (pyserial names and values)."""

    port: str
    baud: int = 115200
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1


@dataclass(frozen=True)
class ExpectedChannel:
    """A channel the device's HELLO must announce, with this unit (framed sources)."""

    name: str
    unit: str


@dataclass(frozen=True)
class TextField:
    """Text sources: line field ``field`` -> policy channel ``channel`` (value * scale + offset)."""

    field: str
    channel: str
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class ModbusRegister:
    """One value in a slave's register map -> policy channel ``channel``."""

    channel: str
    address: int
    type: str = "uint16"  # int16 | uint16 | int32 | uint32 | float32 (big-endian words)
    table: str = "holding"  # holding | input
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""

    @property
    def words(self) -> int:
        """16-bit registers this value occupies."""
        return _REGISTER_TYPES[self.type]


@dataclass(frozen=True)
class ModbusSlave:
    unit_id: int
    registers: tuple[ModbusRegister, ...]


@dataclass(frozen=True)
class SourceConfig:
    """One input source. ``protocol`` decides which of the optional parts apply."""

    serial: SerialSettings
    protocol: str = "framed"
    name: str = ""
    reconnect_initial_s: float = 0.25
    reconnect_max_s: float = 10.0
    # framed: what HELLO must announce (empty: the policy's channels, by name and unit)
    expect: tuple[ExpectedChannel, ...] = ()
    # text
    text_format: str = "kv"
    fields: tuple[TextField, ...] = ()
    # modbus
    poll_period_s: float = 1.0
    response_timeout_s: float = 0.2
    slaves: tuple[ModbusSlave, ...] = ()

    @property
    def port(self) -> str:
        return self.serial.port

    @property
    def baud(self) -> int:
        return self.serial.baud


@dataclass(frozen=True)
class MqttOutput:
    urls: tuple[str, ...]  # output.mqtt.url: one URL or a list (a cluster's nodes, in order)
    topic_prefix: str = "edgegov"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    version: MqttVersion = "5"  # output.mqtt.version: 5 or 3.1.1


@dataclass(frozen=True)
class TufSettings:
    """``tuf:`` section: fleet configuration over TUF (agent/fleet/client.py)."""

    root: Path  # the fleet's trusted root.json; configured = fail closed
    group: str | None = None
    refresh_seconds: float = 300.0


@dataclass(frozen=True)
class Pkcs11Key:
    """A device key held in a PKCS#11 token; the PIN comes from an environment variable."""

    module: Path
    token: str
    label: str
    pin_env: str


@dataclass(frozen=True)
class AgentConfig:
    source: Path
    device_id: str
    key_path: Path | None  # None when the key lives in a PKCS#11 token (``pkcs11``)
    fleet: str
    policy_path: Path | None  # None: only with ``tuf`` (the policy comes from the fleet)
    state_dir: Path
    sources: tuple[SourceConfig, ...]
    mqtt: MqttOutput | None
    spool_dir: Path | None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    risk_threads: int = 1
    device_cert: Path | None = None  # device.cert: PEM chain sent as COSE x5chain
    retention_days: float | None = None  # evidence.retention_days: raw readings kept
    evidence_max_mb: float | None = None  # evidence.max_mb: disk quota; readings shed first
    intake_readings: int = 65_536  # evidence.intake_readings: queued before shedding (counted)
    tuf: TufSettings | None = None  # tuf: signed fleet configuration
    pkcs11: Pkcs11Key | None = None  # device.pkcs11: sign inside an HSM / TPM / SoftHSM2
    log_level: str | None = None  # log.level; None: --log-level or info (agent.logs)


class _Fields:
    """Typed access to one YAML mapping, with errors naming file and field path."""

    def __init__(self, data: Any, file: Path, path: str) -> None:
        if not isinstance(data, Mapping):
            where = f"{path}: expected" if path else "expected the file to hold"
            raise ConfigError(f"{file}: {where} a mapping, got {type(data).__name__}")
        self.data, self.file, self.path = data, file, path

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self._name(key)}: {msg}")

    def get(self, key: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.err(key, "required field is missing")
            return default
        v = self.data[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self.err(key, f"expected {want}, got {type(v).__name__} {v!r}")
        return v

    def path_of(self, key: str, default: Any = ...) -> Path | None:
        v = self.get(key, str, default)
        if v is None:
            return None
        p = Path(v).expanduser()
        return p if p.is_absolute() else (self.file.parent / p)

    def sub(self, key: str, optional: bool = False) -> _Fields:
        """The mapping under ``key`` (absent and ``optional``: an empty one)."""
        return _Fields(self.data.get(key, {} if optional else None), self.file, self._name(key))

    def reject_unknown(self, known: set[str]) -> None:
        extra = sorted(set(map(str, self.data)) - known)
        if extra:
            raise ConfigError(
                f"{self.file}: {self.path or 'top level'}: unknown field(s) "
                f"{', '.join(extra)} (known: {', '.join(sorted(known))})"
            )


def _number(f: _Fields, key: str, default: float, *, positive: bool = False) -> float:
    v = _maybe_number(f, key, default, positive=positive)
    assert v is not None
    return v


def _maybe_number(
    f: _Fields, key: str, default: float | None, *, positive: bool = False
) -> float | None:
    raw = f.get(key, (int, float), default)
    if raw is None:
        return None
    v = float(raw)
    if v != v or v in (float("inf"), float("-inf")) or (positive and v <= 0):
        raise f.err(key, f"must be a finite{' positive' if positive else ''} number, got {v!r}")
    return v


def _topic_level(f: _Fields, key: str, default: Any = ...) -> str:
    """A name used as one MQTT topic level (fleet, device id, topic prefix, group)."""
    v: str = f.get(key, str, default)
    if not v or any(c in v for c in _TOPIC_UNSAFE) or any(c.isspace() for c in v):
        raise f.err(key, f"{v!r} must be non-empty, without whitespace, '/', '+', '#' or NUL")
    return v


def _readable(f: _Fields, key: str, path: Path | None, what: str, hint: str = "") -> None:
    """``path`` (the value of field ``key``) is a file we can read."""
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise f.err(key, f"{path}: cannot read the {what}: {e.strerror or e}{hint}") from e


def _broker_urls(m: _Fields) -> tuple[tuple[str, ...], bool]:
    """``output.mqtt.url`` (one URL or a list), parsed as the publisher will parse it;
    returns (urls, tls). A bad entry is named by its index (``output.mqtt.url[1]``)."""
    from agent.transport.mqtt import BrokerURL  # paho: only once a config names a broker

    raw: str | list[Any] = m.get("url", (str, list))
    parsed = BrokerURL.parse_all(raw, f"{m.file}: {m._name('url')}")
    return ((raw,) if isinstance(raw, str) else tuple(raw)), parsed[0].tls


def _check_tls(m: _Fields, mqtt: MqttOutput, tls: bool) -> None:
    """The TLS files exist, are readable, and load as the MQTT clients load them."""
    from agent.transport.mqtt_tls import TlsFiles, client_context

    given = [(k, p) for k, p in (("ca", mqtt.ca), ("cert", mqtt.cert), ("key", mqtt.key)) if p]
    if not tls:
        for k, _p in given:
            raise m.err(k, "a TLS file, but output.mqtt.url is mqtt:// (no TLS): use mqtts://")
        return
    for k, p in given:
        _readable(m, k, p, {"ca": "broker CA", "cert": "client certificate"}.get(k, "client key"))
    if mqtt.key is not None and mqtt.cert is None:
        raise m.err("key", "a client key needs its certificate: set output.mqtt.cert")
    for k, files in (
        ("ca", TlsFiles(mqtt.ca) if mqtt.ca else None),
        ("cert", TlsFiles(mqtt.ca, mqtt.cert, mqtt.key) if mqtt.cert else None),
    ):
        if files is not None:
            try:
                client_context(files)
            except ConfigError as e:
                raise m.err(k, str(e)) from e


def _serial(s: _Fields) -> SerialSettings:
    port = s.get("port", str)
    if not port:
        raise s.err("port", "must be a device path, e.g. /dev/ttyUSB0")
    baud = s.get("baud", int, 115200)
    if baud <= 0:
        raise s.err("baud", f"must be positive, got {baud}")
    bytesize = s.get("bytesize", int, 8)
    if bytesize not in (5, 6, 7, 8):
        raise s.err("bytesize", f"must be 5, 6, 7 or 8, got {bytesize}")
    parity = s.get("parity", str, "N")
    if parity not in _PARITIES:
        raise s.err("parity", f"must be one of {', '.join(_PARITIES)}, got {parity!r}")
    stopbits = s.get("stopbits", int, 1)
    if stopbits not in (1, 2):
        raise s.err("stopbits", f"must be 1 or 2, got {stopbits}")
    return SerialSettings(port, baud, bytesize, parity, stopbits)


def _items(s: _Fields, key: str, required: bool) -> list[_Fields]:
    raw = s.get(key, list, None if not required else ...)
    if raw is None:
        return []
    if required and not raw:
        raise s.err(key, "must list at least one entry")
    return [_Fields(x, s.file, f"{s._name(key)}[{j}]") for j, x in enumerate(raw)]


def _register(r: _Fields) -> ModbusRegister:
    r.reject_unknown({"channel", "address", "type", "table", "scale", "offset", "unit"})
    address = r.get("address", int)
    if not 0 <= address <= 0xFFFF:
        raise r.err("address", f"must be a register number 0..65535, got {address}")
    typ = r.get("type", str, "uint16")
    if typ not in _REGISTER_TYPES:
        raise r.err("type", f"must be one of {', '.join(_REGISTER_TYPES)}, got {typ!r}")
    table = r.get("table", str, "holding")
    if table not in _REGISTER_TABLES:
        raise r.err("table", f"must be holding or input, got {table!r}")
    return ModbusRegister(
        r.get("channel", str),
        address,
        typ,
        table,
        _number(r, "scale", 1.0),
        _number(r, "offset", 0.0),
        r.get("unit", str, ""),
    )


def _source(s: _Fields, index: int) -> SourceConfig:
    common = {"name", "protocol", "port", "baud", "bytesize", "parity", "stopbits", "reconnect"}
    per_protocol = {
        "framed": {"expect"},
        "text": {"format", "fields"},
        "modbus": {"poll", "slaves"},
    }
    proto = s.get("protocol", str, "framed")
    if proto not in _PROTOCOLS:
        raise s.err("protocol", f"{proto!r} is not supported (expected one of {_PROTOCOLS})")
    s.reject_unknown(common | per_protocol[proto])
    name = s.get("name", str, f"source{index}")
    if not name or any(c.isspace() for c in name):
        raise s.err("name", f"{name!r} must be non-empty without whitespace")
    serial = _serial(s)
    rc = s.sub("reconnect", optional=True)
    rc.reject_unknown({"initial_s", "max_s"})
    initial = _number(rc, "initial_s", 0.25, positive=True)
    cap = _number(rc, "max_s", 10.0, positive=True)
    if cap < initial:
        raise rc.err("max_s", f"must be >= initial_s ({initial}), got {cap}")
    out = SourceConfig(serial, proto, name, initial, cap)
    if proto == "framed":
        expect = []
        for e in _items(s, "expect", required=False):
            e.reject_unknown({"name", "unit"})
            expect.append(ExpectedChannel(e.get("name", str), e.get("unit", str)))
        return replace(out, expect=tuple(expect))
    if proto == "text":
        fmt = s.get("format", str, "kv")
        if fmt not in _TEXT_FORMATS:
            raise s.err("format", f"must be kv (key=value,...) or json, got {fmt!r}")
        fields = []
        for f in _items(s, "fields", required=True):
            f.reject_unknown({"field", "channel", "scale", "offset"})
            channel = f.get("channel", str)
            fields.append(
                TextField(
                    f.get("field", str, channel),
                    channel,
                    _number(f, "scale", 1.0),
                    _number(f, "offset", 0.0),
                )
            )
        return replace(out, text_format=fmt, fields=tuple(fields))
    poll = s.sub("poll", optional=True)
    poll.reject_unknown({"period_s", "timeout_s"})
    period = _number(poll, "period_s", 1.0, positive=True)
    timeout = _number(poll, "timeout_s", 0.2, positive=True)
    slaves = []
    for sl in _items(s, "slaves", required=True):
        sl.reject_unknown({"unit", "registers"})
        unit = sl.get("unit", int)
        if not 1 <= unit <= 247:
            raise sl.err("unit", f"must be a Modbus slave address 1..247, got {unit}")
        regs = tuple(_register(r) for r in _items(sl, "registers", required=True))
        slaves.append(ModbusSlave(unit, regs))
    return replace(out, poll_period_s=period, response_timeout_s=timeout, slaves=tuple(slaves))


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent config file (see the module docstring).

    Raises ConfigError naming the file (resolved) and the full field path.
    """
    file = Path(path).resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{file}: cannot read config: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file}: not UTF-8 text (byte {e.start})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{file}{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    top = _Fields(data, file, "")
    top.reject_unknown(
        {"device", "fleet", "policy", "state_dir", "sources", "output", "risk", "evidence"}
        | {"tuf", "log"}
    )

    # -- pass 1: every field's type and value ------------------------------------------
    dev = top.sub("device")
    dev.reject_unknown({"id", "key", "cert", "pkcs11"})
    pkcs11 = None
    p11 = None
    if "pkcs11" in dev.data:
        p11 = dev.sub("pkcs11")
        p11.reject_unknown({"module", "token", "key", "pin_env"})
        pkcs11 = Pkcs11Key(
            p11.path_of("module"),  # type: ignore[arg-type]
            p11.get("token", str),
            p11.get("key", str),
            p11.get("pin_env", str, "EDGEGOV_PKCS11_PIN"),
        )
    if ("key" in dev.data) == (pkcs11 is not None):
        raise dev.err("key", "give exactly one of device.key (a key file) or device.pkcs11")
    device_id = _topic_level(dev, "id")
    fleet = _topic_level(top, "fleet")

    raw_sources = top.get("sources", list)
    if not raw_sources:
        raise top.err("sources", "at least one serial source is needed")
    sources = [_source(_Fields(raw, file, f"sources[{i}]"), i) for i, raw in enumerate(raw_sources)]
    names = [src.name for src in sources]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise top.err(f"sources[{i}].name", f"{name!r} is used by another source")

    out = top.sub("output")
    out.reject_unknown({"mqtt", "spool"})
    mqtt_cfg = None
    m = None
    tls = False
    if "mqtt" in out.data:
        m = out.sub("mqtt")
        m.reject_unknown({"url", "topic_prefix", "ca", "cert", "key", "version"})
        urls, tls = _broker_urls(m)
        mqtt_cfg = MqttOutput(
            urls,
            _topic_level(m, "topic_prefix", "edgegov"),
            m.path_of("ca", None),
            m.path_of("cert", None),
            m.path_of("key", None),
            parse_version(m.data.get("version", "5"), f"{file}: {m._name('version')}"),
        )
    spool = out.path_of("spool", None)
    if (mqtt_cfg is None) == (spool is None):
        raise out.err("mqtt", "give exactly one of output.mqtt or output.spool")

    risk = top.sub("risk", optional=True)
    risk.reject_unknown({"providers", "threads"})
    providers = risk.get("providers", list, ["CPUExecutionProvider"])
    if not providers:
        raise risk.err("providers", "expected a non-empty list of execution provider names")
    for i, name in enumerate(providers):
        if not isinstance(name, str) or not name:
            raise risk.err(
                f"providers[{i}]",
                f"expected an execution provider name (e.g. CPUExecutionProvider), got {name!r}",
            )
    threads = risk.get("threads", int, 1)
    if threads < 1:
        raise risk.err("threads", f"must be at least 1, got {threads}")

    ev = top.sub("evidence", optional=True)
    ev.reject_unknown({"retention_days", "max_mb", "intake_readings"})
    retention = _maybe_number(ev, "retention_days", None, positive=True)
    max_mb = _maybe_number(ev, "max_mb", None, positive=True)
    intake = ev.get("intake_readings", int, 65_536)
    if intake < 1:
        raise ev.err("intake_readings", f"must be at least 1, got {intake}")

    lg = top.sub("log", optional=True)
    lg.reject_unknown({"level"})
    log_level = lg.get("level", str, None)
    if log_level is not None and log_level not in _LOG_LEVELS:
        raise lg.err("level", f"must be one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")

    tuf = None
    t = None
    if "tuf" in top.data:
        t = top.sub("tuf")
        t.reject_unknown({"root", "group", "refresh_seconds"})
        if mqtt_cfg is None:
            raise t.err("root", "fleet configuration arrives over MQTT: set output.mqtt")
        tuf = TufSettings(
            t.path_of("root"),  # type: ignore[arg-type]
            _topic_level(t, "group", None) if t.data.get("group") is not None else None,
            _number(t, "refresh_seconds", 300.0, positive=True),
        )
    if "policy" not in top.data and tuf is None:
        raise top.err(
            "policy",
            "required field is missing (a policy bundle; or tuf: to run the fleet's signed one)",
        )
    policy = top.path_of("policy", None)
    state_dir = top.path_of("state_dir")
    assert state_dir is not None
    key_path = dev.path_of("key", None)
    device_cert = dev.path_of("cert", None)

    # -- pass 2: the files it names ------------------------------------------------------
    _readable(dev, "key", key_path, "device key", " (create one with 'edgegov init')")
    _readable(dev, "cert", device_cert, "device certificate")
    if p11 is not None and pkcs11 is not None:
        _readable(p11, "module", pkcs11.module, "PKCS#11 module")
    if state_dir.exists() and not state_dir.is_dir():
        raise top.err("state_dir", f"{state_dir}: exists and is not a directory")
    if m is not None and mqtt_cfg is not None:
        _check_tls(m, mqtt_cfg, tls)
    if t is not None and tuf is not None:
        _readable(t, "root", tuf.root, "fleet's trusted root.json")

    return AgentConfig(
        source=file,
        device_id=device_id,
        key_path=key_path,
        fleet=fleet,
        policy_path=policy,
        state_dir=state_dir,
        sources=tuple(sources),
        mqtt=mqtt_cfg,
        spool_dir=spool,
        providers=tuple(providers),
        risk_threads=threads,
        device_cert=device_cert,
        retention_days=retention,
        evidence_max_mb=max_mb,
        intake_readings=intake,
        tuf=tuf,
        pkcs11=pkcs11,
        log_level=log_level,
    )
