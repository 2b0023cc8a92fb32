"""How an operator names a broker: the MQTT version, and the command-line options.

Kept apart from :mod:`agent.transport.mqtt` so that the command line and the config
loader can name a version without importing paho.

* :data:`MQTT_VERSIONS`: ``"5"`` (the default) and ``"3.1.1"``; :func:`parse_version`
  reads one from YAML (``5`` is an int there, ``3.1.1`` a string) or a command line.
* :func:`add_broker_args`: ``--broker URL`` (repeat it: a list, tried in order, with
  failover), ``--mqtt-version``, ``--ca``/``--cert``/``--key``; the fleet commands and
  ``audit collect`` register them with this one function.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Literal

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.transport.mqtt import BrokerURL
    from agent.transport.mqtt_tls import TlsFiles

__all__ = ["MQTT_VERSIONS", "MqttVersion", "add_broker_args", "broker_tls", "broker_urls",
           "parse_version"]  # fmt: skip

MqttVersion = Literal["5", "3.1.1"]
MQTT_VERSIONS: tuple[MqttVersion, ...] = ("5", "3.1.1")


def parse_version(value: object, where: str) -> MqttVersion:
    """``5`` (int or text) or ``"3.1.1"``; anything else is a ConfigError naming ``where``."""
    text = "" if isinstance(value, bool) or not isinstance(value, (int, str)) else str(value)
    if text.strip() == "5":
        return "5"
    if text == "3.1.1":
        return "3.1.1"
    raise ConfigError(f"{where}: must be 5 or 3.1.1 (the MQTT protocol version), got {value!r}")


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """``--broker`` (required, repeatable), ``--mqtt-version``, ``--ca``, ``--cert``, ``--key``."""
    p.add_argument(
        "--broker",
        action="append",
        required=True,
        metavar="URL",
        help="mqtt://host:port or mqtts://…; repeat for a cluster: the first reachable one "
        "is used, the next when it fails",
    )
    p.add_argument(
        "--mqtt-version",
        choices=MQTT_VERSIONS,
        default="5",
        help="MQTT protocol version (5); 3.1.1 for brokers without MQTT 5 (docs/scaling.md)",
    )
    p.add_argument("--ca", help="CA certificate of the broker (mqtts; default: the system's)")
    p.add_argument("--cert", help="client certificate (mutual TLS)")
    p.add_argument("--key", help="client key (mutual TLS)")


def broker_urls(a: argparse.Namespace) -> tuple[BrokerURL, ...]:
    """The ``--broker`` URLs, parsed; ConfigError names the one that is wrong."""
    from agent.transport.mqtt import BrokerURL

    return BrokerURL.parse_all(a.broker, "--broker")


def broker_tls(a: argparse.Namespace) -> TlsFiles | None:
    from agent.transport.mqtt_tls import TlsFiles

    return TlsFiles.given(a.ca, a.cert, a.key)
