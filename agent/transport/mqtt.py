"""The one MQTT client edgegov runs: a thin typed wrapper over paho-mqtt 2.x.

The agent's publisher, the fleet sessions and the auditor's collector all dial a broker
through :class:`MqttClient`, so they parse a broker URL, check a broker's certificate,
open an MQTT 5 or 3.1.1 session and report a refusal the same way:

* :class:`BrokerURL`: ``mqtt[s]://[user[:password]@]host[:port]``; the password never
  reaches a repr, a ``str()`` or an error message. :meth:`BrokerURL.parse_all` reads one
  URL or a list of them (the nodes of a cluster).
* The protocol version is :attr:`Session.version` (``"5"`` or ``"3.1.1"``,
  :mod:`agent.transport.options`), here and nowhere else. In 3.1.1 the v5-only parts are
  left out: no CONNECT or PUBLISH properties (session expiry, Maximum Packet Size, Content
  Type), ``clean_session`` instead of Clean Start; paho maps a 3.1.1 CONNACK return code
  and a SUBACK 0x80 to the v5 reason codes, and a 3.1.1 PUBACK is always "Success"
  (docs/scaling.md, "Any broker").
* Failover: given several URLs, :meth:`MqttClient.connect` takes the first that accepts
  us, skipping (and logging) a dead node and one that refuses us; once connected, a node
  that drops us is retried, and when that reconnect fails paho's next reconnect goes to
  the next node in the list (round robin), with a WARNING naming the node left and the
  node joined. paho keeps every unacknowledged QoS 1 message across reconnects and sends
  it again to whichever node it joins (at least once).
* TLS: ``mqtts://`` uses the one client context of :mod:`agent.transport.mqtt_tls`
  (``CERT_REQUIRED``, host name checked; a private CA, a client certificate and key).
* :class:`Session`: protocol version, clean start and session expiry (MQTT v5 §3.1.2.4,
  §3.1.2.11.2; 3.1.1 §3.1.2.4 Clean Session), the Maximum Packet Size we accept (v5
  §3.1.2.11.4), keepalive.
* :meth:`MqttClient.connect` blocks until CONNACK or a timeout;
  :meth:`MqttClient.connect_in_background` lets paho connect and reconnect by itself.
* paho's failures become :class:`~agent.errors.TransportError` with the reason in words
  (a CONNACK, PUBACK or SUBACK reason code by its MQTT v5 name, an error number by paho's
  text, a TLS failure by what the operator should give), raised ``from`` paho's error.

Callbacks arrive on paho's network thread with typed arguments (``on_connect(rc)``,
``on_publish(mid, rc)``, ``on_subscribe(mid, codes)``, ``on_message(Message)``…);
a callback must not block, and must not hold a lock that a thread calling into paho
holds while it waits (paho's own lock is held while a callback runs).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import ConfigError, TransportError
from agent.transport.mqtt_tls import TlsFiles, client_context, explain_tls_failure
from agent.transport.options import MqttVersion

__all__ = [
    "BrokerURL",
    "Message",
    "MqttClient",
    "MqttVersion",
    "ReasonCode",
    "Session",
    "TlsFiles",
    "Will",
    "reason",
]

log = logging.getLogger("edgegov.transport")


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

    @classmethod
    def parse_all(cls, urls: object, where: str = "mqtt.url") -> tuple[BrokerURL, ...]:
        """One URL, or a non-empty list of them (``where[i]`` names a bad entry).

        Every entry uses TLS or none does (one client TLS setting serves them all), and
        none is listed twice.
        """
        if isinstance(urls, str):
            return (cls.parse(urls, where),)
        if not isinstance(urls, (list, tuple)) or not urls:
            raise ConfigError(
                f"{where}: expected a broker URL or a non-empty list of them, got {urls!r}"
            )
        out: list[BrokerURL] = []
        for i, u in enumerate(urls):
            if not isinstance(u, str):
                raise ConfigError(f"{where}[{i}]: expected a broker URL, got {type(u).__name__}")
            url = cls.parse(u, f"{where}[{i}]")
            if out and url.tls != out[0].tls:
                raise ConfigError(
                    f"{where}[{i}]: {url} and {where}[0] {out[0]} differ in TLS: every broker "
                    "in one list uses mqtts:// or every one uses mqtt://"
                )
            if (url.host, url.port) in [(o.host, o.port) for o in out]:
                raise ConfigError(f"{where}[{i}]: {url} is listed twice")
            out.append(url)
        return tuple(out)

    def __str__(self) -> str:  # never print the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Session:
    """What CONNECT asks of the broker (MQTT v5 §3.1.2; 3.1.1 §3.1.2).

    ``clean_start=False`` with ``expiry_s`` > 0 is a persistent session: the broker keeps
    our subscriptions and QoS 1 state across an outage of up to ``expiry_s`` seconds. In
    3.1.1 it is ``clean_session=False`` and has no expiry of its own (the broker's
    setting, e.g. Mosquitto's ``persistent_client_expiration``, decides).
    ``max_packet``: the largest packet we accept; a conforming v5 broker never sends more
    (3.1.1 cannot say so: callers still drop what is over their cap).
    """

    clean_start: bool = True
    expiry_s: int = 0
    max_packet: int | None = None
    keepalive: int = 30
    version: MqttVersion = "5"

    def properties(self) -> Properties | None:
        if self.version != "5" or (not self.expiry_s and self.max_packet is None):
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.expiry_s:
            props.SessionExpiryInterval = self.expiry_s
        if self.max_packet is not None:
            props.MaximumPacketSize = self.max_packet
        return props


@dataclass(frozen=True)
class Will:
    """The Last Will the broker publishes if we vanish without a DISCONNECT (§3.1.2.5)."""

    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Message:
    """One PUBLISH the broker delivered to us."""

    topic: str
    payload: bytes
    dup: bool = False  # the broker flagged it as a redelivery (§3.3.1.1)
    retain: bool = False  # a retained message, sent because we subscribed
    mid: int = 0  # its packet id, for :meth:`MqttClient.ack` (manual_ack)
    qos: int = 0


class _PackedProperties(Properties):
    """PUBLISH properties with a Content Type, packed once.

    paho packs a message's properties each time it sends it, and ``Properties.pack``
    walks every MQTT v5 property name to do so: tens of microseconds a message, about as
    much as the rest of a QoS 1 publish. These never change once made, so the bytes are
    kept (set no property after construction).
    """

    _packed: bytes

    def __init__(self, content_type: str) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.ContentType = content_type
        # Properties.__setattr__ admits only MQTT property names
        object.__setattr__(self, "_packed", bytes(super().pack()))  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        return self._packed


def reason(rc: ReasonCode | int) -> str:
    """A paho reason code (MQTT v5 name) or paho error number (paho's text), in words."""
    return str(rc) if isinstance(rc, ReasonCode) else paho.error_string(rc)


class MqttClient:
    """One MQTT 5 or 3.1.1 client over paho 2.x (``CallbackAPIVersion.VERSION2``).

    ``url``: one broker, or the nodes of a cluster in the order to try them (see the
    module: failover). Set the ``on_*`` attributes before connecting; each is optional.
    """

    def __init__(
        self,
        url: BrokerURL | Sequence[BrokerURL],
        client_id: str,
        *,
        tls: TlsFiles | None = None,
        session: Session | None = None,
        will: Will | None = None,
        max_inflight: int = 20,
        reconnect_delay: tuple[float, float] = (1.0, 120.0),
        manual_ack: bool = False,
    ) -> None:
        """``manual_ack``: a QoS 1 message is acknowledged by :meth:`ack`, not when
        ``on_message`` returns. Raises ConfigError (from :func:`client_context`) when a
        TLS file is unusable."""
        self.urls: tuple[BrokerURL, ...] = (url,) if isinstance(url, BrokerURL) else tuple(url)
        if not self.urls or len({u.tls for u in self.urls}) != 1:
            raise ValueError("MqttClient needs one URL or more, all with TLS or all without")
        self._at = 0  # self.urls[self._at] is the node we use now
        self._skip = False  # the node failed us: the next reconnect goes to the next node
        self._up = False  # a CONNACK accepted us since the latest connection attempt
        self._joined: BrokerURL | None = None  # the node that last accepted us
        self._quiet = False  # connect() is walking the list itself (or close()): no failover
        self.tls = tls
        self.session = s = session or Session()
        self.on_connect: Callable[[ReasonCode], None] | None = None
        self.on_connect_fail: Callable[[], None] | None = None
        self.on_disconnect: Callable[[ReasonCode], None] | None = None
        self.on_publish: Callable[[int, ReasonCode], None] | None = None
        self.on_subscribe: Callable[[int, list[ReasonCode]], None] | None = None
        self.on_unsubscribe: Callable[[int, list[ReasonCode]], None] | None = None
        self.on_message: Callable[[Message], None] | None = None
        self.session_present = False  # the latest CONNACK's flag: the broker kept our session
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None  # the latest CONNACK
        self._dropped: ReasonCode | None = None  # a disconnect before any CONNACK
        self._props: dict[str, Properties] = {}  # PUBLISH properties per content type
        v5 = s.version == "5"
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else s.clean_start,  # 3.1.1 §3.1.2.4: in the client
            manual_ack=manual_ack,
        )
        c.max_queued_messages_set(0)  # unbounded: callers bound what they hand us
        c.max_inflight_messages_set(max_inflight)
        c.reconnect_delay_set(*reconnect_delay)  # type: ignore[arg-type]
        if self.url.tls:
            c.tls_set_context(client_context(tls))
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_pre_connect = self._pre_connect
        c.on_connect = self._connected
        c.on_connect_fail = self._connect_failed
        c.on_disconnect = self._disconnected
        c.on_publish = self._published
        c.on_subscribe = self._subscribed
        c.on_unsubscribe = self._unsubscribed
        c.on_message = self._message
        self._paho = c
        self._aim(0)

    @property
    def url(self) -> BrokerURL:
        """The node in use (or being tried) now."""
        return self.urls[self._at]

    def _aim(self, at: int) -> None:
        """Use node ``at`` from the next connection attempt on (its own credentials)."""
        self._at = at
        self._paho.username_pw_set(self.url.username, self.url.password)

    def _connect_args(self) -> dict[str, Any]:
        """CONNECT's options for paho; Clean Start and properties exist in v5 only."""
        s = self.session
        if s.version != "5":
            return {"keepalive": s.keepalive}
        return {"keepalive": s.keepalive, "clean_start": s.clean_start,
                "properties": s.properties()}  # fmt: skip

    # -- connecting ------------------------------------------------------------------
    def connect(self, timeout: float) -> None:
        """Connect to the first node that accepts us and wait for its CONNACK; paho then
        reconnects by itself (and fails over, see the module).

        Raises:
            TransportError: the broker cannot be reached or the TLS handshake failed (what
                to give, in words), it refused us (the CONNACK reason), it closed the
                connection first, or no CONNACK came within ``timeout`` seconds; with a
                list, that every node failed, each with its reason. The message reads
                after a subject: "collector cannot reach broker …".
        """
        failures: list[str] = []
        for at in range(len(self.urls)):
            self._aim(at)
            self._skip, self._quiet = False, True
            try:
                self._connect_one(timeout)
            except TransportError as e:
                if len(self.urls) == 1:
                    raise
                nxt = f"; trying {self.urls[at + 1]}" if at + 1 < len(self.urls) else ""
                log.warning("skipping broker %s: %s%s", self.url, e, nxt)
                failures.append(str(e))
                continue
            finally:
                self._quiet = False
            self._joined = self.url
            return
        raise TransportError(
            f"cannot connect to any of {len(self.urls)} brokers: {'; '.join(failures)}"
        )

    def _connect_one(self, timeout: float) -> None:
        with self._cond:
            self._connack = self._dropped = None
        try:
            self._paho.connect(self.url.host, self.url.port, **self._connect_args())
        except OSError as e:  # ssl.SSLError too: TLS 1.2 fails in the handshake
            why = explain_tls_failure(e, self.tls) or str(e)
            raise TransportError(f"cannot reach broker {self.url}: {why}") from e
        self._paho.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: (self._connack or self._dropped) is not None, timeout)
            rc, dropped = self._connack, self._dropped
        if rc is not None and not rc.is_failure:
            return
        self.close()
        if rc is not None:
            raise TransportError(f"refused by broker {self.url}: {reason(rc)}")
        if dropped is not None:
            # TLS 1.3: a broker that wants a client certificate drops us after the handshake
            no_cert = self.url.tls and (self.tls is None or self.tls.cert is None)
            hint = "; a broker with mutual TLS needs a client certificate and key" * no_cert
            raise TransportError(f"dropped by broker {self.url} before CONNACK ({dropped}){hint}")
        raise TransportError(f"got no CONNACK from broker {self.url} within {timeout} s")

    def connect_in_background(self) -> None:
        """Let paho connect, and reconnect with backoff, on its own thread; never raises
        for the network (``on_connect``/``on_connect_fail`` say how it goes)."""
        self._paho.connect_async(self.url.host, self.url.port, **self._connect_args())
        self._paho.loop_start()

    def close(self, timeout: float = 5.0) -> None:
        """DISCONNECT and stop paho's thread; bounded, so a stuck socket cannot hang exit."""
        self._quiet = True
        self._paho.disconnect()
        stopper = threading.Thread(target=self._paho.loop_stop, daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            log.warning(
                "the MQTT network thread did not stop within %.0f s; exiting anyway", timeout
            )

    def why_unreachable(self) -> str:
        """Why the broker is unreachable, in the operating system's words (diagnostics)."""
        try:
            socket.create_connection((self.url.host, self.url.port), timeout=2).close()
        except OSError as e:
            return e.strerror or str(e) or type(e).__name__
        return "TCP connects, but the MQTT connection failed"

    # -- packets -----------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        queue_offline: bool = True,
        wait: float | None = None,
    ) -> int:
        """Hand a message to paho; returns its message id (its PUBACK comes to ``on_publish``).

        Offline, paho keeps a QoS 1 message and sends it on reconnect, in order; with
        ``queue_offline=False`` that is a TransportError instead. ``wait``: then block up
        to that many seconds for it to be sent (best effort: no error if it is not).
        ``content_type`` is a v5 property: in 3.1.1 it is not sent (each topic's payload
        format is fixed, so no reader needs it).
        """
        props = None
        if content_type is not None and self.session.version == "5":
            props = self._props.get(content_type)
            if props is None:
                props = _PackedProperties(content_type)
                self._props[content_type] = props
        info = self._paho.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS and not (
            queue_offline and info.rc == paho.MQTT_ERR_NO_CONN
        ):
            raise TransportError(f"publish to {topic} failed: {reason(info.rc)}")
        if wait is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=wait)
        return info.mid

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """SUBSCRIBE; returns its message id (the SUBACK comes to ``on_subscribe``)."""
        rc, mid = self._paho.subscribe(topic_filter, qos=qos)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"subscribe {topic_filter} failed: {reason(rc)}")
        return mid

    def ack(self, msg: Message) -> None:
        """PUBACK a message received with ``manual_ack`` (any thread)."""
        self._paho.ack(msg.mid, msg.qos)

    def unsubscribe(self, topic_filter: str) -> int:
        """UNSUBSCRIBE; returns its message id (the UNSUBACK comes to ``on_unsubscribe``)."""
        rc, mid = self._paho.unsubscribe(topic_filter)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"unsubscribe {topic_filter} failed: {reason(rc)}")
        return mid

    # -- failover (paho's network thread) -------------------------------------------------
    def _pre_connect(self, _c: object, _u: object) -> None:
        """paho is about to open a connection: to the next node if this one failed us."""
        if self._skip:
            self._skip = False
            self._aim((self._at + 1) % len(self.urls))
        self._up = False
        # paho's host/port setters refuse while it reconnects (state "connecting"), the one
        # moment a reconnect can be aimed elsewhere; this hook runs right before it reads them
        self._paho._host, self._paho._port = self.url.host, self.url.port

    def _failed_over(self) -> None:
        """A CONNACK accepted us: say so if it is another node than the last one."""
        left, self._joined = self._joined, self.url
        if left is not None and left != self.url:
            log.warning(
                "failed over from broker %s to broker %s (session %s); every unacknowledged "
                "message is sent again",
                left,
                self.url,
                "kept" if self.session_present else "new",
            )

    def leave_node(self, why: str) -> None:
        """Drop the connection to a node that stopped answering (a PUBACK that never came:
        a NATS cluster electing a stream leader can leave one pending for good). paho
        reconnects, to the next node if the list has one, and sends every unacknowledged
        message again: in MQTT 3.1.1 that happens only on a new connection (§4.4)."""
        if len(self.urls) > 1 and not self._quiet:
            self._skip = True
        log.warning(
            "broker %s: %s; reconnecting%s and sending every unacknowledged message again",
            self.url,
            why,
            f" to {self.urls[(self._at + 1) % len(self.urls)]}" if self._skip else "",
        )
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):  # shut, not closed: paho's loop sees the loss
            with contextlib.suppress(OSError):  # and reconnects (an SSLSocket is one too)
                sock.shutdown(socket.SHUT_RDWR)

    def _give_up_on_node(self, why: str) -> None:
        """The node we tried failed us (unreachable, refused, dropped before CONNACK)."""
        if len(self.urls) > 1 and not self._skip and not self._quiet:
            self._skip = True
            nxt = self.urls[(self._at + 1) % len(self.urls)]
            log.warning("broker %s: %s; trying %s next", self.url, why, nxt)

    # -- paho's callbacks (network thread), typed -----------------------------------------
    def _connected(
        self, _c: object, _u: object, flags: paho.ConnectFlags, rc: ReasonCode, _p: object
    ) -> None:
        with self._cond:
            self._connack = rc
            self.session_present = bool(flags.session_present)
            self._cond.notify_all()
        if rc.is_failure:
            self._give_up_on_node(f"refused us ({reason(rc)})")
        else:
            self._up = True
            self._failed_over()
        if self.on_connect is not None:
            self.on_connect(rc)

    def _connect_failed(self, _c: object, _u: object) -> None:
        if len(self.urls) > 1:
            self._give_up_on_node(f"unreachable ({self.why_unreachable()})")
        if self.on_connect_fail is not None:
            self.on_connect_fail()

    def _disconnected(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            if self._connack is None:
                self._dropped = rc
            self._cond.notify_all()
        if not self._up:
            self._give_up_on_node(f"closed the connection before accepting us ({rc})")
        if self.on_disconnect is not None:
            self.on_disconnect(rc)

    def _published(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        if self.on_publish is not None:
            self.on_publish(mid, rc)

    def _subscribed(
        self, _c: object, _u: object, mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        if self.on_subscribe is not None:
            self.on_subscribe(mid, list(codes))

    def _unsubscribed(
        self, _c: object, _u: object, mid: int, codes: list[ReasonCode] | ReasonCode, _p: object
    ) -> None:
        if self.on_unsubscribe is not None:
            self.on_unsubscribe(mid, list(codes) if isinstance(codes, list) else [codes])

    def _message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        if self.on_message is not None:
            p = msg.payload
            payload = p if isinstance(p, bytes) else bytes(p)
            self.on_message(
                Message(msg.topic, payload, bool(msg.dup), bool(msg.retain), msg.mid, msg.qos)
            )
