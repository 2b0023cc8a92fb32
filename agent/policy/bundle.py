"""Policy bundles: load a YAML bundle into frozen, typed, compiled objects.

A bundle (PRODUCT.md §4) declares the *goals* (outcomes, who is accountable,
which clause they come from), the *channels* (name, unit, valid range; their
order is the row order of the ``columns`` input), the *rules* (the means: a
CEL condition serving a goal), the *risk models* (pinned by SHA-256) and the
attestation *window*. Example: ``configs/policies/cold-chain.yaml``.

Everything is validated at this boundary; a failure raises
:class:`~agent.errors.PolicyError` naming the file, line, column, field path
(``rules[2].goal``) and reason, or :class:`~agent.errors.PolicySyntaxError`
(with a caret excerpt) when a condition does not parse or type-check. The
YAML is read with the safe loader, duplicate keys and unknown keys are
rejected.

The *canonical form* (what gets signed) is deterministic JSON of the parsed
content, so reformatting the YAML (comments, key order, quoting, block
scalars, ``85`` vs ``85.0``) does not change ``digest``, while any change to
the content does.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from agent.errors import PolicyError, PolicySyntaxError
from agent.policy.compiler import compile_expr, offset_to_line_col
from agent.policy.parser import RESERVED, ConditionError
from native.policy import Program, evaluate_many

__all__ = [
    "Channel",
    "Goal",
    "ModelRef",
    "PolicyBundle",
    "Rule",
    "evaluate_rules",
    "load_policy",
]

#: Identifies the canonical form; bump if its shape changes.
CANONICAL_FORMAT = "edgegov-policy/1"
SEVERITIES = ("info", "warning", "critical")
MAX_BUNDLE_BYTES = 1 << 20

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CHANNEL = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]{0,63}")  # a CEL identifier
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Goal:
    """A measurable outcome, who answers for it, and where it comes from."""

    id: str
    description: str
    stakeholder: str
    source: str


@dataclass(frozen=True)
class Channel:
    """A sensor channel: CEL identifier, unit, valid range ``[low, high]``."""

    name: str
    unit: str
    low: float
    high: float


@dataclass(frozen=True)
class Rule:
    """A compiled rule; ``line`` is where the rule starts in the bundle file."""

    id: str
    goal: str
    severity: str
    condition: str
    explain: str
    line: int
    program: Program = field(compare=False, repr=False)


@dataclass(frozen=True)
class ModelRef:
    """A risk model pinned by digest; ``path`` resolved relative to the bundle."""

    id: str
    path: Path
    sha256: str
    features: tuple[str, ...]
    output: str
    threshold: float
    goal: str


@dataclass(frozen=True)
class PolicyBundle:
    id: str
    version: int
    description: str
    goals: tuple[Goal, ...]
    channels: tuple[Channel, ...]
    rules: tuple[Rule, ...]
    models: tuple[ModelRef, ...]
    window_seconds: float
    digest: str
    source: Path

    def channel_index(self, name: str) -> int:
        """Row of channel ``name`` in the ``columns`` input; KeyError if undeclared."""
        for i, ch in enumerate(self.channels):
            if ch.name == name:
                return i
        raise KeyError(name)

    def canonical_bytes(self) -> bytes:
        """Deterministic UTF-8 JSON of the bundle content (what ``digest`` hashes)."""
        doc = {
            "format": CANONICAL_FORMAT,
            "policy": {"id": self.id, "version": self.version, "description": self.description},
            "goals": [
                {
                    "id": g.id,
                    "description": g.description,
                    "stakeholder": g.stakeholder,
                    "source": g.source,
                }
                for g in self.goals
            ],
            "channels": [
                {"name": c.name, "unit": c.unit, "range": [c.low, c.high]} for c in self.channels
            ],
            "rules": [
                {
                    "id": r.id,
                    "goal": r.goal,
                    "severity": r.severity,
                    "condition": r.condition,
                    "explain": r.explain,
                }
                for r in self.rules
            ],
            "models": [
                {
                    "id": m.id,
                    "file": m.path.name,
                    "sha256": m.sha256,
                    "features": list(m.features),
                    "output": m.output,
                    "threshold": m.threshold,
                    "goal": m.goal,
                }
                for m in self.models
            ],
            "window": {"seconds": self.window_seconds},
        }
        return json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")


def evaluate_rules(bundle: PolicyBundle, columns: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Evaluate every rule: uint8 (n_rules, n_readings); 1 holds, 0 violated, 2 error.

    ``columns`` is float64 (n_channels, n_readings) in ``bundle.channels``
    order, NaN where a value is missing.
    """
    return evaluate_many([r.program for r in bundle.rules], columns)


