"""What a SIGHUP may change in a running agent, decided from the running and the new config.

Live (applied by ``Agent`` at once): ``policy`` (with its models, thresholds and
windows, as long as the channel list stays), ``risk.providers``, ``risk.threads``,
``output.mqtt`` (broker URL, credentials, TLS files: the publisher reconnects) and
``output.spool``, ``evidence.retention_days``, ``evidence.max_mb``, ``log.level``.

Restart only: ``device.*`` (the signing identity), ``fleet``, ``state_dir``, ``sources``,
``tuf``, ``output.mqtt.topic_prefix`` (baked into outbox rows), and with ``tuf:`` all of
``output.mqtt`` (the fleet client shares the connection settings). Each one that changed
is named, and keeps its running value until the agent restarts. A field this module does
not know is restart-only too: a config field added later is refused, never ignored.

:class:`ReloadMixin` is how ``agent.pipeline.runner.Agent`` applies it: a new config
file on SIGHUP, or a new policy bundle the fleet activated (``apply_bundle``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig, load_config
from agent.errors import (
    ConfigError,
    Error,
)
from agent.evidence.attester import Attester
from agent.evidence.store import EvidenceStore
from agent.logs import set_level as set_log_level
from agent.pipeline.service import Notifier
from agent.policy import PolicyBundle, load_policy
from agent.policy.evaluator import Evaluator
from agent.sources import PortSource
from agent.transport.publisher import Publisher

if TYPE_CHECKING:
    from agent.fleet.activation import ActiveConfig
    from agent.fleet.agent_link import FleetLink


__all__ = ["ReloadMixin", "ReloadPlan", "plan_reload"]

# AgentConfig attribute -> the field's path in the YAML file, as errors name it.
_LIVE = {
    "policy_path": "policy",
    "providers": "risk.providers",
    "risk_threads": "risk.threads",
    "mqtt": "output.mqtt",
    "spool_dir": "output.spool",
    "retention_days": "evidence.retention_days",
    "evidence_max_mb": "evidence.max_mb",
    "log_level": "log.level",
}
_DEFAULT_PREFIX = "edgegov"  # the topics a spool-only agent was built with (Agent.topics)
_RESTART = {
    "device_id": "device.id",
    "key_path": "device.key",
    "device_cert": "device.cert",
    "pkcs11": "device.pkcs11",
    "fleet": "fleet",
    "state_dir": "state_dir",
    "sources": "sources",
    "tuf": "tuf",
}


@dataclass(frozen=True)
class ReloadPlan:
    """``config``: the new config with every restart-only field kept at its running value."""

    config: AgentConfig
    changed: tuple[str, ...]  # live fields that changed: applied
    refused: tuple[str, ...]  # restart-only fields that changed: not applied


def plan_reload(running: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """Split the differences between ``running`` and ``new`` into live and restart-only."""
    changed: list[str] = []
    refused: list[str] = []
    keep: dict[str, object] = {}
    for f in dataclasses.fields(AgentConfig):
        name = f.name
        before, after = getattr(running, name), getattr(new, name)
        if name == "source" or before == after:
            continue
        if name == "mqtt" and running.tuf is None:
            prefix = before.topic_prefix if before is not None else _DEFAULT_PREFIX
            if after is not None and after.topic_prefix != prefix:
                refused.append("output.mqtt.topic_prefix")
                after = dataclasses.replace(after, topic_prefix=prefix)
                keep[name] = after
            if before != after:
                changed.append(_LIVE[name])
            continue
        if name in _LIVE and not (running.tuf is not None and name in ("mqtt", "spool_dir")):
            changed.append(_LIVE[name])
            continue
        refused.append(_RESTART.get(name, _LIVE.get(name, name)))
        keep[name] = before
    return ReloadPlan(dataclasses.replace(new, **keep), tuple(changed), tuple(refused))  # type: ignore[arg-type]


log = logging.getLogger("edgegov.agent")


class ReloadMixin:
    """How the agent applies a new config or policy while it runs (module docstring)."""

    if TYPE_CHECKING:  # what the agent (agent.pipeline.runner.Agent) provides
        config: AgentConfig
        notifier: Notifier
        store: EvidenceStore
        attester: Attester
        publisher: Publisher
        policy: PolicyBundle
        evaluator: Evaluator
        sources: list[PortSource]
        fleet: FleetLink | None
        _waiting: bool

        def _make_publisher(self) -> Publisher: ...
        def _make_sources(self, bundle: PolicyBundle) -> list[PortSource]: ...
        def _new_evaluator(self, bundle: PolicyBundle) -> Evaluator: ...
        def _use_models(self, bundle: PolicyBundle) -> None: ...
        def _service_status(self) -> str: ...
        def _status(self) -> dict[str, Any]: ...

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
