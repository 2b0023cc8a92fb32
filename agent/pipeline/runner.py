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
import json
import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import AgentConfig, load_config
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
from agent.evidence.claims import ConfigInForce, Restart, RuleResult
from agent.evidence.journal import FLUSH_S, Journal, SourceMark, last_rx_by_source
from agent.evidence.store import EvidenceStore, OutboxItem, store_path
from agent.identity.fleet_ca import load_x5chain
from agent.identity.keys import Signer, load_signer
from agent.logs import set_level as set_log_level
from agent.pipeline.alerts import degraded_alerts, violation_alerts
from agent.pipeline.evaluate import evaluate_windows
from agent.pipeline.held_windows import FILE as HELD_FILE
from agent.pipeline.held_windows import (
    HeldWindows,
    decode_held,
    encode_held,
    ensure_reserve,
    save_held,
)
from agent.pipeline.reload import plan_reload
from agent.pipeline.service import Notifier
from agent.pipeline.window import Window
from agent.policy import PolicyBundle, load_policy
from agent.policy.evaluator import Evaluator, state_digest
from agent.risk.engine import RiskEngine
from agent.risk.onnx_model import RiskModel, load_declared
from agent.sources import PortSource, make_source, sum_counters, window_problems
from agent.sources.quality import merge_records
from agent.sources.reading import Reading
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher, Publisher, SpoolPublisher
from agent.transport.topics import DeviceTopics

if TYPE_CHECKING:
    from agent.fleet.activation import ActiveConfig
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


