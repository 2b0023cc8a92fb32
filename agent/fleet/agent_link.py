"""The agent's side of fleet configuration: one object the runner holds.

It starts the :class:`~agent.fleet.client.FleetClient` from the agent config,
tells the runner which policy to load at start (the fleet config in force, if
any, else the local bootstrap policy, else none: the agent then waits for the
first signed config and attests nothing), hands over newly activated configs,
and says what to put in claim -70001/5 and in the status.

Constructing it writes nothing: the trust root and the config in force are read,
directories are made when the client starts.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.errors import ConfigError, Error, TrustRootError
from agent.evidence.claims import ConfigInForce
from agent.fleet.activation import ActiveConfig
from agent.fleet.client import FleetClient, FleetClientConfig
from agent.policy import PolicyBundle
from agent.transport.mqtt import BrokerURL, TlsFiles

__all__ = ["FleetLink"]

log = logging.getLogger("edgegov.fleet")


class FleetLink:
    """Fleet configuration for one agent (only when the agent config has ``tuf:``)."""

    def __init__(self, config: AgentConfig) -> None:
        assert config.tuf is not None and config.mqtt is not None
        m = config.mqtt
        try:
            self.client = FleetClient(
                FleetClientConfig(
                    device_id=config.device_id,
                    fleet=config.fleet,
                    url=BrokerURL.parse_all(m.urls, f"{config.source}: output.mqtt.url"),
                    version=m.version,
                    trusted_root=config.tuf.root,
                    state_dir=config.state_dir,
                    prefix=m.topic_prefix,
                    group=config.tuf.group,
                    tls=TlsFiles(m.ca, m.cert, m.key),
                    refresh_seconds=config.tuf.refresh_seconds,
                ),
                on_activate=self._activated,
            )
        except TrustRootError as e:
            raise ConfigError(f"{config.source}: tuf.root: {e}") from e
        self.in_force: ActiveConfig | None = self.client.current()
        self._pending: ActiveConfig | None = None
        self._changed: tuple[int, int] | None = None  # (previous version, switch ms)
        self._lock = threading.Lock()
        self._problem = ""

    def policy_path(self, local: Path | None) -> Path | None:
        """The policy to start with: the fleet's config in force, else the local file
        (None: neither, the agent waits for the first signed config)."""
        return self.in_force.policy_path if self.in_force is not None else local

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        self.client.stop()

    def _activated(self, cfg: ActiveConfig) -> None:  # fleet client thread
        with self._lock:
            self._pending = cfg

    def take_pending(self) -> ActiveConfig | None:
        with self._lock:
            cfg, self._pending = self._pending, None
        return cfg

    def switched(self, cfg: ActiveConfig, at_ms: int) -> None:
        """The runner now evaluates with ``cfg`` (from ``at_ms``)."""
        previous = self.in_force.config_version if self.in_force is not None else 0
        self.in_force, self._changed, self._problem = cfg, (previous, at_ms), ""

    def refused(self, cfg: ActiveConfig, error: Error | str) -> None:
        self._problem = f"fleet config v{cfg.config_version} not in force: {error}"
        log.error("%s", self._problem)

    def config_in_force(self, p: PolicyBundle, start_ms: int, end_ms: int) -> ConfigInForce:
        """Claim -70001/5 for a window: the policy and models, and the TUF state."""
        cfg = self.in_force
        changed = self._changed if self._changed and start_ms <= self._changed[1] < end_ms else None
        return ConfigInForce(
            p.id,
            p.version,
            p.digest,
            {m.id: m.sha256 for m in p.models},
            cfg.config_version if cfg else 0,
            cfg.tuf.as_dict() if cfg else None,
            dict(cfg.targets) if cfg else None,
            changed,
        )

    def degraded(self) -> tuple[str, ...]:
        out = []
        if self.in_force is None:
            out.append("no fleet-signed config in force yet (running the local policy)")
        if self._problem:
            out.append(self._problem)
        if self.client.health().get("fleet_potential_freeze"):
            out.append(f"fleet config: potential freeze ({self.client.last_error or 'stale'})")
        return tuple(out)

    def health_counters(self) -> dict[str, int]:
        """For claim -70001/8: 1 while fleet metadata is expired or not renewed in time."""
        return {"fleet_potential_freeze": int(self.client.health()["fleet_potential_freeze"])}

    def status(self) -> dict[str, Any]:
        cfg = self.in_force
        return {
            "config_version": cfg.config_version if cfg else 0,
            "tuf": cfg.tuf.as_dict() if cfg else None,
            "last_error": self.client.last_error,
            **self.client.health(),
        }
