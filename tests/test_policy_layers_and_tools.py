"""Layered bundles, bad input, lint, `policy eval`, the example bundles and risk()."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.errors import PolicyError, PolicySyntaxError
from agent.policy import load_policy
from agent.policy.csv_eval import replay
from agent.policy.lint import lint
from agent.risk.engine import RiskEngine
from agent.risk.onnx_model import load_declared

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "configs" / "policies"

BASE = {
    "policy": {"id": "base", "version": 1, "description": "regulatory baseline"},
    "goals": [
        {"id": "cold", "description": "2-8 °C", "stakeholder": "QP", "source": "GDP 9.2"},
        {"id": "dry", "description": "humidity", "stakeholder": "QP", "source": "GDP 3.2"},
    ],
    "channels": [
        {"name": "t", "unit": "Cel", "range": [-40, 85]},
        {"name": "h", "unit": "%RH", "range": [0, 100]},
    ],
    "rules": [
        {
            "id": "t-range",
            "goal": "cold",
            "severity": "warning",
            "condition": "t >= 2.0 && t <= 8.0",
            "for": "5m",
            "explain": "out of range",
        },
        {
            "id": "h-max",
            "goal": "dry",
            "severity": "info",
            "condition": "h <= 65.0",
            "explain": "wet",
        },
    ],
    "window": {"seconds": 10},
}


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def layer(tmp_path: Path, rules: list[dict], **extra: object) -> Path:
    write(tmp_path / "base.yaml", BASE)
    doc = {"extend": "base.yaml", "policy": {"id": "site", "version": 1, "description": "site"}}
    doc.update(extra)
    if rules:
        doc["rules"] = rules
    return write(tmp_path / "site.yaml", doc)


def rule(**kw: object) -> dict:
    r = dict(BASE["rules"][0])
    r.update(kw)
    return r


# -- layering -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        {"condition": "t >= 2.5 && t <= 7.5"},  # thresholds tightened
        {"condition": "(t >= 2.0 && t <= 8.0) && h <= 90.0"},  # a conjunct added
        {"condition": "t > 2.0 && t < 8.0"},  # strict instead of inclusive
        {"for": "1m", "severity": "critical"},
        {"clear": {"for": "30s"}},
    ],
)
def test_a_layer_may_tighten_an_inherited_rule(tmp_path: Path, override: dict) -> None:
    bundle = load_policy(layer(tmp_path, [rule(**override)]))
    assert [r.id for r in bundle.rules] == ["t-range", "h-max"]
    assert bundle.extends[0]["id"] == "base"
    assert bundle.extends[0]["digest"] == load_policy(tmp_path / "base.yaml").digest
    assert bundle.rules[0].origin.endswith("site.yaml")
    assert bundle.rules[1].origin.endswith("base.yaml")


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"condition": "t >= 1.0 && t <= 8.0"}, "does not provably imply"),
        ({"condition": "t >= 2.0 || t <= 8.0"}, "does not provably imply"),
        ({"condition": "t <= 8.0"}, "does not provably imply"),
        ({"severity": "info"}, "lowers the severity"),
        ({"for": "10m"}, "longer than the baseline"),
        ({"goal": "dry"}, "moves the rule"),
        ({"clear": {"condition": "t <= 9.0"}}, "clear condition"),
    ],
)
def test_a_loosening_layer_is_refused_with_an_explanation(
    tmp_path: Path, override: dict, reason: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(layer(tmp_path, [rule(**override)]))
    msg = str(info.value)
    assert "site.yaml" in msg and "'t-range'" in msg and "base.yaml" in msg
    assert "may only tighten" in msg and reason in msg


def test_a_layer_adds_goals_channels_and_rules(tmp_path: Path) -> None:
    extra = {
        "goals": [{"id": "door", "description": "d", "stakeholder": "ops", "source": "SOP"}],
        "channels": [{"name": "door", "unit": "bool", "range": [0, 1], "type": "bool"}],
    }
    new = {"id": "door-2min", "goal": "door", "severity": "warning", "explain": "open",
           "condition": "duration_true(door) <= 120.0"}  # fmt: skip
    bundle = load_policy(layer(tmp_path, [new], **extra))
    assert [c.name for c in bundle.channels] == ["t", "h", "door"]
    assert [r.id for r in bundle.rules] == ["t-range", "h-max", "door-2min"]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"goals": [dict(BASE["goals"][0])]}, "cannot redefine it"),
        ({"channels": [{"name": "t", "unit": "K", "range": [0, 400]}]}, "cannot redefine"),
        ({"window": {"seconds": 60}}, "may not lengthen"),
    ],
)
def test_a_layer_cannot_redefine_inherited_goals_channels_or_window(
    tmp_path: Path, extra: dict, reason: str
) -> None:
    with pytest.raises(PolicyError, match=reason):
        load_policy(layer(tmp_path, [], **extra))


def test_cyclic_and_missing_extend_are_refused(tmp_path: Path) -> None:
    a = dict(BASE, extend="b.yaml")
    write(tmp_path / "a.yaml", a)
    write(tmp_path / "b.yaml", dict(BASE, extend="a.yaml"))
    with pytest.raises(PolicyError, match=r"cyclic extend: a.yaml -> b.yaml -> a.yaml"):
        load_policy(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", dict(BASE, extend="nowhere.yaml"))
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "c.yaml")


# -- bad input never crashes ----------------------------------------------------------


def test_a_10mb_policy_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(BASE) + "#" * (10 * 1024 * 1024) + "\n")
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(path)


def test_deeply_nested_yaml_and_expressions_are_errors_not_crashes(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("policy: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(PolicyError):
        load_policy(path)
    deep = dict(BASE, rules=[rule(condition="!" * 5000 + "(t > 1.0)")])
    with pytest.raises(PolicySyntaxError):
        load_policy(write(tmp_path / "e.yaml", deep))
    long = dict(BASE, rules=[rule(condition=" && ".join(["t > 1.0"] * 3000))])
    with pytest.raises(PolicySyntaxError, match="longer than"):
        load_policy(write(tmp_path / "f.yaml", long))


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("condition", "mean(t, 10m) > 1.0 && nope(t) < 1.0", "unknown function 'nope'"),
        ("condition", "tt > 1.0", "unknown channel 'tt'"),
        ("condition", "t > 1", None),  # int beside double in a comparison is fine (CEL)
        ("condition", "t + 1 > 1.0", "CEL does not convert"),
        ("condition", 'risk("m") < 0.5', "unknown risk model"),
        ("for", "10 minutes", "is not a duration"),
        ("for", 600, "give a unit"),
        ("explain", "at {when}", "unknown placeholder {when}"),
        ("measure", "t > 1.0", "must be double"),
        ("measure", "t + 1.0", "must be a channel or a window function"),
        ("peak", "median", "must be max or min"),
    ],
)
def test_rule_field_errors_name_the_field(
    tmp_path: Path, field: str, value: object, fragment: str | None
) -> None:
    path = write(tmp_path / "b.yaml", dict(BASE, rules=[rule(**{field: value})]))
    if fragment is None:
        load_policy(path)
        return
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert fragment in str(info.value)
    assert "b.yaml:" in str(info.value)


def test_condition_type_error_has_line_column_and_caret(tmp_path: Path) -> None:
    path = write(tmp_path / "b.yaml", dict(BASE, rules=[rule(condition="mean(t, 10m) && true")]))
    with pytest.raises(PolicySyntaxError) as info:
        load_policy(path)
    e = info.value
    line = path.read_text().splitlines()[e.line - 1]
    assert line[e.column - 1 :].startswith("mean(t, 10m)")
    assert str(e).endswith("^")


def test_out_of_range_readings_are_findings_not_values(tmp_path: Path) -> None:
    bundle = load_policy(write(tmp_path / "b.yaml", dict(BASE, rules=[rule(**{"for": "0s"})])))
    ev = bundle.evaluator()
    res = ev.run(np.array([0, 1000]), np.array([[5.0, 120.0], [50.0, 50.0]]))
    assert res.out_of_range == {"t": 1, "h": 0}
    assert res.codes[0].tolist() == [1, 2]  # 120 °C is not used: not evaluable, not "too hot"


# -- lint -------------------------------------------------------------------------------


def test_lint_reports_unreachable_duplicate_orphan_goals_and_unused_channels(
    tmp_path: Path,
) -> None:
    doc = dict(BASE)
    doc["channels"] = BASE["channels"] + [{"name": "spare", "unit": "V", "range": [0, 5]}]
    doc["goals"] = BASE["goals"] + [
        {"id": "orphan", "description": "x", "stakeholder": "y", "source": "z"}
    ]
    doc["rules"] = [
        *BASE["rules"],
        {"id": "always", "goal": "cold", "severity": "info", "condition": "1.0 < 2.0 || t > 1.0",
         "explain": "x"},
        {"id": "never", "goal": "cold", "severity": "info", "condition": "1 > 2", "explain": "x"},
        {"id": "again", "goal": "dry", "severity": "info", "condition": "h<=65.0", "explain": "x"},
    ]  # fmt: skip
    kinds = {(f.kind, f.subject) for f in lint(load_policy(write(tmp_path / "b.yaml", doc)))}
    assert kinds == {
        ("unreachable", "rule always"),
        ("always-violated", "rule never"),
        ("duplicate", "rule again"),
        ("goal-without-rule", "goal orphan"),
        ("unused-channel", "channel spare"),
    }


@pytest.mark.parametrize("name", ["cold-chain", "stack-emissions", "machine-zone"])
def test_example_bundles_load_and_lint_clean(name: str, run_cli) -> None:
    bundle = load_policy(EXAMPLES / f"{name}.yaml")
    assert lint(bundle) == []
    r = run_cli("policy", "check", str(EXAMPLES / f"{name}.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["digest"] == bundle.digest


def test_policy_check_exit_code_1_on_findings(tmp_path: Path, run_cli) -> None:
    doc = dict(BASE, rules=[*BASE["rules"], rule(id="x", condition="true")])
    r = run_cli("policy", "check", str(write(tmp_path / "b.yaml", doc)))
    assert r.returncode == 1
    assert "unreachable: rule x: can never be violated" in r.stdout


# -- policy eval over a recording -----------------------------------------------------


def test_policy_eval_reports_episodes_of_an_hourly_average(tmp_path: Path, run_cli) -> None:
    # stack emissions: NOx at 80 for 1 h, then 150 for 2 h, then 80; one reading a minute
    rows = ["timestamp_ms,nox,co,o2,flue_temp"]
    t0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    for m in range(4 * 60):
        nox = 150.0 if 60 <= m < 180 else 80.0
        co = "" if 200 <= m < 230 else "20"  # 30 min of CO missing: availability < 75 %
        rows.append(f"{t0 + m * 60_000},{nox},{co},5.0,180")
    csv = tmp_path / "stack.csv"
    csv.write_text("\n".join(rows) + "\n")
    r = run_cli("policy", "eval", str(EXAMPLES / "stack-emissions.yaml"), "--readings", str(csv),
                "--json")  # fmt: skip
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    by_rule = {x["rule"]: x for x in doc["rules"]}
    (ep,) = by_rule["nox-hourly-elv"]["episodes"]
    # the hourly mean (80 * (60 - k) + 150 * k) / 60 passes 100 once k = 18 minutes were at 150
    assert ep["start_ms"] == t0 + (60 + 17) * 60_000
    # ... and is back at or below 100 once only 17 of the last 60 minutes were at 150
    assert ep["end_ms"] == t0 + (180 + 42) * 60_000
    assert ep["peak"] == pytest.approx(150.0)
    assert "NOx hourly average above 100" in ep["explain"]
    assert by_rule["co-data-availability"]["violated"] > 0
    assert by_rule["nox-data-availability"]["violated"] == 0
    text = run_cli("policy", "eval", str(EXAMPLES / "stack-emissions.yaml"), "--readings", str(csv))
    assert "nox-hourly-elv" in text.stdout and "episode" in text.stdout


def test_policy_eval_rejects_a_bad_recording(tmp_path: Path, run_cli) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("timestamp,temprature\n0,5\n")
    r = run_cli("policy", "eval", str(EXAMPLES / "cold-chain.yaml"), "--readings", str(csv))
    assert r.returncode == 2
    assert "unknown column 'temprature'" in r.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a model's scores need the risk: prefix; the bare id is not silently dropped
        ("timestamp,near-miss\n0,0.5\n", ":1: unknown column 'near-miss'"),
        ("timestamp,speed,speed\n0,1,2\n", ":1: column 'speed' appears twice"),
        # the line named is the file's, blank lines included
        ("timestamp_ms,speed\n0,1\n\n\n2000,1\n1000,1\n", ":6: timestamps go backwards"),
    ],
)
def test_policy_eval_names_the_line_and_column_at_fault(
    tmp_path: Path, run_cli, text: str, message: str
) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    r = run_cli("policy", "eval", str(EXAMPLES / "machine-zone.yaml"), "--readings", str(csv))
    assert r.returncode == 2 and f"{csv}{message}" in r.stderr, r.stderr


def test_policy_eval_refuses_a_bare_epoch_number_and_names_the_cell(
    tmp_path: Path, run_cli
) -> None:
    csv = tmp_path / "epoch.csv"
    csv.write_text("door,timestamp,temperature,humidity\n0,2026-01-01T00:00:00Z,5,50\n"
                   "0,1767225601000,5,50\n")  # fmt: skip
    r = run_cli("policy", "eval", str(EXAMPLES / "cold-chain.yaml"), "--readings", str(csv))
    assert r.returncode == 2 and r.stdout == ""
    assert (
        f"{csv}:3: column 2 (timestamp): '1767225601000' is a bare number (seconds or "
        "milliseconds?); write ISO 8601 with a time zone, e.g. 2026-01-01T00:00:00Z, or name "
        "the column timestamp_ms for Unix time in milliseconds"
    ) in r.stderr, r.stderr
    # ... and the accepted forms give the same verdict: ISO 8601 (any offset) or timestamp_ms
    iso = tmp_path / "iso.csv"
    iso.write_text("timestamp,temperature,humidity,door\n2026-01-01T00:00:00Z,9,50,0\n"
                   "2026-01-01T01:00:01.000+01:00,9,50,0\n")  # fmt: skip
    ms = tmp_path / "ms.csv"
    ms.write_text("timestamp_ms,temperature,humidity,door\n1767225600000,9,50,0\n"
                  "1767225601000,9,50,0\n")  # fmt: skip
    docs = []
    for f in (iso, ms):
        r = run_cli("policy", "eval", str(EXAMPLES / "cold-chain.yaml"), "--readings", str(f),
                    "--json")  # fmt: skip
        assert r.returncode == 1, r.stderr
        docs.append(json.loads(r.stdout)["rules"])
    assert docs[0] == docs[1]
    temp = next(x for x in docs[0] if x["rule"] == "temp-2-8")
    assert temp["first_violation_ms"] == 1767225600000 and temp["violated"] == 2


def test_policy_eval_help_states_the_accepted_time_formats(run_cli) -> None:
    r = run_cli("policy", "eval", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "timestamp ISO 8601 with a time zone: 2026-01-01T00:00:00Z" in text
    assert "timestamp_ms Unix time in integer milliseconds" in text
    assert "a bare number is refused" in text


def test_policy_eval_warns_about_a_channel_the_rules_use_that_has_no_column(
    tmp_path: Path, run_cli
) -> None:
    csv = tmp_path / "no-humidity.csv"
    csv.write_text("timestamp,temperature,door\n2026-01-01T00:00:00Z,5,0\n")
    r = run_cli("policy", "eval", str(EXAMPLES / "cold-chain.yaml"), "--readings", str(csv))
    assert r.returncode == 0, r.stderr
    (warning,) = [x for x in r.stderr.splitlines() if "warning" in x]
    assert warning == (
        f"edgegov: warning: {csv}:1: no column 'humidity', a channel the policy's rules use: "
        "all its readings count as missing"
    )
    assert "temp-2-8" in r.stdout  # the evaluation still ran
    full = tmp_path / "full.csv"
    full.write_text("timestamp,temperature,door,humidity\n2026-01-01T00:00:00Z,5,0,50\n")
    r = run_cli("policy", "eval", str(EXAMPLES / "cold-chain.yaml"), "--readings", str(full))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_policy_check_takes_several_files_and_checks_all_of_them(tmp_path: Path, run_cli) -> None:
    good = EXAMPLES / "cold-chain.yaml"
    finding = write(tmp_path / "finding.yaml", dict(BASE, rules=[*BASE["rules"],
                    rule(id="x", condition="true")]))  # fmt: skip
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n")
    files = [str(good), str(broken), str(finding)]
    r = run_cli("policy", "check", *files)
    assert r.returncode == 2, r.stderr  # one did not load: an input error, the others checked
    assert f"{good}: OK - policy cold-chain-gdp" in r.stdout
    assert f"{finding}: 1 finding(s)" in r.stdout
    assert "unreachable: rule x: can never be violated" in r.stdout
    assert r.stderr.startswith(f"edgegov: error: {broken}")
    r = run_cli("policy", "check", *files, "--json")
    assert r.returncode == 2
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["file"] for d in docs] == files
    assert docs[0]["findings"] == [] and docs[0]["digest"] == load_policy(good).digest
    assert docs[1]["error"].startswith(str(broken)) and "id" not in docs[1]
    assert [f["kind"] for f in docs[2]["findings"]] == ["unreachable"]
    r = run_cli("policy", "check", str(good), str(finding))
    assert r.returncode == 1  # findings, nothing failed to load
    r = run_cli("policy", "check", str(good), str(EXAMPLES / "machine-zone.yaml"))
    assert r.returncode == 0 and r.stdout.count(": OK - policy") == 2


def test_replay_of_cold_chain_explains_a_reportable_excursion(tmp_path: Path) -> None:
    bundle = load_policy(EXAMPLES / "cold-chain.yaml")
    rows = ["timestamp_ms,temperature,humidity,door"]
    for s in range(0, 3600, 10):  # 20 min above 8 °C from 10 min on
        temp = 11.0 if 600 <= s < 1800 else 5.0
        rows.append(f"{s * 1000},{temp},50,0")
    (tmp_path / "r.csv").write_text("\n".join(rows))
    reports, _ = replay(bundle, tmp_path / "r.csv")
    rep = {r.rule_id: r for r in reports}
    (ep,) = rep["excursion-over-10min"].episodes
    assert (ep.start_ms, ep.end_ms, ep.peak) == (600_000, 1_860_000, 11.0)  # cleared 1 min after
    assert rep["excursion-over-10min"].first_violation_ms == 1_200_000  # 10 min after it began
    assert (
        "Reportable excursion from 1970-01-01T00:10:00+00:00"
        in rep["excursion-over-10min"].explanations[0]
    )
    assert rep["temp-2-8"].violated == 120


# -- risk() end to end with onnxruntime -----------------------------------------------


def test_risk_scores_from_onnxruntime_drive_a_rule() -> None:
    bundle = load_policy(EXAMPLES / "machine-zone.yaml")
    (ref,) = bundle.models
    model = load_declared(ref)
    names = [c.name for c in bundle.channels]
    n = 50
    ts = np.arange(n, dtype=np.int64) * 200
    calm = np.vstack([np.full(n, 5.0), np.full(n, 0.05), np.zeros(n), np.zeros(n), np.full(n, 5.0)])
    k = [r.id for r in bundle.rules].index("risk-below-0.8")
    results = {}
    for label, speed in (("slow", 0.05), ("fast", 2.5)):
        cols = calm.copy()
        cols[1] = speed
        cols[0] = 0.5 if label == "fast" else 5.0  # a person close to a fast robot
        (result,) = RiskEngine([model], names).score([(ts, cols)])[0]
        assert result.score is not None and 0.0 <= result.score <= 1.0
        score = result.score
        res = bundle.evaluator().run(ts, cols, {ref.id: score})
        results[label] = (score, res.codes[k])
    score, codes = results["fast"]
    assert score >= 0.8 and results["slow"][0] < 0.8
    assert set(codes.tolist()) == {0}
    assert set(results["slow"][1].tolist()) == {1}  # not moving: holds whatever the score
    missing = bundle.evaluator().run(ts, calm, {})  # the model did not score: an error
    assert set(missing.codes[k].tolist()) == {1}  # ... absorbed: max(speed, 10s) < 0.1 holds
    moving = calm.copy()
    moving[1] = 1.0
    assert set(bundle.evaluator().run(ts, moving, {}).codes[k].tolist()) == {2}
    assert not math.isnan(score)