# -- YAML node access with positions ------------------------------------------

_TAG_NAMES = {
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:seq": "a list",
    "tag:yaml.org,2002:map": "a mapping",
}
_STR = "tag:yaml.org,2002:str"
_NUMERIC = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Doc:
    """The bundle text plus helpers that read typed values out of YAML nodes."""

    def __init__(self, label: str, text: str) -> None:
        self.label = label
        self.text = text
        self._construct = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node, path: str, reason: str) -> PolicyError:
        m = node.start_mark
        return PolicyError(f"{self.label}:{m.line + 1}:{m.column + 1}: {path}: {reason}")

    def kind(self, node: yaml.Node) -> str:
        return _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")

    def mapping(
        self, node: yaml.Node, path: str, required: Sequence[str], optional: Sequence[str] = ()
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode) or node.tag != "tag:yaml.org,2002:map":
            raise self.error(node, path, f"expected a mapping, got {self.kind(node)}")
        allowed = list(required) + list(optional)
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag != _STR:
                raise self.error(key, path, f"keys must be strings, got {self.kind(key)}")
            sub = f"{path}.{key.value}" if path else key.value
            if key.value in out:
                raise self.error(key, sub, "duplicate key")
            if key.value not in allowed:
                raise self.error(key, sub, f"unknown key (allowed: {', '.join(allowed)})")
            out[key.value] = value
        for name in required:
            if name not in out:
                raise self.error(node, path or "<top level>", f"missing required key '{name}'")
        return out

    def sequence(self, node: yaml.Node, path: str, *, nonempty: bool = False) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode) or node.tag != "tag:yaml.org,2002:seq":
            raise self.error(node, path, f"expected a list, got {self.kind(node)}")
        if nonempty and not node.value:
            raise self.error(node, path, "must not be empty")
        return list(node.value)

    def string(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            hint = " (quote it)" if isinstance(node, yaml.ScalarNode) else ""
            raise self.error(node, path, f"expected a string, got {self.kind(node)}{hint}")
        value = node.value.strip()
        if not value:
            raise self.error(node, path, "must not be empty")
        return str(value)

    def ident(self, node: yaml.Node, path: str) -> str:
        value = self.string(node, path)
        if not _ID.fullmatch(value):
            raise self.error(
                node,
                path,
                f"{value!r} is not a valid id (letters, digits, '.', '_', '-'; "
                "starts with a letter or digit; at most 64 characters)",
            )
        return value

    def number(self, node: yaml.Node, path: str) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _NUMERIC:
            raise self.error(node, path, f"expected a number, got {self.kind(node)}")
        value = float(self._construct.construct_object(node))
        if not math.isfinite(value):
            raise self.error(node, path, "must be a finite number")
        return value

    def integer(self, node: yaml.Node, path: str) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.error(node, path, f"expected an integer, got {self.kind(node)}")
        return int(self._construct.construct_object(node))

    def position(self, node: yaml.ScalarNode, offset: int) -> tuple[int, int]:
        """File (line, column) of character ``offset`` of a scalar's value."""
        index = _source_index(node, self.text, offset)
        if index is None:
            return node.start_mark.line + 1, node.start_mark.column + 1
        return offset_to_line_col(self.text, index)


def _source_index(node: yaml.ScalarNode, text: str, offset: int) -> int | None:
    """Map an offset in a scalar's value to an index in the file text.

    Walks the raw scalar alongside its value: plain and quoted scalars fold
    line breaks into spaces and drop indentation, quoted ones add quote and
    escape characters, block scalars start on the line after their header.
    Returns None if the two cannot be aligned (then the caller points at the
    start of the scalar).
    """
    value, style = node.value, node.style
    p, end = node.start_mark.index, node.end_mark.index
    if style in ("'", '"'):
        p += 1
    elif style in ("|", ">"):
        m = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]").search(text, p, end)
        p = m.end() if m else end
    positions: list[int] = []
    for ch in value[: offset + 1]:
        while True:
            if p >= end:
                return None
            r = text[p]
            if style == '"' and r == "\\":
                nxt = text[p + 1] if p + 1 < end else ""
                if nxt in ("\r", "\n"):  # escaped line break: joins the lines
                    p += 2
                    continue
                positions.append(p)
                p += {"x": 4, "u": 6, "U": 10}.get(nxt, 2)
                break
            if r == ch or (ch in " \n" and r in "\r\n"):  # same char, or a folded break
                positions.append(p)
                p += 1
                break
            if r in " \t\r\n" or (style == "'" and r == "'"):
                p += 1
                continue
            return None
    if offset < len(value):
        return positions[offset]
    return positions[-1] + 1 if positions else p


