"""Policy language and bundles: parsing, type checks, positions, validation, digest."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import agent.policy
from agent.errors import PolicyError, PolicySyntaxError
from agent.policy import PolicyBundle, compile_condition, evaluate_rules, load_policy
from agent.policy.parser import Binary, Bool, Conditional, Ident, Int, Number, Unary, parse

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "policies" / "cold-chain.yaml"
CHANNELS = ["temperature", "humidity", "door"]


def test_public_api_is_what_we_export() -> None:
    assert set(agent.policy.__all__) == {
        "BatchResult",
        "Episode",
        "Evaluator",
        "Plan",
        "Channel",
        "Goal",
        "ModelRef",
        "PolicyBundle",
        "Program",
        "Rule",
        "compile_condition",
        "evaluate_rules",
        "load_policy",
    }
    for name in agent.policy.__all__:
        assert hasattr(agent.policy, name)


# -- parser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a || b && c", Binary("||", Ident("a"), Binary("&&", Ident("b"), Ident("c")))),
        (
            "a + b * c < d",
            Binary("<", Binary("+", Ident("a"), Binary("*", Ident("b"), Ident("c"))), Ident("d")),
        ),
        ("a - b - c", Binary("-", Binary("-", Ident("a"), Ident("b")), Ident("c"))),
        ("a < b == c", Binary("==", Binary("<", Ident("a"), Ident("b")), Ident("c"))),
        (
            "a ? b : c ? d : e",
            Conditional(Ident("a"), Ident("b"), Conditional(Ident("c"), Ident("d"), Ident("e"))),
        ),
        (
            "a || b ? c : d",
            Conditional(Binary("||", Ident("a"), Ident("b")), Ident("c"), Ident("d")),
        ),
        ("!!a", Unary("!", Unary("!", Ident("a")))),
        ("-a * b", Binary("*", Unary("-", Ident("a")), Ident("b"))),
        ("(a)", Ident("a")),
        (
            "1 + .5 + 2e3 + 1.5E-2 + 0x1F",
            Binary(
                "+",
                Binary(
                    "+",
                    Binary("+", Binary("+", Int(1), Number(0.5)), Number(2000.0)),
                    Number(0.015),
                ),
                Int(31),
            ),
        ),
        ("true != false // a comment", Binary("!=", Bool(True), Bool(False))),
    ],
)
def test_parser_follows_cel_precedence_and_associativity(text: str, tree: object) -> None:
    assert parse(text) == tree


SYNTAX_ERRORS = [
    # (condition, column of the error (1-based, in the condition), message fragment)
    ("", 1, "condition is empty"),
    ("temperature >=", 15, "unexpected end of condition"),
    ("(temperature > 1.0", 19, "expected ')'"),
    ("temperature > 1.0 humidity", 19, "after a complete expression"),
    ("temperature % 2.0 == 0.0", 13, "'%' operator is not supported"),
    ("abs(temperature, 1.0) < 1.0", 1, "abs() takes one number"),
    ("avg(temperature, 10m) < 1.0", 1, "unknown function 'avg'"),
    ("mean(temperature) < 1.0", 1, "takes a channel name and a duration"),
    ("mean(temperature + 1.0, 10m) < 1.0", 6, "must be a channel name"),
    ("mean(temperature, 10) < 1.0", 1, "takes a channel name and a duration"),
    ("temperature < 10m", 15, "its right operand is duration"),
    ("temperature + 1 > 0.0", 13, "CEL does not convert between int and double"),
    ("temperature in 1.0", 13, "'in' needs a list literal"),
    ("temperature in [1.0, true]", 22, "list element is bool"),
    ('temperature > "5', 15, "unterminated string"),
    ("(temperature > 1.0 ? 1 : 2) == 1", 1, "run-time condition is not supported"),
    ("9223372036854775808 > 1", 1, "out of range for an int"),
    ("temperature = 1.0", 13, "did you mean '=='"),
    ("temperature > 1.0 & door < 1.0", 19, "did you mean '&&'"),
    ("temperature > 1.", 15, "malformed number"),
    ("temperature > 5u", 15, "unsigned integer literals"),
    ("temperature > 1e999", 15, "out of range"),
    ("temperature > 0x" + "f" * 300, 15, "out of range"),
    ("temperature > \u0663", 15, "unexpected character"),  # a non-ASCII digit
    ('temperature > "5"', 15, "its right operand is string"),
    ("!-temperature", 2, "cannot follow"),
    ("door < 0.5 ? true", 18, "expected ':'"),
    ("temperature > null", 15, "'null' is not supported"),
    ("while > 1.0", 1, "reserved word"),
    ("temperature.max > 1.0", 12, "field selection"),
    ("temperature > 1.0 && é", 22, "unexpected character"),
    ("(" * 40 + "door" + ")" * 40 + " < 1.0", 33, "nested too deeply"),
]


@pytest.mark.parametrize(
    ("text", "column", "fragment"), SYNTAX_ERRORS, ids=[t[:30] for t, _, _ in SYNTAX_ERRORS]
)
def test_syntax_errors_point_at_the_problem(text: str, column: int, fragment: str) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        compile_condition(text, CHANNELS)
    assert (info.value.line, info.value.column) == (1, column), str(info.value)
    assert fragment in info.value.reason


CEL_ALPHABET = st.sampled_from(
    ["temperature", "door", "true", "in", "abs", "1", "2.5", ".5e3", "0x1F", "(", ")", "!", "-",
     "+", "*", "/", "<", "<=", "==", "!=", "&&", "||", "?", ":", " ", "\n", "//", "'", ".", "é"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=40), st.lists(CEL_ALPHABET, max_size=25).map("".join)))
def test_any_text_compiles_or_raises_a_policy_syntax_error(text: str) -> None:
    error: PolicySyntaxError | None = None
    try:
        program = compile_condition(text, CHANNELS)
    except PolicySyntaxError as e:
        error = e
    if error is None:
        assert program.n_channels == len(CHANNELS)
    else:  # a position the caret can point at
        assert error.line >= 1
        assert error.column >= 1


TYPE_ERRORS = [
    ("temperature && true", 1, "operator '&&' needs bool operands, but its left operand is double"),
    ("true || humidity", 9, "its right operand is double"),
    ("!temperature", 2, "operator '!' needs a bool operand"),
    ("-(door < 0.5) < 1.0", 2, "operator '-' needs a double operand"),
    ("(door < 0.5) + 1.0 > 0.0", 1, "operator '+' needs double operands"),
    ("(door < 0.5) < true", 1, "operator '<' needs double operands"),
    ("abs(door < 0.5) < 1.0", 5, "abs() needs a number"),
    ("min(temperature, 1) < 1.0", 1, "min() needs numbers of one type"),
    ("duration_true(temperature) > 1.0", 15, "duration_true() needs a bool"),
    ("(door < 0.5) == 1.0", 14, "compares bool with double"),
    ("temperature ? true : false", 1, "condition of '?:' must be bool"),
    ("door < 0.5 ? 1.0 : true", 20, "branches of '?:' have different types"),
    ("temperature + 1.0", 1, "a condition must be bool, but this expression is double"),
    ("tempreature > 2.0", 1, "unknown channel 'tempreature' (did you mean 'temperature'?)"),
]


@pytest.mark.parametrize(
    ("text", "column", "fragment"), TYPE_ERRORS, ids=[t for t, _, _ in TYPE_ERRORS]
)
def test_type_errors_point_at_the_operand(text: str, column: int, fragment: str) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        compile_condition(text, CHANNELS)
    assert (info.value.line, info.value.column) == (1, column), str(info.value)
    assert fragment in info.value.reason


def test_unknown_channel_lists_the_known_ones() -> None:
    with pytest.raises(PolicySyntaxError) as info:
        compile_condition("pressure > 1.0", CHANNELS)
    assert "known channels: temperature, humidity, door" in str(info.value)


def test_compile_condition_maps_positions_into_the_source() -> None:
    full = "a\nb\n  cond: door < 0.5 &&\n    temprature > 1.0\n"
    with pytest.raises(PolicySyntaxError) as info:
        compile_condition(
            "door < 0.5 &&\n    temprature > 1.0",
            CHANNELS,
            source="f.yaml",
            line=3,
            column=9,
            full_text=full,
        )
    err = info.value
    assert (err.source, err.line, err.column) == ("f.yaml", 4, 5)
    assert str(err).startswith("f.yaml:4:5: unknown channel 'temprature'")
    assert str(err).endswith("\n        temprature > 1.0\n        ^")


def test_caret_excerpt_without_full_text() -> None:
    with pytest.raises(PolicySyntaxError) as info:
        compile_condition("door <", CHANNELS, source="x.yaml", line=7, column=16)
    assert str(info.value).splitlines() == [
        "x.yaml:7:22: unexpected end of condition; expected a number, true, false, "
        "a channel name, '(', '!' or '-'",
        "    " + " " * 15 + "door <",
        "    " + " " * 21 + "^",
    ]


# -- bundles: positions of condition errors in the YAML file ------------------------------

BUNDLE_HEAD = """\
policy: {id: p, version: 1, description: test bundle}
goals:
  - {id: g, description: d, stakeholder: s, source: src}
