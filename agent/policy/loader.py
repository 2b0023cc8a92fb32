"""Load a policy bundle: YAML in, a validated, compiled :class:`PolicyBundle` out.

Everything is validated at this boundary; a failure raises
:class:`~agent.errors.PolicyError` naming the file, line, column, field path
(``rules[2].goal``) and reason, or :class:`~agent.errors.PolicySyntaxError`
(with a caret excerpt) when a condition does not parse or type-check. The
YAML is read with the safe loader, duplicate keys and unknown keys are
rejected (``yaml_cursor.py``). The content becomes the values of
``model.py``; the rules' conditions are compiled into one evaluation
:class:`~agent.policy.evaluator.Plan` (``compiler.py``).

A bundle may ``extend`` a baseline (a path relative to it): it inherits the
baseline's goals, channels, rules, models, self-tests and window, may add its own, and
may *override* an inherited rule only by tightening it (``layering.py``);
a layer that would loosen one, redefine a goal or channel, or an ``extend``
cycle is refused with an explanation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import ModelError, PolicyError, PolicySyntaxError
from agent.policy.compiler import AggNode, DurationNode, PlanBuilder
from agent.policy.evaluator import ChannelSpec, Plan, RuleSpec
from agent.policy.layering import check_override
from agent.policy.model import (
    CHANNEL_TYPES,
    EXPLAIN_FIELDS,
    PLACEHOLDER,
    SEVERITIES,
    Channel,
    Goal,
    ModelCard,
    ModelRef,
    PolicyBundle,
    Rule,
)
from agent.policy.parser import RESERVED, ConditionError, parse_duration
from agent.policy.self_tests import read_self_tests
from agent.policy.yaml_cursor import NUMERIC_TAGS, YamlCursor
from agent.risk.features import parse_feature
from native import policy_format as fmt

__all__ = ["MAX_BUNDLE_BYTES", "MAX_LAYERS", "load_policy"]

MAX_BUNDLE_BYTES = 1 << 20
#: deepest chain of ``extend`` layers
MAX_LAYERS = 8

_CHANNEL = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]{0,63}")  # a CEL identifier
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _strip(text: str | None) -> str | None:
    return None if text is None else text.strip()


def load_policy(path: str | Path, *, _chain: tuple[Path, ...] = ()) -> PolicyBundle:
    """Load, validate and compile a policy bundle (and the baselines it extends).

    Raises:
        PolicyError: unreadable file, invalid YAML, invalid content, a
            loosening layer or an ``extend`` cycle.
        PolicySyntaxError: a rule condition does not parse or type-check.
    """
    label = str(path)
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, resolved))
        raise PolicyError(f"{label}: cyclic extend: {cycle}")
    if len(_chain) >= MAX_LAYERS:
        raise PolicyError(f"{label}: more than {MAX_LAYERS} layers of extend")
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
    except RecursionError:
        raise PolicyError(f"{label}: invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise PolicyError(f"{where}: invalid YAML: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise PolicyError(f"{label}: invalid YAML: {e}") from e
    if root is None:
        raise PolicyError(f"{label}: policy bundle is empty")
    return _Loader(YamlCursor(label, text), resolved, (*_chain, resolved)).bundle(root)


@dataclass
class _RawRule:
    """A rule as read from YAML, before it is compiled against the merged schema."""

    id: str
    goal: str
    severity: str
    condition: str
    explain: str
    line: int
    for_ms: int
    clear_condition: str | None
    clear_ms: int
    measure: str | None
    peak: str
    origin: str
    nodes: dict[str, yaml.Node] = field(default_factory=dict)
    doc: YamlCursor | None = None
    path: str = ""
    explain_within_ms: int | None = None

    @property
    def where(self) -> str:
        return self.path or f"rules '{self.id}'"


class _Loader:
    def __init__(self, doc: YamlCursor, source: Path, chain: tuple[Path, ...]) -> None:
        self.doc = doc
        self.source = source
        self.chain = chain
        self.extending = False

    def bundle(self, root: yaml.Node) -> PolicyBundle:
        d = self.doc
        sections = ("goals", "channels", "rules", "window", "models", "self_tests")
        top = d.mapping(root, "", ("policy",), (*sections, "extend"))
        parent = self.parent(top["extend"]) if "extend" in top else None
        self.extending = parent is not None
        if parent is None:
            for name in ("goals", "channels", "rules", "window"):
                if name not in top:
                    raise d.error(root, "<top level>", f"missing required key '{name}'")
        meta = d.mapping(top["policy"], "policy", ("id", "version", "description"))
        version = d.integer(meta["version"], "policy.version")
        if version < 1:
            raise d.error(meta["version"], "policy.version", "must be >= 1")
        goals = list(parent.goals) if parent else []
        if "goals" in top:
            goals += self.goals(top["goals"], parent)
        channels = list(parent.channels) if parent else []
        if "channels" in top:
            channels += self.channels(top["channels"], parent)
        goal_ids = [g.id for g in goals]
        models = list(parent.models) if parent else []
        if "models" in top:
            models += self.models(top["models"], goal_ids, parent, [c.name for c in channels])
        raw_rules = self.raw_rules(top["rules"], goal_ids) if "rules" in top else []
        if parent is not None:
            seconds = parent.window_seconds
        if "window" in top:
            window = d.mapping(top["window"], "window", ("seconds",))
            new = d.number(window["seconds"], "window.seconds")
            if new <= 0:
                raise d.error(window["seconds"], "window.seconds", "must be > 0")
            if parent is not None and new > parent.window_seconds:
                raise d.error(
                    window["seconds"],
                    "window.seconds",
                    f"a layer may not lengthen the baseline's attestation window "
                    f"({parent.window_seconds:g} s) to {new:g} s",
                )
            seconds = new
        rules, plan, used = self.compile_rules(raw_rules, parent, channels, models)
        self_tests = list(parent.self_tests) if parent else []
        if "self_tests" in top:
            self_tests += read_self_tests(
                d, top["self_tests"], channels, goal_ids, self_tests, self.duration
            )
        fields: dict[str, Any] = {
            "id": d.ident(meta["id"], "policy.id"),
            "version": version,
            "description": d.string(meta["description"], "policy.description"),
            "goals": tuple(goals),
            "channels": tuple(channels),
            "rules": rules,
            "models": tuple(models),
            "window_seconds": seconds,
            "source": self.source,
            "extends": (
                ({"id": parent.id, "version": parent.version, "digest": parent.digest},)
                + parent.extends
                if parent
                else ()
            ),
            "used_channels": frozenset(used[0]),
            "used_models": frozenset(used[1]),
            "self_tests": tuple(self_tests),
        }
        unsigned = PolicyBundle(digest="", **fields)
        digest = hashlib.sha256(unsigned.canonical_bytes()).hexdigest()
        plan = dataclasses.replace(plan, digest=digest)
        return PolicyBundle(digest=digest, plan=plan, **fields)

    def parent(self, node: yaml.Node) -> PolicyBundle:
        ref = self.doc.string(node, "extend")
        target = (self.source.parent / ref).resolve()
        try:
            return load_policy(target, _chain=self.chain)
        except PolicyError as e:
            raise PolicyError(
                f"{self.doc.label}:{node.start_mark.line + 1}: extend: baseline {ref!r} "
                f"is not usable: {e}"
            ) from None

    def compile_rules(
        self,
        raw: list[_RawRule],
        parent: PolicyBundle | None,
        channels: list[Channel],
        models: list[ModelRef],
    ) -> tuple[tuple[Rule, ...], Plan, tuple[set[str], set[str]]]:
        builder = PlanBuilder(
            [c.name for c in channels],
            bool_channels=[c.name for c in channels if c.type == "bool"],
            models=[m.id for m in models],
        )
        inherited = {r.id: r for r in parent.rules} if parent else {}
        merged: list[_RawRule] = []
        by_id: dict[str, int] = {}
        for pr in parent.rules if parent else ():
            by_id[pr.id] = len(merged)
            merged.append(
                _RawRule(
                    pr.id, pr.goal, pr.severity, pr.condition, pr.explain, pr.line, pr.for_ms,
                    pr.clear_condition, pr.clear_ms, pr.measure, pr.peak, pr.origin,
                    explain_within_ms=pr.explain_within_ms,
                )
            )  # fmt: skip
        for r in raw:
            if r.id in inherited:
                check_override(self.doc.label, r, inherited[r.id])
                merged[by_id[r.id]] = r
            else:
                by_id[r.id] = len(merged)
                merged.append(r)
        specs: list[tuple[_RawRule, list[Any], list[Any] | None, int]] = []
        for r in merged:
            cond = self.check(builder, r, "condition", r.condition, "bool")
            clear = None
            if r.clear_condition is not None:
                clear = self.check(builder, r, "clear.condition", r.clear_condition, "bool")
            measure_row = -1
            if r.measure is not None:
                instrs = self.check(builder, r, "measure", r.measure, "double")
                if len(instrs) != 1 or instrs[0][0] != fmt.LOAD_CHAN:
                    raise self.rule_error(
                        r, "measure", "must be a channel or a window function such as max(x, 10m)"
                    )
                measure_row = int(instrs[0][1])
            else:
                first = next(
                    (op for op in cond if op[0] == fmt.LOAD_CHAN and op[1] < len(channels)), None
                )
                measure_row = int(first[1]) if first else -1
            specs.append((r, cond, clear, measure_row))
        rules = []
        rule_specs = []
        for r, cond, clear, measure_row in specs:
            program = builder.program(cond, r.condition)
            clear_prog = builder.program(clear, r.clear_condition or "") if clear else None
            rules.append(
                Rule(
                    r.id, r.goal, r.severity, r.condition.strip(), r.explain, r.line, program,
                    r.for_ms, _strip(r.clear_condition), r.clear_ms, _strip(r.measure), r.peak,
                    r.origin, r.explain_within_ms,
                    tuple(channels[i].name for i in _channel_rows(cond, channels, builder)),
                )
            )  # fmt: skip
            rule_specs.append(
                RuleSpec(
                    r.id, program, clear_prog, r.for_ms, r.clear_ms, measure_row, r.peak == "max"
                )
            )
        plan = Plan(
            channels=tuple(ChannelSpec(c.name, c.low, c.high, c.type == "bool") for c in channels),
            models=tuple(m.id for m in models),
            derived=tuple(builder.derived),
            duration_programs=tuple(
                builder.program(n.instrs, n.text)
                for n in builder.derived
                if isinstance(n, DurationNode)
            ),
            rules=tuple(rule_specs),
            n_rows=builder.n_rows,
        )
        return tuple(rules), plan, (builder.used_channels, builder.used_models)

    def check(self, builder: PlanBuilder, r: _RawRule, key: str, text: str, want: str) -> list[Any]:
        try:
            return builder.check(text, want)
        except ConditionError as e:
            node = r.nodes.get(key)
            doc = r.doc or self.doc
            if node is None:  # inherited text: point into the rule's own file
                raise PolicyError(f"{r.origin}:{r.line}: {r.where}.{key}: {e.message}") from None
            assert isinstance(node, yaml.ScalarNode)
            line, column = doc.position(node, e.offset)
            raise PolicySyntaxError(
                f"{r.where}.{key}: {e.message}",
                source=doc.label,
                line=line,
                column=column,
                text=doc.text,
            ) from None

    def rule_error(self, r: _RawRule, key: str, reason: str) -> PolicyError:
        node = r.nodes.get(key)
        if node is None:
            return PolicyError(f"{r.origin}:{r.line}: {r.where}.{key}: {reason}")
        return (r.doc or self.doc).error(node, f"{r.where}.{key}", reason)

    def unique(self, node: yaml.Node, path: str, value: str, seen: set[str]) -> None:
        if value in seen:
            raise self.doc.error(node, path, f"duplicate id {value!r}")
        seen.add(value)

    def goals(self, node: yaml.Node, parent: PolicyBundle | None) -> list[Goal]:
        d = self.doc
        seen: set[str] = {g.id for g in parent.goals} if parent else set()
        inherited = set(seen)
        out: list[Goal] = []
        for i, item in enumerate(d.sequence(node, "goals", nonempty=parent is None)):
            p = f"goals[{i}]"
            m = d.mapping(
                item,
                p,
                ("id", "description", "stakeholder", "source"),
                ("min_completeness", "explain_within"),
            )
            gid = d.ident(m["id"], f"{p}.id")
            if gid in inherited:
                raise d.error(
                    m["id"], f"{p}.id", f"goal {gid!r} is set by the baseline; a layer cannot "
                    "redefine it (add a goal with a new id instead)"
                )  # fmt: skip
            self.unique(m["id"], f"{p}.id", gid, seen)
            floor = None
            if "min_completeness" in m:
                floor = d.number(m["min_completeness"], f"{p}.min_completeness")
                if not 0.0 <= floor <= 1.0:
                    raise d.error(
                        m["min_completeness"],
                        f"{p}.min_completeness",
                        f"must be a share between 0 and 1 (0.75 = 75 %), got {floor:g}",
                    )
            out.append(
                Goal(
                    gid,
                    d.string(m["description"], f"{p}.description"),
                    d.string(m["stakeholder"], f"{p}.stakeholder"),
                    d.string(m["source"], f"{p}.source"),
                    floor,
                    self.explain_within(m, p),
                )
            )
        return out

    def channels(self, node: yaml.Node, parent: PolicyBundle | None) -> list[Channel]:
        d = self.doc
        seen: set[str] = {c.name for c in parent.channels} if parent else set()
        inherited = set(seen)
        out: list[Channel] = []
        for i, item in enumerate(d.sequence(node, "channels", nonempty=parent is None)):
            p = f"channels[{i}]"
            m = d.mapping(item, p, ("name", "unit", "range"), ("type", "calibration"))
            name = d.string(m["name"], f"{p}.name")
            if not _CHANNEL.fullmatch(name) or name in RESERVED:
                raise d.error(
                    m["name"],
                    f"{p}.name",
                    f"{name!r} is not usable as a channel name: it must be a CEL identifier "
                    "(letters, digits, '_'; not starting with a digit) and not a reserved word",
                )
            if name in inherited:
                raise d.error(
                    m["name"], f"{p}.name", f"channel {name!r} is declared by the baseline; "
                    "a layer cannot redefine its unit, type or valid range"
                )  # fmt: skip
            if name in seen:
                raise d.error(m["name"], f"{p}.name", f"duplicate channel {name!r}")
            seen.add(name)
            ctype = d.string(m["type"], f"{p}.type") if "type" in m else "double"
            if ctype not in CHANNEL_TYPES:
                raise d.error(
                    m["type"], f"{p}.type", f"{ctype!r} is not one of {', '.join(CHANNEL_TYPES)}"
                )
            bounds = d.sequence(m["range"], f"{p}.range")
            if len(bounds) != 2:
                raise d.error(m["range"], f"{p}.range", "expected [low, high]")
            low = d.number(bounds[0], f"{p}.range[0]")
            high = d.number(bounds[1], f"{p}.range[1]")
            if not low < high:
                raise d.error(
                    m["range"], f"{p}.range", f"low ({low:g}) must be below high ({high:g})"
                )
            calibration = False
            if "calibration" in m:
                if d.string(m["calibration"], f"{p}.calibration") != "required":
                    raise d.error(
                        m["calibration"],
                        f"{p}.calibration",
                        "the only value is 'required' (a valid calibration certificate for "
                        "this channel's sensor, or its goals are not quality-assured); "
                        "leave it out when none is required",
                    )
                calibration = True
            out.append(
                Channel(name, d.string(m["unit"], f"{p}.unit"), low, high, ctype, calibration)
            )
        return out

    def raw_rules(self, node: yaml.Node, goal_ids: list[str]) -> list[_RawRule]:
        d = self.doc
        seen: set[str] = set()
        out: list[_RawRule] = []
        for i, item in enumerate(d.sequence(node, "rules", nonempty=not self.extending)):
            p = f"rules[{i}]"
            m = d.mapping(
                item,
                p,
                ("id", "goal", "severity", "condition", "explain"),
                ("for", "clear", "measure", "peak", "explain_within"),
            )
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
            nodes: dict[str, yaml.Node] = {}
            condition = self.expression(m["condition"], f"{p}.condition")
            nodes["condition"] = m["condition"]
            explain = d.string(m["explain"], f"{p}.explain")
            for name in PLACEHOLDER.findall(explain):
                if name not in EXPLAIN_FIELDS:
                    raise d.error(
                        m["explain"],
                        f"{p}.explain",
                        f"unknown placeholder {{{name}}}; allowed: "
                        + ", ".join(f"{{{f}}}" for f in EXPLAIN_FIELDS),
                    )
            for_ms = self.duration(m["for"], f"{p}.for") if "for" in m else 0
            clear_condition, clear_ms = None, 0
            if "clear" in m:
                cm = d.mapping(m["clear"], f"{p}.clear", (), ("condition", "for"))
                if not cm:
                    raise d.error(m["clear"], f"{p}.clear", "give a condition, a for, or both")
                if "condition" in cm:
                    clear_condition = self.expression(cm["condition"], f"{p}.clear.condition")
                    nodes["clear.condition"] = cm["condition"]
                if "for" in cm:
                    clear_ms = self.duration(cm["for"], f"{p}.clear.for")
            measure = None
            if "measure" in m:
                measure = self.expression(m["measure"], f"{p}.measure")
                nodes["measure"] = m["measure"]
            peak = d.string(m["peak"], f"{p}.peak") if "peak" in m else "max"
            if peak not in ("max", "min"):
                raise d.error(m["peak"], f"{p}.peak", "must be max or min")
            out.append(
                _RawRule(
                    rid, goal, severity, condition, explain, item.start_mark.line + 1, for_ms,
                    clear_condition, clear_ms, measure, peak, self.doc.label, nodes, self.doc, p,
                    self.explain_within(m, p),
                )
            )  # fmt: skip
        return out

    def explain_within(self, m: dict[str, yaml.Node], p: str) -> int | None:
        """``explain_within`` (a goal's or a rule's): the deadline for an explanation."""
        if "explain_within" not in m:
            return None
        ms = self.duration(m["explain_within"], f"{p}.explain_within")
        if ms <= 0:
            raise self.doc.error(m["explain_within"], f"{p}.explain_within", "must be > 0")
        return ms

    def expression(self, node: yaml.Node, path: str) -> str:
        """A CEL expression's raw text (not stripped, so offsets match the file)."""
        self.doc.string(node, path)
        assert isinstance(node, yaml.ScalarNode)
        return str(node.value)

    def duration(self, node: yaml.Node, path: str) -> int:
        d = self.doc
        if isinstance(node, yaml.ScalarNode) and node.tag in NUMERIC_TAGS:
            raise d.error(node, path, "give a unit: 30s, 10m, 1h (a bare number is ambiguous)")
        text = d.string(node, path)
        ms = parse_duration(text)
        if ms is None:
            raise d.error(node, path, f"{text!r} is not a duration such as 500ms, 30s, 10m, 1h")
        return ms

    def goal_ref(self, node: yaml.Node, path: str, goal_ids: list[str]) -> str:
        goal = self.doc.string(node, path)
        if goal not in goal_ids:
            raise self.doc.error(
                node, path, f"unknown goal {goal!r}; declared goals: {', '.join(goal_ids)}"
            )
        return goal

    def text(self, node: yaml.Node, path: str) -> str:
        value = self.doc.string(node, path).strip()
        if not value:
            raise self.doc.error(node, path, "must not be empty")
        return value

    def card(self, node: yaml.Node, path: str) -> ModelCard:
        m = self.doc.mapping(
            node, path, ("training_data", "intended_use", "limits"), ("evaluation", "document")
        )
        return ModelCard(
            training_data=self.text(m["training_data"], f"{path}.training_data"),
            intended_use=self.text(m["intended_use"], f"{path}.intended_use"),
            limits=self.text(m["limits"], f"{path}.limits"),
            evaluation=self.text(m["evaluation"], f"{path}.evaluation")
            if "evaluation" in m
            else "",
            document=self.text(m["document"], f"{path}.document") if "document" in m else "",
        )

    def models(
        self,
        node: yaml.Node,
        goal_ids: list[str],
        parent: PolicyBundle | None,
        channel_names: Sequence[str],
    ) -> list[ModelRef]:
        d = self.doc
        seen: set[str] = {m.id for m in parent.models} if parent else set()
        out: list[ModelRef] = []
        for i, item in enumerate(d.sequence(node, "models")):
            p = f"models[{i}]"
            m = d.mapping(
                item,
                p,
                (
                    "id",
                    "file",
                    "sha256",
                    "opset",
                    "features",
                    "output",
                    "meaning",
                    "threshold",
                    "goal",
                    "card",
                ),
                ("input",),
            )
            mid = d.ident(m["id"], f"{p}.id")
            self.unique(m["id"], f"{p}.id", mid, seen)
            file = d.string(m["file"], f"{p}.file")
            sha = d.string(m["sha256"], f"{p}.sha256")
            if not _SHA256.fullmatch(sha):
                raise d.error(m["sha256"], f"{p}.sha256", "expected 64 lowercase hex digits")
            opset = d.number(m["opset"], f"{p}.opset")
            if opset != int(opset) or not 7 <= opset <= 30:
                raise d.error(m["opset"], f"{p}.opset", "expected the ai.onnx opset, e.g. 17")
            features: list[str] = []
            for j, f in enumerate(d.sequence(m["features"], f"{p}.features", nonempty=True)):
                name = d.string(f, f"{p}.features[{j}]")
                if name in features:
                    raise d.error(f, f"{p}.features[{j}]", f"duplicate feature {name!r}")
                try:
                    feature = parse_feature(name)
                except ModelError as e:
                    raise d.error(f, f"{p}.features[{j}]", str(e)) from e
                if feature.channel not in channel_names:
                    raise d.error(
                        f,
                        f"{p}.features[{j}]",
                        f"unknown channel {feature.channel!r}; declared channels: "
                        f"{', '.join(channel_names)}",
                    )
                features.append(name)
            threshold = d.number(m["threshold"], f"{p}.threshold")
            if not 0.0 <= threshold <= 1.0:
                raise d.error(m["threshold"], f"{p}.threshold", "expected a score from 0 to 1")
            out.append(
                ModelRef(
                    id=mid,
                    path=(self.source.parent / file).resolve(),
                    sha256=sha,
                    features=tuple(features),
                    output=d.string(m["output"], f"{p}.output"),
                    threshold=threshold,
                    goal=self.goal_ref(m["goal"], f"{p}.goal", goal_ids),
                    opset=int(opset),
                    input=d.string(m["input"], f"{p}.input") if "input" in m else "features",
                    meaning=self.text(m["meaning"], f"{p}.meaning"),
                    card=self.card(m["card"], f"{p}.card"),
                )
            )
        return out


def _channel_rows(instrs: Sequence[Any], channels: Sequence[Channel], b: PlanBuilder) -> list[int]:
    """The channel rows a compiled condition reads, in order, once each: loaded directly
    or through a derived row (a window function of a channel, a duration of a condition)."""
    n = len(channels)
    by_row = {node.row: node for node in b.derived}
    out: list[int] = []

    def visit(ops: Sequence[Any]) -> None:
        for op in ops:
            if op[0] not in (fmt.LOAD_CHAN, fmt.LOAD_BCHAN):
                continue
            row = int(op[1])
            node = by_row.get(row)
            if row < n:
                out.append(row)
            elif isinstance(node, AggNode):
                visit([(fmt.LOAD_CHAN, node.source)])
            elif isinstance(node, DurationNode):
                visit(node.instrs)

    visit(instrs)
    return list(dict.fromkeys(out))
