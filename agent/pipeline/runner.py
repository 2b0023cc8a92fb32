"""The agent daemon: sources -> windows -> policy + risk -> attestations -> outbox -> broker.

Threads: one per serial source (reads and decodes), paho's network thread, and
the main loop here, which owns the window, the evaluator and the signer.
SIGTERM/SIGINT close the current window, sign it, wait briefly for PUBACKs
and exit 0 (windows the evidence store refused go to ``held-windows.cbor`` and are signed
at the next start; if they cannot be saved either, or the store turned corrupt, ``run``
raises :class:`EvidenceAtRiskError` saying what was lost); SIGHUP reloads the whole
config file (``agent.pipeline.reload`` says what applies live; the last good config stays on
error). Under systemd the main loop reports to ``NOTIFY_SOCKET`` (``agent.pipeline.service``):
READY once the store is open and the sources have been tried, WATCHDOG=1 from the loop
itself, STATUS= per window, STOPPING=1.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import AgentConfig
from agent.errors import (
    ConfigError,
    Error,
    EvidenceAtRiskError,
    KeyFileError,
    ModelError,
    PolicyError,
    StorageError,
    StoreCorruptError,
)
from agent.evidence.attester import Attester
from agent.evidence.claims import ConfigInForce, RuleResult
from agent.evidence.journal import Journal
from agent.evidence.store import EvidenceStore, OutboxItem, store_path
from agent.identity.fleet_ca import load_x5chain
from agent.identity.keys import Signer, load_signer
from agent.pipeline.alerts import degraded_alerts, violation_alerts
from agent.pipeline.continuity import ContinuityMixin
from agent.pipeline.evaluate import evaluate_windows
from agent.pipeline.held_windows import FILE as HELD_FILE
from agent.pipeline.held_windows import (
    ensure_reserve,
)
from agent.pipeline.intake import SHED_COUNTER, SHED_PROBLEM, Intake
from agent.pipeline.policy_state import Checkpoints
from agent.pipeline.reload import ReloadMixin
from agent.pipeline.service import Notifier
from agent.pipeline.window import Window
from agent.policy import PolicyBundle, load_policy
from agent.risk.engine import RiskEngine
from agent.risk.onnx_model import RiskModel, load_declared
from agent.sources import PortSource, make_source, sum_counters, window_problems
from agent.sources.reading import ReadingBatch
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher, Publisher, SpoolPublisher
from agent.transport.topics import DeviceTopics

if TYPE_CHECKING:
    from agent.fleet.agent_link import FleetLink
    from agent.identity.pkcs11 import Pkcs11Signer

__all__ = ["Agent", "AgentStats"]

_SHED = "raw readings shed to keep the evidence store within its disk quota"
_OVER_QUOTA = "evidence store over its disk quota even without raw readings (evidence kept)"
_STORAGE_HELD = "evidence store could not be written for a while; windows were held in memory"
_ALERT_FIELDS = ("event", "rule", "severity", "reason")  # structured log fields of an alert
# A wall-clock jump this large between two turns of the main loop, measured against the
# monotonic clock, is a step (an NTP step, `date -s`); NTP's slewing stays far below it.
_CLOCK_STEP_S = 1.0
_RECOVERED = (
    "window held when the agent stopped (the evidence store refused writes); "
    f"signed after the restart from {HELD_FILE}"
)
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
    from agent.identity.pkcs11 import Pkcs11Signer

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


class Agent(ContinuityMixin, ReloadMixin):
    """One gateway agent. ``run()`` blocks until ``stop()`` (or a signal)."""

    def __init__(self, config: AgentConfig, notifier: Notifier | None = None) -> None:
        """Set up; every check that can fail comes before the first write.

        In order: the device key, the fleet trust root and the fleet config in force,
        the policy, the device certificate, the sources and the publisher (built, not
        connected). Only then the evidence store is opened, which counts a boot. With
        ``tuf:`` and no local policy, before the first signed config is in force there is
        no policy yet: see :meth:`_await_first_fleet_config`.
        """
        self._started_ms = int(time.time() * 1000)  # the restart claim's started_ms
        self._clock_base = time.time() - time.monotonic()  # wall minus monotonic (_watch_clock)
        self._clock_steps: list[str] = []  # steps since the last attestation, as reasons
        self.config = config
        self.stats = AgentStats()
        self.notifier = notifier or Notifier(
            None
        )  # systemd's (agent.pipeline.service); None: no-op
        self._stop = threading.Event()
        self._reload = threading.Event()
        # bounded: holds the readers back, then sheds (counted) under overload
        self._queue = Intake(self._shed_overload, config.intake_readings)
        self._shed = 0  # readings shed for the disk quota since the last attestation
        self._over_quota = False
        self._storage_problem: str | None = None
        self._last_source_health: list[dict[str, Any]] | None = None
        self._degraded_before: set[str] = set()
        self._unsigned: list[tuple[Window, dict[str, Any]]] = []  # windows the store refused
        # agent.evidence.journal: the open window's readings and marks, kept in the store
        self.journal: Journal | None = None
        self._journal_problem: str | None = None
        self._next_flush = 0.0
        self._taken_seqs: list[int | None] = []  # each source's last_seq at the last take
        self._carry: tuple[Window, Window] | None = None  # (closing window, next) in _close
        self._state_after: dict[int, str] = {}  # unsigned window start -> state digest after it
        self._staged: int | None = None  # the window whose state the last checkpoint holds
        self._checkpoints = Checkpoints(config.state_dir)  # policy-state.bin
        self._held_file: Path | None = None  # held-windows.cbor, until its windows are signed
        self._recovered: set[int] = set()  # start_ms of the windows read back from it
        self._fatal: StoreCorruptError | None = None  # the store turned corrupt: stop
        self._lost: str | None = None  # windows neither signed nor saved at stop: how many
        self.signer = _signer(config)
        # tuf: configured -> the fleet's signed config in force (if any) replaces the local policy
        self.fleet: FleetLink | None = None
        if config.tuf is not None:  # python-tuf (~9 MiB) only for a fleet-managed gateway
            from agent.fleet.agent_link import FleetLink

            self.fleet = FleetLink(config)
        # tuf: and no local policy, and no signed config yet: nothing to attribute evidence to
        local = config.policy_path
        self._waiting = self.fleet is not None and self.fleet.policy_path(local) is None
        self._in_force_ms: int | None = None  # when the first signed config took force
        bundle = None if self._waiting else self._load_first_policy()
        prefix = config.mqtt.topic_prefix if config.mqtt else "edgegov"
        self.topics = DeviceTopics(prefix, config.fleet, config.device_id)
        try:
            x5chain = load_x5chain(config.device_cert) if config.device_cert else ()
        except KeyFileError as e:
            raise KeyFileError(f"{config.source}: device.cert: {e}") from e
        self.sources: list[PortSource] = [] if bundle is None else self._make_sources(bundle)
        self.publisher = self._make_publisher()

        # The first write: the evidence store (a new log, or the next boot of this one).
        self.store = EvidenceStore(
            store_path(config.state_dir),
            config.device_id,
            public_key=self.signer.public,
            earlier=self._earlier_state(),
        )
        self._store_opened()
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
    def _earlier_state(self) -> list[Path]:
        """Files that exist only once a log has run here (for a store found missing)."""
        cfg = self.config
        paths = [self._checkpoints.path, cfg.state_dir / HELD_FILE]
        if cfg.spool_dir is not None:
            paths.append(cfg.spool_dir / cfg.device_id / f"{0:010d}.cose")
        return paths

    def _store_opened(self) -> None:
        """Say how the store was found; a new log beside an earlier one's state starts clean."""
        store, state = self.store, self.store.state
        if store.head_note is not None:
            log.warning("%s", store.head_note)
        if store.rebuilt is not None:
            log.warning("%s: %s", store.path, store.rebuilt, extra={"reason": store.rebuilt})
        if store.new_log_reason is not None:
            log.warning(
                "starting a new evidence log %s: %s; previous log: %s. Its first attestation "
                "says so (claim -70001/12)",
                state.origin,
                store.new_log_reason,
                store.previous_log,
                extra={"reason": store.new_log_reason, "previous_log": store.previous_log},
            )
            self._set_aside_earlier_log()
        elif store.new_log:
            log.info("starting a new evidence log %s", state.origin)
        else:
            log.info(
                "continuing evidence log %s at seq %d (boot %d)",
                state.origin,
                state.next_seq,
                state.bootcount,
            )
        try:
            ensure_reserve(self.config.state_dir)
        except OSError as e:
            log.warning(
                "cannot reserve room for held windows in %s (%s): on a full disk, windows "
                "the store refuses may be lost at stop",
                self.config.state_dir,
                e,
            )

    def _set_aside_earlier_log(self) -> None:
        """The policy state and the spooled attestations of the earlier log stay with it:
        renamed ``NAME.<its origin id>`` so the new log starts fresh and overwrites nothing."""
        prev = self.store.previous_log or "unknown"
        tag = prev.split()[0].rsplit("/", 1)[-1] if prev != "unknown" else "unknown-log"
        cfg = self.config
        spool = cfg.spool_dir / cfg.device_id if cfg.spool_dir is not None else None
        for path in (self._checkpoints.path, spool):
            if path is None or not path.exists() or (path == spool and not any(path.iterdir())):
                continue
            aside = path.with_name(f"{path.name}.{tag}")
            n = 1
            while aside.exists():
                aside, n = path.with_name(f"{path.name}.{tag}.{n}"), n + 1
            try:
                os.replace(path, aside)
                if path == spool:
                    path.mkdir()
            except OSError as e:
                raise StorageError(
                    f"{path}: it belongs to the earlier evidence log and cannot be moved aside "
                    f"({e}); move it yourself (e.g. to {aside.name}) and start again"
                ) from e
            log.warning("%s belongs to the earlier log; moved aside to %s", path, aside.name)

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
            try:
                return MqttPublisher(
                    BrokerURL.parse_all(m.urls, f"{cfg.source}: output.mqtt.url"),
                    self.topics,
                    self._acknowledge,
                    ca_file=m.ca,
                    cert_file=m.cert,
                    key_file=m.key,
                    version=m.version,
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

    def next_window_bounds(self, prev_end_ms: int, now_ms: int) -> tuple[int, int]:
        """The window after one that ended at ``prev_end_ms``: it starts there, so no time is
        left without a window (a main loop stalled by the store, a clock stepped forward),
        and ends at the aligned boundary after ``now_ms`` (or after its start)."""
        span = int(self.policy.window_seconds * 1000)
        end = max(now_ms - now_ms % span, prev_end_ms - prev_end_ms % span) + span
        return prev_end_ms, end

    def _watch_clock(self) -> None:
        """Notice a step of the gateway's wall clock; the next attestation states it.

        Windows and readings are stamped with the wall clock. A step forward makes a long
        window; a step back lets readings carry times before their window's start. Both are
        declared (a degraded reason and the health counter ``clock_steps``), never hidden.
        """
        base = time.time() - time.monotonic()
        step = base - self._clock_base
        self._clock_base = base  # slewing moves the base slowly: follow it, flag only jumps
        if abs(step) < _CLOCK_STEP_S:
            return
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        reason = f"gateway clock stepped {step:+.3f} s at {at} (wall clock against monotonic)"
        self._clock_steps.append(reason)
        log.warning("%s", reason, extra={"device": self.config.device_id, "step_s": step})

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
        recovered = self._begin_journal()  # the restart claim; what the last run left
        recovered = self._resume_held(recovered)  # what it could not sign, before all else
        for s in self.sources:
            s.start()
        self._await_sources(timeout=2.0)
        self.notifier.ready(self._service_status())  # store open, sources tried, publisher up
        window = self._first_window(recovered)
        end = window.end_ms
        try:
            while not self._stop.is_set():
                self.notifier.watchdog()  # only from this loop: a hung loop stops the pings
                self._watch_clock()
                timeout = max(0.0, min(0.25, end / 1000 - time.time()))
                try:
                    batch = self._queue.get(timeout=timeout)
                    self._add(window, batch)
                    while time.time() * 1000 < end:  # busy sources: close windows on time
                        self._add(window, self._queue.get_nowait())
                except queue.Empty:
                    pass
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_config()
                fleet_cfg = self.fleet.take_pending() if self.fleet is not None else None
                if fleet_cfg is not None:  # end the window at the switch: one config per window
                    at = self._close_now(window)
                    self.apply_bundle(fleet_cfg, at)
                    start, end = self.next_window_bounds(at, at)
                    window = Window(start, end, len(self.policy.channels))
                now_ms = int(time.time() * 1000)
                if now_ms >= end:
                    start, end = self.next_window_bounds(window.end_ms, now_ms)
                    nxt = Window(start, end, len(self.policy.channels))
                    self._close(window, nxt)
                    window = nxt
                if time.monotonic() >= self._next_flush:
                    self._journal_flush(window)
        finally:
            self.notifier.stopping("stopping: signing the last window, flushing the outbox")
            if self.fleet is not None:
                self.fleet.stop()
            for s in self.sources:
                s.stop()
            try:
                self._checkpoint_now(self._close_now(window))  # the partial last one too
            except Error as e:  # e.g. the signing token failed: the windows stay unsigned
                log.error("the last window(s) could not be signed: %s", e)
            self._save_held()  # what was not signed: kept for the next start, or counted
            self._journal_stopped()
            left = self.publisher.stop(timeout=5.0)
            if left:
                log.warning(
                    "%d attestation(s) not yet acknowledged; they stay in the outbox "
                    "and are sent at the next start",
                    left,
                )
            self.store.close()
        if self._fatal is not None or self._lost is not None:
            parts = [f"stopped: {self._fatal}"] if self._fatal is not None else []
            raise EvidenceAtRiskError("; ".join([*parts, *([self._lost] if self._lost else [])]))
        return self.stats

    def _close_now(self, window: Window) -> int:
        """Close the open window now (a stop, a fleet config switch); returns where it ended.

        If its end has passed meanwhile, it closes at its end, as the loop would have, and
        a last short window from there to now takes the readings received since.
        """
        now_ms = int(time.time() * 1000)
        if now_ms > window.end_ms:
            start, end = self.next_window_bounds(window.end_ms, now_ms)
            nxt = Window(start, end, len(self.policy.channels))
            self._close(window, nxt)
            window = nxt
        window.end_ms = max(window.start_ms + 1, now_ms)
        self._close(window)  # drains the reading queue into it first
        return window.end_ms

    def _shed_overload(self, batch: ReadingBatch) -> None:
        """A batch the intake shed (its reader's thread): counted on its source's ledger, so
        the window's signed health says how many and marks it degraded."""
        ledger = self.sources[int(batch.source[0])].ledger
        ledger.add(SHED_COUNTER, len(batch))
        ledger.problem(SHED_PROBLEM)

    def _add(self, window: Window, batch: ReadingBatch) -> None:
        window.add_batch(batch)
        self.stats.readings += len(batch)

    def _drain(self, window: Window, nxt: Window | None = None) -> None:
        """Everything in the reading queue into ``window``; with ``nxt``, what was received
        at or after ``window``'s end into ``nxt`` (received_ms decides the window)."""
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                return
            if nxt is None:
                self._add(window, batch)
            else:
                before, after = batch.split(window.end_ms)
                self._add(window, before)
                self._add(nxt, after)

    # -- one window --------------------------------------------------------------------
    def _close(self, window: Window, nxt: Window | None = None) -> None:
        """Close ``window`` (readings received after its end go to ``nxt``), evaluate it and
        sign it with the windows held before it."""
        try:
            self.store.flush_acks()  # at most one window of acknowledged rows stays behind
        except StorageError as e:  # not evidence: those rows are sent again (at least once)
            log.warning("%s; those attestations may be delivered again", e)
        health = self._window_health(window, nxt)
        self._last_source_health = health["sources"]
        self.stats.windows += 1
        self._unsigned.append((window, health))
        self._evaluate([w for w, _ in self._unsigned if w.results is None])
        self._carry = (window, nxt) if nxt is not None else None
        try:
            self._sign_held()
        finally:
            self._carry = None

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
        """The verdicts of ``windows`` (``agent.pipeline.evaluate``: risk in one batch per
        model, then the rules window by window).

        Runs once per window, even when signing is retried (the evaluator's state has moved
        on). Each window keeps the digest of the evaluator state it started from.
        """
        if not windows:
            return
        inputs = [(w.timestamps, w.columns) for w in windows]  # columns: a copy, masked
        bounds = [(w.start_ms, w.end_ms) for w in windows]
        verdicts = evaluate_windows(self.policy, self.evaluator, self.risk, inputs, bounds=bounds)
        for w, v in zip(windows, verdicts):
            w.results = v
            if v.state_after is not None:  # recorded by the commit that signs w
                self._state_after[w.start_ms] = v.state_after

    def _attest(self, window: Window, health: dict[str, Any]) -> OutboxItem:
        p = self.policy
        v = window.results
        assert v is not None
        rules, risk, out_of_range, state_in = v.rules, v.risk, v.out_of_range, v.state_in
        if out_of_range:
            health = {**health, "readings_out_of_range": out_of_range}
        if self._shed:
            health = {**health, "readings_shed": self._shed}
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
            + (_RECOVERED,) * (window.start_ms in self._recovered)
            + tuple(self._clock_steps)
        )
        steps = len(self._clock_steps)
        if steps:
            health = {**health, "clock_steps": steps}
        config = ConfigInForce(p.id, p.version, p.digest, {m.id: m.sha256 for m in p.models}, 0)
        if self.fleet is not None:
            config = self.fleet.config_in_force(p, window.start_ms, window.end_ms)
            degraded += self.fleet.degraded()
            health = {**health, **self.fleet.health_counters()}
        config = dataclasses.replace(config, state_in=state_in)
        item = self.attester.attest(
            (window.start_ms, window.end_ms),
            window.records,
            config,
            rules,
            risk,
            health,
            degraded,
            journal=self._journal_commit(window, self._stage_policy_state(window)),
            self_tests=v.self_tests,
        )
        del self._clock_steps[:steps]  # stated in this attestation (a failed commit: the next)
        if self._carry is not None and self._carry[0] is window:
            self._carry[1].journaled = self._carry[1].n  # journaled in that commit
        self._state_after.pop(window.start_ms, None)
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
        self._alerts(window, rules, degraded, item.seq)
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

    def _alerts(
        self, window: Window, rules: tuple[RuleResult, ...], degraded: tuple[str, ...], seq: int
    ) -> None:
        """Publish (and log) the alerts this attestation gives rise to (``agent.pipeline.alerts``):
        violation episodes starting or ending, degraded reasons appearing or clearing."""
        device = self.config.device_id
        evidence = {"log": self.store.state.origin, "seq": seq}
        by_id = {r.id: r for r in self.policy.rules}
        span = (window.start_ms, window.end_ms)
        now = set(degraded)
        for alert in violation_alerts(device, evidence, span, rules, by_id) + degraded_alerts(
            device, evidence, self._degraded_before, now
        ):
            fields: dict[str, Any] = {"device": device, "seq": seq}
            fields.update(
                (k, alert[k]) for k in ("event", "rule", "severity", "reason") if k in alert
            )
            if "rule" in alert:
                log.warning("ALERT %s %s: %s", alert["event"], alert["rule"], alert["message"],
                            extra=fields)  # fmt: skip
            else:
                log.warning("ALERT %s: %s", alert["event"], alert["reason"], extra=fields)
            self.publisher.publish_alert(alert)
        self._degraded_before = now

    def _window_health(self, window: Window, nxt: Window | None = None) -> dict[str, Any]:
        """This window's data quality: counters summed over sources, plus each source's record.

        Taken with every source's ``stream_lock`` held, the reading queue drained first: the
        records count exactly the readings in ``window`` (and those received after its end,
        which go to ``nxt``), and :attr:`_taken_seqs` says up to which frame.
        """
        with ExitStack() as locks:
            for s in self.sources:
                locks.enter_context(s.stream_lock)
            self._drain(window, nxt)
            per_source = [s.take_health() for s in self.sources]
            self._taken_seqs = [s.last_seq for s in self.sources]
        return {**sum_counters(per_source), "sources": per_source}

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
            at = int(time.time() * 1000)
            self.apply_bundle(cfg, at)
            self.publisher.publish_status(self._status())
            if not self._waiting:
                self._in_force_ms = at  # the first window starts here and declares it
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
