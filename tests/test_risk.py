"""Risk models: digest pinning, loading, features and scoring, on real onnxruntime sessions."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from agent.errors import ModelError
from agent.risk import onnx_model as risk
from agent.risk.features import FeaturePlan, parse_feature
from agent.risk.onnx_model import load_model

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "configs" / "models"
SCRIPT = MODELS / "train_excursion_model.py"
EXCURSION = MODELS / "excursion-v1.onnx"
FEATURES = (
    "mean(temperature)",
    "min(temperature)",
    "max(temperature)",
    "stddev(temperature)",
    "mean(humidity)",
)
CHANNELS = {"temperature": 0, "humidity": 1}
HZ, WINDOW_S = 20, 5


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_excursion(**kwargs: Any) -> risk.RiskModel:
    return load_model("excursion-risk", EXCURSION, sha256(EXCURSION), FEATURES, **kwargs)


def write_model(path: Path, nodes: list[onnx.NodeProto], n_in: int, **inits: np.ndarray) -> str:
    """Write a one-input model ("features" [N, n_in] -> "probability"); return its digest."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return sha256(path)


def compute_features(
    specs: Sequence[str], columns: np.ndarray, index: dict[str, int]
) -> np.ndarray:
    """The features of one window holding ``columns`` (readings at 20 Hz)."""
    n = columns.shape[1]
    ts = np.arange(n, dtype=np.int64) * (1000 // HZ)
    lo, hi = np.array([0], dtype=np.int64), np.array([n], dtype=np.int64)
    return FeaturePlan(specs, index).compute(ts, np.ascontiguousarray(columns), lo, hi)


def window(temperature: np.ndarray, humidity: np.ndarray) -> np.ndarray:
    return compute_features(FEATURES, np.stack([temperature, humidity]), CHANNELS)


# --- the checked-in model --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "model"),
    [
        (SCRIPT, EXCURSION),
        (MODELS / "train_drift_model.py", MODELS / "drift-v1.onnx"),
        (MODELS / "make_near_miss_model.py", MODELS / "near-miss-v0.onnx"),
    ],
    ids=["excursion", "drift", "near-miss"],
)
def test_model_scripts_reproduce_the_checked_in_models_byte_for_byte(
    tmp_path: Path, script: Path, model: Path
) -> None:
    out = tmp_path / "model.onnx"
    proc = subprocess.run(
        [sys.executable, str(script), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert out.read_bytes() == model.read_bytes()
    assert sha256(model) in proc.stdout


def test_shipped_models_carry_training_ranges_for_every_input() -> None:
    for path in MODELS.glob("*.onnx"):
        m = onnx.load_model_from_string(path.read_bytes())
        props = {p.key: p.value for p in m.metadata_props}
        ranges = json.loads(props["feature_ranges"])
        width = m.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        assert len(ranges) == width, path.name
        assert all(lo <= hi for lo, hi in ranges), path.name


def test_checked_in_model_declares_its_identity_and_features() -> None:
    model = onnx.load_model_from_string(EXCURSION.read_bytes())
    props = {p.key: p.value for p in model.metadata_props}
    assert model.producer_name == "edgegov"
    assert model.doc_string
    assert props["model_id"] == "excursion-risk"
    assert json.loads(props["features"]) == list(FEATURES)
    assert props["training_seed"].isdigit()
    assert [i.name for i in model.graph.input] == ["features"]
    assert [o.name for o in model.graph.output] == ["probability"]


def test_training_features_are_the_ones_the_agent_computes() -> None:
    spec = importlib.util.spec_from_file_location("_train_excursion_model", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up
    try:
        spec.loader.exec_module(script)
        assert isinstance(script, ModuleType)
        assert tuple(script.FEATURES) == FEATURES
        temp, hum, kinds = script.simulate(np.random.default_rng(5), 2)
        data = script.windows(temp, hum, kinds)
    finally:
        del sys.modules[spec.name]
    n = HZ * WINDOW_S
    for w in (0, 7, 33):
        agent = window(temp[0, w * n : (w + 1) * n], hum[0, w * n : (w + 1) * n])
        np.testing.assert_allclose(agent[0], data.x[w], rtol=1e-6, atol=1e-6)


def test_excursion_like_window_scores_higher_than_a_normal_one() -> None:
    model = load_excursion()
    rng = np.random.default_rng(3)
    n = HZ * WINDOW_S
    humidity = 50.0 + 0.5 * rng.standard_normal(n)
    normal = window(5.0 + 0.05 * rng.standard_normal(n), humidity)
    rising = window(np.linspace(7.4, 7.9, n) + 0.05 * rng.standard_normal(n), humidity)
    scores = model.score(np.concatenate([normal, rising]))
    assert scores.dtype == np.float64
    assert scores.shape == (2,)
    assert scores[0] < model.threshold < scores[1]


def test_score_batches_agree_with_single_rows() -> None:
    model = load_excursion()
    rng = np.random.default_rng(4)
    x = (np.array([5.0, 4.8, 5.2, 0.1, 50.0]) + rng.standard_normal((64, 5))).astype(np.float32)
    batch = model.score(x)
    single = np.array([model.score(x[i : i + 1])[0] for i in range(len(x))])
    np.testing.assert_allclose(batch, single, rtol=1e-6)
    assert np.all((batch >= 0.0) & (batch <= 1.0))


# --- refusing models -------------------------------------------------------------------------


def test_digest_mismatch_is_refused_naming_the_file_and_both_digests() -> None:
    wrong = "ab" * 32
    with pytest.raises(ModelError) as info:
        load_model("excursion-risk", EXCURSION, wrong, FEATURES)
    message = str(info.value)
    assert str(EXCURSION) in message
    assert sha256(EXCURSION) in message
    assert wrong in message
    assert "refusing" in message


def test_a_file_changed_by_one_byte_is_refused(tmp_path: Path) -> None:
    data = bytearray(EXCURSION.read_bytes())
    data[-1] ^= 0x01
    tampered = tmp_path / "excursion-v1.onnx"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="refusing to load it"):
        load_model("excursion-risk", tampered, sha256(EXCURSION), FEATURES)


def test_session_is_built_from_the_checked_bytes_not_from_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []
    real = ort.InferenceSession

    def spy(model: object, *args: object, **kwargs: object) -> ort.InferenceSession:
        seen.append(model)
        return real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(risk.ort, "InferenceSession", spy)
    load_excursion()
    assert seen == [EXCURSION.read_bytes()]


def test_missing_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match="does not exist") as info:
        load_model("excursion-risk", missing, "00" * 32, FEATURES)
    assert str(missing) in str(info.value)


def test_malformed_policy_digest_is_refused() -> None:
    with pytest.raises(ModelError, match="not 64 hex digits"):
        load_model("excursion-risk", EXCURSION, "sha256:1234", FEATURES)


def test_wrong_number_of_features_is_refused_with_expected_and_found() -> None:
    with pytest.raises(ModelError) as info:
        load_model("excursion-risk", EXCURSION, sha256(EXCURSION), FEATURES[:4])
    message = str(info.value)
    assert "[N, 4]" in message  # expected
    assert "5" in message.split("shape")[1]  # found: the model's [N, 5]


def test_features_other_than_the_model_declares_are_refused() -> None:
    swapped = (FEATURES[1], FEATURES[0], *FEATURES[2:])
    with pytest.raises(ModelError, match="declares features"):
        load_model("excursion-risk", EXCURSION, sha256(EXCURSION), swapped)


def test_missing_output_name_is_refused() -> None:
    with pytest.raises(ModelError, match=r"no output 'risk'.*'probability'"):
        load_excursion(output="risk")


def test_bytes_onnxruntime_cannot_load_are_refused_with_the_cause(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelError, match="onnxruntime cannot load") as info:
        load_model("junk", junk, sha256(junk), ("mean(temperature)",))
    assert info.value.__cause__ is not None


def test_malformed_feature_spec_is_refused_before_loading() -> None:
    with pytest.raises(ModelError, match="median"):
        load_model("excursion-risk", EXCURSION, sha256(EXCURSION), ("median(temperature)",))


# --- scoring refuses what it cannot vouch for ------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(bad: float) -> None:
    model = load_excursion()
    x = np.full((3, 5), 5.0, dtype=np.float32)
    x[1, 3] = bad
    with pytest.raises(ModelError, match="input features contain NaN or infinity"):
        model.score(x)


def test_window_with_a_silent_channel_is_refused_at_scoring() -> None:
    model = load_excursion()
    n = HZ * WINDOW_S
    features = window(np.full(n, 5.0), np.full(n, np.nan))
    assert np.isnan(features[0, 4])
    assert not np.isnan(features[0, :4]).any()
    with pytest.raises(ModelError, match="input features"):
        model.score(features)


@pytest.mark.parametrize("value", [-1.0, 0.0])
def test_nan_or_infinite_model_output_is_refused(tmp_path: Path, value: float) -> None:
    path = tmp_path / "log.onnx"
    digest = write_model(path, [helper.make_node("Log", ["features"], ["probability"])], 1)
    model = load_model("log", path, digest, ("mean(temperature)",))
    assert model.score(np.array([[1.0]], dtype=np.float32)).tolist() == [0.0]
    with pytest.raises(ModelError, match="output 'probability' contains NaN or infinity"):
        model.score(np.array([[2.0], [value]], dtype=np.float32))


def test_model_giving_the_wrong_number_of_scores_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.onnx"
    digest = write_model(path, [helper.make_node("Identity", ["features"], ["probability"])], 2)
    with pytest.raises(ModelError, match="one score per row"):
        load_model("identity", path, digest, ("mean(a)", "mean(b)"))


def test_wrongly_shaped_input_is_api_misuse() -> None:
    model = load_excursion()
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        model.score(np.zeros((2, 4), dtype=np.float32))


# --- execution providers ---------------------------------------------------------------------


def test_unavailable_provider_falls_back_to_cpu_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    available = ort.get_available_providers()
    wanted = next(
        p
        for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "NoSuchExecutionProvider")
        if p not in available
    )
    with caplog.at_level(logging.INFO, logger="edgegov.risk"):
        model = load_excursion(providers=(wanted,))
    assert model.provider == "CPUExecutionProvider"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(wanted in m for m in warned)
    assert any("loaded on CPUExecutionProvider" in r.getMessage() for r in caplog.records)
    assert model.score(np.full((1, 5), 5.0, dtype=np.float32)).shape == (1,)


