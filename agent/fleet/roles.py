"""Stakeholder roles and the Mosquitto ACL that enforces them (docs/roles.md).

Each role is data: which topic kinds of the one topic tree (:mod:`agent.transport.topics`)
it may read and write, and whether it may be given every site. A *site* is a fleet (the
agent config's ``fleet``, the topic level after the prefix); every user is given the sites
it may see, and nothing outside them::

    role            reads                                   writes
    device          its fleet's tuf                         its own attestation, status,
                                                            alert, config/ack
    operator        everything of its sites                 explanation, calibration
    fleet-manager   everything of its sites                 tuf, calibration
    auditor         everything of its sites (or all)        nothing
    regulator       attestation, explanation, calibration   nothing
    customer        attestation, status, explanation,       nothing
                    calibration
    collector       attestation, status, explanation,       nothing
                    calibration (its sites, or all)

:func:`load_users` reads a users file (user → role → sites) and :func:`render_acl` turns
it into a Mosquitto ``acl_file`` (``edgegov fleet acl``); :func:`role_template` is one
role's block with ``{user}``, ``{prefix}`` and ``{site}`` placeholders
(``configs/broker/roles/``).

The rendered file has ``user`` blocks only, never ``pattern`` lines: Mosquitto applies a
pattern to *every* user (mosquitto.conf(5), acl_file), so ``pattern write
edgegov/+/%u/attestation`` would let a regulator named ``reg`` publish
``edgegov/site-a/reg/attestation``. Each device is therefore listed with its one site.
Mosquitto grants any SUBSCRIBE and checks read access per message, as it delivers it,
retained ones included: a customer that subscribes to ``edgegov/#`` receives its own
sites' messages and nothing else (tests/test_roles_acl.py proves both through a real
broker).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from agent.errors import FleetError, PolicyError
from agent.policy.yaml_cursor import YamlCursor
from agent.transport.topics import DeviceTopics, FleetTopics

__all__ = [
    "KINDS",
    "ROLES",
    "Role",
    "User",
    "UsersFile",
    "load_users",
    "render_acl",
    "role_template",
]

ALL_SITES = "all"
_ANY = "+"  # one topic level, any value (MQTT v5 §4.7.1.3)
_PER_DEVICE = ("attestation", "status", "alert", "config_ack", "explanation", "calibration")
KINDS = (*_PER_DEVICE, "tuf")
"""Topic kinds: the per-device topics by their :class:`DeviceTopics` attribute, and the
fleet's TUF repository (``{prefix}/{fleet}/tuf/#``)."""


def _suffix(kind: str) -> str:
    """A kind's topic levels below ``{prefix}/{fleet}/{device}`` (per device) or below
    ``{prefix}/{fleet}`` (tuf), as :mod:`agent.transport.topics` spells them."""
    if kind == "tuf":
        fleet = FleetTopics("p", "f")
        return f"{fleet.tuf[len(fleet.base) + 1 :]}/#"
    dev = DeviceTopics("p", "f", "d")
    return str(getattr(dev, kind))[len(dev.base) + 1 :]


@dataclass(frozen=True)
class Role:
    """What one kind of user may do, on the sites it is given."""

    name: str
    reads: frozenset[str]
    writes: frozenset[str]
    why: str  # one line, into the ACL and docs/roles.md
    may_see_all: bool = False  # ``sites: all`` allowed (a service or an auditor of everything)
    own_device: bool = False  # per-device kinds only for its own device id, one site

    def access(self, kind: str) -> str | None:
        """``read``, ``write``, ``readwrite`` or None for a topic kind."""
        r, w = kind in self.reads, kind in self.writes
        return "readwrite" if r and w else "read" if r else "write" if w else None


def _role(name: str, reads: Iterable[str], writes: Iterable[str], why: str, **kw: bool) -> Role:
    return Role(name, frozenset(reads), frozenset(writes), why, **kw)


