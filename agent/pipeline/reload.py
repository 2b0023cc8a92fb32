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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agent.config import AgentConfig

__all__ = ["ReloadPlan", "plan_reload"]

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
