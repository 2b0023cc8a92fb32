"""Fleet configuration with TUF over retained MQTT (README.md, Fleet configuration).

Repository side: :class:`FleetRepository` (``edgegov fleet init/add/assign/
rotate/sign/publish``) and :func:`fleet_status` (``edgegov fleet status``).
Who may do what on the broker: :data:`ROLES` and :func:`render_acl` (``edgegov fleet
acl``, docs/roles.md). Gateway side: :class:`FleetClient` (python-tuf ngclient over
:class:`MqttFetcher`) activating configs atomically through :class:`ConfigStore`.

In: a broker (retained TUF metadata and targets, status and acks) and the fleet's
signing keys. Out: activated configs handed to the agent, ``config/ack`` messages, the
published repository. MQTT goes through :mod:`agent.transport.mqtt` (``_mqtt.FleetSession``
is a synchronous session on it) and every topic comes from :mod:`agent.transport.topics`.

Names are imported lazily so that ``edgegov --help`` does not load python-tuf.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ROLES",
    "ActiveConfig",
    "Assignment",
    "ConfigRejected",
    "ConfigStore",
    "FleetClient",
    "FleetClientConfig",
    "FleetError",
    "FleetRepository",
    "FleetTopics",
    "MqttFetcher",
    "RepositoryInvalid",
    "TrustRootError",
    "TufVersions",
    "UpdateOutcome",
    "fleet_status",
    "load_users",
    "render_acl",
]

_WHERE = {
    "ActiveConfig": "activation",
    "ConfigStore": "activation",
    "TufVersions": "activation",
    "Assignment": "repository",
    "FleetRepository": "repository",
    "FleetClient": "client",
    "FleetClientConfig": "client",
    "UpdateOutcome": "client",
    "FleetTopics": "agent.transport.topics",  # the one topic tree
    "MqttFetcher": "fetcher",
    "fleet_status": "status",
    "ROLES": "roles",
    "load_users": "roles",
    "render_acl": "roles",
    # the fleet's branch of the one error tree
    "ConfigRejected": "agent.errors",
    "FleetError": "agent.errors",
    "RepositoryInvalid": "agent.errors",
    "TrustRootError": "agent.errors",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        where = _WHERE[name]
        module = where if "." in where else f"agent.fleet.{where}"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'agent.fleet' has no attribute {name!r}")
