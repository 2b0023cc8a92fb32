"""The agent daemon: sources -> windows -> policy + risk -> attestations -> outbox -> broker.

Threads: one per serial source (reads and decodes), paho's network thread, and
the main loop here, which owns the window, the evaluator and the signer.
SIGTERM/SIGINT close the current window, sign it, wait briefly for PUBACKs
and exit 0; SIGHUP reloads the whole config file (``agent.reload`` says what applies
live; the last good config stays on error). Under systemd the main loop reports to
``NOTIFY_SOCKET`` (``agent.service``): READY once the store is open and the sources
have been tried, WATCHDOG=1 from the loop itself, STATUS= per window, STOPPING=1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.attestation import ConfigInForce, RuleResult
from agent.attester import Attester
from agent.config import AgentConfig, load_config
from agent.errors import ConfigError, Error, KeyFileError, ModelError, PolicyError, StorageError
from agent.fleet_ca import load_x5chain
from agent.keys import Signer, load_signer
from agent.logs import set_level as set_log_level
from agent.policy import PolicyBundle, load_policy
from agent.policy.evaluator import BatchResult, Evaluator, state_digest
from agent.reload import plan_reload
from agent.risk import RiskEngine, RiskModel, load_declared
from agent.service import Notifier
from agent.sources import PortSource, make_source, sum_counters, window_problems
from agent.store import EvidenceStore, OutboxItem
from agent.transport import BrokerURL, MqttPublisher, Publisher, SpoolPublisher, Topics
from agent.window import Reading, Window, summarise_rules

if TYPE_CHECKING:
    from agent.fleet.activation import ActiveConfig
    from agent.fleet.agent_link import FleetLink
    from agent.pkcs11_signer import Pkcs11Signer

__all__ = ["Agent", "AgentStats"]

_SHED = "raw readings shed to keep the evidence store within its disk quota"
_OVER_QUOTA = "evidence store over its disk quota even without raw readings (evidence kept)"
_STORAGE_HELD = "evidence store could not be written for a while; windows were held in memory"
_WAITING = "waiting for signed fleet config (tuf: configured, no local policy)"

log = logging.getLogger("edgegov.agent")


def _signer(config: AgentConfig) -> Signer | Pkcs11Signer:
    """The device key: a 0600 key file, or a key that never leaves a PKCS#11 token."""
    p11 = config.pkcs11
    if p11 is None:
        assert config.key_path is not None  # the loader requires one of the two
        try:
            return load_signer(config.key_path)
        except KeyFileError as e:
            raise KeyFileError(f"{config.source}: device.key: {e}") from e
    pin = os.environ.get(p11.pin_env)
    if pin is None:
        raise KeyFileError(
            f"{config.source}: device.pkcs11.pin_env: environment variable {p11.pin_env} "
            "with the token PIN is not set"
        )
    from agent.pkcs11_signer import Pkcs11Signer

    try:
        return Pkcs11Signer(str(p11.module), p11.token, pin, p11.label)
    except KeyFileError as e:
        raise KeyFileError(f"{config.source}: device.pkcs11: {e}") from e


@dataclass
class AgentStats:
    readings: int = 0
    windows: int = 0
    attestations: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    last_seq: int | None = None