channels:
  - {name: temperature, unit: Cel, range: [-40, 85]}
  - {name: humidity, unit: "%RH", range: [0, 100]}
  - {name: door, unit: bool, range: [0, 1]}
window: {seconds: 5}
rules:
  - id: r0
    goal: g
    severity: info
    explain: e
"""

CONDITION_STYLES = {
    "plain": "    condition: temperature >= 2.0 && humidty <= 8.0\n",
    "plain-multiline": "    condition: temperature >= 2.0 &&\n      humidty <= 8.0\n",
    "single-quoted": "    condition: 'temperature >= 2.0 && humidty <= 8.0'\n",
    "single-quoted-escape": "    condition: 'door < 0.5 || it''s'\n",
    "double-quoted": '    condition: "temperature >= 2.0\\t&& humidty <= 8.0"\n',
    "double-quoted-unicode-escape": '    condition: "temperature\\u0020>= 2.0 && humidty <= 8.0"\n',
    "double-quoted-continued": '    condition: "temperature >= 2.0 && \\\n      humidty <= 8.0"\n',
    "literal": "    condition: |\n      temperature >= 2.0 &&\n        humidty <= 8.0\n",
    "literal-indicator": (
        "    condition: |2-  # comment\n      temperature >= 2.0\n      && humidty <= 8.0\n"
    ),
    "folded": "    condition: >\n      temperature >= 2.0\n      && humidty <= 8.0\n",
    "folded-blank-line": "    condition: >\n      temperature >= 2.0\n\n      && humidty <= 8.0\n",
}


def _marker_position(text: str) -> tuple[int, int]:
    for marker in ("humidty", "''s"):
        if marker in text:
            idx = text.index(marker)
            line = text.count("\n", 0, idx) + 1
            return line, idx - (text.rfind("\n", 0, idx) + 1) + 1
    raise AssertionError("no marker")


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("style", list(CONDITION_STYLES))
def test_condition_errors_are_located_in_the_yaml_file(
    tmp_path: Path, style: str, newline: str
) -> None:
    text = (BUNDLE_HEAD + CONDITION_STYLES[style]).replace("\n", newline)
    path = tmp_path / "bundle.yaml"
    path.write_bytes(text.encode())
    with pytest.raises(PolicySyntaxError) as info:
        load_policy(path)
    err = info.value
    line, column = _marker_position(text.replace("\r\n", "\n"))
    assert (err.line, err.column) == (line, column), str(err)
    assert err.source == str(path)
    message = str(err).splitlines()
    assert message[0].startswith(f"{path}:{line}:{column}: rules[0].condition: ")
    src_line = text.replace("\r\n", "\n").splitlines()[line - 1]
    assert message[1:] == ["    " + src_line, "    " + " " * (column - 1) + "^"]


def test_condition_error_at_end_of_a_plain_scalar(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(BUNDLE_HEAD + "    condition: temperature >=   # trailing comment\n")
    with pytest.raises(PolicySyntaxError) as info:
        load_policy(path)
    assert (info.value.line, info.value.column) == (14, 30)
    assert "unexpected end of condition" in info.value.reason


def test_type_error_in_bundle_is_a_syntax_error_with_position(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(BUNDLE_HEAD + "    condition: temperature && true\n")
    with pytest.raises(PolicySyntaxError) as info:
        load_policy(path)
    assert (info.value.line, info.value.column) == (14, 16)
    assert "rules[0].condition: operator '&&' needs bool operands" in str(info.value)


# -- bundles: schema validation ---------------------------------------------------------


def base_bundle() -> dict[str, Any]:
    return {
        "policy": {"id": "p", "version": 1, "description": "test bundle"},
        "goals": [
            {"id": "g", "description": "d", "stakeholder": "s", "source": "src"},
            {"id": "h", "description": "d", "stakeholder": "s", "source": "src"},
        ],
        "channels": [
            {"name": "temperature", "unit": "Cel", "range": [-40, 85]},
            {"name": "humidity", "unit": "%RH", "range": [0, 100]},
        ],
        "rules": [
            {
                "id": "r0",
                "goal": "g",
                "severity": "critical",
                "condition": "temperature <= 8.0",
                "explain": "too warm",
            },
            {
                "id": "r1",
                "goal": "h",
                "severity": "warning",
                "condition": "humidity <= 65.0",
                "explain": "too humid",
            },
        ],
        "models": [
            {
                "id": "m",
                "file": "m.onnx",
                "sha256": "ab" * 32,
                "opset": 17,
                "features": ["mean(temperature)", "rate(temperature, 10m)", "lag(temperature, 3)"],
                "output": "probability",
                "meaning": "probability of an excursion within 60 s",
                "threshold": 0.5,
                "goal": "g",
                "card": {
                    "training_data": "synthetic traces",
                    "intended_use": "early warning",
                    "limits": "not field-validated",
                },
            },
        ],
        "window": {"seconds": 5},
    }


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()

INVALID = [
    # (mutation, field path in the message, reason fragment)
    (_set("policy", _DELETE), "<top level>", "missing required key 'policy'"),
    (_set("extra", 1), "extra", "unknown key"),
    (_set("policy.version", "one"), "policy.version", "expected an integer, got a string"),
    (_set("policy.version", True), "policy.version", "expected an integer, got a boolean"),
    (_set("policy.version", 0), "policy.version", "must be >= 1"),
    (_set("policy.id", "has space"), "policy.id", "not a valid id"),
    (_set("policy.description", ""), "policy.description", "must not be empty"),
    (_set("goals", []), "goals", "must not be empty"),
    (_set("goals", {"id": "g"}), "goals", "expected a list, got a mapping"),
    (_set("goals.1.id", "g"), "goals[1].id", "duplicate id 'g'"),
    (_set("goals.0.stakeholder", _DELETE), "goals[0]", "missing required key 'stakeholder'"),
    (_set("goals.0.source", 2013), "goals[0].source", "expected a string, got an integer"),
    (_set("channels.1.name", "temperature"), "channels[1].name", "duplicate channel"),
    (_set("channels.1.name", "in"), "channels[1].name", "not usable as a channel name"),
    (_set("channels.1.name", "rel-humidity"), "channels[1].name", "not usable as a channel name"),
    (_set("channels.0.range", [85, -40]), "channels[0].range", "low (85) must be below high (-40)"),
    (_set("channels.0.range", [1, 1]), "channels[0].range", "must be below"),
    (_set("channels.0.range", [1]), "channels[0].range", "expected [low, high]"),
    (_set("channels.0.range", [0, ".inf"]), "channels[0].range[1]", "expected a number"),
    (_set("channels.0.unit", None), "channels[0].unit", "expected a string, got null"),
    (_set("rules.1.id", "r0"), "rules[1].id", "duplicate id 'r0'"),
    (_set("rules.0.goal", "nope"), "rules[0].goal", "unknown goal 'nope'; declared goals: g, h"),
    (_set("rules.0.severity", "fatal"), "rules[0].severity", "not one of info, warning, critical"),
    (_set("rules.0.duration", "10m"), "rules[0].duration", "unknown key"),
    (_set("rules.0.condition", 5), "rules[0].condition", "expected a string, got an integer"),
    (_set("rules", []), "rules", "must not be empty"),
    (_set("models.0.sha256", "AB" * 32), "models[0].sha256", "64 lowercase hex digits"),
    (_set("models.0.sha256", "ab" * 31), "models[0].sha256", "64 lowercase hex digits"),
    (_set("models.0.features", []), "models[0].features", "must not be empty"),
    (
        _set("models.0.features", ["max(humidity)", "max(humidity)"]),
        "models[0].features[1]",
        "duplicate feature",
    ),
    (_set("models.0.threshold", "high"), "models[0].threshold", "expected a number"),
    (_set("models.0.goal", "x"), "models[0].goal", "unknown goal 'x'"),
    (_set("models.0.file", _DELETE), "models[0]", "missing required key 'file'"),
    (_set("models.0.card", _DELETE), "models[0]", "missing required key 'card'"),
    (_set("models.0.meaning", _DELETE), "models[0]", "missing required key 'meaning'"),
    (_set("models.0.opset", 17.5), "models[0].opset", "expected the ai.onnx opset"),
    (_set("models.0.threshold", 1.5), "models[0].threshold", "expected a score from 0 to 1"),
    (_set("models.0.card.limits", " "), "models[0].card.limits", "must not be empty"),
    (_set("models.0.card.owner", "x"), "models[0].card.owner", "unknown key"),
    (
        _set("models.0.features", ["median(temperature)"]),
        "models[0].features[0]",
        "unknown aggregate 'median'",
    ),
    (
        _set("models.0.features", ["mean(pressure)"]),
        "models[0].features[0]",
        "unknown channel 'pressure'",
    ),
    (
        _set("models.0.features", ["mean(temperature, 10)"]),
        "models[0].features[0]",
        "is not a duration",
    ),
    (
        _set("models.0.features", ["lag(temperature, 0)"]),
        "models[0].features[0]",
        "needs K, a whole number from 1 to 256",
    ),
    (_set("window.seconds", 0), "window.seconds", "must be > 0"),
    (_set("window.minutes", 1), "window.minutes", "unknown key"),
    (_set("window", _DELETE), "<top level>", "missing required key 'window'"),
]


@pytest.mark.parametrize(
    ("mutate", "field", "reason"), INVALID, ids=[f"{f}:{r[:25]}" for _, f, r in INVALID]
)
def test_invalid_bundles_name_file_field_and_reason(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], field: str, reason: str
) -> None:
    doc = base_bundle()
    mutate(doc)
    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    assert f": {field}: " in message, message
    assert reason in message, message


def test_the_base_bundle_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump(base_bundle()))
    bundle = load_policy(path)
    assert [r.id for r in bundle.rules] == ["r0", "r1"]


def test_unquoted_digest_of_digits_is_reported_as_a_number(tmp_path: Path) -> None:
    text = yaml.safe_dump(base_bundle()).replace("ab" * 32, "1" * 64)
    path = tmp_path / "b.yaml"
    path.write_text(text)
    with pytest.raises(
        PolicyError,
        match=r"models\[0\]\.sha256: expected a string, got an "
        r"integer \(quote it\)",
    ):
        load_policy(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "policy bundle is empty"),
        ("policy: [unclosed\n", "invalid YAML"),
        ("a: 1\n---\nb: 2\n", "invalid YAML"),
        ("- just\n- a list\n", "expected a mapping, got a list"),
        (
            BUNDLE_HEAD.replace("{id: p,", "{id: p, id: q,") + "    condition: door < 0.5\n",
            r"1:17: policy\.id: duplicate key",
        ),
        (
            BUNDLE_HEAD.replace("window: {", "window: !!python/object:os.system {")
            + "    condition: door < 0.5\n",
            "window: expected a mapping, got a value tagged "
            "tag:yaml.org,2002:python/object:os.system",
        ),
    ],
)
def test_malformed_yaml_is_a_policy_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=fragment) as info:
        load_policy(path)
    assert str(info.value).startswith(str(path))


def test_yaml_error_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("policy:\n  id: p\n  version: [1\n")
    with pytest.raises(PolicyError, match=rf"^{path}:4:1: invalid YAML"):
        load_policy(path)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy bundle"):
        load_policy(tmp_path / "missing.yaml")
    path = tmp_path / "latin1.yaml"
    path.write_bytes("policy: {description: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)


def test_validation_error_carries_the_line(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(
        BUNDLE_HEAD.replace("severity: info", "severity: urgent") + "    condition: door < 0.5\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}:12:15: rules[0].severity: 'urgent' is not one of")


# -- the example bundle ------------------------------------------------------------------


def test_example_bundle_loads_and_evaluates() -> None:
    bundle = load_policy(EXAMPLE)
    assert bundle.id == "cold-chain-gdp"
    assert bundle.version == 1
    assert [c.name for c in bundle.channels] == ["temperature", "humidity", "door"]
    assert bundle.channel_index("door") == 2
    with pytest.raises(KeyError):
        bundle.channel_index("pressure")
    assert {g.id for g in bundle.goals} >= {r.goal for r in bundle.rules}
    assert all(r.severity in ("info", "warning", "critical") for r in bundle.rules)
    assert bundle.rules[0].condition == "temperature >= 2.0 && temperature <= 8.0"
    assert EXAMPLE.read_text().splitlines()[bundle.rules[0].line - 1].strip() == "- id: temp-2-8"
    assert [m.id for m in bundle.models] == ["excursion-risk", "drift-anomaly"]
    model = bundle.models[0]
    assert model.card is not None and model.card.document == "../models/excursion-v1.md"
    assert model.opset == 17 and model.input == "features" and "2-8 °C" in model.meaning
    assert model.path == (EXAMPLE.parent / "../models/excursion-v1.onnx").resolve()
    assert len(model.sha256) == 64
    assert model.threshold == 0.5
    assert len(model.features) == 5
    assert bundle.window_seconds == 5.0
    nan = math.nan
    columns = np.array(
        [
            [5.0, 9.0, nan, 7.0, 1.0],  # temperature
            [50.0, 50.0, 50.0, 70.0, nan],  # humidity
            [0.0, 0.0, 1.0, 1.0, 0.0],  # door
        ]
    )
    result = evaluate_rules(bundle, columns)
    assert result.dtype == np.uint8
    ids = [r.id for r in bundle.rules]
    rows = [ids.index(k) for k in ("temp-2-8", "humidity-max-65", "door-closed-unless-margin")]
    assert result[rows].tolist() == [
        [1, 0, 0, 1, 0],  # temp-2-8 (a missing reading leaves a violation in force)
        [1, 1, 1, 0, 0],  # humidity <= 65
        [1, 1, 2, 0, 1],  # door < 0.5 || temperature <= 6.0
    ]


def test_model_path_resolves_relative_to_the_bundle(tmp_path: Path) -> None:
    sub = tmp_path / "policies"
    sub.mkdir()
    doc = base_bundle()
    doc["models"][0]["file"] = "../models/m.onnx"
    (sub / "b.yaml").write_text(yaml.safe_dump(doc))
    bundle = load_policy(sub / "b.yaml")
    assert bundle.models[0].path == (tmp_path / "models" / "m.onnx").resolve()
    assert bundle.source == (sub / "b.yaml").resolve()


# -- the digest --------------------------------------------------------------------------


def _load_text(tmp_path: Path, text: str, name: str = "b.yaml") -> PolicyBundle:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_policy(path)


def test_digest_is_sha256_of_canonical_json() -> None:
    bundle = load_policy(EXAMPLE)
    canonical = bundle.canonical_bytes()
    assert hashlib.sha256(canonical).hexdigest() == bundle.digest
    doc = json.loads(canonical)
    assert (
        canonical
        == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert doc["rules"][0]["condition"] == "temperature >= 2.0 && temperature <= 8.0"
    assert doc["models"][0]["file"] == "excursion-v1.onnx"


def test_digest_is_stable_under_reformatting(tmp_path: Path) -> None:
    original = EXAMPLE.read_text(encoding="utf-8")
    reference = _load_text(tmp_path, original).digest
    data = yaml.safe_load(original)
    edits = [
        ("range: [-40, 85]", "range: [-40.0, 85.0]"),
        ("channels:", "channels:  # same channels"),
        (
            "condition: temperature >= 2.0 && temperature <= 8.0",
            "condition: |\n      temperature >= 2.0 && temperature <= 8.0",
        ),
        ("condition: humidity <= 65.0", "condition: 'humidity <= 65.0'"),
        ("  seconds: 5", '  "seconds": 5.0'),
    ]
    handwritten = "# reformatted by hand\n" + original
    for old, new in edits:
        assert old in handwritten
        handwritten = handwritten.replace(old, new)
    assert handwritten != original
    variants = [
        yaml.safe_dump(data, sort_keys=True, allow_unicode=True),
        yaml.safe_dump(data, default_flow_style=True, allow_unicode=False),
        json.dumps(data, indent=1),
        handwritten,
    ]
    for text in variants:
        assert _load_text(tmp_path, text).digest == reference, text


@pytest.mark.parametrize(
    "mutate",
    [
        _set("rules.0.condition", "temperature < 8.0"),
        _set("rules.0.severity", "warning"),
        _set("rules.0.explain", "too hot"),
        _set("rules.1.goal", "g"),
        _set("channels.0.range", [-40, 86]),
        _set("models.0.sha256", "cd" * 32),
        _set("models.0.threshold", 0.6),
        _set("goals.0.source", "another clause"),
        _set("policy.version", 2),
        _set("window.seconds", 10),
    ],
)
def test_digest_changes_with_content(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None]
) -> None:
    reference = _load_text(tmp_path, yaml.safe_dump(base_bundle())).digest
    doc = base_bundle()
    mutate(doc)
    assert _load_text(tmp_path, yaml.safe_dump(doc)).digest != reference


def test_digest_changes_with_rule_order(tmp_path: Path) -> None:
    reference = _load_text(tmp_path, yaml.safe_dump(base_bundle())).digest
    doc = base_bundle()
    doc["rules"].reverse()
    assert _load_text(tmp_path, yaml.safe_dump(doc)).digest != reference
