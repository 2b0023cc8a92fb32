"""``edgegov fleet simulate``: N emulated gateways against a broker (or a cluster), with
collectors storing what they receive, and the figures a fleet operator sizes by.

Each gateway is the agent's own evidence path, minus the serial port and the models:
its own Ed25519 key, its own evidence log (an ``EvidenceStore``: SQLite, fsync), the
``Attester`` that signs each window and the ``MqttPublisher`` outbox that sends it
(QoS 1, persistent session, acknowledged on PUBACK). Its source is synthetic: each
window holds ``readings`` readings. All gateways run in this one process (a thread per
MQTT client) in worker processes of at most 100 gateways each (paho waits on
``select()``, which takes no descriptor above 1023); CPU and memory per gateway are the
sum over those processes and this one (the collectors) divided by N.

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
from agent.errors import TransportError
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
                f"(all: {100 * self.cpu_s / self.seconds:.0f} %, collectors included)",
            ),
            ("memory per gateway", f"{self.rss_mb / n:.2f} MiB (all processes: {self.rss_mb:.0f})"),
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


def _device(i: int) -> str:
    return f"sim-{i:04d}"


class _Gateway:
    def __init__(self, root: Path, i: int, urls: Sequence[BrokerURL], version: MqttVersion):
        self.device = _device(i)
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


#: gateways per worker process: paho waits on select(), which takes no descriptor above
#: 1023, and each gateway holds about six (its evidence log, WAL, socket, wake-up pair)
PER_PROCESS = 100


@dataclass(frozen=True)
class _Plan:
    root: str
    indices: tuple[int, ...]
    urls: tuple[str, ...]
    version: MqttVersion
    start_ms: int  # the first window's start (aligned); every process waits for it
    seconds: float
    window_s: float
    readings: int
    connect_s: float


def _run_gateways(plan: _Plan) -> tuple[list[tuple[str, int, float]], float, float, str]:
    """One worker process: its gateways connect, then sign and publish a window each at
    every boundary until the run ends. Returns (device, seq, closed at) per attestation,
    this process's CPU seconds, its peak RSS (MiB), and an error ('' if none)."""
    urls = BrokerURL.parse_all(list(plan.urls), "--broker")
    gws: list[_Gateway] = []
    closed: list[tuple[str, int, float]] = []
    error = ""
    cpu0 = time.process_time()
    try:
        _enough_files(len(plan.indices))
        gws = [_Gateway(Path(plan.root), i, urls, plan.version) for i in plan.indices]
        for g in gws:
            g.publisher.start([])
        connect_by = time.monotonic() + plan.connect_s
        for g in gws:
            if not g.publisher.wait_connected(max(0.0, connect_by - time.monotonic())):
                raise TransportError(
                    f"{g.device}: not connected to {', '.join(plan.urls)} within "
                    f"{plan.connect_s:g} s"
                )
        span = int(plan.window_s * 1000)
        end = plan.start_ms + span
        stop_at = plan.start_ms / 1000 + plan.seconds
        cpu0 = time.process_time()
        while end / 1000 <= stop_at + 1e-3:
            time.sleep(max(0.0, end / 1000 - time.time()))
            close = time.time()
            for g in gws:
                item = g.window(end - span, end, plan.readings)
                closed.append((g.device, item.seq, close))
                g.publisher.publish(item)
            end += span
    except Exception as e:  # handed to the parent, which says it
        error = f"{type(e).__name__}: {e}" if not isinstance(e, TransportError) else str(e)
    finally:
        for g in gws:
            g.publisher.stop(10.0)
            g.store.close()
    cpu = time.process_time() - cpu0
    return closed, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, error


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
    monitor: str | None = None,
    say: Any = None,
) -> SimResult:
    """Run the simulation; ``say`` (print-like) reports progress. Gateways run in worker
    processes of at most :data:`PER_PROCESS` each; the collectors run here. ``monitor``:
    a NATS server's monitoring URL (``http://host:8222``), read for the broker's figures
    instead of Mosquitto's ``$SYS``."""
    import multiprocessing

    say = say or (lambda *_: None)
    urls = BrokerURL.parse_all(list(brokers), "--broker")
    tmp = tempfile.TemporaryDirectory(prefix="edgegov-sim-") if workdir is None else None
    root = Path(tmp.name) if tmp is not None else workdir
    assert root is not None
    root.mkdir(parents=True, exist_ok=True)
    store_url = store or str(root / "collected.sqlite")
    shown = store_url if store or tmp is None else "a temporary SQLite"
    res = SimResult(gateways, seconds, collectors, tuple(str(u) for u in urls), shown)
    stored_at: dict[tuple[str, int], float] = {}
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
    try:
        for c in cols:
            c.start(10.0)
        procs = max(1, -(-gateways // PER_PROCESS))
        say(
            f"starting {gateways} gateway(s) in {procs} process(es): keys, evidence logs, "
            "MQTT sessions..."
        )
        _write_trust(root, [_device(i) for i in range(gateways)])
        span = int(window_s * 1000)
        connect_s = 10.0 + gateways / 20
        start = int((time.time() + 3.0 + connect_s) * 1000)  # after every process connected
        start += span - start % span
        plans = [
            _Plan(
                str(root), tuple(range(k, gateways, procs)), tuple(str(u) for u in urls),
                version, start, seconds, window_s, readings, connect_s,
            )
            for k in range(procs)
        ]  # fmt: skip
        cpu0 = time.process_time()
        ctx = multiprocessing.get_context("spawn")  # not fork: paho's threads run here
        with ctx.Pool(procs) as pool:
            pending = pool.map_async(_run_gateways, plans)
            say(f"running {seconds:g} s of {window_s:g} s windows...")
            done = pending.get(timeout=start / 1000 - time.time() + seconds + 120)
        errors = [e for *_, e in done if e]
        if errors:
            raise TransportError(f"{len(errors)} gateway process(es) failed: {errors[0]}")
        closed_at = {(d, seq): t for closed, *_ in done for d, seq, t in closed}
        res.signed = len(closed_at)
        wait_until = time.time() + 30
        while len(stored_at.keys() & closed_at.keys()) < res.signed and time.time() < wait_until:
            time.sleep(0.05)
        res.cpu_s = time.process_time() - cpu0 + sum(cpu for _, cpu, _, _ in done)
        res.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + sum(
            rss for *_, rss, _ in done
        )
        first_close = min(closed_at.values(), default=0.0)
        last = max(stored_at.values(), default=first_close)
        res.wall_s = max(1e-9, last - first_close)
        res.stored = len(stored_at.keys() & closed_at.keys())
        res.latencies_ms = [
            1000 * (stored_at[k] - t) for k, t in closed_at.items() if k in stored_at
        ]
        res.broker_stats = _nats_varz(monitor) if monitor else _mosquitto_sys(urls[0], version)
    finally:
        for c in cols:
            c.stop()
            res.received += c.received
        if tmp is not None:
            tmp.cleanup()
    return res


def _enough_files(gateways: int) -> None:
    """Each gateway holds about six descriptors (its evidence log and WAL, the MQTT socket
    and paho's wake-up pair): raise the soft limit to the hard one, or say it is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 64 + 8 * gateways
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise TransportError(
            f"{gateways} gateways need about {need} open files; the limit is {hard} "
            "(ulimit -n): run fewer, or raise it"
        )


def _write_trust(root: Path, devices: Sequence[str]) -> None:
    """``root/trust.yaml``: every gateway's key bound to its device id, for ``audit verify
    --store STORE --trust root/trust.yaml`` over what the collectors stored."""
    import yaml

    keys = [{"key": f"{d}/device.pub.pem", "device": d} for d in devices]
    (root / "trust.yaml").write_text(yaml.safe_dump({"keys": keys}, sort_keys=False))


def _nats_varz(monitor: str) -> dict[str, str]:
    """A NATS server's own figures from its monitoring endpoint (``/varz``)."""
    import json
    import urllib.request

    url = monitor.rstrip("/") + "/varz"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # the operator's monitoring URL
            v = json.load(r)
    except (OSError, ValueError) as e:
        return {"figures": f"none: {url}: {e}"}
    wanted = {
        "version": "version",
        "connections": "clients connected",
        "in_msgs": "messages received",
        "out_msgs": "messages sent",
        "mem": "memory bytes",
        "cpu": "CPU % (of a core)",
    }
    return {name: str(v[k]) for k, name in wanted.items() if k in v}


def _mosquitto_sys(url: BrokerURL, version: MqttVersion) -> dict[str, str]:
    """Mosquitto's retained ``$SYS`` figures (none from a broker that has no ``$SYS``)."""
    from agent.fleet._mqtt import FleetSession

    wanted = {
        "$SYS/broker/version": "version",
        "$SYS/broker/clients/maximum": "clients connected at most",
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
