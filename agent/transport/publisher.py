"""Getting evidence off the gateway: MQTT (paho-mqtt 2.x) or a local spool directory.

Both publishers take :class:`~agent.evidence.store.OutboxItem` rows and call
``on_ack(seq)`` only once the evidence is safe elsewhere (MQTT: PUBACK with a
success reason code; spool: file written and fsynced). Until then the row stays
in the SQLite outbox, so an outage or a crash loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import ConfigError, StorageError
from agent.evidence.claims import CONTENT_TYPE
from agent.evidence.store import OutboxItem
from agent.transport.mqtt_tls import TlsFiles, client_context

__all__ = ["BrokerURL", "MqttPublisher", "Publisher", "SpoolPublisher", "Topics"]

log = logging.getLogger("edgegov.transport")

_WINDOW = 16  # attestations in flight at once (QoS 1, awaiting PUBACK)


@dataclass(frozen=True)
class Topics:
    """The per-device topic tree (PRODUCT.md §7): ``{prefix}/{fleet}/{device}/...``."""

    prefix: str
    fleet: str
    device: str

    def __post_init__(self) -> None:
        for name in ("prefix", "fleet", "device"):
            value = getattr(self, name)
            if not value or any(c in value for c in "+#/\x00"):
                raise ConfigError(
                    f"MQTT topic part {name}={value!r} must be non-empty "
                    "and contain no '+', '#', '/' or NUL"
                )

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.fleet}/{self.device}"

    @property
    def attestation(self) -> str:
        return f"{self.base}/attestation"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def alert(self) -> str:
        return f"{self.base}/alert"


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr or a log line

    @classmethod
    def parse(cls, url: str, where: str = "mqtt.url") -> BrokerURL:
        """``mqtt[s]://[user[:password]@]host[:port]``; errors never repeat the password."""
        form = "expected mqtt[s]://[user[:password]@]host[:port]"
        try:
            parts = urlsplit(url)
            shown = repr(url.replace(f":{parts.password}@", ":***@") if parts.password else url)
            port = parts.port
        except ValueError as e:  # e.g. an unclosed IPv6 bracket, a port beyond 65535
            raise ConfigError(f"{where}: not a broker URL ({e}; {form})") from e
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"{where}: {shown} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ConfigError(f"{where}: {shown} has no host ({form})")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"{where}: {shown} has a path, query or fragment ({form})")
        if port == 0:
            raise ConfigError(f"{where}: {shown} has port 0 ({form})")
        if parts.password is not None and not parts.username:
            raise ConfigError(f"{where}: {shown} has a password but no user name ({form})")
        tls = parts.scheme == "mqtts"
        user = unquote(parts.username) if parts.username else None
        pw = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port or (8883 if tls else 1883), tls, user, pw)

    def __str__(self) -> str:  # never print the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class Publisher(Protocol):
    def start(self, pending: list[OutboxItem]) -> None: ...
    def publish(self, item: OutboxItem) -> None: ...
    def publish_status(self, status: dict[str, Any]) -> None: ...
    def publish_alert(self, alert: dict[str, Any]) -> None: ...
    def unacknowledged(self) -> int: ...
    def stop(self, timeout: float) -> int: ...