# -- loading -------------------------------------------------------------------


def load_policy(path: str | Path) -> PolicyBundle:
    """Load, validate and compile a policy bundle.

    Raises:
        PolicyError: unreadable file, invalid YAML, or invalid content.
        PolicySyntaxError: a rule condition does not parse or type-check.
    """
    label = str(path)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PolicyError(f"{label}: cannot read policy bundle: {e.strerror or e}") from e
    if len(raw) > MAX_BUNDLE_BYTES:
        raise PolicyError(f"{label}: policy bundle larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{label}: not UTF-8 text (byte {e.start})") from e
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise PolicyError(f"{where}: invalid YAML: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise PolicyError(f"{label}: invalid YAML: {e}") from e
    if root is None:
        raise PolicyError(f"{label}: policy bundle is empty")
    return _Loader(_Doc(label, text), path.resolve()).bundle(root)


class _Loader:
    def __init__(self, doc: _Doc, source: Path) -> None:
        self.doc = doc
        self.source = source

    def bundle(self, root: yaml.Node) -> PolicyBundle:
        d = self.doc
        top = d.mapping(root, "", ("policy", "goals", "channels", "rules", "window"), ("models",))
        meta = d.mapping(top["policy"], "policy", ("id", "version", "description"))
        version = d.integer(meta["version"], "policy.version")
        if version < 1:
            raise d.error(meta["version"], "policy.version", "must be >= 1")
        goals = self.goals(top["goals"])
        channels = self.channels(top["channels"])
        goal_ids = [g.id for g in goals]
        rules = self.rules(top["rules"], goal_ids, channels)
        models = self.models(top["models"], goal_ids) if "models" in top else ()
        window = d.mapping(top["window"], "window", ("seconds",))
        seconds = d.number(window["seconds"], "window.seconds")
        if seconds <= 0:
            raise d.error(window["seconds"], "window.seconds", "must be > 0")
        fields: dict[str, Any] = {
            "id": d.ident(meta["id"], "policy.id"),
            "version": version,
            "description": d.string(meta["description"], "policy.description"),
            "goals": goals,
            "channels": channels,
            "rules": rules,
            "models": models,
            "window_seconds": seconds,
            "source": self.source,
        }
        unsigned = PolicyBundle(digest="", **fields)
        digest = hashlib.sha256(unsigned.canonical_bytes()).hexdigest()
        return PolicyBundle(digest=digest, **fields)

    def unique(self, node: yaml.Node, path: str, value: str, seen: set[str]) -> None:
        if value in seen:
            raise self.doc.error(node, path, f"duplicate id {value!r}")
        seen.add(value)

    def goals(self, node: yaml.Node) -> tuple[Goal, ...]:
        d = self.doc
        seen: set[str] = set()
        out: list[Goal] = []
        for i, item in enumerate(d.sequence(node, "goals", nonempty=True)):
            p = f"goals[{i}]"
            m = d.mapping(item, p, ("id", "description", "stakeholder", "source"))
            gid = d.ident(m["id"], f"{p}.id")
            self.unique(m["id"], f"{p}.id", gid, seen)
            out.append(
                Goal(
                    gid,
                    *(d.string(m[k], f"{p}.{k}") for k in ("description", "stakeholder", "source")),
                )
            )
        return tuple(out)

    def channels(self, node: yaml.Node) -> tuple[Channel, ...]:
        d = self.doc
        seen: set[str] = set()
        out: list[Channel] = []
        for i, item in enumerate(d.sequence(node, "channels", nonempty=True)):
            p = f"channels[{i}]"
            m = d.mapping(item, p, ("name", "unit", "range"))
            name = d.string(m["name"], f"{p}.name")
            if not _CHANNEL.fullmatch(name) or name in RESERVED:
                raise d.error(
                    m["name"],
                    f"{p}.name",
                    f"{name!r} is not usable as a channel name: it must be a CEL identifier "
                    "(letters, digits, '_'; not starting with a digit) and not a reserved word",
                )
            if name in seen:
                raise d.error(m["name"], f"{p}.name", f"duplicate channel {name!r}")
            seen.add(name)
            bounds = d.sequence(m["range"], f"{p}.range")
            if len(bounds) != 2:
                raise d.error(m["range"], f"{p}.range", "expected [low, high]")
            low = d.number(bounds[0], f"{p}.range[0]")
            high = d.number(bounds[1], f"{p}.range[1]")
            if not low < high:
                raise d.error(
                    m["range"], f"{p}.range", f"low ({low:g}) must be below high ({high:g})"
                )
            out.append(Channel(name, d.string(m["unit"], f"{p}.unit"), low, high))
        return tuple(out)

    def rules(
        self, node: yaml.Node, goal_ids: list[str], channels: tuple[Channel, ...]
    ) -> tuple[Rule, ...]:
        d = self.doc
        seen: set[str] = set()
        out: list[Rule] = []
        names = [c.name for c in channels]
        for i, item in enumerate(d.sequence(node, "rules", nonempty=True)):
            p = f"rules[{i}]"
            m = d.mapping(item, p, ("id", "goal", "severity", "condition", "explain"))
            rid = d.ident(m["id"], f"{p}.id")
            self.unique(m["id"], f"{p}.id", rid, seen)
            goal = self.goal_ref(m["goal"], f"{p}.goal", goal_ids)
            severity = d.string(m["severity"], f"{p}.severity")
            if severity not in SEVERITIES:
                raise d.error(
                    m["severity"],
                    f"{p}.severity",
                    f"{severity!r} is not one of {', '.join(SEVERITIES)}",
                )
            condition = d.string(m["condition"], f"{p}.condition")
            program = self.compile(m["condition"], f"{p}.condition", names)
            out.append(
                Rule(
                    rid,
                    goal,
                    severity,
                    condition,
                    d.string(m["explain"], f"{p}.explain"),
                    item.start_mark.line + 1,
                    program,
                )
            )
        return tuple(out)

    def compile(self, node: yaml.Node, path: str, channels: list[str]) -> Program:
        assert isinstance(node, yaml.ScalarNode)
        try:
            # The raw value, not the stripped one, so offsets match the file.
            return compile_expr(node.value, channels)
        except ConditionError as e:
            line, column = self.doc.position(node, e.offset)
            raise PolicySyntaxError(
                f"{path}: {e.message}",
                source=self.doc.label,
                line=line,
                column=column,
                text=self.doc.text,
            ) from None

    def goal_ref(self, node: yaml.Node, path: str, goal_ids: list[str]) -> str:
        goal = self.doc.string(node, path)
        if goal not in goal_ids:
            raise self.doc.error(
                node, path, f"unknown goal {goal!r}; declared goals: {', '.join(goal_ids)}"
            )
        return goal

    def models(self, node: yaml.Node, goal_ids: list[str]) -> tuple[ModelRef, ...]:
        d = self.doc
        seen: set[str] = set()
        out: list[ModelRef] = []
        for i, item in enumerate(d.sequence(node, "models")):
            p = f"models[{i}]"
            m = d.mapping(
                item, p, ("id", "file", "sha256", "features", "output", "threshold", "goal")
            )
            mid = d.ident(m["id"], f"{p}.id")
            self.unique(m["id"], f"{p}.id", mid, seen)
            file = d.string(m["file"], f"{p}.file")
            sha = d.string(m["sha256"], f"{p}.sha256")
            if not _SHA256.fullmatch(sha):
                raise d.error(m["sha256"], f"{p}.sha256", "expected 64 lowercase hex digits")
            features: list[str] = []
            for j, f in enumerate(d.sequence(m["features"], f"{p}.features", nonempty=True)):
                name = d.string(f, f"{p}.features[{j}]")
                if name in features:
                    raise d.error(f, f"{p}.features[{j}]", f"duplicate feature {name!r}")
                features.append(name)
            out.append(
                ModelRef(
                    id=mid,
                    path=(self.source.parent / file).resolve(),
                    sha256=sha,
                    features=tuple(features),
                    output=d.string(m["output"], f"{p}.output"),
                    threshold=d.number(m["threshold"], f"{p}.threshold"),
                    goal=self.goal_ref(m["goal"], f"{p}.goal", goal_ids),
                )
            )
        return tuple(out)
