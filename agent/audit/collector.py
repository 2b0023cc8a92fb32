"""Collect a fleet's attestations, and the signed statements about its devices
(explanations, calibration certificates), from a broker into files or a database.

Nothing is trusted here; ``audit verify`` decides. Messages are stored exactly
as received. Both sinks are idempotent, because QoS 1 is at-least-once and
several collectors may run:

* :class:`FileCollector` writes ``DIR/<device>/<seq>-<sha256 prefix>.cose``
  (the same bytes always land on the same file; names sort in seq order), and a
  statement to ``DIR/<device>/<kind>/<sha256 prefix>.<kind>``;
* :class:`StoreCollector` inserts into SQLite or PostgreSQL keyed on
  (device, seq, digest), a statement keyed on its digest (``agent.audit.evidence_db``).

With ``share`` set, the subscription is an MQTT v5 shared subscription
(``$share/<group>/...``, MQTT 5.0 §4.8.2): the broker hands each message to
one member of the group, so several collectors split the load and together
store each attestation once. 3.1.1 has no shared subscriptions: Mosquitto takes
``$share/`` from a 3.1.1 client too, another broker may read it as a plain
topic and deliver nothing (docs/scaling.md, "Any broker").

A message is acknowledged (PUBACK, paho's ``manual_ack``) only once it is stored. When
the store is unavailable (:class:`StoreUnavailable`: a PostgreSQL restart), it and every
message after it wait, unacknowledged, in arrival order, and a thread retries them (0.1 s
doubling to 2 s) until the store is back: the outage is logged once, with the store's URL
(password redacted), and its end with how many waited. The MQTT connection stays up
meanwhile (paho's thread is not blocked). Stopped during an outage, the collector leaves
those messages unacknowledged: the broker redelivers them on a resumed session, or to
another member of a shared subscription; a clean session loses them, as it loses what
is published while no collector is connected.

``url``: one broker or a cluster's nodes; the collector connects to the first that
accepts it and fails over to the next when its node goes (``MqttClient``).

``session_id``: a persistent session under that client id (clean session off; in v5 a
week's expiry) instead of a clean one under a random id. The broker then keeps what is
published while this collector is away, and redelivers what it received but had not
acknowledged, across its node's death: on a NATS cluster (no shared subscriptions) that
is what makes a node kill lossless for the collector. One id per collector process: two
live connections with the same id take the session from each other.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import cbor2

from agent.audit.evidence_db import EvidenceDB, StoreUnavailable, open_db
from agent.errors import Error, TransportError
from agent.evidence.claims import EDGEGOV, SEQ
from agent.evidence.cose import decode_sign1
from agent.logs import redact
from agent.transport.mqtt import (
    BrokerURL,
    Message,
    MqttClient,
    MqttVersion,
    ReasonCode,
    Session,
    TlsFiles,
)
from agent.transport.topics import attestations, device_of, statements

__all__ = ["Collector", "FileCollector", "StoreCollector", "peek_seq"]

log = logging.getLogger("edgegov.collector")


def peek_seq(payload: bytes) -> int:
    """The seq a message *claims* (unverified, for naming only); -1 if unreadable."""
    try:
        claims = decode_sign1(payload).claims()
        seq = claims[EDGEGOV][SEQ]
    except (Error, KeyError, TypeError, cbor2.CBORDecodeError):
        return -1
    return seq if type(seq) is int and 0 <= seq < 2**63 else -1  # a BIGINT in the store


class Collector:
    """Subscribes to ``{prefix}/{fleet}/+/attestation``; subclasses store each message.

    ``tls``: the CA, client certificate and key for an ``mqtts://`` broker (mutual TLS).
    ``version``: MQTT ``"5"`` or ``"3.1.1"``. ``session_id``: see the module.
    """

    SESSION_EXPIRY_S = 7 * 24 * 3600  # v5: how long the broker keeps a session we left

    def __init__(
        self,
        url: str | Sequence[str],
        fleet: str = "+",
        prefix: str = "edgegov",
        share: str | None = None,
        tls: TlsFiles | None = None,
        version: MqttVersion = "5",
        session_id: str | None = None,
    ) -> None:
        urls = BrokerURL.parse_all(url if isinstance(url, str) else list(url), "broker URL")
        self.tls = tls
        self.topic = attestations(prefix, fleet, share)
        self.topics = (self.topic, *statements(prefix, fleet, share))
        self.name = session_id or f"edgegov-collector-{os.getpid()}-{secrets.token_hex(3)}"
        self.received = 0
        self.stored: set[str] = set()
        self.errors: list[str] = []
        self._subscribed = threading.Event()
        self._acks = 0  # SUBACKs since the last connect
        self._refused: str | None = None  # why the broker refused the subscription
        self._lock = threading.Lock()
        self._waiting: collections.deque[Message] = collections.deque()  # store unavailable
        self._outage: float | None = None  # since when (monotonic), while it lasts
        self._held = 0  # messages that waited in this outage
        self.store_name = ""  # the store, for the log (password redacted)
        self._retrier: threading.Thread | None = None
        self._stopping = threading.Event()
        session = Session(version=version)
        if session_id is not None:
            session = Session(clean_start=False, expiry_s=self.SESSION_EXPIRY_S, version=version)
        c = MqttClient(urls, self.name, tls=tls, session=session, manual_ack=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self._client = c

    @property
    def url(self) -> BrokerURL:
        """The broker node in use now."""
        return self._client.url

    def start(self, timeout: float = 5.0) -> None:
        """Connect and subscribe; TransportError says why not (TLS: what to pass)."""
        deadline = time.monotonic() + timeout
        try:
            self._client.connect(timeout)
        except TransportError as e:
            raise TransportError(f"collector {e}") from e
        while not self._subscribed.wait(0.05):
            refused = self._refused
            if refused is not None or time.monotonic() > deadline:
                self.stop()
                raise TransportError(
                    f"collector could not subscribe at {self.url}: "
                    + (refused or f"no SUBACK within {timeout} s")
                )

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect and stop paho's thread; bounded, so a stuck socket cannot hang exit.

        Every message is stored as it arrives, so nothing is lost by not waiting longer;
        one the broker had not seen acknowledged is redelivered to the next collector.
        """
        self._stopping.set()
        retrier = self._retrier
        if retrier is not None:
            retrier.join(timeout)
        self._client.close(timeout)

    # -- MqttClient callbacks (paho's network thread) ----------------------------------
    def _on_connect(self, rc: ReasonCode) -> None:
        if not rc.is_failure:  # each (re)connect; a kept session too (the broker may not)
            self._acks = 0
            for topic in self.topics:
                self._client.subscribe(str(topic), qos=1)

    def _on_disconnect(self, rc: ReasonCode) -> None:
        if not self._subscribed.is_set() and self._refused is None:
            self._refused = f"the broker closed the connection ({rc})"

    def _on_subscribe(self, mid: int, codes: list[ReasonCode]) -> None:
        if codes and not codes[0].is_failure:
            self._acks += 1
            if self._acks >= len(self.topics):  # all of them: nothing published now is missed
                self._subscribed.set()
        elif codes:
            self._refused = f"the broker refused a subscription ({self.topic}...): {codes[0]}"

    def _on_message(self, msg: Message) -> None:
        with self._lock:
            if self._waiting:  # the store is out: keep the order, the retry thread stores it
                self._waiting.append(msg)
                self._held += 1
                return
        if self._handle(msg):
            self._client.ack(msg)
            return
        with self._lock:
            self._waiting.append(msg)
            self._held += 1
            if self._retrier is None or not self._retrier.is_alive():
                self._retrier = threading.Thread(
                    target=self._retry, name=f"{self.name}-retry", daemon=True
                )
                self._retrier.start()

    def _handle(self, msg: Message) -> bool:
        """Store one message; False if the store is unavailable (retry it later)."""
        payload = msg.payload
        device = device_of(msg.topic)
        kind = msg.topic.rsplit("/", 1)[-1]
        digest = hashlib.sha256(payload).digest()
        try:
            if kind == "attestation":
                new = self.store(device, peek_seq(payload), digest, payload)
            else:  # "explanation" or "calibration": checked by audit verify, not here
                new = self.store_statement(kind, device, digest, payload)
        except StoreUnavailable as e:
            with self._lock:
                if self._outage is None:  # once per outage
                    self._outage = time.monotonic()
                    self.errors.append(str(e))
                    log.warning("collector store unavailable, retrying: %s", e)
            return False
        except Error as e:  # this message cannot be stored (not the store): recorded
            with self._lock:
                self.errors.append(str(e))
            log.error("collector: %s", e)
            return True
        with self._lock:
            self.received += 1
            if new:
                self.stored.add(f"{device}/{digest.hex()[:32]}")
        return True

    def _retry(self) -> None:
        """Store the messages that wait, oldest first, until none is left or stop()."""
        delay = 0.1
        while not self._stopping.is_set():
            with self._lock:
                if not self._waiting:
                    since, self._outage, held, self._held = self._outage, None, self._held, 0
                    break
                msg = self._waiting[0]
            if self._handle(msg):
                self._client.ack(msg)
                with self._lock:
                    self._waiting.popleft()
                delay = 0.1
            else:
                self._stopping.wait(delay)
                delay = min(delay * 2, 2.0)
        else:
            return
        if since is not None:
            log.warning(
                "collector store %s is back after %.1f s: %d messages had waited, all stored",
                self.store_name,
                time.monotonic() - since,
                held,
            )

    def store(self, device: str, seq: int, digest: bytes, payload: bytes) -> bool:
        raise NotImplementedError

    def store_statement(self, kind: str, device: str, digest: bytes, payload: bytes) -> bool:
        raise NotImplementedError