class SpoolPublisher:
    """Writes each attestation to ``DIR/<device>/<seq>.cose`` (no broker needed)."""

    def __init__(self, directory: Path, device: str, on_ack: Callable[[int], None]) -> None:
        self.dir = directory / device
        self.on_ack = on_ack

    def start(self, pending: list[OutboxItem]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for item in pending:
            self.publish(item)

    def publish(self, item: OutboxItem) -> None:
        final = self.dir / f"{item.seq:010d}.cose"
        tmp = final.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(item.payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as e:
            # Stays in the outbox; retried at the next start.
            raise StorageError(f"{final}: cannot write to the spool: {e.strerror}") from e
        self.on_ack(item.seq)

    def publish_status(self, status: dict[str, Any]) -> None:
        (self.dir / "status.json").write_text(json.dumps(status, indent=2) + "\n")

    def publish_alert(self, alert: dict[str, Any]) -> None:
        with open(self.dir / "alerts.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(alert) + "\n")

    def unacknowledged(self) -> int:
        return 0

    def stop(self, timeout: float) -> int:
        return 0


class MqttPublisher:
    """QoS 1 publisher over MQTT v5; an outbox row is acknowledged only on PUBACK."""

    def __init__(
        self,
        url: BrokerURL,
        topics: Topics,
        on_ack: Callable[[int], None],
        *,
        client_id: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        keepalive: int = 30,
    ) -> None:
        self.url = url
        self.topics = topics
        self.on_ack = on_ack
        self._lock = threading.Lock()
        self._inflight: dict[int, int | None] = {}  # paho mid -> seq (None: status message)
        self._early: dict[int, Any] = {}  # mid -> reason code of a PUBACK that beat _track
        # Attestations go to paho from one sender thread, in seq order, at most _WINDOW
        # unacknowledged at a time: below paho's own inflight cap, so paho never queues one
        # while connected (paho can send a new message ahead of its queued ones).
        self._queue: deque[OutboxItem] = deque()
        self._outstanding = 0
        self._cond = threading.Condition(self._lock)
        self._closing = False
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._connected = threading.Event()
        self._last_fail_log = 0.0
        self._keepalive = keepalive
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgegov-{topics.fleet}-{topics.device}",
            protocol=mqtt.MQTTv5,
        )
        c.max_queued_messages_set(0)  # unbounded: the outbox is the real bound
        c.max_inflight_messages_set(_WINDOW + 4)  # room for status messages
        # Capped exponential backoff with a per-gateway random scale, so a fleet that lost
        # its broker together does not come back in lock-step (thundering herd).
        scale = random.uniform(0.5, 1.0)
        c.reconnect_delay_set(min_delay=scale, max_delay=30 * scale)  # type: ignore[arg-type]
        if url.username:
            c.username_pw_set(url.username, url.password)
        if url.tls:
            c.tls_set_context(client_context(TlsFiles(ca_file, cert_file, key_file)))
        c.will_set(
            topics.status,
            json.dumps({"state": "offline", "device": topics.device}),
            qos=1,
            retain=True,
        )
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._client = c
        self._status: dict[str, Any] = {}
        self._json = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self._json.ContentType = "application/json"  # status and alerts

    # -- lifecycle -------------------------------------------------------------
    def start(self, pending: list[OutboxItem]) -> None:
        """Connect in the background and queue everything still in the outbox."""
        # A persistent session (clean start off, RFC: MQTT v5 §3.1.2.4) so the broker keeps
        # our subscriptions and QoS 1 state across short outages.
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 24 * 3600
        self._client.connect_async(
            self.url.host,
            self.url.port,
            keepalive=self._keepalive,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()
        self._sender.start()
        for item in pending:
            self.publish(item)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for outstanding PUBACKs, then disconnect.

        Returns how many attestations are still unacknowledged (they stay in
        the outbox and are sent at the next start).
        """
        deadline = time.monotonic() + timeout
        while self.unacknowledged() and time.monotonic() < deadline and self._connected.is_set():
            time.sleep(0.02)
        left = self.unacknowledged()
        if self._connected.is_set():
            offline = {**self._status, "state": "offline"}
            info = self._client.publish(self.topics.status, json.dumps(offline), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # best effort; the LWT covers it
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._sender.join(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()
        return left

    # -- publishing ------------------------------------------------------------
    def publish(self, item: OutboxItem) -> None:
        """Queue an attestation; the sender thread hands it to paho in order."""
        with self._cond:
            self._queue.append(item)
            self._cond.notify_all()

    def _send_loop(self) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = CONTENT_TYPE
        while True:
            with self._cond:
                while not self._closing and (not self._queue or self._outstanding >= _WINDOW):
                    self._cond.wait()
                if self._closing:
                    return
                item = self._queue.popleft()
                self._outstanding += 1
            # Never call paho while holding our lock: its network thread holds paho's own
            # lock while it waits for ours in _on_publish. Offline, paho queues it and sends
            # it on reconnect, in order.
            info = self._client.publish(item.topic, item.payload, qos=1, properties=props)
            self._track(info.mid, item.seq)

    def publish_status(self, status: dict[str, Any]) -> None:
        self._status = status
        info = self._client.publish(
            self.topics.status, json.dumps(status), qos=1, retain=True, properties=self._json
        )
        self._track(info.mid, None)

    def publish_alert(self, alert: dict[str, Any]) -> None:
        """JSON on ``.../alert``, QoS 1; paho queues it while we are offline."""
        info = self._client.publish(
            self.topics.alert, json.dumps(alert), qos=1, properties=self._json
        )
        self._track(info.mid, None)

    def _track(self, mid: int, seq: int | None) -> None:
        """Remember what ``mid`` carries, or settle it if its PUBACK already came."""
        with self._lock:
            rc = self._early.pop(mid, None)
            if rc is None:
                self._inflight[mid] = seq
                return
        if seq is not None:
            self._settle(seq, rc)

    def unacknowledged(self) -> int:
        """Attestations handed to us and not yet acknowledged by the broker."""
        with self._lock:
            return len(self._queue) + self._outstanding

    # -- paho callbacks (network thread) -----------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.url, rc)
            return
        self._connected.set()
        log.info("connected to broker %s", self.url)
        if self._status:
            self.publish_status(self._status)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        now = time.monotonic()
        if now - self._last_fail_log > 30:
            self._last_fail_log = now
            log.warning(
                "cannot reach broker %s (%s); retrying with backoff. Attestations are kept in "
                "the outbox (%d waiting) and sent in order when it is back",
                self.url,
                self._probe(),
                self.unacknowledged(),
            )

    def _probe(self) -> str:
        """Why the broker is unreachable, in the operating system's words (diagnostics only)."""
        try:
            socket.create_connection((self.url.host, self.url.port), timeout=2).close()
        except OSError as e:
            return e.strerror or str(e) or type(e).__name__
        return "TCP connects, but the MQTT connection failed"

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and rc.value != 0:
            log.warning("lost the broker %s (%s); reconnecting, nothing is lost", self.url, rc)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any
    ) -> None:
        with self._lock:
            if mid not in self._inflight:
                self._early[mid] = rc  # PUBACK before publish() returned; _track settles it
                return
            seq = self._inflight.pop(mid)
        if seq is not None:  # None: a status message
            self._settle(seq, rc)

    def _settle(self, seq: int, rc: Any) -> None:
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()
        if rc.is_failure:
            # e.g. 0x87 not authorised: the broker did NOT take it. Keep it in the outbox.
            log.error("broker rejected attestation seq %d: %s; kept in the outbox", seq, rc)
            return
        self.on_ack(seq)
