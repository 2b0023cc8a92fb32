"""Risk engine: features across windows, batching, out-of-distribution flags and bad models,
all on real onnxruntime sessions of models made here or shipped in configs/models."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.errors import ModelError
from agent.risk.engine import RiskEngine
from agent.risk.features import FeaturePlan, History, parse_feature
from agent.risk.onnx_model import load_declared, load_model, model_opset
from tests import onnx_util

REPO = Path(__file__).resolve().parents[1]
EXCURSION = REPO / "configs" / "models" / "excursion-v1.onnx"
EXCURSION_FEATURES = (
    "mean(temperature)",
    "min(temperature)",
    "max(temperature)",
    "stddev(temperature)",
    "mean(humidity)",
)
CHANNELS = ["temperature", "humidity"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def windows(n_windows: int, per_window: int = 100, hz: float = 20.0, seed: int = 7) -> list:
    """Consecutive windows of a slowly rising temperature with noise; 1 % readings missing."""
    rng = np.random.default_rng(seed)
    step = int(1000 / hz)
    out = []
    for w in range(n_windows):
        ts = (w * per_window + np.arange(per_window, dtype=np.int64)) * step
        t = 5.0 + ts / 60_000 * 0.3 + rng.normal(0, 0.05, per_window)
        h = 50.0 + rng.normal(0, 0.5, per_window)
        cols = np.vstack([t, h])
        cols[rng.random(cols.shape) < 0.01] = np.nan
        out.append((ts, np.ascontiguousarray(cols)))
    return out


# --- the feature language --------------------------------------------------------------------


def test_feature_specs_parse_durations_and_lags() -> None:
    f = parse_feature("rate(temperature, 5m)")
    assert (f.agg, f.channel, f.dur_ms, f.lags, f.width) == ("rate", "temperature", 300_000, 0, 1)
    g = parse_feature("lag(humidity, 3)")
    assert (g.lags, g.width, g.inputs()) == (
        3,
        3,
        ["lag(humidity, 3)[0]", "lag(humidity, 3)[1]", "lag(humidity, 3)[2]"],
    )
    assert parse_feature("completeness(door, 500ms)").dur_ms == 500
    for bad, why in [
        ("mean(temperature, 10)", "is not a duration"),
        ("mean(temperature, 2d)", "at most 1d"),
        ("lag(temperature)", "needs K"),
        ("lag(temperature, 999)", "needs K"),
        ("median(temperature)", "unknown aggregate 'median'"),
        ("mean(temperature", "is not of the form"),
    ]:
        with pytest.raises(ModelError, match=why):
            parse_feature(bad)


def test_trailing_features_reach_into_earlier_windows_through_the_history() -> None:
    """delta(t, 10s) over a window of 5 s needs the window before it: the history has it."""
    plan = FeaturePlan(["delta(temperature, 10s)", "delta(temperature)", "lag(temperature, 2)"],
                       {"temperature": 0})  # fmt: skip
    hist = History(1, keep_ms=plan.history_ms, keep_rows=4 * plan.history_rows + 16)
    ts1 = np.arange(0, 5000, 1000, dtype=np.int64)
    ts2 = ts1 + 5000
    a = hist.append(ts1, np.array([[0.0, 1.0, 2.0, 3.0, 4.0]]))
    hist.trim()
    b = hist.append(ts2, np.array([[5.0, 6.0, 7.0, 8.0, 9.0]]))
    x = plan.compute(hist.ts, hist.cols, np.array([b[0]]), np.array([b[1]]))
    # trailing 10 s at t=9 s: readings after -1 s, i.e. all ten: 9 - 0
    assert x.tolist() == [[9.0, 4.0, 9.0, 8.0]]
    assert a == (0, 5)


def test_history_keeps_only_what_features_can_need_and_clamps_a_clock_stepping_back() -> None:
    hist = History(1, keep_ms=2000, keep_rows=3)
    hist.append(np.arange(0, 10_000, 1000, dtype=np.int64), np.zeros((1, 10)))
    hist.trim()
    assert hist.ts.tolist() == [7000, 8000, 9000]  # > 9000 - 2000, or the last 3 rows
    hist.append(np.array([8500, 12_000], dtype=np.int64), np.zeros((1, 2)))
    assert hist.ts.tolist() == [7000, 8000, 9000, 9000, 12_000]


# --- the engine on real sessions -------------------------------------------------------------


def test_batched_scores_equal_window_by_window_scores_bit_for_bit() -> None:
    model = load_model("excursion-risk", EXCURSION, sha(EXCURSION), EXCURSION_FEATURES)
    data = windows(40)
    batched = RiskEngine([model], CHANNELS).score(data)
    one = RiskEngine([model], CHANNELS)
    single = [one.score([w])[0] for w in data]
    assert batched == single
    assert all(r[0].score is not None for r in batched)


def test_engine_gives_a_reason_instead_of_a_score_when_a_window_cannot_be_scored() -> None:
    model = load_model("excursion-risk", EXCURSION, sha(EXCURSION), EXCURSION_FEATURES)
    (ts, cols), _ = windows(2)
    no_humidity = cols.copy()
    no_humidity[1] = np.nan
    res = RiskEngine([model], CHANNELS).score(
        [(ts, no_humidity), (np.empty(0, np.int64), np.empty((2, 0)))]
    )
    assert res[0][0].score is None and "mean(humidity)" in res[0][0].reason
    assert res[1][0].score is None and res[1][0].reason == "no readings in window"


def test_inputs_outside_the_training_ranges_are_named_per_window(tmp_path: Path) -> None:
    feats = ["mean(temperature)", "lag(humidity, 2)"]
    ranges = [(2.0, 8.0), (40.0, 60.0), (40.0, 60.0)]
    path = tmp_path / "m.onnx"
    digest = onnx_util.save(
        onnx_util.logistic([0.5, 0.01, 0.01], -3.0, features=feats, ranges=ranges), path
    )
    model = load_model("m", path, digest, feats)
    inside = (np.arange(4, dtype=np.int64), np.array([[5.0, 5, 5, 5], [50.0, 50, 50, 50]]))
    hot = (np.arange(4, 8, dtype=np.int64), np.array([[9.0, 9, 9, 9], [50.0, 50, 50, 61]]))
    res = RiskEngine([model], CHANNELS).score([inside, hot])
    assert res[0][0].ood == ()
    assert res[1][0].ood == ("mean(temperature)", "lag(humidity, 2)[0]")
    assert res[1][0].score is not None  # flagged, still scored: the auditor sees both


def test_a_model_without_ranges_is_not_assessed_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.onnx"
    digest = onnx_util.save(onnx_util.logistic([1.0]), path)
    with caplog.at_level(logging.WARNING, "edgegov.risk"):
        model = load_model("m", path, digest, ["mean(temperature)"])
    assert model.ranges is None
    assert "carries no feature_ranges metadata" in caplog.text
    (ts, cols), _ = windows(2)
    assert RiskEngine([model], CHANNELS).score([(ts, cols)])[0][0].ood is None


# --- bad models: each one refused or its output discarded, with the model and reason named --


def test_opset_is_read_from_the_file_and_checked_against_the_declaration(tmp_path: Path) -> None:
    assert model_opset(EXCURSION.read_bytes()) == {"": 17}
    path = tmp_path / "m.onnx"
    digest = onnx_util.save(onnx_util.logistic([1.0], opset=13), path)
    assert model_opset(path.read_bytes()) == {"": 13}
    with pytest.raises(ModelError, match=r"model m: file .* uses ai.onnx opset 13; the policy"):
        load_model("m", path, digest, ["mean(temperature)"], opset=17)
    load_model("m", path, digest, ["mean(temperature)"], opset=13)


def test_a_truncated_file_is_refused_even_when_its_digest_was_pinned(tmp_path: Path) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(EXCURSION.read_bytes()[:900])
    with pytest.raises(ModelError, match=r"model excursion-risk: file .*cut\.onnx is not an ONNX"):
        load_model("excursion-risk", path, sha(path), EXCURSION_FEATURES, opset=17)
    with pytest.raises(ModelError, match=r"model excursion-risk: onnxruntime cannot load .*cut"):
        load_model("excursion-risk", path, sha(path), EXCURSION_FEATURES)


def test_wrong_input_name_and_shape_are_refused_naming_both_sides(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    digest = onnx_util.save(onnx_util.logistic([1.0, 1.0], input_name="x"), path)
    with pytest.raises(ModelError, match="has input 'x'; the policy declares input 'features'"):
        load_model("m", path, digest, ["mean(temperature)", "max(temperature)"])
    digest = onnx_util.save(onnx_util.logistic([1.0, 1.0]), path)
    with pytest.raises(
        ModelError, match=r"shape \['N', 2\]; the policy's features fill .*\[N, 3\]"
    ):
        load_model("m", path, digest, ["mean(temperature)", "lag(temperature, 2)"])


def test_ranges_metadata_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    digest = onnx_util.save(onnx_util.logistic([1.0, 1.0], ranges=[(0.0, 1.0)]), path)
    with pytest.raises(ModelError, match="feature_ranges must hold 2 pairs"):
        load_model("m", path, digest, ["mean(temperature)", "max(temperature)"])


@pytest.mark.parametrize(
    "requested",
    [
        ["CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"],
        ["NoSuchExecutionProvider"],  # CPU is appended as the last resort
    ],
)
def test_execution_providers_come_in_order_and_missing_ones_are_named(
    requested: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    available = ort.get_available_providers()
    with caplog.at_level(logging.WARNING, "edgegov.risk"):
        model = load_model(
            "excursion-risk", EXCURSION, sha(EXCURSION), EXCURSION_FEATURES, providers=requested
        )
    expected = next((p for p in requested if p in available), "CPUExecutionProvider")
    assert model.provider == expected
    missing = [p for p in requested if p not in available]
    for p in missing:  # each one named, with what this onnxruntime has instead
        assert p in caplog.text
    if missing:
        assert "not available in this onnxruntime" in caplog.text
    (ts, cols), _ = windows(2)
    (r,) = RiskEngine([model], CHANNELS).score([(ts, cols)])[0]
    assert r.provider == expected and r.score is not None  # the attestation names it


def test_a_model_that_throws_at_run_time_gives_no_score_and_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "t.onnx"
    digest = onnx_util.save(onnx_util.throws_above(4), path)
    model = load_model("t", path, digest, ["max(temperature)"])  # the trial run passes
    ok = (np.arange(3, dtype=np.int64), np.array([[1.0, 2.0, 3.0], [50.0, 50.0, 50.0]]))
    bad = (np.arange(3, 6, dtype=np.int64), np.array([[1.0, 2.0, 9.0], [50.0, 50.0, 50.0]]))
    engine = RiskEngine([model], CHANNELS)
    ((r1,),) = engine.score([ok])
    ((r2,),) = engine.score([bad])
    assert r1.score is not None and r1.reason == ""
    assert r2.score is None and r2.reason.startswith("model t: onnxruntime failed to score")
    ((r3,),) = engine.score([ok])  # and the next window scores again
    assert r3.score == r1.score


# --- the shipped models on the emulator's own scenarios ---------------------------------------


def emulated_windows(scenario: str, minutes: float) -> list:
    """The emulator's DATA frames for ``minutes`` of device time, decoded, in 5 s windows."""
    from firmware_bridge import Emulator
    from firmware_bridge.frames import Data, FrameDecoder

    emu = Emulator(scenario=scenario, rate_hz=20.0, seed=5)
    decoder = FrameDecoder()
    ts, vals = [], []
    end = 1_700_000_000_000 + int(minutes * 60_000)
    for t_ms, wire in emu.frames(1_700_000_000_000):
        if t_ms >= end:
            break
        for frame in decoder.feed(wire):
            if isinstance(frame.body, Data):
                ts.append(frame.timestamp_ms)
                vals.append(frame.body.values[:3])
    t = np.array(ts, dtype=np.int64)
    cols = np.array(vals, dtype=np.float64).T
    edges = np.searchsorted(t, np.arange(t[0], t[-1] + 5000, 5000))
    return [
        (t[a:b], np.ascontiguousarray(cols[:, a:b])) for a, b in zip(edges[:-1], edges[1:]) if b > a
    ]


def test_the_drift_model_tells_the_emulators_drift_from_normal_and_excursions() -> None:
    """drift-v1 on 12 minutes of each emulator scenario, through the whole engine."""
    from agent.policy import load_policy

    bundle = load_policy(REPO / "configs" / "policies" / "cold-chain.yaml")
    models = [load_declared(r) for r in bundle.models]
    assert [m.id for m in models] == ["excursion-risk", "drift-anomaly"]
    names = [c.name for c in bundle.channels]
    last = {}
    for scenario in ("normal", "excursion", "drift"):
        results = RiskEngine(models, names).score(emulated_windows(scenario, 12))
        drift = [r[1] for r in results[-24:]]  # the last 2 minutes, 10 min of history behind
        assert all(r.score is not None for r in drift), scenario
        last[scenario] = max(r.score for r in drift if r.score is not None)
        if scenario == "drift":
            assert min(r.score for r in drift if r.score is not None) > 0.5
    assert last["normal"] < 0.2 and last["excursion"] < 0.2, last
