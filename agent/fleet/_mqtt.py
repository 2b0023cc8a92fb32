"""A small synchronous MQTT session (5 or 3.1.1) for fleet tooling and the fleet client.

Three things on one :class:`~agent.transport.mqtt.MqttClient`: publish a batch
of retained messages and wait for every PUBACK; read the retained message on one
topic (or learn that there is none); watch topics and call back on each message.

Reading "the retained message, or none" is made deterministic without a
timeout guess: SUBSCRIBE (QoS 0), wait for SUBACK, UNSUBSCRIBE, wait for
UNSUBACK. A broker sends a new subscription's retained messages before it
handles our next packet, so when UNSUBACK arrives anything retained has
arrived too (MQTT v5 §3.3.1.3, §4.6 ordering on one network connection; 3.1.1
§4.6 the same).

Payload caps come before any length is known: CONNECT carries Maximum Packet
Size (MQTT v5 §3.1.2.11.4), so a conforming broker never sends us more, and a
message above the cap that arrives anyway is counted and dropped unread. 3.1.1
has no Maximum Packet Size: there the cap is only that drop, after receiving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from agent.errors import TransportError
from agent.transport.mqtt import (
    BrokerURL,
    Message,
    MqttClient,
    MqttVersion,
    ReasonCode,
    Session,
    TlsFiles,
    Will,
)
from agent.transport.topics import matches

__all__ = ["FleetSession"]

_PACKET_OVERHEAD = 64 * 1024  # topic, properties and fixed header beside the payload


class FleetSession:
    """One connected MQTT client (``with FleetSession(...) as s:``); ``url``: one broker
    or a cluster's nodes (the first that accepts us; failover: :class:`MqttClient`)."""

    def __init__(
        self,
        url: BrokerURL | Sequence[BrokerURL],
        client_id: str,
        *,
        tls: TlsFiles | None = None,
        max_payload: int = 64 * 1024 * 1024,
        timeout: float = 10.0,
        will: tuple[str, bytes] | None = None,
        version: MqttVersion = "5",
    ) -> None:
        self.max_payload = max_payload
        self.timeout = timeout
        self.oversized = 0  # messages over the cap that arrived anyway (dropped)
        self._lock = threading.Lock()  # one retained read at a time
        self._cond = threading.Condition()
        self._done: dict[int, list[ReasonCode]] = {}
        self._disconnected = False
        self._reading: str | None = None
        self._read: dict[str, bytes] = {}
        self._watchers: dict[str, Callable[[str, bytes], None]] = {}
        c = MqttClient(
            url,
            client_id,
            tls=tls,
            session=Session(
                clean_start=True, max_packet=max_payload + _PACKET_OVERHEAD, version=version
            ),
            will=Will(*will) if will is not None else None,
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_ack
        c.on_unsubscribe = self._on_ack
        c.on_publish = lambda mid, rc: self._on_ack(mid, [rc])
        c.on_message = self._on_message
        self._client = c

    @property
    def url(self) -> BrokerURL:
        """The broker node in use now."""
        return self._client.url

    # -- lifecycle -------------------------------------------------------------
    def connect(self) -> FleetSession:
        """Raises TransportError: unreachable, refused, or no CONNACK within ``timeout``."""
        self._client.connect(self.timeout)
        return self

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FleetSession:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations -----------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, retain: bool, content_type: str) -> None:
        self.publish_many([(topic, payload)], retain=retain, content_type=content_type)

    def publish_many(
        self, items: Iterable[tuple[str, bytes]], *, retain: bool, content_type: str
    ) -> None:
        """QoS 1 publish of every item, in order; returns once each has its PUBACK."""
        mids = []
        for topic, payload in items:
            mid = self._client.publish(
                topic, payload, retain=retain, content_type=content_type, queue_offline=False
            )
            mids.append((mid, topic))
        for mid, topic in mids:
            codes = self._wait(mid, f"PUBACK for {topic}")
            if any(c.is_failure for c in codes):
                raise TransportError(f"{self.url} refused the publish to {topic}: {codes[0]}")

    def read_retained(self, topic: str) -> bytes | None:
        """The retained message on ``topic``; None when there is none (or it is over the cap)."""
        return self.read_retained_all(topic).get(topic)

    def read_retained_all(self, topic_filter: str) -> dict[str, bytes]:
        """Every retained message matching ``topic_filter`` (wildcards allowed)."""
        with self._lock:
            with self._cond:
                self._reading, self._read = topic_filter, {}
            topic = topic_filter
            try:
                codes = self._wait(self._client.subscribe(topic, qos=0), f"SUBACK for {topic}")
                if any(c.is_failure for c in codes):
                    raise TransportError(f"{self.url} refused the subscription to {topic}")
                self._wait(self._client.unsubscribe(topic), f"UNSUBACK for {topic}")
                with self._cond:
                    return self._read
            finally:
                with self._cond:
                    self._reading = None

    def watch(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Subscribe (QoS 1) and call ``callback(topic, payload)`` from paho's thread."""
        self._watchers[topic] = callback
        self._wait(self._client.subscribe(topic, qos=1), f"SUBACK for {topic}")

    # -- MqttClient callbacks (paho's network thread) ----------------------------------
    def _wait(self, mid: int, what: str) -> list[ReasonCode]:
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in self._done or self._disconnected, self.timeout)
            if mid in self._done:
                return self._done.pop(mid)
        raise TransportError(
            f"{self.url}: {'disconnected' if ok else 'timed out'} waiting for {what}"
        )

    def _on_connect(self, rc: ReasonCode) -> None:
        if not rc.is_failure:
            for topic in self._watchers:  # a reconnect (clean start): subscribe again
                self._client.subscribe(topic, qos=1)
        with self._cond:
            self._disconnected = False
            self._cond.notify_all()

    def _on_disconnect(self, _rc: ReasonCode) -> None:
        with self._cond:
            self._disconnected = True
            self._cond.notify_all()

    def _on_ack(self, mid: int, codes: list[ReasonCode]) -> None:
        with self._cond:
            self._done[mid] = codes
            self._cond.notify_all()

    def _on_message(self, msg: Message) -> None:
        topic, payload = msg.topic, msg.payload
        if len(payload) > self.max_payload:
            self.oversized += 1
            return
        with self._cond:
            if self._reading is not None and matches(self._reading, topic):
                if payload:
                    self._read[topic] = bytes(payload)
                else:  # an empty retained message deletes it
                    self._read.pop(topic, None)
        cb = self._watchers.get(topic)
        if cb is not None:
            cb(topic, bytes(payload))
