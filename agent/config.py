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
    risk: {providers: [CPUExecutionProvider], threads: 1}

Relative paths are relative to the config file. Every error names the file and
the field (``sources[0].baud``) and says what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.errors import ConfigError

__all__ = ["AgentConfig", "MqttOutput", "SourceConfig", "load_config"]

_PROTOCOLS = ("framed",)


@dataclass(frozen=True)
class SourceConfig:
    port: str
    baud: int = 115200
    protocol: str = "framed"


@dataclass(frozen=True)
class MqttOutput:
    url: str
    topic_prefix: str = "edgegov"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class AgentConfig:
    source: Path
    device_id: str
    key_path: Path
    fleet: str
    policy_path: Path
    state_dir: Path
    sources: tuple[SourceConfig, ...]
    mqtt: MqttOutput | None
    spool_dir: Path | None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    risk_threads: int = 1


class _Fields:
    """Typed access to one YAML mapping, with errors naming file and field path."""

    def __init__(self, data: Any, file: Path, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{file}: {path or 'the file'} must be a mapping, got {type(data).__name__}"
            )
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
        if not isinstance(v, typ) or (isinstance(v, bool) and typ is int):
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self.err(key, f"expected {want}, got {type(v).__name__} {v!r}")
        return v

    def path_of(self, key: str, default: Any = ...) -> Path | None:
        v = self.get(key, str, default)
        if v is None:
            return None
        p = Path(v).expanduser()
        return p if p.is_absolute() else (self.file.parent / p)

    def sub(self, key: str) -> _Fields:
        return _Fields(self.data.get(key), self.file, self._name(key))

    def reject_unknown(self, known: set[str]) -> None:
        extra = sorted(set(map(str, self.data)) - known)
        if extra:
            raise ConfigError(
                f"{self.file}: {self.path or 'top level'}: unknown field(s) "
                f"{', '.join(extra)} (known: {', '.join(sorted(known))})"
            )


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent config file."""
    file = Path(path).resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{file}: cannot read config: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{file}{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    top = _Fields(data, file, "")
    top.reject_unknown({"device", "fleet", "policy", "state_dir", "sources", "output", "risk"})

    dev = top.sub("device")
    dev.reject_unknown({"id", "key"})
    device_id = dev.get("id", str)
    if not device_id or any(c in device_id for c in "+#/ \x00"):
        raise dev.err("id", f"{device_id!r} must be non-empty, without spaces, '/', '+' or '#'")

    raw_sources = top.get("sources", list)
    if not raw_sources:
        raise top.err("sources", "at least one serial source is needed")
    sources = []
    for i, raw in enumerate(raw_sources):
        s = _Fields(raw, file, f"sources[{i}]")
        s.reject_unknown({"port", "baud", "protocol"})
        proto = s.get("protocol", str, "framed")
        if proto not in _PROTOCOLS:
            raise s.err("protocol", f"{proto!r} is not supported (expected one of {_PROTOCOLS})")
        baud = s.get("baud", int, 115200)
        if baud <= 0:
            raise s.err("baud", f"must be positive, got {baud}")
        sources.append(SourceConfig(s.get("port", str), baud, proto))

    out = top.sub("output")
    out.reject_unknown({"mqtt", "spool"})
    mqtt_cfg = None
    if "mqtt" in out.data:
        m = out.sub("mqtt")
        m.reject_unknown({"url", "topic_prefix", "ca", "cert", "key"})
        mqtt_cfg = MqttOutput(
            m.get("url", str),
            m.get("topic_prefix", str, "edgegov"),
            m.path_of("ca", None),
            m.path_of("cert", None),
            m.path_of("key", None),
        )
    spool = out.path_of("spool", None)
    if (mqtt_cfg is None) == (spool is None):
        raise out.err("mqtt", "give exactly one of output.mqtt or output.spool")

    risk = _Fields(top.data.get("risk", {}), file, "risk")
    risk.reject_unknown({"providers", "threads"})
    providers = risk.get("providers", list, ["CPUExecutionProvider"])
    if not providers or not all(isinstance(p, str) for p in providers):
        raise risk.err("providers", "expected a non-empty list of execution provider names")
    threads = risk.get("threads", int, 1)

    state_dir = top.path_of("state_dir")
    assert state_dir is not None and dev.path_of("key") is not None
    return AgentConfig(
        source=file,
        device_id=device_id,
        key_path=dev.path_of("key"),  # type: ignore[arg-type]
        fleet=top.get("fleet", str),
        policy_path=top.path_of("policy"),  # type: ignore[arg-type]
        state_dir=state_dir,
        sources=tuple(sources),
        mqtt=mqtt_cfg,
        spool_dir=spool,
        providers=tuple(providers),
        risk_threads=threads,
    )
