"""Fleet configuration with TUF over retained MQTT (PRODUCT.md §8).

Repository side: :class:`FleetRepository` (``edgegov fleet init/add/assign/
rotate/sign/publish``) and :func:`fleet_status` (``edgegov fleet status``).
Gateway side: :class:`FleetClient` (python-tuf ngclient over
:class:`MqttFetcher`) activating configs atomically through :class:`ConfigStore`.

Names are imported lazily so that ``edgegov --help`` does not load python-tuf.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
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
    "FleetTopics": "topics",
    "MqttFetcher": "fetcher",
    "fleet_status": "status",
}


_ERRORS = ("ConfigRejected", "FleetError", "RepositoryInvalid", "TrustRootError")


def __getattr__(name: str) -> Any:
    if name in _ERRORS:  # the fleet's branch of the one error tree
        return getattr(importlib.import_module("agent.errors"), name)
    if name in _WHERE:
        return getattr(importlib.import_module(f"agent.fleet.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'agent.fleet' has no attribute {name!r}")
