"""The one MQTT topic tree, as value objects (README.md: Running it on a gateway, Fleet
configuration).

Every topic edgegov publishes to or subscribes to is spelled here and nowhere else::

    {prefix}/{fleet}/{device}/attestation   COSE evidence (QoS 1)      DeviceTopics.attestation
    {prefix}/{fleet}/{device}/status        retained JSON; Last Will   DeviceTopics.status
    {prefix}/{fleet}/{device}/alert         JSON, violation start/end  DeviceTopics.alert
    {prefix}/{fleet}/{device}/config/ack    retained JSON              DeviceTopics.config_ack
    {prefix}/{fleet}/{device}/explanation   COSE, a person's signed explanation of a
                                            deviation (QoS 1)          DeviceTopics.explanation
    {prefix}/{fleet}/{device}/calibration   COSE, a lab's signed calibration certificate
                                            (QoS 1, retained per cert) DeviceTopics.calibration
    {prefix}/{fleet}/tuf/metadata/{N}.{role}.json, …/timestamp.json   FleetTopics.metadata
    {prefix}/{fleet}/tuf/targets/{dir}/{sha256}.{name}                FleetTopics.target

Subscriptions are :class:`Filter` values (wildcards ``+``, MQTT v5 §4.7; shared
subscriptions ``$share/{group}/…``, §4.8.2): ``FleetTopics.statuses``,
``FleetTopics.acks``, :func:`attestations`.

TUF files are retained messages under ``{prefix}/{fleet}/tuf/``. The repository uses
consistent snapshots, so every file but the timestamp has a name of its own and a newer
release never overwrites what an older one names (TUF §5.5). python-tuf speaks in URLs
(``mqtt:/metadata/…``, ``mqtt:/targets/…``) that :meth:`FleetTopics.for_url` maps one to
one onto topics.

A topic level given by a configuration (prefix, fleet, device) must be non-empty and hold
no ``+``, ``#``, ``/`` or NUL: an agent config that breaks it is a ``ConfigError``; a fleet
repository, fleet command or TUF URL that breaks it is a ``FleetError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from agent.errors import ConfigError, Error, FleetError

__all__ = [
    "METADATA_URL",
    "TARGETS_URL",
    "DeviceTopics",
    "Filter",
    "FleetTopics",
    "attestations",
    "check_target_name",
    "device_of",
    "matches",
    "statements",
]

METADATA_URL = "mqtt:/metadata/"
TARGETS_URL = "mqtt:/targets/"
_SCHEME = "mqtt:/"
_ANY = "+"  # one level, any value (MQTT v5 §4.7.1.3)


def _check_level(name: str, value: str, error: type[Error], what: str = "") -> None:
    if not value or any(c in value for c in "+#/\x00"):
        raise error(f"{what}{name}={value!r} must be non-empty and contain no '+', '#', '/' or NUL")


def check_target_name(name: str) -> str:
    """A TUF target name is a relative path usable as MQTT topic levels (FleetError if not)."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or any(c in name for c in "+#\x00\\"):
        raise FleetError(
            f"target name {name!r} must be a relative path without empty, '.' or '..' "
            "parts and without '+', '#', '\\' or NUL"
        )
    return name


def device_of(topic: str) -> str:
    """The device level of a per-device topic (``{prefix}/{fleet}/{device}/…``)."""
    return topic.split("/", 3)[2]


def matches(topic_filter: str | Filter, topic: str) -> bool:
    """Whether ``topic`` matches a subscription filter (MQTT v5 §4.7; a shared one by its
    pattern)."""
    from paho.mqtt.client import topic_matches_sub  # paho's matcher, loaded only when used

    pattern = topic_filter.pattern if isinstance(topic_filter, Filter) else topic_filter
    return bool(topic_matches_sub(pattern, topic))


@dataclass(frozen=True)
class Filter:
    """A subscription: a topic filter, shared by a group of subscribers when ``share`` is set.

    ``str()`` is what goes into SUBSCRIBE.
    """

    pattern: str
    share: str | None = None

    def shared(self, group: str | None) -> Filter:
        """This filter as an MQTT v5 shared subscription of ``group`` (None: not shared)."""
        return Filter(self.pattern, group)

    def __str__(self) -> str:
        return f"$share/{self.share}/{self.pattern}" if self.share else self.pattern


@dataclass(frozen=True)
class DeviceTopics:
    """One gateway's topics: ``{prefix}/{fleet}/{device}/…`` (ConfigError for a bad level)."""

    prefix: str
    fleet: str
    device: str

    def __post_init__(self) -> None:
        for name in ("prefix", "fleet", "device"):
            _check_level(name, getattr(self, name), ConfigError, "MQTT topic part ")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.fleet}/{self.device}"

    @property
    def attestation(self) -> str:
        return f"{self.base}/attestation"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def alert(self) -> str:
        return f"{self.base}/alert"

    @property
    def config_ack(self) -> str:
        return f"{self.base}/config/ack"

    @property
    def explanation(self) -> str:
        return f"{self.base}/explanation"

    @property
    def calibration(self) -> str:
        return f"{self.base}/calibration"


@dataclass(frozen=True)
class FleetTopics:
    """A fleet's topics: its TUF repository and every gateway in it (FleetError for a bad level)."""

    prefix: str
    fleet: str

    def __post_init__(self) -> None:
        _check_level("prefix", self.prefix, FleetError)
        _check_level("fleet", self.fleet, FleetError)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.fleet}"

    # -- gateways ------------------------------------------------------------------------
    def device(self, device: str) -> DeviceTopics:
        _check_level("device", device, FleetError)
        return DeviceTopics(self.prefix, self.fleet, device)

    def status(self, device: str) -> str:
        return self.device(device).status

    def ack(self, device: str) -> str:
        return self.device(device).config_ack

    @property
    def statuses(self) -> Filter:
        """Every gateway's retained status."""
        return Filter(f"{self.base}/{_ANY}/status")

    @property
    def acks(self) -> Filter:
        """Every gateway's retained config ack."""
        return Filter(f"{self.base}/{_ANY}/config/ack")

    # -- the TUF repository (retained) -----------------------------------------------------
    @property
    def tuf(self) -> str:
        return f"{self.base}/tuf"

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


def attestations(prefix: str = "edgegov", fleet: str = _ANY, share: str | None = None) -> Filter:
    """Every gateway's attestations in ``fleet`` (``+``: in every fleet), for an auditor.

    Not validated: an auditor's command line may name levels an agent config would refuse.
    """
    return Filter(f"{prefix}/{fleet}/{_ANY}/attestation", share)


def statements(
    prefix: str = "edgegov", fleet: str = _ANY, share: str | None = None
) -> tuple[Filter, ...]:
    """Every signed governance statement in ``fleet``: people's explanations of deviations
    and labs' calibration certificates, for a collector."""
    return tuple(
        Filter(f"{prefix}/{fleet}/{_ANY}/{kind}", share) for kind in ("explanation", "calibration")
    )