class Agent:
    """One gateway agent. ``run()`` blocks until ``stop()`` (or a signal)."""

    def __init__(self, config: AgentConfig, notifier: Notifier | None = None) -> None:
        """Set up; every check that can fail comes before the first write.

        In order: the device key, the fleet trust root and the fleet config in force,
        the policy, the device certificate, the sources and the publisher (built, not
        connected). Only then the evidence store is opened, which counts a boot. With
        ``tuf:`` and no local policy, before the first signed config is in force there is
        no policy yet: see :meth:`_await_first_fleet_config`.
        """
        self.config = config
        self.stats = AgentStats()
        self.notifier = notifier or Notifier(None)  # systemd's (agent.service); None: no-op
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._queue: queue.Queue[list[Reading]] = queue.Queue()
        self._shed = 0  # readings shed for the disk quota since the last attestation
        self._over_quota = False
        self._storage_problem: str | None = None
        self._last_source_health: list[dict[str, Any]] | None = None
        self._degraded_before: set[str] = set()
        self._unsigned: list[tuple[Window, dict[str, Any]]] = []  # windows the store refused
        self.signer = _signer(config)
        # tuf: configured -> the fleet's signed config in force (if any) replaces the local policy
        self.fleet: FleetLink | None = None
        if config.tuf is not None:  # python-tuf (~9 MiB) only for a fleet-managed gateway
            from agent.fleet.agent_link import FleetLink

            self.fleet = FleetLink(config)
        # tuf: and no local policy, and no signed config yet: nothing to attribute evidence to
        local = config.policy_path
        self._waiting = self.fleet is not None and self.fleet.policy_path(local) is None
        bundle = None if self._waiting else self._load_first_policy()
        prefix = config.mqtt.topic_prefix if config.mqtt else "edgegov"
        self.topics = Topics(prefix, config.fleet, config.device_id)
        try:
            x5chain = load_x5chain(config.device_cert) if config.device_cert else ()
        except KeyFileError as e:
            raise KeyFileError(f"{config.source}: device.cert: {e}") from e
        self.sources: list[PortSource] = [] if bundle is None else self._make_sources(bundle)
        self.publisher = self._make_publisher()

        # The first write: the evidence store (a new log, or the next boot of this one).
        self.store = EvidenceStore(config.state_dir / "evidence.sqlite", config.device_id)
        if self.store.new_log:
            log.info("starting a new evidence log %s", self.store.state.origin)
        else:
            log.info(
                "continuing evidence log %s at seq %d (boot %d)",
                self.store.state.origin,
                self.store.state.next_seq,
                self.store.state.bootcount,
            )
        self.attester = Attester(
            config.device_id,
            self.signer,
            self.store,
            self.topics.attestation,
            x5chain=x5chain,
            retention_ms=(
                int(config.retention_days * 86_400_000) if config.retention_days else None
            ),
            sensors={
                str(i): {"port": s.serial.port, "protocol": s.protocol, "name": s.name}
                for i, s in enumerate(config.sources)
            },
        )
        if bundle is not None:
            self._use_policy(bundle)  # evaluator (its saved state) and models (stored readings)

    # -- set-up ------------------------------------------------------------------
    def _load_models(self, bundle: PolicyBundle) -> tuple[list[RiskModel], list[str]]:
        models, problems = [], []
        for ref in bundle.models:
            try:
                models.append(load_declared(ref, self.config.providers, self.config.risk_threads))
            except ModelError as e:
                log.error("%s; continuing with the rules alone (evidence marked degraded)", e)
                problems.append(
                    f"model {ref.id} refused: {str(e).removeprefix(f'model {ref.id}: ')}"
                )
        return models, problems

    def _use_models(self, bundle: PolicyBundle) -> None:
        """Load ``bundle``'s models and give their features the stored recent readings."""
        self.models, self._model_problems = self._load_models(bundle)
        self.risk = RiskEngine(self.models, [c.name for c in bundle.channels])
        try:
            self.risk.prime(self.store.records_before(None, *self.risk.lookback), bundle)
        except (StorageError, ValueError) as e:
            log.warning("recent readings not read back for the risk features: %s", e)

    @property
    def _policy_state_path(self) -> Path:
        return self.config.state_dir / "policy-state.json"

    def _new_evaluator(self, bundle: PolicyBundle) -> Evaluator:
        """An evaluator for ``bundle``, continuing its saved state (windows, durations)."""
        ev = bundle.evaluator()
        path = self._policy_state_path
        try:
            ev.restore(json.loads(path.read_text()))
            log.info("policy state restored from %s", path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, Error) as e:
            log.warning("policy state in %s not used (%s); windows and durations start empty",
                        path, e)  # fmt: skip
        self._state_in = ev.state_digest()
        return ev

    def _save_policy_state(self) -> str:
        """Save the evaluator's state; return its digest (the next window's ``state_in``)."""
        text = self.evaluator.state_json()
        path = self._policy_state_path
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as e:
            log.error("cannot save the policy state to %s: %s", path, e)
        return state_digest(text)

    def _load_first_policy(self) -> PolicyBundle:
        """The policy to start with; a local one that fails names the config field."""
        path = self._policy_path
        try:
            return load_policy(path)
        except PolicyError as e:
            if path != self.config.policy_path:
                raise
            raise PolicyError(f"{self.config.source}: policy: {e}") from e

    def _make_sources(self, bundle: PolicyBundle) -> list[PortSource]:
        """The sources, built for ``bundle``'s channels (not opened yet)."""
        cfg = self.config
        return [
            make_source(i, s, bundle.channels, self._queue.put, str(cfg.source))
            for i, s in enumerate(cfg.sources)
        ]

    def _acknowledge(self, seq: int) -> None:
        self.store.acknowledge(seq)  # the publisher is built before the store is opened

    def _make_publisher(self) -> Publisher:
        """The publisher, built but not connected (``run()`` starts it)."""
        cfg = self.config
        if cfg.mqtt is not None:
            m = cfg.mqtt
            url = BrokerURL.parse(m.url, f"{cfg.source}: output.mqtt.url")
            try:
                return MqttPublisher(
                    url,
                    self.topics,
                    self._acknowledge,
                    ca_file=m.ca,
                    cert_file=m.cert,
                    key_file=m.key,
                )
            except ConfigError as e:  # load_config checked them; changed since?
                raise ConfigError(f"{cfg.source}: output.mqtt: {e}") from e
        assert cfg.spool_dir is not None
        return SpoolPublisher(cfg.spool_dir, cfg.device_id, self._acknowledge)

    # -- control -------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def window_bounds(self, now_ms: int, not_before: int | None = None) -> tuple[int, int]:
        """The aligned window holding ``now_ms``, starting no earlier than ``not_before``."""
        span = int(self.policy.window_seconds * 1000)
        start = now_ms - now_ms % span
        if not_before is not None and start < not_before:
            start = not_before  # after a restart: the last window ran until the stop
        end = start - start % span + span
        return start, end

    def run(self) -> AgentStats:
        pending = self.store.pending()
        if pending:
            log.info(
                "%d attestation(s) from before are still in the outbox; sending them first",
                len(pending),
            )
        self.publisher.start(pending)
        self.publisher.publish_status(self._status())
        if self.fleet is not None:
            self.fleet.start()
        if not self._await_first_fleet_config():  # tuf: without a local policy: fail closed
            return self._stop_waiting()
        for s in self.sources:
            s.start()
        self._await_sources(timeout=2.0)
        self.notifier.ready(self._service_status())  # store open, sources tried, publisher up
        n = len(self.policy.channels)
        start, end = self.window_bounds(int(time.time() * 1000), self.store.last_window_end())
        window = Window(start, end, n)
        try:
            while not self._stop.is_set():
                self.notifier.watchdog()  # only from this loop: a hung loop stops the pings
                timeout = max(0.0, min(0.25, end / 1000 - time.time()))
                try:
                    batch = self._queue.get(timeout=timeout)
                    self._add(window, batch)
                    while True:
                        self._add(window, self._queue.get_nowait())
                except queue.Empty:
                    pass
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_config()
                fleet_cfg = self.fleet.take_pending() if self.fleet is not None else None
                if fleet_cfg is not None:  # end the window at the switch: one config per window
                    window.end_ms = max(window.start_ms + 1, int(time.time() * 1000))
                    self._close(window)
                    self.apply_bundle(fleet_cfg, window.end_ms)
                    start, end = self.window_bounds(window.end_ms + 1, window.end_ms)
                    window = Window(start, end, len(self.policy.channels))
                now_ms = int(time.time() * 1000)
                if now_ms >= end:
                    self._close(window)
                    start, end = self.window_bounds(now_ms)
                    window = Window(start, end, len(self.policy.channels))
        finally:
            self.notifier.stopping("stopping: signing the last window, flushing the outbox")
            if self.fleet is not None:
                self.fleet.stop()
            for s in self.sources:
                s.stop()
            while not self._queue.empty():
                self._add(window, self._queue.get_nowait())
            window.end_ms = max(window.start_ms + 1, int(time.time() * 1000))
            self._close(window)  # the partial last window is attested too: nothing is dropped
            left = self.publisher.stop(timeout=5.0)
            if left:
                log.warning(
                    "%d attestation(s) not yet acknowledged; they stay in the outbox "
                    "and are sent at the next start",
                    left,
                )
            self.store.close()
        return self.stats

    def _add(self, window: Window, batch: list[Reading]) -> None:
        for r in batch:
            window.add(r)
        self.stats.readings += len(batch)

    # -- one window --------------------------------------------------------------------
    def _close(self, window: Window) -> None:
        self.store.flush_acks()  # at most one window of acknowledged rows stays behind
        health = self._window_health()
        self._last_source_health = health["sources"]
        self.stats.windows += 1
        self._unsigned.append((window, health))
        self._evaluate([w for w, _ in self._unsigned if w.results is None])
        while self._unsigned:
            w, h = self._unsigned[0]
            try:
                item = self._attest(w, h)
            except StorageError as e:
                self._storage_failed(e)
                return
            self._unsigned.pop(0)
            self.stats.attestations += 1
            self.stats.last_seq = item.seq
            self._publish(item)
        self._storage_problem = None  # every held window is signed and stored now
        self.notifier.status(self._service_status())

    def _storage_failed(self, e: StorageError) -> None:
        """The store refused a write (disk full, I/O error): hold the window, say so loudly."""
        first = self._storage_problem is None
        self._storage_problem = str(e)
        log.error(
            "%s; %d window(s) held in memory, retried at the next window",
            e,
            len(self._unsigned),
            extra={
                "device": self.config.device_id,
                "reason": str(e),
                "windows_held": len(self._unsigned),
            },
        )
        self.notifier.status(self._service_status())
        if first:
            self.publisher.publish_alert(
                {
                    "event": "storage_error",
                    "device": self.config.device_id,
                    "reason": str(e),
                    "windows_held": len(self._unsigned),
                }
            )
            self.publisher.publish_status(self._status())

    def _publish(self, item: OutboxItem) -> None:
        try:
            self.publisher.publish(item)
        except Error as e:
            log.error(
                "%s; attestation seq %d stays in the outbox",
                e,
                item.seq,
                extra={"device": self.config.device_id, "seq": item.seq, "reason": str(e)},
            )
        self.publisher.publish_status(self._status())

    def _evaluate(self, windows: list[Window]) -> None:
        """Risk for all ``windows`` in one batch per model, then the rules, window by window.

        Runs once per window, even when signing is retried (the evaluator's state has moved
        on). Each window keeps the digest of the evaluator state it started from.
        """
        if not windows:
            return
        p = self.policy
        masked = []
        for w in windows:
            cols = w.columns  # a copy: masked in place
            _missing, oor = p.mask_invalid(cols)
            masked.append((cols, sum(oor.values())))
        risks = self.risk.score([(w.timestamps, cols) for w, (cols, _) in zip(windows, masked)])
        for w, (cols, out_of_range), risk in zip(windows, masked, risks):
            scores = {r.model_id: r.score for r in risk}
            batch = self.evaluator.run(w.timestamps, cols, scores)
            w.results = (batch, risk, out_of_range, self._state_in)
            self._state_in = self._save_policy_state()

    def _attest(self, window: Window, health: dict[str, Any]) -> OutboxItem:
        p = self.policy
        assert window.results is not None
        batch, risk, out_of_range, state_in = window.results
        assert isinstance(batch, BatchResult)
        if out_of_range:
            health = {**health, "readings_out_of_range": out_of_range}
        if self._shed:
            health = {**health, "readings_shed": self._shed}
        rules = summarise_rules([r.id for r in p.rules], batch, window.timestamps)
        for r in rules:
            if r.violated:
                self.stats.violations[r.rule_id] = self.stats.violations.get(r.rule_id, 0) + 1
        degraded = (
            tuple(self._model_problems)
            + window_problems(health)
            + tuple(f"risk {r.model_id}: {r.reason}" for r in risk if r.score is None and window.n)
            + (_SHED,) * bool(self._shed)
            + (_OVER_QUOTA,) * self._over_quota
            + (_STORAGE_HELD,) * (self._storage_problem is not None)
        )
        config = ConfigInForce(p.id, p.version, p.digest, {m.id: m.sha256 for m in p.models}, 0)
        if self.fleet is not None:
            config = self.fleet.config_in_force(p, window.start_ms, window.end_ms)
            degraded += self.fleet.degraded()
            health = {**health, **self.fleet.health_counters()}
        config = dataclasses.replace(config, state_in=state_in)
        item = self.attester.attest(
            (window.start_ms, window.end_ms), window.records, config, rules, risk, health, degraded
        )
        bad = ", ".join(f"{r.rule_id} {r.violated}/{r.evaluated}" for r in rules if r.violated)
        scores = ", ".join(
            f"{r.model_id} {r.score:.2f}"
            + (" (inputs outside its training range)" if r.ood else "")
            for r in risk
            if r.score is not None
        )
        log.info(
            "attestation seq %d signed: %d readings, violations: %s; risk: %s%s",
            item.seq,
            window.n,
            bad or "none",
            scores or "n/a",
            f"; DEGRADED: {'; '.join(degraded)}" if degraded else "",
            extra={
                "device": self.config.device_id,
                "seq": item.seq,
                "readings": window.n,
                "window": [window.start_ms, window.end_ms],
                "policy": p.digest,
                "violations": {r.rule_id: r.violated for r in rules if r.violated},
                "risk": {r.model_id: r.score for r in risk if r.score is not None},
                "degraded": list(degraded),
            },
        )
        self._shed = 0  # reported in this attestation
        self._alerts(window, rules, item.seq)
        self._degraded_alerts(degraded, item.seq)
        self._enforce_quota()
        return item

    def _enforce_quota(self) -> None:
        """Keep the evidence store within evidence.max_mb: raw readings go before evidence.

        What was shed is counted in the next attestation (health ``readings_shed``, and a
        degraded reason); if evidence alone is over the quota, it is kept anyway and the
        next attestation, the status and an alert say so.
        """
        if self.config.evidence_max_mb is None:
            return
        quota = int(self.config.evidence_max_mb * 1024 * 1024)
        if self.store.used_bytes() <= quota:
            self._over_quota = False
            return
        shed = self.store.shed_readings(int(quota * 0.9))
        self._shed += shed
        self._over_quota = self.store.used_bytes() > quota
        log.warning(
            "evidence store over its %.1f MB quota: shed %d raw reading(s)%s",
            self.config.evidence_max_mb,
            shed,
            "; attestations alone exceed the quota and are kept" if self._over_quota else "",
        )

    def _degraded_alerts(self, degraded: tuple[str, ...], seq: int) -> None:
        """Alert when evidence becomes degraded for a new reason, and when a reason clears
        (a rejected device schema, a refused model, a frozen fleet config...)."""
        now, before = set(degraded), self._degraded_before
        for reason, event in [(r, "degraded") for r in sorted(now - before)] + [
            (r, "degraded_cleared") for r in sorted(before - now)
        ]:
            log.warning(
                "ALERT %s: %s",
                event,
                reason,
                extra={
                    "event": event,
                    "device": self.config.device_id,
                    "reason": reason,
                    "seq": seq,
                },
            )
            self.publisher.publish_alert(
                {
                    "event": event,
                    "device": self.config.device_id,
                    "reason": reason,
                    "evidence": {"log": self.store.state.origin, "seq": seq},
                }
            )
        self._degraded_before = now

    def _alerts(self, window: Window, rules: tuple[RuleResult, ...], seq: int) -> None:
        """Alert when a violation episode starts or ends, naming the attestation as evidence.

        Alerts are a convenience for people on call; the signed attestation is the record.
        """
        by_id = {r.id: r for r in self.policy.rules}
        for res in rules:
            rule = by_id.get(res.rule_id)
            if rule is None:
                continue
            for e in res.episodes:
                events = []
                if window.start_ms <= e.start_ms < window.end_ms:
                    events.append("violation_start")
                if e.end_ms is not None:
                    events.append("violation_end")
                for event in events:
                    alert = {
                        "event": event,
                        "device": self.config.device_id,
                        "rule": rule.id,
                        "goal": rule.goal,
                        "severity": rule.severity,
                        "start_ms": e.start_ms,
                        "end_ms": e.end_ms,
                        "peak": e.peak,
                        "message": rule.explain_text(e.start_ms, e.end_ms, e.peak),
                        "evidence": {"log": self.store.state.origin, "seq": seq},
                    }
                    log.warning(
                        "ALERT %s %s: %s",
                        event,
                        rule.id,
                        alert["message"],
                        extra={
                            "event": event,
                            "device": self.config.device_id,
                            "rule": rule.id,
                            "severity": rule.severity,
                            "seq": seq,
                        },
                    )
                    self.publisher.publish_alert(alert)

    def _window_health(self) -> dict[str, Any]:
        """This window's data quality: counters summed over sources, plus each source's record."""
        per_source = [s.take_health() for s in self.sources]
        return {**sum_counters(per_source), "sources": per_source}

    @property
    def _policy_path(self) -> Path:
        """The policy to load: the fleet's signed config in force, else the local file."""
        local = self.config.policy_path
        path = self.fleet.policy_path(local) if self.fleet is not None else local
        if path is None:  # e.g. a reload that drops policy: before any signed config
            raise ConfigError(
                f"{self.config.source}: policy: needed until a signed fleet config is in force"
            )
        return path

    def _same_channels(self, bundle: PolicyBundle) -> bool:
        """A policy switch keeps the window's columns: only with the same channel list."""
        return [c.name for c in bundle.channels] == [c.name for c in self.policy.channels]

    def _use_policy(self, bundle: PolicyBundle) -> None:
        self.policy = bundle
        self.evaluator = self._new_evaluator(bundle)
        self._use_models(bundle)

    def apply_bundle(self, cfg: ActiveConfig, at_ms: int) -> None:
        """Evaluate with a fleet config the fleet client has verified and activated."""
        assert self.fleet is not None
        try:
            bundle = load_policy(cfg.policy_path)
            sources = self._make_sources(bundle) if self._waiting else None
        except Error as e:
            self.fleet.refused(cfg, e)
            return
        if sources is not None:  # the first policy: the sources are built for its channels
            self.sources, self._waiting = sources, False
        elif not self._same_channels(bundle):
            self.fleet.refused(cfg, "the channel list changed; it applies at the next start")
            return
        self._use_policy(bundle)
        self.fleet.switched(cfg, at_ms)
        log.info("fleet config v%d in force: %s v%d", cfg.config_version, bundle.id, bundle.version)

    # -- SIGHUP ----------------------------------------------------------------------
    def _reload_config(self) -> None:
        """Re-read the whole config file; apply what can change live (``agent.reload``).

        Restart-only fields that changed are each named in an ERROR line and keep their
        running values; the rest is applied. A file, policy or output that does not load
        changes nothing: the last good config stays, and the error names file and field.
        """
        self.notifier.reloading()
        try:
            self._apply_reload()
        finally:
            self.notifier.ready(self._service_status())

    def _apply_reload(self) -> None:
        running = self.config
        file = str(running.source)
        try:
            plan = plan_reload(running, load_config(running.source))
        except Error as e:
            log.error(
                "config reload refused, keeping the running config: %s",
                e,
                extra={"file": file, "reason": str(e)},
            )
            return
        for name in plan.refused:
            log.error(
                "config reload: %s changed; restart the agent to apply it",
                name,
                extra={"file": file, "field": name, "reason": "needs a restart"},
            )
        # Everything that can fail, before anything changes.
        self.config = plan.config  # _policy_path and _make_publisher read the new values
        try:
            bundle = load_policy(self._policy_path)
            if not self._same_channels(bundle):
                raise ConfigError(
                    f"{self._policy_path}: channels: the channel list changed; restart the "
                    "agent to apply it (the sources are built for the running one)"
                )
            output = any(name.startswith("output.") for name in plan.changed)
            publisher = self._make_publisher() if output else None
        except Error as e:
            self.config = running
            log.error(
                "config reload refused, keeping the running config and policy %s v%d: %s",
                self.policy.id,
                self.policy.version,
                e,
                extra={"file": file, "reason": str(e)},
            )
            return
        self._use_policy(bundle)  # models with the (new) providers and threads
        days = plan.config.retention_days
        self.attester.retention_ms = int(days * 86_400_000) if days else None
        if publisher is not None:
            self._switch_publisher(publisher)
        log.info(
            "config reloaded from %s: policy %s v%d (%s)%s",
            file,
            bundle.id,
            bundle.version,
            bundle.digest[:16],
            f"; changed: {', '.join(plan.changed)}" if plan.changed else "",
            extra={"file": file, "policy": bundle.digest, "changed": list(plan.changed)},
        )
        if "log.level" in plan.changed:  # last: the line above shows even when going quieter
            set_log_level(plan.config.log_level or "info")

    def _switch_publisher(self, publisher: Publisher) -> None:
        """Hand the outbox to ``publisher`` (a new broker URL, TLS files or spool).

        The old one stops (what it had not delivered stays in the outbox); the new one
        sends everything still in the outbox, in order, so a row the old one had sent but
        not yet seen acknowledged is delivered again (QoS 1 is at least once).
        """
        left = self.publisher.stop(timeout=2.0)
        self.publisher = publisher
        publisher.start(self.store.pending())
        publisher.publish_status(self._status())
        log.info("output switched; %d attestation(s) handed over from the outbox", left)

    def _await_sources(self, timeout: float) -> None:
        """Wait (bounded) until every source has tried its port once, open or not."""
        deadline = time.monotonic() + timeout
        for s in self.sources:
            s.tried.wait(max(0.0, deadline - time.monotonic()))

    def _service_status(self) -> str:
        """One line for ``systemctl status``: last seq, outbox depth, sources, problems."""
        seq = self.stats.last_seq
        up = sum(s.connected.is_set() for s in self.sources)
        parts = [
            f"seq {seq} signed" if seq is not None else "no attestation signed yet",
            f"outbox {self.publisher.unacknowledged()}",
            f"{up}/{len(self.sources)} sources connected",
        ]
        if self._storage_problem is not None:
            parts.append(f"STORAGE ERROR, {len(self._unsigned)} window(s) held")
        if self._degraded_before:
            parts.append(f"evidence degraded ({len(self._degraded_before)} reason(s))")
        return ", ".join(parts)

    def _await_first_fleet_config(self) -> bool:
        """Fail closed until the first signed fleet config (``tuf:``, no local ``policy:``).

        Without a policy nothing can be attributed to a signed config, so nothing is
        attested and the sources stay closed (no reading is taken that no evidence would
        cover). The publisher and the fleet client run: outbox rows from before are
        delivered, the retained status says ``waiting for signed fleet config`` and the
        log says it once. Returns True once a signed config is in force (the sources are
        then built for its channels), False if the agent was stopped first.
        """
        if not self._waiting:
            return True
        assert self.fleet is not None
        log.warning("%s; nothing is read or attested until one is in force", _WAITING)
        self.notifier.ready(_WAITING)  # up (publisher, fleet client): waiting is a state
        told = self.fleet.client.last_error
        while not self._stop.wait(0.2):
            self.notifier.watchdog()
            cfg = self.fleet.take_pending()
            if cfg is None:
                if self.fleet.client.last_error != told:  # why it waits, e.g. no assignment
                    told = self.fleet.client.last_error
                    self.publisher.publish_status(self._status())
                continue
            self.apply_bundle(cfg, int(time.time() * 1000))
            self.publisher.publish_status(self._status())
            if not self._waiting:
                return True
        return False

    def _stop_waiting(self) -> AgentStats:
        """Stopped before any signed config was in force: nothing to sign, close down."""
        assert self.fleet is not None
        self.notifier.stopping("stopping (no signed fleet config was in force)")
        self.fleet.stop()
        self.publisher.stop(timeout=5.0)
        self.store.close()
        return self.stats

    def _status(self) -> dict[str, Any]:
        if self._waiting:
            assert self.fleet is not None
            return {
                "state": "online",
                "device": self.config.device_id,
                "agent_version": __version__,
                "waiting": _WAITING,
                "policy": None,
                "models": {},
                "degraded": [_WAITING],
                "last_seq": None,
                "log": self.store.state.origin,
                "sources": [],
                "fleet": self.fleet.status(),
            }
        return {
            "state": "online",
            "device": self.config.device_id,
            "agent_version": __version__,
            "policy": {
                "id": self.policy.id,
                "version": self.policy.version,
                "digest": self.policy.digest,
            },
            "models": {m.id: {"sha256": m.sha256, "provider": m.provider} for m in self.models},
            "degraded": sorted(self._degraded_before | set(self._model_problems)),
            "last_seq": self.stats.last_seq,
            "log": self.store.state.origin,
            "evidence_over_quota": self._over_quota,
            "storage_error": self._storage_problem,
            "sources": [
                {
                    "name": s.cfg.name,
                    "port": s.port,
                    "protocol": s.cfg.protocol,
                    "connected": s.connected.is_set(),
                    "last_window": rec,
                }
                for s, rec in zip(
                    self.sources, self._last_source_health or [{}] * len(self.sources)
                )
            ],
            **({"fleet": self.fleet.status()} if self.fleet is not None else {}),
        }
