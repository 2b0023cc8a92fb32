"""The gateway as a TUF client: refresh, resolve its assignment, verify, activate, ack.

One update (:meth:`FleetClient.update`) follows a fixed order; each step either
passes or ends the update with a ``rejected`` ack naming the step's reason,
and the config in force stays as it was:

1. ``Updater.refresh()`` (python-tuf): root chain N→N+1 with both thresholds,
   timestamp, snapshot, targets; signatures, thresholds, rollback, expiry,
   snapshot/timestamp hashes and lengths (TUF §5.3–5.5). Nothing of ours.
2. The assignment: ``assignments/devices/<id>.json`` (delegated role
   ``device-<id>``), else ``assignments/groups/<group>.json``; downloaded and
   checked by python-tuf against the director-signed delegated metadata.
3. Full verification: for every file the assignment names, the top-level
   targets metadata must list the same name with the same SHA-256 and length.
4. Download each target (python-tuf checks hash and length) into a staging
   directory; load the policy (schema, conditions) and check that every model
   it references is one the assignment names, with that digest; load each
   model with onnxruntime.
5. Activate atomically (:class:`~agent.fleet.activation.ConfigStore`), hand
   the new config to the agent, ack ``applied``.

python-tuf persists the trusted metadata during step 1; a crash after that
re-runs steps 2–5 at the next update (the config in force is compared with
the assignment, so nothing is applied twice).
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from agent.errors import ConfigRejected, Error, FleetError, TransportError, TrustRootError
from agent.fleet._mqtt import FleetSession
from agent.fleet.activation import (
    ActiveConfig,
    ConfigStore,
    TufVersions,
    fleet_dir,
    read_current,
    staged_path,
    unassigned_models,
)
from agent.fleet.fetcher import MqttFetcher
from agent.fleet.repository import Assignment, assignment_name
from agent.transport.mqtt import BrokerURL, MqttVersion, TlsFiles
from agent.transport.topics import METADATA_URL, TARGETS_URL, FleetTopics

__all__ = ["FleetClient", "FleetClientConfig", "UpdateOutcome"]

log = logging.getLogger("edgegov.fleet")

ACK_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class FleetClientConfig:
    """What the fleet client needs; ``trusted_root`` makes it fail closed."""

    device_id: str
    fleet: str
    url: BrokerURL | tuple[BrokerURL, ...]  # one broker, or a cluster's nodes (failover)
    trusted_root: Path  # the fleet's root.json, provisioned out of band
    state_dir: Path  # fleet state lives in state_dir/fleet
    prefix: str = "edgegov"
    group: str | None = None
    tls: TlsFiles | None = None
    refresh_seconds: float = 300.0
    freeze_factor: float = 3.0  # report "update not seen" after N x the timestamp lifetime
    max_target_bytes: int = 64 * 1024 * 1024
    check_models: bool = True  # load each model with onnxruntime before activation
    version: MqttVersion = "5"  # MQTT protocol version: "5" or "3.1.1"


@dataclass(frozen=True)
class UpdateOutcome:
    state: str  # "applied", "rejected" or "unchanged"
    reason: str = ""
    config: ActiveConfig | None = None


@dataclass
class _Health:
    last_error: str = ""
    potential_freeze: bool = False
    timestamp_version: int = 0
    timestamp_seen_ms: int | None = None  # when that version was first accepted
    timestamp_lifetime_s: float | None = None


def _reason(e: BaseException) -> str:
    """python-tuf's error with its cause (e.g. what made deserialisation fail)."""
    text = f"{type(e).__name__}: {e}"
    if e.__cause__ is not None and not isinstance(e.__cause__, TransportError):
        text += f" ({e.__cause__})"
    return text


def _ms() -> int:
    return int(time.time() * 1000)


