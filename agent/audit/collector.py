"""Collect a fleet's attestations from a broker into files or a database.

Nothing is trusted here; ``audit verify`` decides. Messages are stored exactly
as received. Both sinks are idempotent, because QoS 1 is at-least-once and
several collectors may run:

* :class:`FileCollector` writes ``DIR/<device>/<seq>-<sha256 prefix>.cose``
  (the same bytes always land on the same file; names sort in seq order);
* :class:`StoreCollector` inserts into SQLite or PostgreSQL keyed on
  (device, seq, digest) (``agent.audit.evidence_db``).

With ``share`` set, the subscription is an MQTT v5 shared subscription
(``$share/<group>/...``, MQTT 5.0 §4.8.2): the broker hands each message to
one member of the group, so several collectors split the load and together
store each attestation once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.audit.evidence_db import EvidenceDB, open_db
from agent.errors import Error, TransportError
from agent.evidence.claims import EDGEGOV, SEQ
from agent.evidence.cose import decode_sign1
from agent.transport.mqtt_tls import TlsFiles, client_context, explain_tls_failure
from agent.transport.publisher import BrokerURL

__all__ = ["Collector", "FileCollector", "StoreCollector", "peek_seq"]

log = logging.getLogger("edgegov.collector")


def peek_seq(payload: bytes) -> int:
    """The seq a message *claims* (unverified, for naming only); -1 if unreadable."""
    try:
        claims = decode_sign1(payload).claims()
        seq = claims[EDGEGOV][SEQ]
    except (Error, KeyError, TypeError, cbor2.CBORDecodeError):
        return -1
    return seq if isinstance(seq, int) and seq >= 0 else -1


class Collector:
    """Subscribes to ``{prefix}/{fleet}/+/attestation``; subclasses store each message.

    ``tls``: the CA, client certificate and key for an ``mqtts://`` broker (mutual TLS).
    """

    def __init__(
        self,
        url: str,
        fleet: str = "+",
        prefix: str = "edgegov",
        share: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.url = BrokerURL.parse(url, "broker URL")
        self.tls = tls
        topic = f"{prefix}/{fleet}/+/attestation"
        self.topic = f"$share/{share}/{topic}" if share else topic
        self.name = f"edgegov-collector-{os.getpid()}-{secrets.token_hex(3)}"
        self.received = 0
        self.stored: set[str] = set()
        self.errors: list[str] = []
        self._subscribed = threading.Event()
        self._refused: str | None = None  # why the broker refused or dropped us before SUBACK
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=self.name)
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            c.tls_set_context(client_context(tls))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self._client = c

    def start(self, timeout: float = 5.0) -> None:
        """Connect and subscribe; TransportError says why not (TLS: what to pass)."""
        try:
            self._client.connect(self.url.host, self.url.port, keepalive=30)
        except OSError as e:  # ssl.SSLError too: TLS 1.2 fails in the handshake
            why = explain_tls_failure(e, self.tls) or str(e)
            raise TransportError(f"collector cannot reach broker {self.url}: {why}") from e
        self._client.loop_start()
        deadline = time.monotonic() + timeout
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
        self._client.disconnect()
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            log.warning(
                "the MQTT network thread did not stop within %.0f s; exiting anyway", timeout
            )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)
        elif not self._subscribed.is_set():
            self._refused = f"the broker refused the connection: {rc}"

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if not self._subscribed.is_set() and self._refused is None:
            # TLS 1.3: a broker that wants a client certificate drops us after the handshake
            no_cert = self.url.tls and (self.tls is None or self.tls.cert is None)
            hint = "; a broker with mutual TLS needs a client certificate and key" * no_cert
            self._refused = f"the broker closed the connection ({rc}){hint}"

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, p: Any) -> None:
        if rcs and not rcs[0].is_failure:
            self._subscribed.set()
        elif rcs:
            self._refused = f"the broker refused the subscription to {self.topic}: {rcs[0]}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[-2]
        payload = bytes(msg.payload)
        digest = hashlib.sha256(payload).digest()
        try:
            new = self.store(device, peek_seq(payload), digest, payload)
        except Error as e:  # keep collecting; the message is redelivered on reconnect
            with self._lock:
                self.errors.append(str(e))
            return
        with self._lock:
            self.received += 1
            if new:
                self.stored.add(f"{device}/{digest.hex()[:32]}")

    def store(self, device: str, seq: int, digest: bytes, payload: bytes) -> bool:
        raise NotImplementedError


class FileCollector(Collector):
    """Writes each message to ``out_dir/<device>/<seq>-<digest>.cose``."""

    def __init__(
        self,
        url: str,
        out_dir: Path,
        fleet: str = "+",
        prefix: str = "edgegov",
        share: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(url, fleet, prefix, share, tls)
        self.out_dir = out_dir

    def start(self, timeout: float = 5.0) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        super().start(timeout)

    def store(self, device: str, seq: int, digest: bytes, payload: bytes) -> bool:
        d = self.out_dir / device
        d.mkdir(parents=True, exist_ok=True)
        seq_name = f"{seq:010d}" if seq >= 0 else "unreadable"
        path = d / f"{seq_name}-{digest.hex()[:32]}.cose"
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
        url: str,
        store_url: str,
        fleet: str = "+",
        prefix: str = "edgegov",
        share: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(url, fleet, prefix, share, tls)
        self.db: EvidenceDB = open_db(store_url)

    def store(self, device: str, seq: int, digest: bytes, payload: bytes) -> bool:
        return self.db.put(device, seq, digest, payload, self.name)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.db.close()