class FileCollector(Collector):
    """Writes each message to ``out_dir/<device>/<seq>-<digest>.cose``."""

    def __init__(
        self,
        url: str | Sequence[str],
        out_dir: Path,
        fleet: str = "+",
        prefix: str = "edgegov",
        share: str | None = None,
        tls: TlsFiles | None = None,
        version: MqttVersion = "5",
        session_id: str | None = None,
    ) -> None:
        super().__init__(url, fleet, prefix, share, tls, version, session_id)
        self.out_dir = out_dir

    def start(self, timeout: float = 5.0) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        super().start(timeout)

    def store(self, device: str, seq: int, digest: bytes, payload: bytes) -> bool:
        d = self.out_dir / device
        d.mkdir(parents=True, exist_ok=True)
        seq_name = f"{seq:010d}" if seq >= 0 else "unreadable"
        return self._write(d / f"{seq_name}-{digest.hex()[:32]}.cose", payload)

    def store_statement(self, kind: str, device: str, digest: bytes, payload: bytes) -> bool:
        d = self.out_dir / device / kind
        d.mkdir(parents=True, exist_ok=True)
        return self._write(d / f"{digest.hex()[:32]}.{kind}", payload)

    def _write(self, path: Path, payload: bytes) -> bool:
        if path.exists():
            return False
        tmp = path.with_suffix(f".{self.name}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
        return True


class StoreCollector(Collector):
    """Inserts each message into a collector store (SQLite path/URL or PostgreSQL URL)."""

    def __init__(
        self,
        url: str | Sequence[str],
        store_url: str,
        fleet: str = "+",
        prefix: str = "edgegov",
        share: str | None = None,
        tls: TlsFiles | None = None,
        version: MqttVersion = "5",
        session_id: str | None = None,
    ) -> None:
        super().__init__(url, fleet, prefix, share, tls, version, session_id)
        self.db: EvidenceDB = open_db(store_url)
        self.store_name = redact(store_url)

    def store(self, device: str, seq: int, digest: bytes, payload: bytes) -> bool:
        return self.db.put(device, seq, digest, payload, self.name)

    def store_statement(self, kind: str, device: str, digest: bytes, payload: bytes) -> bool:
        return self.db.put_statement(kind, device, digest, payload, self.name)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.db.close()