def test_model_records_what_it_is() -> None:
    model = load_excursion(threshold=0.7)
    assert model.id == "excursion-risk"
    assert model.sha256 == sha256(EXCURSION)
    assert model.features == FEATURES
    assert model.output == "probability"
    assert model.threshold == 0.7
    assert model.provider == "CPUExecutionProvider"


# --- features --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("mean(temperature)", ("mean", "temperature")), ("stddev(rh_2)", ("stddev", "rh_2"))],
)
def test_parse_feature_splits_aggregate_and_channel(spec: str, parsed: tuple[str, str]) -> None:
    f = parse_feature(spec)
    assert (f.agg, f.channel, f.dur_ms, f.lags) == (*parsed, 0, 0)


@pytest.mark.parametrize(
    "spec", ["median(temperature)", "mean temperature", "mean()", "mean(temp", "MEAN(t)", ""]
)
def test_parse_feature_refuses_bad_specs_naming_them(spec: str) -> None:
    with pytest.raises(ModelError) as info:
        parse_feature(spec)
    assert repr(spec) in str(info.value)


def test_feature_on_an_unknown_channel_is_refused() -> None:
    with pytest.raises(ModelError, match="'pressure'"):
        compute_features(["mean(pressure)"], np.zeros((2, 3)), CHANNELS)