_SIGNED = ("attestation", "explanation", "calibration")
ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        _role("device", ["tuf"], ["attestation", "status", "alert", "config_ack"],
              "a gateway: writes its own evidence, status, alerts and config acks; "
              "reads its fleet's signed configuration", own_device=True),
        _role("operator", KINDS, ["explanation", "calibration"],
              "runs its sites: reads everything of them; writes signed explanations of "
              "deviations and calibration certificates"),
        _role("fleet-manager", KINDS, ["tuf", "calibration"],
              "configures its fleets: publishes their TUF repository, reads everything of "
              "them (status, acks); writes calibration certificates"),
        _role("auditor", KINDS, [],
              "checks compliance: reads everything of its sites (or all), writes nothing",
              may_see_all=True),
        _role("regulator", _SIGNED, [],
              "a relying party: reads the signed statements of its sites (attestations, "
              "explanations, calibration certificates), writes nothing"),
        _role("customer", (*_SIGNED, "status"), [],
              "a relying party for its own sites only: signed statements and whether each "
              "gateway is online; writes nothing"),
        _role("collector", (*_SIGNED, "status"), [],
              "a service storing evidence (edgegov audit collect): reads attestations, "
              "statuses, explanations, calibration; writes nothing", may_see_all=True),
    )
}  # fmt: skip


@dataclass(frozen=True)
class User:
    """A broker user (for a device: its certificate CN, its device id)."""

    name: str
    role: Role
    sites: tuple[str, ...] | None  # None: every site


@dataclass(frozen=True)
class UsersFile:
    prefix: str
    users: tuple[User, ...]
    source: str  # the file's name, for the rendered file's header


def _topic_lines(role: Role, prefix: str, user: str, site: str) -> list[str]:
    lines = []
    for kind in KINDS:
        access = role.access(kind)
        if access is None:
            continue
        if kind == "tuf":
            topic = f"{prefix}/{site}/{_suffix(kind)}"
        else:
            topic = f"{prefix}/{site}/{user if role.own_device else _ANY}/{_suffix(kind)}"
        lines.append(f"topic {access} {topic}")
    return lines


def _block(user: User, prefix: str) -> list[str]:
    role = user.role
    sites = user.sites or (_ANY,)
    where = "every site" if user.sites is None else ", ".join(user.sites)
    out = [f"# {user.name}: {role.name} of {where}", f"user {user.name}"]
    for site in sites:
        out += _topic_lines(role, prefix, user.name, site)
    return out


def render_acl(users: UsersFile) -> str:
    """The Mosquitto ``acl_file`` for ``users``: one ``user`` block each, no patterns."""
    out = [
        f"# Mosquitto acl_file generated by 'edgegov fleet acl {users.source}'; edit that file",
        "# and render again. User blocks only: a 'pattern' line would apply to every user.",
        "# Roles, and what an ACL cannot hide: docs/roles.md.",
    ]
    for user in users.users:
        out += ["", *_block(user, users.prefix)]
    return "\n".join(out) + "\n"


def role_template(name: str) -> str:
    """One role's ACL block with placeholders (``configs/broker/roles/{name}.acl``)."""
    role = ROLES[name]
    scope = (
        "{site}: its one site (fleet); {user}: its device id (certificate CN)"
        if role.own_device
        else "{site}: a site (fleet), or + for every site"
        if role.may_see_all
        else "{site}: a site (fleet)"
    )
    head = [
        f"# edgegov broker ACL template for the role {name!r}:",
        f"# {role.why}.",
        f"# {{prefix}}: the topic prefix (edgegov); {scope};",
        "# the topic lines repeat for each of the user's sites.",
        "# Rendered for real users by: edgegov fleet acl USERS.yaml --out edgegov.acl",
        "user {user}",
    ]
    return "\n".join(head + _topic_lines(role, "{prefix}", "{user}", "{site}")) + "\n"


# -- the users file ---------------------------------------------------------------------


