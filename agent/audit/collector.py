"""Collect attestations from a broker into a directory of ``.cose`` files.

Messages are stored exactly as received, named by the SHA-256 of their bytes,
so a redelivered message (QoS 1 is at-least-once) lands on the same file and
collection is idempotent. Nothing is trusted here; ``audit verify`` decides.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import TransportError
from agent.transport import BrokerURL

__all__ = ["FileCollector"]


class FileCollector:
    """Subscribes to ``{prefix}/{fleet}/+/attestation`` and writes each message to disk."""

    def __init__(self, url: str, out_dir: Path, fleet: str = "+", prefix: str = "edgegov") -> None:
        self.url = BrokerURL.parse(url, "broker URL")
        self.out_dir = out_dir
        self.topic = f"{prefix}/{fleet}/+/attestation"
        self.received = 0
        self.stored: set[str] = set()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5,
            client_id=f"edgegov-collector-{os.getpid()}",
        )
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_message = self._on_message
        self._client = c

    def start(self, timeout: float = 5.0) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._client.connect(self.url.host, self.url.port, keepalive=30)
        except OSError as e:
            raise TransportError(f"collector cannot reach broker {self.url}: {e}") from e
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TransportError(f"collector could not subscribe at {self.url} within {timeout} s")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[-2]
        name = hashlib.sha256(msg.payload).hexdigest()[:32]
        d = self.out_dir / device
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{name}.cose"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msg.payload)
        os.replace(tmp, path)
        with self._lock:
            self.received += 1
            self.stored.add(name)