def _numpy_reference(specs: Sequence[str], columns: np.ndarray) -> np.ndarray:
    funcs = {"mean": np.nanmean, "min": np.nanmin, "max": np.nanmax, "stddev": np.nanstd}
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: numpy warns, gives NaN
        for spec in specs:
            f = parse_feature(spec)
            agg, row = f.agg, columns[int(f.channel[1:])]
            out.append(funcs[agg](row) if row.size else np.nan)
    return np.array([out], dtype=np.float32)


@settings(max_examples=150, deadline=None)
@given(
    columns=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 3), st.integers(0, 40)),
        elements=st.one_of(st.just(np.nan), st.floats(-100.0, 100.0)),
    ),
    picks=st.lists(
        st.tuples(st.sampled_from(("mean", "min", "max", "stddev")), st.integers(0, 2)),
        min_size=1,
        max_size=8,
    ),
)
def test_compute_features_agrees_with_numpy(
    columns: np.ndarray, picks: list[tuple[str, int]]
) -> None:
    specs = [f"{agg}(c{ch % columns.shape[0]})" for agg, ch in picks]
    index = {f"c{i}": i for i in range(columns.shape[0])}
    got = compute_features(specs, columns, index)
    assert got.dtype == np.float32
    assert got.shape == (1, len(specs))
    np.testing.assert_allclose(got, _numpy_reference(specs, columns), rtol=1e-6, atol=1e-6)


def test_compute_features_gives_nan_for_a_channel_without_readings() -> None:
    columns = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    got = compute_features(
        ["mean(a)", "stddev(a)", "min(b)", "max(b)", "mean(b)", "stddev(b)"],
        columns,
        {"a": 0, "b": 1},
    )
    np.testing.assert_array_equal(got[0, :2], np.array([2.0, 1.0], dtype=np.float32))
    assert np.isnan(got[0, 2:]).all()