def _site(doc: YamlCursor, node: yaml.Node, path: str) -> str:
    value = doc.string(node, path)
    if any(c in value for c in "+#/\x00"):
        raise doc.error(node, path, f"site {value!r} is one topic level: no '+', '#', '/' or NUL")
    return doc.ident(node, path)


def _sites(doc: YamlCursor, node: yaml.Node, path: str, role: Role) -> tuple[str, ...] | None:
    if isinstance(node, yaml.ScalarNode) and node.value == ALL_SITES:
        if not role.may_see_all:
            allowed = " or ".join(r.name for r in ROLES.values() if r.may_see_all)
            why = f"'all' is only for {allowed}; a {role.name} is given its sites by name"
            raise doc.error(node, path, why)
        return None
    sites: list[str] = []
    for i, item in enumerate(doc.sequence(node, path, nonempty=True)):
        site = _site(doc, item, f"{path}[{i}]")
        if site in sites:
            raise doc.error(item, f"{path}[{i}]", f"site {site!r} is listed twice")
        sites.append(site)
    if role.own_device and len(sites) != 1:
        raise doc.error(node, path, "a device belongs to exactly one site (its fleet)")
    return tuple(sites)


def _user(doc: YamlCursor, key: yaml.Node, value: yaml.Node, path: str) -> User:
    name = doc.ident(key, path)
    fields = doc.mapping(value, path, required=["role"], optional=["sites"])
    role_name = doc.string(fields["role"], f"{path}.role")
    role = ROLES.get(role_name)
    if role is None:
        raise doc.error(
            fields["role"],
            f"{path}.role",
            f"unknown role {role_name!r} (roles: {', '.join(ROLES)})",
        )
    if "sites" not in fields:
        what = "a list of sites" + (" or 'all'" if role.may_see_all else "")
        raise doc.error(value, f"{path}.sites", f"a {role.name} needs its sites ({what})")
    if role.own_device and name == "tuf":  # {prefix}/{site}/tuf/… is the fleet's repository
        raise doc.error(key, path, "'tuf' cannot be a device id: it is the fleet's TUF tree")
    return User(name, role, _sites(doc, fields["sites"], f"{path}.sites", role))


def load_users(path: str | Path) -> UsersFile:
    """Read a users file: ``users: {NAME: {role: ROLE, sites: [SITE, …] | all}}`` and an
    optional ``topic_prefix`` (edgegov).

    Raises:
        FleetError: the file cannot be read or is not such a file; the message names the
            file, line, column and field (``users.acme.role``) and says why.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise FleetError(f"{file}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise FleetError(f"{file}: not UTF-8 text (byte {e.start})") from e
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise FleetError(f"{file}{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    if root is None:
        raise FleetError(f"{file}: empty; expected 'users:' (user -> role -> sites)")
    try:  # the policy loader's YAML cursor: file:line:column: field: reason
        return _users_file(YamlCursor(str(file), text), root, file.name)
    except PolicyError as e:  # its errors are PolicyErrors; this file's are FleetErrors
        raise FleetError(str(e)) from None


def _users_file(doc: YamlCursor, root: yaml.Node, source: str) -> UsersFile:
    top = doc.mapping(root, "", required=["users"], optional=["topic_prefix"])
    prefix = doc.ident(top["topic_prefix"], "topic_prefix") if "topic_prefix" in top else "edgegov"
    node = top["users"]
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise doc.error(node, "users", "expected a non-empty mapping of user name -> role, sites")
    users: dict[str, User] = {}
    for key, value in node.value:
        path = f"users.{key.value}" if isinstance(key, yaml.ScalarNode) else "users"
        if isinstance(key, yaml.ScalarNode) and key.value in users:
            raise doc.error(key, path, f"user {key.value!r} is listed twice")
        user = _user(doc, key, value, path)
        users[user.name] = user
    return UsersFile(prefix, tuple(users.values()), source)
