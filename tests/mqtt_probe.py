"""A small paho client for probing brokers: persistent sessions, QoS 1, distinct payloads.

No reconnect of its own (``reconnect_on_failure=False``): a test that fails over opens a
new client on another node with the same client id, as a gateway with a URL list does.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

V5 = mqtt.MQTTv5
V311 = mqtt.MQTTv311


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


class Probe:
    """One MQTT connection. Received payloads are counted (``.received``); published
    payloads are remembered until their PUBACK (``.acked``)."""

    def __init__(self, client_id: str, *, version: int = V311, clean: bool = False) -> None:
        self.client_id = client_id
        self.version = version
        self.clean = clean
        self.client = self._new_client()
        self.cond = threading.Condition()
        self.received: Counter[bytes] = Counter()
        self.retained: list[bytes] = []
        self.acked: set[bytes] = set()
        self._pending: dict[int, bytes] = {}
        self.connack: tuple[bool, str] | None = None
        self.disconnected = False
        self.suback: list[int] | None = None
        self.attempts = 0
        self.connect_seconds = 0.0

    def _new_client(self) -> mqtt.Client:
        """A paho client per connection attempt: paho 2.x's loop_start() opens a new
        socket pair each time and never closes the previous one."""
        kw: dict[str, object] = {}
        if self.version != V5:
            kw["clean_session"] = self.clean
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.version,
            reconnect_on_failure=False,
            **kw,  # type: ignore[arg-type]
        )
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    # callbacks (paho's network thread)
    def _on_connect(self, c, u, flags, rc, props) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.connack = (bool(flags.session_present), str(rc))
            self.cond.notify_all()

    def _on_disconnect(self, c, u, flags, rc, props) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def _on_message(self, c, u, msg) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            if msg.retain:
                self.retained.append(msg.payload)
            else:
                self.received[msg.payload] += 1
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, rc, props) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            payload = self._pending.pop(mid, None)
            if payload is not None:
                self.acked.add(payload)
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, rcs, props) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.suback = [int(r.value) for r in rcs]
            self.cond.notify_all()

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(cond, timeout):
                raise AssertionError(f"{self.client_id}: {what} not within {timeout} s")

    def connect(self, url: str, timeout: float = 30.0) -> bool:
        """Connect and wait for an accepting CONNACK; returns session_present.

        A connection closed before CONNACK, or refused as "Server unavailable", is tried
        again until ``timeout`` (as a gateway does with backoff): a NATS node closes MQTT
        connections while JetStream elects new leaders for the streams of a dead node.
        ``.attempts`` and ``.connect_seconds`` say what it took.
        """
        props = None
        if self.version == V5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if self.clean else 3600
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.attempts = 0
        while True:
            self.attempts += 1
            with self.cond:
                self.connack, self.disconnected = None, False
            if self.attempts > 1:
                self.client = self._new_client()
            try:
                if self.version == V5:
                    self.client.connect(
                        "127.0.0.1", port_of(url), 10, clean_start=self.clean, properties=props
                    )
                else:
                    self.client.connect("127.0.0.1", port_of(url), keepalive=10)
            except OSError as e:
                last = f"{e}"
            else:
                self.client.loop_start()
                left = max(0.1, deadline - time.monotonic())
                self.wait(lambda: self.connack is not None or self.disconnected, left, "CONNACK")
                if self.connack is not None and self.connack[1] == "Success":
                    self.connect_seconds = time.monotonic() - t0
                    return self.connack[0]
                last = self.connack[1] if self.connack else "closed before CONNACK"
                self.client.loop_stop()
                if self.connack is not None and "unavailable" not in last.lower():
                    raise AssertionError(f"{self.client_id}: refused: {last}")
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.client_id}: no CONNACK from {url} in {self.attempts} attempts "
                    f"within {timeout} s: {last}"
                )
            time.sleep(0.25)  # the retry interval of a client's backoff

    def subscribe(self, topic: str, timeout: float = 15.0) -> None:
        self.client.subscribe(topic, qos=1)
        self.wait(lambda: self.suback is not None, timeout, f"SUBACK for {topic}")
        assert self.suback == [1], f"{self.client_id}: {topic} granted {self.suback}, not QoS 1"

    def publish(self, topic: str, payloads: Iterable[bytes], *, retain: bool = False) -> None:
        """Queue payloads at QoS 1 (paho keeps 100 in flight); PUBACKs land in .acked."""
        for p in payloads:
            info = self.client.publish(topic, p, qos=1, retain=retain)
            with self.cond:
                if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                    raise AssertionError(f"{self.client_id}: publish failed with {info.rc}")
                self._pending[info.mid] = p

    def wait_acked(self, payloads: set[bytes], timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: payloads <= self.acked, timeout):
                missing = len(payloads - self.acked)
                raise AssertionError(
                    f"{self.client_id}: {missing} of {len(payloads)} without PUBACK "
                    f"within {timeout} s"
                )

    def distinct(self, prefix: bytes = b"") -> set[bytes]:
        with self.cond:
            return {p for p in self.received if p.startswith(prefix)}

    def wait_received(self, payloads: set[bytes], timeout: float) -> None:
        def done() -> bool:
            return payloads <= self.received.keys()

        with self.cond:
            if not self.cond.wait_for(done, timeout):
                missing = len(payloads - self.received.keys())
                raise AssertionError(
                    f"{self.client_id}: {missing} of {len(payloads)} messages not received "
                    f"within {timeout} s"
                )

    def close(self) -> None:
        """A clean DISCONNECT (the session stays when not clean)."""
        if self.connack is not None and not self.disconnected:
            self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Stop the network thread without DISCONNECT (what a crashed client leaves)."""
        self.client.loop_stop()
        try:
            self.client.socket().close()  # type: ignore[union-attr]
        except (AttributeError, OSError):
            pass


