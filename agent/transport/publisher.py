"""Getting evidence off the gateway: MQTT (paho-mqtt 2.x) or a local spool directory.

Both publishers take :class:`~agent.evidence.store.OutboxItem` rows and call
``on_ack(seq)`` only once the evidence is safe elsewhere (MQTT: PUBACK with a
success reason code; spool: file written and fsynced). Until then the row stays
in the SQLite outbox, so an outage or a crash loses nothing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from agent.errors import StorageError
from agent.evidence.claims import CONTENT_TYPE
from agent.evidence.store import OutboxItem
from agent.transport.mqtt import (
    BrokerURL,
    MqttClient,
    MqttVersion,
    ReasonCode,
    Session,
    TlsFiles,
    Will,
)
from agent.transport.topics import DeviceTopics

__all__ = ["MqttPublisher", "Publisher", "SpoolPublisher"]

log = logging.getLogger("edgegov.transport")

_WINDOW = 16  # attestations in flight at once (QoS 1, awaiting PUBACK)
_JSON = "application/json"  # status and alerts


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
    """QoS 1 publisher over MQTT 5 or 3.1.1; an outbox row is acknowledged only on PUBACK.

    ``url``: one broker or a cluster's nodes (failover: :class:`MqttClient`). paho keeps
    each unacknowledged attestation across reconnects and sends it again to the node it
    joins, so a failover loses nothing and may deliver twice (collectors are idempotent).
    In 3.1.1 a PUBACK carries no reason code: a broker that denies the publish (an ACL)
    may acknowledge and drop it, and the outbox row goes; ``audit verify`` then reports
    the gap in the device's seq (docs/scaling.md, "Any broker").
    """

    def __init__(
        self,
        url: BrokerURL | Sequence[BrokerURL],
        topics: DeviceTopics,
        on_ack: Callable[[int], None],
        *,
        client_id: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        keepalive: int = 30,
        version: MqttVersion = "5",
        puback_timeout_s: float = 10.0,
    ) -> None:
        self.topics = topics
        self.puback_timeout_s = puback_timeout_s
        self.on_ack = on_ack
        self._lock = threading.Lock()
        self._inflight: dict[int, int | None] = {}  # paho mid -> seq (None: status message)
        self._sent_at: dict[int, float] = {}  # attestation mid -> when it went out (monotonic)
        self._early: dict[int, ReasonCode] = {}  # mid -> reason code of a PUBACK that beat _track
        # Attestations go to paho from one sender thread, in seq order, at most _WINDOW
        # unacknowledged at a time: below paho's own inflight cap, so paho never queues one
        # while connected (paho can send a new message ahead of its queued ones).
        self._queue: deque[OutboxItem] = deque()
        self._outstanding = 0
        self._closing = False
        # The sender sleeps on _wake (held meanwhile) once it has set _sleeping under _lock;
        # whoever gives it work clears _sleeping and releases _wake, under _lock. A bare
        # lock, not a Condition: it is woken at every PUBACK of a drain, so it costs little.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._sleeping = False
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._watch_stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_pubacks, name="mqtt-puback", daemon=True)
        self._connected = threading.Event()
        self._last_fail_log = 0.0
        # Capped exponential backoff with a per-gateway random scale, so a fleet that lost
        # its broker together does not come back in lock-step (thundering herd).
        scale = random.uniform(0.5, 1.0)
        c = MqttClient(
            url,
            client_id or f"edgegov-{topics.fleet}-{topics.device}",
            tls=TlsFiles(ca_file, cert_file, key_file),
            # A persistent session (clean start off, MQTT v5 §3.1.2.4; clean session off,
            # 3.1.1 §3.1.2.4) so the broker keeps our subscriptions and QoS 1 state across
            # short outages.
            session=Session(
                clean_start=False, expiry_s=24 * 3600, keepalive=keepalive, version=version
            ),
            will=Will(topics.status, json.dumps({"state": "offline", "device": topics.device})),
            max_inflight=_WINDOW + 4,  # room for status messages
            reconnect_delay=(scale, 30 * scale),
        )
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._client = c
        self._status: dict[str, Any] = {}

    @property
    def url(self) -> BrokerURL:
        """The broker node in use now."""
        return self._client.url

    # -- lifecycle -------------------------------------------------------------
    def start(self, pending: list[OutboxItem]) -> None:
        """Connect in the background and queue everything still in the outbox."""
        self._client.connect_in_background()
        self._sender.start()
        self._watch.start()
        with self._lock:  # one hand-over for the whole backlog, not one per row
            self._queue.extend(pending)
            self._wake_sender()

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
            self._client.publish(  # best effort; the Last Will covers it
                self.topics.status,
                json.dumps(offline),
                retain=True,
                wait=max(0.1, deadline - time.monotonic()),
            )
        with self._lock:
            self._closing = True
            self._wake_sender()
        self._watch_stop.set()
        self._sender.join(timeout=2)
        if self._watch.is_alive():
            self._watch.join(timeout=2)
        self._client.close()
        return left

    # -- publishing ------------------------------------------------------------
    def publish(self, item: OutboxItem) -> None:
        """Queue an attestation; the sender thread hands it to paho in order."""
        with self._lock:
            self._queue.append(item)
            self._wake_sender()

    def _wake_sender(self) -> None:
        """There may be work for the sender (the caller holds ``_lock``)."""
        if self._sleeping:
            self._sleeping = False
            self._wake.release()

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                # All the window has room for, at one lock: PUBACKs often free several.
                room = min(len(self._queue), _WINDOW - self._outstanding)
                batch = [self._queue.popleft() for _ in range(room)]
                self._outstanding += len(batch)
                self._sleeping = not batch  # nothing to send, or the window is full
            if not batch:
                self._wake.acquire()  # until _wake_sender
                continue
            # Never call paho while holding our lock: its network thread holds paho's own
            # lock while it waits for ours in _on_publish. Offline, paho queues it and sends
            # it on reconnect, in order.
            for item in batch:
                mid = self._client.publish(item.topic, item.payload, content_type=CONTENT_TYPE)
                self._track(mid, item.seq)

    def publish_status(self, status: dict[str, Any]) -> None:
        self._status = status
        mid = self._client.publish(
            self.topics.status, json.dumps(status), retain=True, content_type=_JSON
        )
        self._track(mid, None)

    def publish_alert(self, alert: dict[str, Any]) -> None:
        """JSON on ``.../alert``, QoS 1; paho queues it while we are offline."""
        mid = self._client.publish(self.topics.alert, json.dumps(alert), content_type=_JSON)
        self._track(mid, None)

    def _track(self, mid: int, seq: int | None) -> None:
        """Remember what ``mid`` carries, or settle it if its PUBACK already came."""
        with self._lock:
            rc = self._early.pop(mid, None)
            if rc is None:
                self._inflight[mid] = seq
                if seq is not None:
                    self._sent_at[mid] = time.monotonic()
                return
        if seq is not None:
            self._settle(seq, rc)

    def _watch_pubacks(self) -> None:
        """An attestation unacknowledged for ``puback_timeout_s`` while connected: leave the
        node. paho sends every unacknowledged message again on the new connection (to the
        next node of a list); QoS 1 resends only on a new connection (MQTT 3.1.1 §4.4,
        v5 §4.4), so without this a PUBACK a broker never sends (a NATS cluster electing
        a stream leader, seen here) would hold the attestation, and the window, for good.
        """
        while not self._watch_stop.wait(1.0):
            if not self._connected.is_set():
                continue
            now = time.monotonic()
            with self._lock:
                if not self._sent_at:
                    continue
                mid, since = min(self._sent_at.items(), key=lambda kv: kv[1])
                if now - since < self.puback_timeout_s:
                    continue
                seq = self._inflight.get(mid)
                for k in self._sent_at:  # once per stall: the clock restarts at reconnect
                    self._sent_at[k] = now
            self._client.leave_node(
                f"no PUBACK for attestation seq {seq} within {self.puback_timeout_s:g} s"
            )

    def unacknowledged(self) -> int:
        """Attestations handed to us and not yet acknowledged by the broker."""
        with self._lock:
            return len(self._queue) + self._outstanding

    # -- MqttClient callbacks (paho's network thread) -----------------------------------
    def _on_connect(self, rc: ReasonCode) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.url, rc)
            return
        self._connected.set()
        log.info("connected to broker %s", self.url)
        with self._lock:  # paho sends the unacknowledged ones again now: their clock restarts
            now = time.monotonic()
            for k in self._sent_at:
                self._sent_at[k] = now
        if self._status:
            self.publish_status(self._status)

    def _on_connect_fail(self) -> None:
        now = time.monotonic()
        if now - self._last_fail_log > 30:
            self._last_fail_log = now
            log.warning(
                "cannot reach broker %s (%s); retrying with backoff. Attestations are kept in "
                "the outbox (%d waiting) and sent in order when it is back",
                self.url,
                self._client.why_unreachable(),
                self.unacknowledged(),
            )

    def _on_disconnect(self, rc: ReasonCode) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and rc.value != 0:
            log.warning("lost the broker %s (%s); reconnecting, nothing is lost", self.url, rc)

    def _on_publish(self, mid: int, rc: ReasonCode) -> None:
        with self._lock:
            if mid not in self._inflight:
                self._early[mid] = rc  # PUBACK before publish() returned; _track settles it
                return
            seq = self._inflight.pop(mid)
            self._sent_at.pop(mid, None)
            if seq is None:  # a status message
                return
            self._outstanding -= 1  # as _settle does, at the same lock
            self._wake_sender()
        self._delivered(seq, rc)

    def _settle(self, seq: int, rc: ReasonCode) -> None:
        with self._lock:
            self._outstanding -= 1
            self._wake_sender()
        self._delivered(seq, rc)

    def _delivered(self, seq: int, rc: ReasonCode) -> None:
        """The broker answered attestation ``seq`` (its window slot is already freed)."""
        if rc.is_failure:
            # e.g. 0x87 not authorised: the broker did NOT take it. Keep it in the outbox.
            log.error("broker rejected attestation seq %d: %s; kept in the outbox", seq, rc)
            return
        self.on_ack(seq)