def _merged(records: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One source's quality records of several windows as one (None: no records)."""
    if not records:
        return None
    out = dict(records[0])
    for rec in records[1:]:
        out = merge_records(out, rec)
    return out


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


def _reading_id(r: Reading) -> tuple[int, int, int, int]:
    """What tells one reading from another (its values may be NaN: not comparable)."""
    return (r.source, r.frame_seq, r.device_ms, r.received_ms)


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
        self._queue: queue.Queue[list[Reading]] = queue.Queue()
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
        self._state_after: dict[int, str] = {}  # window start -> evaluator state after it
        self._staged: int | None = None  # the window whose state policy-state.json holds
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
        paths = [self._policy_state_path, cfg.state_dir / HELD_FILE]
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
        for path in (self._policy_state_path, spool):
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

    @property
    def _policy_state_path(self) -> Path:
        return self.config.state_dir / "policy-state.json"

    def _new_evaluator(self, bundle: PolicyBundle) -> Evaluator:
        """An evaluator for ``bundle``, continuing its saved state (windows, durations), or
        the state after the last window evaluated if that one is not signed yet."""
        ev = bundle.evaluator()
        path = self._policy_state_path
        try:
            if self._state_after:  # held, unsigned: the file is still at the last signed one
                ev.restore(json.loads(self._state_after[max(self._state_after)]))
                return ev
            ev.restore(json.loads(path.read_text()))
            log.info("policy state restored from %s", path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, Error) as e:
            log.warning("policy state in %s not used (%s); windows and durations start empty",
                        path, e)  # fmt: skip
        return ev

    @property
    def _policy_state_prev(self) -> Path:
        return self.config.state_dir / "policy-state.prev.json"

    def _stage_policy_state(self, window: Window) -> str | None:
        """Save the evaluator's state after ``window`` just before the commit that signs it,
        the state before it kept as ``policy-state.prev.json``; return its digest, which
        the commit records (``agent.evidence.journal``; None: not known).

        Killed between the two, the next start finds the state of the signed log in the
        previous file (:meth:`_continue_signed_state`): the readings of the window it was
        signing come back from the journal and are evaluated once, from the right state.
        """
        text = self._state_after.get(window.start_ms)
        if text is None:  # read back from the held file: the state restored is after the last
            later = any(w.start_ms in self._recovered for w, _ in self._unsigned[1:])
            if self._state_after or later:
                return None
            text = self.evaluator.state_json()
        if self._staged != window.start_ms:  # a retried commit: staged already
            try:
                os.replace(self._policy_state_path, self._policy_state_prev)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.error("cannot keep the previous policy state: %s", e)
            self._save_policy_state(text)
            self._staged = window.start_ms
        return state_digest(text)

    def _continue_signed_state(self, signed: str | None) -> None:
        """Continue from the policy state after the last signed window (digest ``signed``,
        recorded by its commit): ``policy-state.json``, or the file before it if the agent
        was killed between saving the state of a window and signing that window."""
        if signed is None or self.evaluator.state_digest() == signed:
            return
        prev = self._policy_state_prev
        try:
            text = prev.read_text()
            if state_digest(text) == signed:
                self.evaluator.restore(json.loads(text))
                self._save_policy_state(text)  # the next staging keeps it as the previous
                log.warning(
                    "%s was one window ahead of the signed log (the agent was stopped between "
                    "evaluating a window and signing it); continuing from %s, the state after "
                    "the last signed window",
                    self._policy_state_path.name,
                    prev.name,
                )
                return
        except (OSError, ValueError, Error) as e:
            log.debug("%s not used: %s", prev, e)
        log.warning(
            "the policy state in %s is not the one after the last signed window; windows and "
            "durations continue from it (audit replay shows where the state differs)",
            self._policy_state_path,
        )

    def _save_policy_state(self, text: str | None = None) -> None:
        """Write ``text`` (default: the evaluator's state now) to ``policy-state.json``."""
        text = self.evaluator.state_json() if text is None else text
        path = self._policy_state_path
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as e:
            log.error("cannot save the policy state to %s: %s", path, e)

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
            while not self._queue.empty():
                self._add(window, self._queue.get_nowait())
            window.end_ms = max(window.start_ms + 1, int(time.time() * 1000))
            try:
                self._close(window)  # the partial last window is attested too
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

    # -- windows the store refused -------------------------------------------------
    def _save_held(self) -> None:
        """At stop: write the windows the store refused to ``held-windows.cbor`` (signed,
        fsynced; a full disk gives up the reserve), or count them as lost."""
        if not self._unsigned:
            return
        n, readings = len(self._unsigned), sum(w.n for w, _ in self._unsigned)
        state_dir = self.config.state_dir
        held = HeldWindows(
            self.config.device_id,
            self.store.state.origin,
            self.policy.digest,
            self.evaluator.state_json(),
            list(self._unsigned),
        )
        try:
            path = save_held(state_dir, encode_held(held, self.signer))
        except (OSError, Error) as e:
            self._lost = (
                f"{n} window(s) with {readings} reading(s) are LOST: the evidence store "
                f"refused them ({self._storage_problem}) and {state_dir / HELD_FILE} could "
                f"not be written ({e})"
            )
            log.error(
                "%s",
                self._lost,
                extra={
                    "device": self.config.device_id,
                    "windows_lost": n,
                    "readings_lost": readings,
                },
            )
            return
        log.warning(
            "the evidence store refused writes: %d window(s) with %d reading(s) saved to %s; "
            "the next start signs them first",
            n,
            readings,
            path,
            extra={"device": self.config.device_id, "windows_held": n, "readings_held": readings},
        )

    def _resume_held(self, recovered: list[Reading]) -> list[Reading]:
        """Sign the windows the last run held when it stopped, before any new window.

        They carry their own results (the evaluator moved past them then), and the
        evaluator continues from the state saved with them. A file that is not this
        agent's (signature), or whose windows were evaluated under another policy or
        overlap the log, is set aside as ``held-windows.cbor.unsigned-<time>`` and its
        windows are named as not signed.

        Returns ``recovered`` (the journal's readings of the last run) without those the
        held windows hold: the journal may have them too (a store that refused writes
        also refused the mark of a clean stop), and a reading is signed once.
        """
        path = self.config.state_dir / HELD_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return recovered
        except OSError as e:
            log.error("cannot read %s (%s); the windows in it are not signed", path, e)
            return recovered
        held: HeldWindows | None = None
        try:
            held = decode_held(data, self.signer.public, *self._policy_shape())
            problem = self._held_problem(held)
            if problem is None:  # the evaluator continues from the state saved with them
                self.evaluator.restore(json.loads(held.state_after))
        except StorageError as e:
            problem = str(e)
        except (ValueError, Error) as e:  # signed by this agent, so not expected
            problem = f"the policy state saved with its windows does not load ({e})"
            self._use_policy(self.policy)  # back to the state it had before
        if problem is not None:
            aside = path.with_name(f"{HELD_FILE}.unsigned-{int(time.time())}")
            try:
                os.replace(path, aside)
            except OSError as e:
                raise StorageError(f"{path}: {problem}, and it cannot be moved aside: {e}") from e
            count = f"{len(held.windows)} window(s) with {held.readings} reading(s)" if held else ""
            log.error(
                "%s: %s; its windows %sare NOT signed; kept as %s",
                path,
                problem,
                f"({count}) " if count else "",
                aside.name,
            )
            return recovered
        assert held is not None
        for w, _ in held.windows:  # the risk features' look-back, as if they had been stored
            cols = w.columns
            self.policy.mask_invalid(cols)
            self.risk.history.append(w.timestamps, cols)
        self.risk.history.trim()
        self._recovered = {w.start_ms for w, _ in held.windows}
        self._held_file = path
        log.warning(
            "signing %d window(s) with %d reading(s) that the last run held when it stopped "
            "(the evidence store refused writes), from %s",
            len(held.windows),
            held.readings,
            path,
            extra={"windows_held": len(held.windows), "readings_held": held.readings},
        )
        self._unsigned[:0] = held.windows
        self._sign_held()
        return self._not_held(recovered, held)

    def _policy_shape(self) -> tuple[int, list[str]]:
        """What a held window's results are read with: the policy's channels and rules."""
        return len(self.policy.channels), [r.id for r in self.policy.rules]

    def _not_held(self, recovered: list[Reading], held: HeldWindows) -> list[Reading]:
        """``recovered`` without the readings ``held`` has (the restart claim counts the rest)."""
        ids = {_reading_id(r) for w, _ in held.windows for r in w.records}
        kept = [r for r in recovered if _reading_id(r) not in ids]
        dropped = len(recovered) - len(kept)
        restart = self.attester.restart
        if dropped and restart is not None:
            self.attester.restart = dataclasses.replace(
                restart, recovered_readings=max(0, restart.recovered_readings - dropped)
            )
            log.info("%d reading(s) recovered from the journal are in the held windows", dropped)
        return kept

    def _held_problem(self, held: HeldWindows) -> str | None:
        """Why the windows of ``held`` cannot be signed by this agent now (None: they can)."""
        last_end = self.store.last_window_end()
        if held.device_id != self.config.device_id:
            return f"it holds windows of device {held.device_id}"
        if held.policy_digest != self.policy.digest:
            return (
                f"its windows were evaluated under policy digest {held.policy_digest[:16]}, "
                f"the agent now runs {self.policy.id} v{self.policy.version} "
                f"({self.policy.digest[:16]})"
            )
        if held.windows and last_end is not None and held.windows[0][0].start_ms < last_end:
            return "its windows start before the end of the last window signed in this log"
        return None

    def _add(self, window: Window, batch: list[Reading]) -> None:
        for r in batch:
            window.add(r)
        self.stats.readings += len(batch)

    def _drain(self, window: Window, nxt: Window | None = None) -> None:
        """Everything in the reading queue into ``window``; with ``nxt``, what was received
        at or after ``window``'s end into ``nxt`` (received_ms decides the window)."""
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                return
            end = window.end_ms
            if nxt is None or batch[-1].received_ms < end:
                self._add(window, batch)
            elif batch[0].received_ms >= end:
                self._add(nxt, batch)
            else:
                self._add(window, [r for r in batch if r.received_ms < end])
                self._add(nxt, [r for r in batch if r.received_ms >= end])

    # -- the journal of the open window (agent.evidence.journal) ----------------------------------
    def _begin_journal(self) -> list[Reading]:
        """Read what the last run left, continue each source from its mark, and give the
        attester the restart claim for this process's first attestation. Returns the
        readings of the window the last run was in when it was killed."""
        last_end = self.store.last_window_end()
        self.journal = Journal(
            self.store,
            [(s.name, s.protocol) for s in self.config.sources],
            [c.name for c in self.policy.channels],
        )
        try:
            rec = self.journal.begin(self._started_ms, self._held_to_sign())
        except StorageError as e:
            log.error("%s; the open window is not journaled in this run", e)
            self.journal = None
            self.attester.restart = Restart(self._started_ms, last_end, False, (), 0, None)
            return []
        for s in self.sources:
            m = rec.marks.get(s.cfg.name)
            if m is not None:
                s.resume(m.last_seq)
                if m.pending is not None:
                    s.ledger.restore(m.pending)
        self._taken_seqs = [s.last_seq for s in self.sources]
        self._continue_signed_state(rec.signed_state)
        r = rec.restart
        self.attester.restart = r
        down = f"{r.down_ms / 1000:.1f} s since the last signed window"
        if r.last_end_ms is None:
            pass
        elif r.clean:
            log.info("restart after a clean stop; %s", down)
        else:
            log.warning(
                "the last run did not stop cleanly (killed, crashed or lost power); %s; "
                "%d reading(s) of the window it was in recovered from the journal; the "
                "first attestation says so (claim -70001/12)",
                down,
                r.recovered_readings,
                extra={"recovered_readings": r.recovered_readings, "down_ms": r.down_ms},
            )
        return rec.readings

    def _held_to_sign(self) -> tuple[int, dict[str, int]] | None:
        """The end of the windows in the held file that :meth:`_resume_held` will sign, and
        each source's last reading in them (None: no such file, or it will not be signed)."""
        try:
            data = (self.config.state_dir / HELD_FILE).read_bytes()
            held = decode_held(data, self.signer.public, *self._policy_shape())
            if not held.windows or self._held_problem(held) is not None:
                return None
        except (OSError, StorageError):
            return None
        names = [s.name for s in self.config.sources]
        rx = last_rx_by_source([r for w, _ in held.windows for r in w.records], len(names))
        last = {names[i]: t for i, t in enumerate(rx) if t is not None}
        return held.windows[-1][0].end_ms, last

    def _first_window(self, recovered: list[Reading]) -> Window:
        """The first window of this run. After a crash it holds the readings recovered from
        the journal and starts where the last signed window ended, so the window the last
        run was in continues in it."""
        last_end = self.store.last_window_end()
        start, end = self.window_bounds(int(time.time() * 1000), last_end)
        if recovered:
            start = last_end if last_end is not None else min(r.received_ms for r in recovered)
        window = Window(start, end, len(self.policy.channels))
        for r in recovered:
            window.add(r)
        window.journaled = window.n  # they are in the journal already
        return window

    def _held_here(self) -> list[tuple[Window, dict[str, Any]]]:
        """Windows the store refused that this run closed (not read back from a held file)."""
        return [(w, h) for w, h in self._unsigned if w.start_ms not in self._recovered]

    def _journal_flush(self, window: Window) -> None:
        """Journal the readings received since the last flush and each source's mark.

        The marks are taken and the queue drained with every source's ``stream_lock``
        held, so they account for exactly the readings written with them.
        """
        self._next_flush = time.monotonic() + FLUSH_S
        journal = self.journal
        held = self._held_here()
        if journal is None or (
            self._queue.empty() and all(w.n == w.journaled for w in (window, *(w for w, _ in held)))
        ):
            return
        now = int(time.time() * 1000)
        with ExitStack() as locks:
            for s in self.sources:
                locks.enter_context(s.stream_lock)
            self._drain(window)
            peeks = [s.ledger.peek(now) for s in self.sources]
            seqs = [s.last_seq for s in self.sources]
        windows = [w for w, _ in held] + [window]
        rows = [(w.start_ms, w.records[w.journaled : w.n]) for w in windows]
        pending = [_merged([h["sources"][i] for _, h in held]) for i in range(len(self.sources))]
        marks = self._marks(
            seqs, [peek if p is None else merge_records(p, peek) for p, peek in zip(pending, peeks)]
        )
        try:
            journal.write(rows, marks)
        except StorageError as e:
            if self._journal_problem != str(e):
                log.warning("%s; the open window is not journaled until it can be", e)
            self._journal_problem = str(e)
            return
        self._journal_problem = None
        for w in windows:
            w.journaled = w.n

    def _marks(
        self, seqs: Sequence[int | None], pending: Sequence[Mapping[str, Any] | None]
    ) -> list[SourceMark]:
        """Each source's mark: frames accounted for up to ``seqs``, ``pending`` not signed."""
        return [
            SourceMark(s.cfg.name, s.cfg.protocol, seqs[i], pending[i] or None)
            for i, s in enumerate(self.sources)
        ]

    def _journal_commit(
        self, window: Window, state_after: str | None
    ) -> Callable[[sqlite3.Connection], None] | None:
        """The journal's part of the commit that signs ``window`` (the first held one):
        it leaves the journal, the marks say what the windows still held account for, and
        ``state_after`` is the policy state digest after it (agent.evidence.journal). Windows read
        back from the held file are not the journal's: only the state is recorded."""
        if self.journal is None:
            return None
        if window.start_ms in self._recovered:
            return self.journal.on_commit(window.end_ms, (), None, state_after=state_after)
        later = [h for w, h in self._held_here() if w is not window]
        pending = [_merged([h["sources"][i] for h in later]) for i in range(len(self.sources))]
        seqs = self._taken_seqs or [None] * len(self.sources)
        carry = None
        if self._carry is not None and self._carry[0] is window and self._carry[1].n:
            nxt = self._carry[1]
            carry = (nxt.start_ms, nxt.records[: nxt.n])
        marks = self._marks(seqs, pending)
        return self.journal.on_commit(window.end_ms, window.records, marks, carry, state_after)

    def _journal_stopped(self) -> None:
        """At a stop with everything signed (or saved to the held file): a clean stop."""
        if self.journal is None or self._fatal is not None or self._lost is not None:
            return
        seqs = self._taken_seqs or [None] * len(self.sources)
        marks = self._marks(seqs, [None] * len(self.sources))
        try:
            self.journal.clean_stop(int(time.time() * 1000), marks)
        except StorageError as e:
            log.warning("%s; the next start will report this stop as not clean", e)

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

    def _sign_held(self) -> None:
        """Sign the held windows in order, until the store refuses one."""
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
        if self._held_file is not None:  # the windows read back from it are signed now
            self._held_file.unlink(missing_ok=True)
            log.info("the held windows are signed; %s removed", self._held_file.name)
            self._held_file = None
        self.notifier.status(self._service_status())

    def _storage_failed(self, e: StorageError) -> None:
        """The store refused a write (disk full, I/O error): hold the window, say so loudly.

        A corrupt store is not retried: the agent alerts and stops (the held windows go
        to ``held-windows.cbor``; the start check then refuses the store).
        """
        corrupt = isinstance(e, StoreCorruptError)
        first = self._storage_problem is None or (corrupt and self._fatal is None)
        self._storage_problem = str(e)
        if isinstance(e, StoreCorruptError) and self._fatal is None:
            self._fatal = e
            self.stop()
        log.error(
            "%s; %d window(s) held in memory, %s",
            e,
            len(self._unsigned),
            "the agent stops" if corrupt else "retried at the next window",
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
                    "event": "storage_corrupt" if corrupt else "storage_error",
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
        """The verdicts of ``windows`` (``agent.pipeline.evaluate``: risk in one batch per
        model, then the rules window by window).

        Runs once per window, even when signing is retried (the evaluator's state has moved
        on). Each window keeps the digest of the evaluator state it started from.
        """
        if not windows:
            return
        inputs = [(w.timestamps, w.columns) for w in windows]  # columns: a copy, masked
        verdicts = evaluate_windows(self.policy, self.evaluator, self.risk, inputs)
        for w, v in zip(windows, verdicts):
            w.results = v
            if v.state_after is not None:  # saved once w is signed
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
        """Re-read the whole config file; apply what can change live (``agent.pipeline.reload``).

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
