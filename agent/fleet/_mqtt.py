"""A small synchronous MQTT v5 session for fleet tooling and the fleet client.

Three things on one paho-mqtt 2.x client: publish a batch of retained messages
and wait for every PUBACK; read the retained message on one topic (or learn
that there is none); watch topics and call back on each message.

Reading "the retained message, or none" is made deterministic without a
timeout guess: SUBSCRIBE (QoS 0), wait for SUBACK, UNSUBSCRIBE, wait for
UNSUBACK. A broker sends a new subscription's retained messages before it
handles our next packet, so when UNSUBACK arrives anything retained has
arrived too (MQTT v5 §3.3.1.3, §4.6 ordering on one network connection).

Payload caps come before any length is known: CONNECT carries Maximum Packet
Size (MQTT v5 §3.1.2.11.4), so a conforming broker never sends us more, and a
message above the cap that arrives anyway is counted and dropped unread.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import TransportError
from agent.transport.mqtt_tls import TlsFiles, client_context, explain_tls_failure
from agent.transport.publisher import BrokerURL

__all__ = ["FleetSession", "TlsFiles"]

_PACKET_OVERHEAD = 64 * 1024  # topic, properties and fixed header beside the payload


class FleetSession:
    """One connected MQTT v5 client (``with FleetSession(...) as s:``)."""

    def __init__(
        self,
        url: BrokerURL,
        client_id: str,
        *,
        tls: TlsFiles | None = None,
        max_payload: int = 64 * 1024 * 1024,
        timeout: float = 10.0,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.url = url
        self._tls = tls
        self.max_payload = max_payload
        self.timeout = timeout
        self.oversized = 0  # messages over the cap that arrived anyway (dropped)
        self._lock = threading.Lock()  # one retained read at a time
        self._cond = threading.Condition()
        self._done: dict[int, list[ReasonCode]] = {}
        self._connected: ReasonCode | None = None
        self._disconnected = False
        self._reading: str | None = None
        self._read: dict[str, bytes] = {}
        self._watchers: dict[str, Callable[[str, bytes], None]] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if url.username:
            c.username_pw_set(url.username, url.password)
        if url.tls:
            c.tls_set_context(client_context(tls))
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_sub
        c.on_unsubscribe = self._on_sub
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self._client = c

    # -- lifecycle -------------------------------------------------------------
    def connect(self) -> FleetSession:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = self.max_payload + _PACKET_OVERHEAD
        try:
            self._client.connect(
                self.url.host, self.url.port, keepalive=30, clean_start=True, properties=props
            )
        except (OSError, ssl.SSLError) as e:
            why = explain_tls_failure(e, self._tls) or str(e)
            raise TransportError(f"cannot connect to {self.url}: {why}") from e
        self._client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connected is not None, self.timeout):
                self.close()
                raise TransportError(f"{self.url}: no CONNACK within {self.timeout} s")
            rc = self._connected
        if rc is not None and rc.is_failure:
            self.close()
            raise TransportError(f"{self.url} refused the connection: {rc}")
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

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
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = content_type
        mids = []
        for topic, payload in items:
            info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise TransportError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
            mids.append((info.mid, topic))
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
                rc, mid = self._client.subscribe(topic, qos=0)
                self._check(rc, f"subscribe {topic}")
                codes = self._wait(mid, f"SUBACK for {topic}")
                if any(c.is_failure for c in codes):
                    raise TransportError(f"{self.url} refused the subscription to {topic}")
                rc, mid = self._client.unsubscribe(topic)
                self._check(rc, f"unsubscribe {topic}")
                self._wait(mid, f"UNSUBACK for {topic}")
                with self._cond:
                    return self._read
            finally:
                with self._cond:
                    self._reading = None

    def watch(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Subscribe (QoS 1) and call ``callback(topic, payload)`` from paho's thread."""
        self._watchers[topic] = callback
        rc, mid = self._client.subscribe(topic, qos=1)
        self._check(rc, f"subscribe {topic}")
        self._wait(mid, f"SUBACK for {topic}")

    # -- paho callbacks (network thread) ---------------------------------------------
    def _check(self, rc: int, what: str) -> None:
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"{what} failed: {mqtt.error_string(rc)}")

    def _wait(self, mid: int | None, what: str) -> list[ReasonCode]:
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in self._done or self._disconnected, self.timeout)
            if mid in self._done:
                return self._done.pop(mid)
        raise TransportError(
            f"{self.url}: {'disconnected' if ok else 'timed out'} waiting for {what}"
        )

    def _on_connect(self, c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if not rc.is_failure:
            for topic in self._watchers:  # a reconnect (clean start): subscribe again
                c.subscribe(topic, qos=1)
        with self._cond:
            self._connected = rc
            self._disconnected = False
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        with self._cond:
            self._disconnected = True
            self._cond.notify_all()

    def _on_sub(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        with self._cond:
            self._done[mid] = list(codes) if isinstance(codes, list) else [codes]
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._done[mid] = [rc]
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if len(msg.payload) > self.max_payload:
            self.oversized += 1
            return
        with self._cond:
            if self._reading is not None and mqtt.topic_matches_sub(self._reading, msg.topic):
                if msg.payload:
                    self._read[msg.topic] = bytes(msg.payload)
                else:  # an empty retained message deletes it
                    self._read.pop(msg.topic, None)
        cb = self._watchers.get(msg.topic)
        if cb is not None:
            cb(msg.topic, bytes(msg.payload))