class FleetClient:
    """See the module docstring. ``on_activate`` is called with each new config."""

    def __init__(
        self,
        config: FleetClientConfig,
        on_activate: Callable[[ActiveConfig], None] | None = None,
    ) -> None:
        self.config = config
        self.on_activate = on_activate
        self.topics = FleetTopics(config.prefix, config.fleet)
        self.root_dir = fleet_dir(config.state_dir)
        self.metadata_dir = self.root_dir / "metadata"
        self._bootstrap = self._trust_anchor()
        self._store: ConfigStore | None = None  # made (with its directories) on first use
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: FleetSession | None = None
        self._watch: FleetSession | None = None
        self._targets: FleetSession | None = None
        self._fetcher: MqttFetcher | None = None
        self._last_ack: str | None = None
        self._health = _Health()
        self._last_timestamp_msg: bytes | None = None

    def _trust_anchor(self) -> bytes | None:
        """Fail closed: the configured root must be a root signed by its own threshold of
        root keys, or nothing starts (TrustRootError). Reads only."""
        if (self.metadata_dir / "root.json").exists():
            return None  # python-tuf's own trusted root (possibly rotated since)
        path = Path(self.config.trusted_root)
        try:
            data = path.read_bytes()
            md = Metadata.from_bytes(data)
            if not isinstance(md.signed, Root):
                raise ValueError(f"a {md.signed.type} metadata file, not a root")
            md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        except (OSError, tuf_errors.RepositoryError, ValueError) as e:
            raise TrustRootError(
                f"{path}: fleet trust root unusable ({e}); refusing to run without it"
            ) from e
        return data

    @property
    def store(self) -> ConfigStore:
        """The configs on disk (made by :meth:`connect`, or here on first use)."""
        return self._open_store()

    def _open_store(self) -> ConfigStore:
        """Make the fleet directories (python-tuf's metadata, the configs): the first
        writes, so never in the constructor."""
        if self._store is None:
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            self._store = ConfigStore(self.root_dir)
        return self._store

    def current(self) -> ActiveConfig | None:
        """The config in force, read without creating anything."""
        return read_current(self.root_dir)

    # -- lifecycle ---------------------------------------------------------------------
    def connect(self) -> FleetClient:
        """Open the metadata and the targets sessions (idempotent)."""
        c = self.config
        self._open_store()
        # Metadata lengths are unknown before download: cap them at python-tuf's
        # largest metadata limit. Target lengths are known (signed) but capped too.
        u = UpdaterConfig()
        meta_cap = max(u.root_max_length, u.timestamp_max_length, u.snapshot_max_length,
                       u.targets_max_length)  # fmt: skip
        if self._session is None:
            self._session = FleetSession(
                c.url,
                f"edgegov-{c.fleet}-{c.device_id}-fleet",
                tls=c.tls,
                max_payload=meta_cap,
                version=c.version,
            ).connect()
        if self._targets is None:
            self._targets = FleetSession(
                c.url,
                f"edgegov-{c.fleet}-{c.device_id}-targets",
                tls=c.tls,
                max_payload=c.max_target_bytes,
                version=c.version,
            ).connect()
        return self

    def start(self) -> None:
        """In the background: connect, watch the timestamp topic, and update on each
        new timestamp and on a timer (an unreachable broker is retried)."""
        self._thread = threading.Thread(target=self._loop, name="fleet-client", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for s in (self._watch, self._session, self._targets):
            if s is not None:
                s.close()
        self._watch = self._session = self._targets = None

    def _on_timestamp(self, _topic: str, payload: bytes) -> None:
        if payload != self._last_timestamp_msg:
            self._last_timestamp_msg = payload
            self._wake.set()

    def _connect_all(self) -> None:
        self.connect()
        if self._watch is None:
            c = self.config
            self._watch = FleetSession(
                c.url,
                f"edgegov-{c.fleet}-{c.device_id}-watch",
                tls=c.tls,
                max_payload=UpdaterConfig().timestamp_max_length,
                version=c.version,
            ).connect()
            self._watch.watch(self.topics.timestamp, self._on_timestamp)

    def _loop(self) -> None:
        wait = 0.0  # an update right after start
        while not self._stop.is_set():
            self._wake.wait(timeout=wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            wait = self.config.refresh_seconds
            try:
                self._connect_all()
                self.update()
            except Error as e:  # broker trouble: try again soon
                log.error("fleet update failed: %s", e)
                wait = min(wait, 5.0)

    # -- one update ------------------------------------------------------------------------
    def update(self) -> UpdateOutcome:
        """One refresh-and-maybe-activate (see the module docstring); acks the outcome.

        Raises TransportError (only) when the broker cannot be reached at all.
        """
        with self._lock:
            self.connect()
            try:
                outcome = self._update()
            except ConfigRejected as e:
                outcome = UpdateOutcome("rejected", e.reason, self.store.current())
                self._health.last_error = e.reason
                log.error("fleet config rejected: %s", e.reason)
            else:
                self._health.last_error = ""
                self._health.potential_freeze = False
            if outcome.state != "unchanged":
                self._ack(outcome)
            elif self._last_ack != "applied":
                # After a rejection or a restart: say again that the config in force is good.
                self._ack(UpdateOutcome("applied", "", outcome.config))
            return outcome

    def _updater(self, staging: str) -> Updater:
        assert self._session is not None and self._targets is not None, "connect() first"
        self._fetcher = MqttFetcher(self._session, self._targets, self.topics)
        return Updater(
            str(self.metadata_dir),
            METADATA_URL,
            staging,
            TARGETS_URL,
            self._fetcher,
            bootstrap=self._bootstrap,
        )

    def _update(self) -> UpdateOutcome:
        with tempfile.TemporaryDirectory(dir=self.store.staging) as tmp:
            try:
                updater = self._updater(tmp)
                self._bootstrap = None  # persisted by python-tuf from now on
                updater.refresh()
                tuf = self._trusted_versions()
                info, name = self._assignment_info(updater)
                data = Path(
                    updater.download_target(info, str(Path(tmp) / "assignment"))
                ).read_bytes()
            except tuf_errors.ExpiredMetadataError as e:
                self._health.potential_freeze = True
                raise ConfigRejected(f"potential freeze: {e}") from e
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
                raise ConfigRejected(f"{self._last_fetched()}: {_reason(e)}") from e
            except TransportError as e:
                raise ConfigRejected(f"broker: {e}") from e
            current = self.store.current()
            sha = info.hashes["sha256"]
            if current is not None and current.assignment_sha256 == sha:
                return UpdateOutcome("unchanged", "", current)
            try:
                assignment = Assignment.from_bytes(data, name)
            except FleetError as e:
                raise ConfigRejected(str(e)) from e
            return self._install(updater, tuf, name, sha, assignment)

    def _last_fetched(self) -> str:
        """The file python-tuf was reading when it failed (relative to ``…/tuf/``)."""
        if self._fetcher is None or not self._fetcher.fetched:
            return "fleet metadata"
        return self._fetcher.fetched[-1][len(self.topics.tuf) + 1 :]

    def _assignment_info(self, updater: Updater) -> tuple[TargetFile, str]:
        names = [assignment_name(device=self.config.device_id)]
        if self.config.group:
            names.append(assignment_name(group=self.config.group))
        for name in names:
            info = updater.get_targetinfo(name)
            if info is not None:
                return info, name
        raise ConfigRejected(f"no assignment for this device ({' or '.join(names)})")

    def _trusted_versions(self) -> TufVersions:
        """Versions of the metadata python-tuf has just verified and persisted."""
        v = {}
        for role in ("root", "timestamp", "snapshot", "targets"):
            md = Metadata.from_bytes((self.metadata_dir / f"{role}.json").read_bytes())
            v[role] = md.signed.version
            if role == "timestamp":
                self._note_timestamp(md.signed.version, md.signed.expires)
        return TufVersions(**v)

    def _note_timestamp(self, version: int, expires: datetime) -> None:
        h = self._health
        if version != h.timestamp_version:
            h.timestamp_version = version
            h.timestamp_seen_ms = _ms()
            h.timestamp_lifetime_s = max(
                1.0, (expires - datetime.now(timezone.utc)).total_seconds()
            )

    def _install(
        self, updater: Updater, tuf: TufVersions, name: str, sha: str, a: Assignment
    ) -> UpdateOutcome:
        staged = self.store.new_staging(sha[:16])
        digests: dict[str, str] = {}
        for target in (a.policy, *a.models):
            try:
                info = updater.get_targetinfo(target)
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
                raise ConfigRejected(f"{target}: {_reason(e)}") from e
            want_sha, want_len = a.files[target]
            if info is None:
                raise ConfigRejected(f"{target}: assigned but not in the targets metadata")
            if info.hashes.get("sha256") != want_sha or info.length != want_len:
                raise ConfigRejected(
                    f"{target}: assignment and targets metadata disagree on hash/length "
                    f"({want_sha[:16]}…/{want_len} vs {info.hashes.get('sha256', '?')[:16]}…/"
                    f"{info.length})"
                )
            kind = "policy" if target == a.policy else "model"
            path = staged_path(staged, target, kind)
            try:
                updater.download_target(info, str(path))
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
                raise ConfigRejected(f"{target}: {_reason(e)}") from e
            except TransportError as e:
                raise ConfigRejected(f"broker: {e}") from e
            digests[target] = want_sha
        cfg = ActiveConfig(staged, a.config_version, name, sha, a.policy, tuf, digests, _ms())
        self._check_staged(cfg, a)
        active = self.store.activate(staged, cfg)
        log.info("fleet config v%d activated (%s)", active.config_version, active.directory.name)
        if self.on_activate is not None:
            self.on_activate(active)
        return UpdateOutcome("applied", "", active)

    def _check_staged(self, cfg: ActiveConfig, a: Assignment) -> None:
        """The policy loads, and references only the assigned models, by digest."""
        from agent.policy import load_policy  # the policy compiler is heavy; load lazily
        from agent.risk.onnx_model import load_declared

        try:
            bundle = load_policy(cfg.policy_path)
        except Error as e:
            raise ConfigRejected(f"{a.policy}: {e}") from e
        missing = unassigned_models(bundle, cfg.directory, a.models, a.files)
        if missing:
            raise ConfigRejected(
                f"{a.policy}: "
                + "; ".join(f"{m.describe()} is not in this device's assignment" for m in missing)
                + f" (the fleet manager: {missing[0].remedy()})"
            )
        for ref in bundle.models:
            if self.config.check_models:
                try:
                    load_declared(ref)
                except Error as e:
                    raise ConfigRejected(f"{a.policy}: {e}") from e

    # -- reporting ------------------------------------------------------------------------
    def _ack(self, outcome: UpdateOutcome) -> None:
        if self._session is None:
            return
        cfg = outcome.config
        body = {
            "device": self.config.device_id,
            "state": outcome.state,
            "reason": outcome.reason,
            "time_ms": _ms(),
            "config_version": cfg.config_version if cfg else None,
            "assignment_sha256": cfg.assignment_sha256 if cfg else None,
            "tuf": cfg.tuf.as_dict() if cfg else None,
            "targets": dict(cfg.targets) if cfg else {},
        }
        try:
            self._last_ack = outcome.state
            self._session.publish(
                self.topics.ack(self.config.device_id),
                json.dumps(body, sort_keys=True).encode(),
                retain=True,
                content_type=ACK_CONTENT_TYPE,
            )
        except TransportError as e:
            log.error("config ack not sent: %s", e)

    def health(self) -> dict[str, Any]:
        """Fleet-config health for status and the attestation's health claim."""
        h = self._health
        out: dict[str, Any] = {"fleet_potential_freeze": int(h.potential_freeze)}
        if h.timestamp_seen_ms is not None and h.timestamp_lifetime_s is not None:
            unseen = (_ms() - h.timestamp_seen_ms) / 1000
            limit = self.config.freeze_factor * h.timestamp_lifetime_s
            out["fleet_update_not_seen_s"] = int(unseen)
            if unseen > limit:
                out["fleet_potential_freeze"] = 1
        return out

    @property
    def last_error(self) -> str:
        return self._health.last_error