def payloads(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:06d}".encode() for i in range(n)]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.02)


class Gateway:
    """A publisher that behaves as a gateway with a URL list: QoS 1 until every payload
    has its PUBACK; when its connection drops, or PUBACKs stall for ``stall`` seconds
    with payloads outstanding, it opens a new connection to the next node that is up
    and sends again everything without a PUBACK (MQTT 3.1.1 §4.4: resending happens on
    a new connection, never on the same one).

    Why the stall rule: a NATS 2.9 node that times out storing a QoS 1 PUBLISH in
    JetStream (its ``$MQTT_msgs`` leader died, a new one not elected yet) logs
    "timeout for request type MS" and never sends that PUBACK, nor closes the connection.
    """

    def __init__(
        self,
        client_id: str,
        urls: list[str],
        up: Callable[[int], bool],
        *,
        stall: float = 5.0,
    ) -> None:
        self.client_id = client_id
        self.urls = urls
        self.up = up
        self.stall = stall
        self.acked: set[bytes] = set()
        self.reconnects = 0
        self.stalls = 0

    def deliver(
        self,
        topic: str,
        items: list[bytes],
        node: int,
        timeout: float = 120.0,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        want = set(items)
        deadline = time.monotonic() + timeout
        probe = Probe(self.client_id, clean=True)
        probe.connect(self.urls[node])
        probe.publish(topic, items)
        last_count, last_progress = 0, time.monotonic()
        try:
            while True:
                with probe.cond:
                    probe.cond.wait(0.2)
                    self.acked |= probe.acked
                    dropped = probe.disconnected
                if want <= self.acked:
                    return
                if progress is not None:
                    progress(len(self.acked & want))
                if len(self.acked) > last_count:
                    last_count, last_progress = len(self.acked), time.monotonic()
                    continue
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.client_id}: {len(want - self.acked)} of {len(want)} without "
                        f"PUBACK after {timeout} s and {self.reconnects} reconnects"
                    )
                stalled = time.monotonic() - last_progress > self.stall
                if not (dropped or stalled):
                    continue
                self.stalls += int(stalled and not dropped)
                probe.drop()
                node = self._next_up(node)
                probe = Probe(self.client_id, clean=True)
                probe.connect(self.urls[node])
                probe.publish(topic, [p for p in items if p not in self.acked])
                self.reconnects += 1
                last_progress = time.monotonic()
        finally:
            probe.close()

    def _next_up(self, node: int) -> int:
        n = len(self.urls)
        for k in range(1, n + 1):
            if self.up((node + k) % n):
                return (node + k) % n
        raise AssertionError(f"{self.client_id}: no node is up")
