"""Who may sign governance statements: the trust file's ``people``, ``labs`` and ``sites``.

Beside the device keys (``agent.audit.trust``), a trust file names the people who answer
for deviations, the calibration labs whose certificates the auditor accepts, and which
devices make up each site::

    people:
      - {key: alice.pub.pem, name: Alice Operator, roles: [operator], sites: [site-a]}
      - {key: bob.pub.pem, name: Bob Manager, roles: [fleet-manager], sites: [all]}
    labs:
      - {key: lab.pub.pem, name: ACME Calibration (ISO/IEC 17025 no. 1234)}
    sites:
      site-a: [gw-0001, gw-0002]

An explanation counts only when its key is a person's, its ``signer`` is that person's
name, its role is one of theirs and one that may explain (``operator``,
``fleet-manager``), and its deviation's device is at one of their sites (``all``: every
site). The roles are those of ``agent.fleet.roles`` (the broker ACLs) that people hold.
A calibration certificate counts only when its key is a lab's and its issuer is that
lab's name. Everything else is refused with the reason, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agent.errors import ConfigError, VerificationError
from agent.fleet.roles import ALL_SITES
from agent.fleet.roles import ROLES as _BROKER_ROLES
from agent.governance.statements import CalibrationCertificate, Explanation, Statement
from agent.identity.keys import PublicKey, load_public_key

__all__ = ["EXPLAINING_ROLES", "ROLES", "Authorities", "load_authorities"]

#: the stakeholder roles people hold (configs/broker/roles/ has an ACL template for each)
ROLES = tuple(r for r in _BROKER_ROLES if r not in ("device", "collector"))
#: the roles accountable for a deviation: they may sign its explanation
EXPLAINING_ROLES = ("operator", "fleet-manager")


@dataclass(frozen=True)
class Person:
    name: str
    key: PublicKey
    roles: tuple[str, ...]
    sites: tuple[str, ...]  # ALL_SITES: every site


@dataclass(frozen=True)
class Lab:
    name: str
    key: PublicKey


_S = TypeVar("_S", Person, Lab)


@dataclass
class Authorities:
    people: dict[bytes, Person] = field(default_factory=dict)
    labs: dict[bytes, Lab] = field(default_factory=dict)
    site_of: dict[str, set[str]] = field(default_factory=dict)  # device -> sites
    source: str = "no trust file"

    def check(self, st: Statement) -> None:
        """Raise VerificationError (why, in words) unless ``st`` is signed by someone
        allowed to make it."""
        if isinstance(st.body, Explanation):
            person = self._signer(st, self.people, "a person", "people")
            ex = st.body
            if ex.signer != person.name:
                raise VerificationError(
                    f"says it is signed by {ex.signer!r}, but the key is {person.name!r}'s"
                )
            if ex.role not in person.roles:
                raise VerificationError(
                    f"signed as {ex.role!r}, a role {person.name} does not hold "
                    f"(roles: {', '.join(person.roles)})"
                )
            if ex.role not in EXPLAINING_ROLES:
                raise VerificationError(
                    f"signed as {ex.role!r}: only {' or '.join(EXPLAINING_ROLES)} may explain "
                    "a deviation"
                )
            sites = self.site_of.get(ex.device, set())
            if ALL_SITES not in person.sites and not sites & set(person.sites):
                where = ", ".join(sorted(sites)) or f"no site ({self.source} sites: names none)"
                raise VerificationError(
                    f"{person.name} answers for site(s) {', '.join(person.sites)}; device "
                    f"{ex.device} is at {where}"
                )
        else:
            assert isinstance(st.body, CalibrationCertificate)
            lab = self._signer(st, self.labs, "a calibration lab", "labs")
            if st.body.issuer != lab.name:
                raise VerificationError(
                    f"names its issuer {st.body.issuer!r}, but the key is {lab.name!r}'s"
                )

    def _signer(self, st: Statement, table: Mapping[bytes, _S], who: str, section: str) -> _S:
        """The entry whose key signed ``st``, its signature checked."""
        entry = table.get(st.msg.kid)
        if entry is None:
            raise VerificationError(
                f"signed by kid {st.msg.kid.hex()}, not the key of {who} in {self.source}'s "
                f"{section} ({len(table)} listed)"
            )
        st.msg.verify(entry.key)
        return entry


def load_authorities(path: Path | None) -> Authorities:
    """The ``people``, ``labs`` and ``sites`` of a trust file (none without one)."""
    if path is None:
        return Authorities()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:  # load_trust read it first and said so
        raise ConfigError(f"{path}: cannot read trust file: {err}") from err
    out = Authorities(source=str(path))
    base = path.parent
    for i, e in enumerate(_entries(data, "people", path)):
        where = f"{path}: people[{i}]"
        roles = _names(e, "roles", where)
        for r in roles:
            if r not in ROLES:
                raise ConfigError(f"{where}.roles: {r!r} is not one of {', '.join(ROLES)}")
        key = load_public_key(base / _text(e, "key", where))
        out.people[key.kid] = Person(_text(e, "name", where), key, roles, _names(e, "sites", where))
    for i, e in enumerate(_entries(data, "labs", path)):
        where = f"{path}: labs[{i}]"
        key = load_public_key(base / _text(e, "key", where))
        out.labs[key.kid] = Lab(_text(e, "name", where), key)
    sites = data.get("sites") or {}
    if not isinstance(sites, Mapping):
        raise ConfigError(f"{path}: sites must map a site name to its device ids")
    for site, devices in sites.items():
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise ConfigError(f"{path}: sites.{site} must be a list of device ids")
        for d in devices:
            out.site_of.setdefault(d, set()).add(str(site))
    return out


def _entries(data: Mapping[str, Any], key: str, path: Path) -> list[Mapping[str, Any]]:
    v = data.get(key) or []
    if not isinstance(v, list) or not all(isinstance(e, Mapping) for e in v):
        raise ConfigError(f"{path}: {key} must be a list of mappings")
    return v


def _text(e: Mapping[str, Any], key: str, where: str) -> str:
    v = e.get(key)
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}.{key} is missing or not a non-empty string")
    return v


def _names(e: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = e.get(key)
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ConfigError(f"{where}.{key} must be a non-empty list of names")
    return tuple(v)
