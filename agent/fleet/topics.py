"""Where fleet configuration lives on the broker (PRODUCT.md §7, §8).

TUF metadata and targets are retained messages under ``{prefix}/{fleet}/tuf/``::

    {prefix}/{fleet}/tuf/metadata/{N}.root.json      every root version (chain)
    {prefix}/{fleet}/tuf/metadata/timestamp.json     the only unversioned file
    {prefix}/{fleet}/tuf/metadata/{N}.{role}.json    snapshot, targets, delegated roles
    {prefix}/{fleet}/tuf/targets/{dir}/{sha256}.{name}  content-addressed targets

The repository uses consistent snapshots, so every file but the timestamp has a
name of its own and a newer release never overwrites what an older one names
(TUF §5.5, "consistent snapshots"). The client speaks in python-tuf URLs
(``mqtt:/metadata/…``, ``mqtt:/targets/…``) that map one to one onto topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from agent.errors import FleetError

__all__ = ["METADATA_URL", "TARGETS_URL", "FleetTopics", "check_target_name"]

METADATA_URL = "mqtt:/metadata/"
TARGETS_URL = "mqtt:/targets/"
_SCHEME = "mqtt:/"


def _check_part(name: str, value: str) -> None:
    if not value or any(c in value for c in "+#/\x00"):
        raise FleetError(f"{name}={value!r} must be non-empty and contain no '+', '#', '/' or NUL")


def check_target_name(name: str) -> str:
    """A target name is a relative path usable as MQTT topic levels."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or any(c in name for c in "+#\x00\\"):
        raise FleetError(
            f"target name {name!r} must be a relative path without empty, '.' or '..' "
            "parts and without '+', '#', '\\' or NUL"
        )
    return name


@dataclass(frozen=True)
class FleetTopics:
    """The fleet's topic tree."""

    prefix: str
    fleet: str

    def __post_init__(self) -> None:
        _check_part("prefix", self.prefix)
        _check_part("fleet", self.fleet)

    @property
    def tuf(self) -> str:
        return f"{self.prefix}/{self.fleet}/tuf"

    @property
    def timestamp(self) -> str:
        return f"{self.tuf}/metadata/timestamp.json"

    def metadata(self, filename: str) -> str:
        return f"{self.tuf}/metadata/{filename}"

    def target(self, name: str, sha256: str) -> str:
        """Topic of target ``name`` stored under its hash (python-tuf's URL form)."""
        dirname, sep, base = check_target_name(name).rpartition("/")
        return f"{self.tuf}/targets/{dirname}{sep}{sha256}.{base}"

    def for_url(self, url: str) -> str:
        """Topic for a python-tuf download URL; FleetError for anything else."""
        if not url.startswith(_SCHEME):
            raise FleetError(f"not a fleet URL: {url!r}")
        rest = unquote(url[len(_SCHEME) :])
        if not rest.startswith(("metadata/", "targets/")):
            raise FleetError(f"not a fleet URL: {url!r}")
        check_target_name(rest)
        return f"{self.tuf}/{rest}"

    def device(self, device: str, leaf: str) -> str:
        _check_part("device", device)
        return f"{self.prefix}/{self.fleet}/{device}/{leaf}"

    def ack(self, device: str) -> str:
        return self.device(device, "config/ack")

    def status(self, device: str) -> str:
        return self.device(device, "status")
