"""The brokers the tests run against, each started once per test module: Mosquitto
(MQTT 5 and 3.1.1), a NATS server with JetStream and its MQTT listener, a RabbitMQ node
with the MQTT plugin (3.1.1 only; slow to start, so its cases are marked slow).

A test module imports ``PARAMS`` and ``TARGETS`` and the fixtures by name (pytest finds
fixtures imported into the module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.tools.broker import MosquittoBroker
from agent.tools.brokers import NatsServer, RabbitNode

__all__ = ["PARAMS", "TARGETS", "mosquitto", "nats", "rabbit"]

#: name -> (broker fixture, MQTT version as the agent's config spells it)
TARGETS = {
    "mosquitto-v5": ("mosquitto", "5"),
    "mosquitto-v311": ("mosquitto", "3.1.1"),
    "nats": ("nats", "3.1.1"),
    "rabbitmq": ("rabbit", "3.1.1"),
}
PARAMS = [
    pytest.param(k, id=k, marks=[pytest.mark.slow] if k == "rabbitmq" else []) for k in TARGETS
]


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as b:
        yield b


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    with RabbitNode(tmp_path_factory.mktemp("rabbit")) as b:
        print(f"\nRabbitMQ node up in {b.startup_seconds:.1f} s")
        yield b
