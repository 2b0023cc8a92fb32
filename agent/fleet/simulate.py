"""``edgegov fleet simulate``: N emulated gateways against a broker (or a cluster), with
collectors storing what they receive, and the figures a fleet operator sizes by.

Each gateway is the agent's own evidence path, minus the serial port and the models:
its own Ed25519 key, its own evidence log (an ``EvidenceStore``: SQLite, fsync), the
``Attester`` that signs each window and the ``MqttPublisher`` outbox that sends it
(QoS 1, persistent session, acknowledged on PUBACK). Its source is synthetic: each
window holds ``readings`` readings. All gateways run in this one process (a thread per
MQTT client), so CPU and memory per gateway are this process's figures divided by N:
they include the collectors' share.

Collectors are ``StoreCollector``s (SQLite, or PostgreSQL with ``--store``); with
several, they share the load on an MQTT v5 shared subscription. What is printed:
attestations per second end to end, latency from window close to the stored row (p50,
p99), attestations lost (signed, never stored) and duplicated (stored again: QoS 1 is
at-least-once), CPU and memory per gateway, and the broker's own figures where it
publishes them (Mosquitto's ``$SYS``).
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.audit.collector import StoreCollector
from agent.evidence.attester import Attester
from agent.evidence.claims import ConfigInForce, RuleResult
from agent.evidence.store import EvidenceStore, OutboxItem
from agent.identity.keys import generate_key
from agent.sources.reading import Reading
from agent.transport.mqtt import BrokerURL, MqttVersion
from agent.transport.publisher import MqttPublisher
from agent.transport.topics import DeviceTopics

__all__ = ["SimResult", "simulate"]

FLEET = "sim"
_CONFIG = ConfigInForce("fleet-simulation", 1, "00" * 32, {})


@dataclass
class SimResult:
    gateways: int
    seconds: float
    collectors: int
    brokers: tuple[str, ...]
    store: str
    signed: int = 0
    stored: int = 0  # distinct attestations stored
    received: int = 0  # deliveries to the collectors (copies included)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    cpu_s: float = 0.0  # this process over the run
    rss_mb: float = 0.0  # this process's peak resident memory
    broker_stats: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0  # first window close to the last stored row

    @property
    def lost(self) -> int:
        return self.signed - self.stored

    @property
    def duplicated(self) -> int:
        return self.received - self.stored

    def percentile(self, p: float) -> float:
        xs = sorted(self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]

    def rows(self) -> list[tuple[str, str]]:
        n = self.gateways
        rate = self.stored / self.wall_s if self.wall_s > 0 else float("nan")
        out = [
            ("gateways", f"{n} ({self.collectors} collector(s), store {self.store})"),
            ("broker(s)", ", ".join(self.brokers)),
            ("attestations", f"{self.signed} signed, {self.stored} stored"),
            ("end to end", f"{rate:,.1f} attestations/s"),
            (
                "latency",
                f"p50 {self.percentile(50):,.1f} ms, p99 {self.percentile(99):,.1f} ms "
                "(window close to stored row)",
            ),
            ("lost", f"{self.lost} (signed, never stored)"),
            ("duplicated", f"{self.duplicated} (delivered again; stored once)"),
            (
                "CPU per gateway",
                f"{100 * self.cpu_s / self.seconds / n:.2f} % of a core "
                f"(this process: {100 * self.cpu_s / self.seconds:.0f} %, collectors included)",
            ),
            ("memory per gateway", f"{self.rss_mb / n:.2f} MiB (this process: {self.rss_mb:.0f})"),
        ]
        out += [(f"broker {k}", v) for k, v in sorted(self.broker_stats.items())]
        return out

    def text(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in self.rows())

    def to_json(self) -> dict[str, Any]:
        return {
            "gateways": self.gateways,
            "seconds": self.seconds,
            "collectors": self.collectors,
            "brokers": list(self.brokers),
            "store": self.store,
            "signed": self.signed,
            "stored": self.stored,
            "received": self.received,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "attestations_per_s": self.stored / self.wall_s if self.wall_s > 0 else None,
            "latency_p50_ms": self.percentile(50),
            "latency_p99_ms": self.percentile(99),
            "cpu_core_share_per_gateway": self.cpu_s / self.seconds / self.gateways,
            "rss_mb_per_gateway": self.rss_mb / self.gateways,
            "broker": self.broker_stats,
        }


class _TimedCollector(StoreCollector):
    """A collector that notes when each attestation was first stored."""

    def __init__(self, *a: Any, stored_at: dict[tuple[str, int], float], **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.stored_at = stored_at
        self._times = threading.Lock()

    def store(self, device: str, seq: int, digest: bytes, payload: bytes) -> bool:
        new = super().store(device, seq, digest, payload)
        now = time.time()
        with self._times:
            self.stored_at.setdefault((device, seq), now)
        return new


class _Gateway:
    def __init__(self, root: Path, i: int, urls: Sequence[BrokerURL], version: MqttVersion):
        self.device = f"sim-{i:04d}"
        d = root / self.device
        signer = generate_key(d / "device.key")
        self.store = EvidenceStore(d / "evidence.sqlite", self.device)
        topics = DeviceTopics("edgegov", FLEET, self.device)
        self.attester = Attester(self.device, signer, self.store, topics.attestation)
        rotated = [*urls[i % len(urls) :], *urls[: i % len(urls)]]  # spread over the nodes
        self.publisher = MqttPublisher(rotated, topics, self.store.acknowledge, version=version)
        self.seq = 0

    def window(self, start_ms: int, end_ms: int, readings: int) -> OutboxItem:
        step = max(1, (end_ms - start_ms) // max(1, readings))
        batch = [
            Reading(start_ms + k * step, start_ms + k * step, 0, self.seq * readings + k, (5.0,))
            for k in range(readings)
        ]
        self.seq += 1
        return self.attester.attest(
            (start_ms, end_ms),
            batch,
            _CONFIG,
            (RuleResult("sim-range", readings, 0, 0),),
            (),
            {"frames_ok": readings},
            (),
        )


def simulate(
    gateways: int,
    seconds: float,
    brokers: Sequence[str],
    *,
    store: str | None = None,
    collectors: int = 1,
    window_s: float = 1.0,
    readings: int = 10,
    version: MqttVersion = "5",
    workdir: Path | None = None,
    say: Any = None,
) -> SimResult:
    """Run the simulation; ``say`` (print-like) reports progress."""
    say = say or (lambda *_: None)
    urls = BrokerURL.parse_all(list(brokers), "--broker")
    tmp = tempfile.TemporaryDirectory(prefix="edgegov-sim-") if workdir is None else None
    root = Path(tmp.name) if tmp is not None else workdir
    assert root is not None
    store_url = store or str(root / "collected.sqlite")
    shown = store_url if store or tmp is None else "a temporary SQLite"
    res = SimResult(gateways, seconds, collectors, tuple(str(u) for u in urls), shown)
    stored_at: dict[tuple[str, int], float] = {}
    closed_at: dict[tuple[str, int], float] = {}
    cols = [
        _TimedCollector(
            [str(u) for u in urls[k % len(urls) :] + urls[: k % len(urls)]],
            store_url,
            fleet=FLEET,
            share="sim-collectors" if collectors > 1 else None,
            version=version,
            stored_at=stored_at,
        )
        for k in range(collectors)
    ]
    gws: list[_Gateway] = []
    try:
        for c in cols:
            c.start(10.0)
        say(f"starting {gateways} gateway(s): keys, evidence logs, MQTT sessions...")
        gws = [_Gateway(root, i, urls, version) for i in range(gateways)]
        _write_trust(root, [g.device for g in gws])
        for g in gws:
            g.publisher.start([])
        for g in gws:
            if not g.publisher.wait_connected(10.0):
                raise RuntimeError(f"{g.device}: not connected to {res.brokers} within 10 s")
        say(f"running {seconds:g} s of {window_s:g} s windows...")
        span = int(window_s * 1000)
        cpu0 = time.process_time()
        start = int(time.time() * 1000)
        start -= start % span
        first_close = None
        end = start + span
        deadline = time.time() + seconds
        while time.time() < deadline:
            time.sleep(max(0.0, end / 1000 - time.time()))
            close = time.time()
            first_close = first_close or close
            for g in gws:
                item = g.window(end - span, end, readings)
                closed_at[(g.device, item.seq)] = close
                g.publisher.publish(item)
                res.signed += 1
            end += span
        wait_until = time.time() + 30
        while len(stored_at) < res.signed and time.time() < wait_until:
            time.sleep(0.05)
        res.cpu_s = time.process_time() - cpu0
        res.seconds = max(seconds, 1e-9)
        last = max(stored_at.values(), default=first_close or 0.0)
        res.wall_s = max(1e-9, last - (first_close or last))
        res.stored = len(stored_at.keys() & closed_at.keys())
        res.latencies_ms = [
            1000 * (stored_at[k] - t) for k, t in closed_at.items() if k in stored_at
        ]
        res.broker_stats = _mosquitto_sys(urls[0], version)
    finally:
        for g in gws:
            g.publisher.stop(5.0)
            g.store.close()
        for c in cols:
            c.stop()
            res.received += c.received
        res.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if tmp is not None:
            tmp.cleanup()
    return res


def _write_trust(root: Path, devices: Sequence[str]) -> None:
    """``root/trust.yaml``: every gateway's key bound to its device id, for ``audit verify
    --store STORE --trust root/trust.yaml`` over what the collectors stored."""
    import yaml

    keys = [{"key": f"{d}/device.pub.pem", "device": d} for d in devices]
    (root / "trust.yaml").write_text(yaml.safe_dump({"keys": keys}, sort_keys=False))


def _mosquitto_sys(url: BrokerURL, version: MqttVersion) -> dict[str, str]:
    """Mosquitto's retained ``$SYS`` figures (none from a broker that has no ``$SYS``)."""
    from agent.fleet._mqtt import FleetSession

    wanted = {
        "$SYS/broker/version": "version",
        "$SYS/broker/clients/connected": "clients connected",
        "$SYS/broker/messages/received": "messages received",
        "$SYS/broker/messages/sent": "messages sent",
        "$SYS/broker/load/messages/received/1min": "messages received/min (1 min avg)",
        "$SYS/broker/heap/current": "heap bytes",
    }
    try:
        with FleetSession(url, f"edgegov-sim-sys-{os.getpid()}", version=version) as s:
            got = s.read_retained_all("$SYS/broker/#")
    except Exception:
        return {"figures": "none published ($SYS)"}
    out = {v: got[k].decode(errors="replace") for k, v in wanted.items() if k in got}
    return out or {"figures": "none published ($SYS)"}
