#!/usr/bin/env python
"""Train and export the cold-chain excursion-risk model ``excursion-v1.onnx``.

The model answers: given one 5 s window of readings from a cold-chain sensor (temperature in
degC, humidity in %RH, sampled at 20 Hz), what is the probability that the temperature
leaves 2-8 degC within the next 60 s? It is a tiny MLP (5 -> 8 tanh -> 1 sigmoid) over the
features ``FEATURES`` below, with the input standardisation as the first nodes of the ONNX
graph, so the file is the whole model.

Everything here is deterministic, and the written file is byte-for-byte reproducible:

* synthetic data from fixed seeds (numpy's PCG64 ``Generator``, whose streams are stable);
* float64 training with single-threaded BLAS (the thread variables are set before numpy is
  imported when this file runs as a script);
* the exported parameters are rounded to ``DECIMALS`` decimal places, so last-ulp
  differences between libm/SIMD builds of numpy cannot change the file;
* the ONNX proto is built field by field (fixed ``ir_version``, opset, producer, no
  timestamps) and serialised directly.

The features are computed here in float64 with numpy (the model was trained on those); the
script checks that, rounded to float32, they equal bit for bit what the agent computes with
``native.features.window_features`` on the same windows. The training inputs' per-column
min and max, rounded outward to 5 decimals, go into the metadata ``feature_ranges``: the
agent flags a window as out of distribution when any input lies outside its range. The MLP
training and the ONNX export are shared with train_drift_model.py (``_training.py``).

Usage::

    python configs/models/train_excursion_model.py [--out PATH]

It prints the evaluation on a held-out synthetic set (different seed) and the SHA-256 of
the written file; that digest is what a policy pins for the model. See excursion-v1.md.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Reductions split across BLAS threads are not bit-reproducible; keep BLAS on one
    # thread. Must happen before numpy is imported.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# _training.py sits next to this file; agent (the agent's feature code) at the repo root.
for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[2]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _training import (  # noqa: E402
    Params,
    feature_ranges,
    forward,
    mlp_to_onnx,
    ort_scores,
    report,
    train_mlp,
)

from agent.risk.features import FeaturePlan  # noqa: E402

MODEL_ID = "excursion-risk"
MODEL_VERSION = 1
FEATURES = (
    "mean(temperature)",
    "min(temperature)",
    "max(temperature)",
    "stddev(temperature)",
    "mean(humidity)",
)
CHANNELS = {"temperature": 0, "humidity": 1}
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
THRESHOLD = 0.5

SAMPLE_HZ = 20
WINDOW_S = 5
HORIZON_S = 60
TRACE_S = 360
LOW_C, HIGH_C = 2.0, 8.0
MISSING_RATE = 0.01  # share of readings dropped (NaN), as a flaky serial line does

TRAIN_SEED = 20240601
TEST_SEED = 20240602
INIT_SEED = 20240603
N_TRAIN_TRACES = 480
N_TEST_TRACES = 240
HIDDEN = 8
STEPS = 500
LEARNING_RATE = 0.05
L2 = 1e-4
DECIMALS = 5

SCENARIOS = ("normal", "precursor", "drift", "door")
SCENARIO_P = (0.40, 0.25, 0.20, 0.15)

WINDOW = SAMPLE_HZ * WINDOW_S
HORIZON_WINDOWS = HORIZON_S // WINDOW_S
WINDOWS_PER_TRACE = TRACE_S // WINDOW_S

DEFAULT_OUT = Path(__file__).resolve().with_name("excursion-v1.onnx")


# --- synthetic traces ----------------------------------------------------------------------


def simulate(rng: np.random.Generator, n_traces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate ``n_traces`` traces; return temperature, humidity (n, samples), scenario ids.

    Scenarios follow the device emulator: *normal* (a set point around 5 degC, a slow
    compressor-cycle sine and sensor noise), *precursor* (from a random onset the
    temperature ramps up by 1.5-7 degC and holds, so some ramps stay inside 2-8 and some
    leave it), *drift* (a slow linear drift up or down from the start) and *door* (1-3
    door-open episodes: temperature climbs while open and decays back after closing,
    humidity jumps and decays).
    """
    n = SAMPLE_HZ * TRACE_S
    t = np.arange(n, dtype=np.float64) / SAMPLE_HZ
    kinds = rng.choice(len(SCENARIOS), size=n_traces, p=SCENARIO_P)
    temp = np.empty((n_traces, n))
    hum = np.empty((n_traces, n))
    for i, kind in enumerate(kinds):
        base = rng.uniform(3.0, 7.0)
        amp = rng.uniform(0.05, 0.6)
        period = rng.uniform(120.0, 900.0)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        noise = rng.uniform(0.02, 0.12)
        x = base + amp * np.sin(2.0 * np.pi * t / period + phase)
        x += noise * rng.standard_normal(n)
        h = rng.uniform(35.0, 65.0) + rng.uniform(0.2, 1.0) * rng.standard_normal(n)
        name = SCENARIOS[kind]
        if name == "precursor":
            onset = rng.uniform(0.0, 300.0)
            slope = rng.uniform(0.004, 0.04)  # degC/s: 0.24-2.4 degC/min
            rise = rng.uniform(1.5, 7.0)
            x += np.minimum(slope * np.maximum(t - onset, 0.0), rise)
        elif name == "drift":
            x += rng.uniform(0.002, 0.015) * rng.choice((-1.0, 1.0)) * t
        elif name == "door":
            for _ in range(int(rng.integers(1, 4))):
                start = rng.uniform(0.0, 330.0)
                duration = rng.uniform(5.0, 60.0)
                rate = rng.uniform(0.01, 0.08)
                tau = rng.uniform(20.0, 120.0)
                jump = rng.uniform(8.0, 30.0)
                dt = t - start
                is_open = (dt >= 0.0) & (dt < duration)
                closed_for = np.maximum(dt - duration, 0.0)
                after = dt >= duration
                x += np.where(is_open, rate * dt, 0.0)
                x += np.where(after, rate * duration * np.exp(-closed_for / tau), 0.0)
                h_open = jump * (1.0 - np.exp(-np.maximum(dt, 0.0) / 10.0))
                h_end = jump * (1.0 - np.exp(-duration / 10.0))
                h += np.where(is_open, h_open, 0.0)
                h += np.where(after, h_end * np.exp(-closed_for / 20.0), 0.0)
        temp[i] = x
        hum[i] = np.clip(h, 0.0, 100.0)
    temp[rng.random(temp.shape) < MISSING_RATE] = np.nan
    hum[rng.random(hum.shape) < MISSING_RATE] = np.nan
    return temp, hum, kinds


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float64 (windows, len(FEATURES))
    y: np.ndarray  # float64 0/1 (windows,)
    in_range: np.ndarray  # bool: the window's own readings are all inside 2-8 degC
    scenario: np.ndarray  # int scenario id per window


def windows(temp: np.ndarray, hum: np.ndarray, kinds: np.ndarray) -> Dataset:
    """Cut traces into 5 s windows; features per window, label from the next 60 s.

    The features are exactly those ``agent.risk.features.FeaturePlan.compute`` computes: NaN
    readings are ignored and ``stddev`` is the population standard deviation (ddof=0).
    """
    n_traces = temp.shape[0]
    tw = temp.reshape(n_traces, WINDOWS_PER_TRACE, WINDOW)
    hw = hum.reshape(n_traces, WINDOWS_PER_TRACE, WINDOW)
    feats = np.stack(
        [
            np.nanmean(tw, axis=2),
            np.nanmin(tw, axis=2),
            np.nanmax(tw, axis=2),
            np.nanstd(tw, axis=2),
            np.nanmean(hw, axis=2),
        ],
        axis=2,
    )
    outside = (feats[:, :, 1] < LOW_C) | (feats[:, :, 2] > HIGH_C)
    # label[w] = the temperature is outside 2-8 in any of the windows w+1 .. w+12
    csum = np.concatenate([np.zeros((n_traces, 1)), np.cumsum(outside, axis=1)], axis=1)
    usable = WINDOWS_PER_TRACE - HORIZON_WINDOWS
    w = np.arange(usable)
    label = (csum[:, w + 1 + HORIZON_WINDOWS] - csum[:, w + 1]) > 0
    return Dataset(
        x=feats[:, :usable].reshape(-1, len(FEATURES)),
        y=label.reshape(-1).astype(np.float64),
        in_range=~outside[:, :usable].reshape(-1),
        scenario=np.repeat(kinds, usable),
    )


# --- model ---------------------------------------------------------------------------------


def train(data: Dataset) -> Params:
    """Full-batch Adam on mean binary cross-entropy (+ L2 on the weights)."""
    return train_mlp(
        data.x,
        data.y,
        hidden=HIDDEN,
        steps=STEPS,
        learning_rate=LEARNING_RATE,
        l2=L2,
        init_seed=INIT_SEED,
        decimals=DECIMALS,
    )


def agent_features(temp: np.ndarray, hum: np.ndarray) -> np.ndarray:
    """The training windows' inputs as the agent computes them (``native.features``).

    Same windows as :func:`windows` (the first ``WINDOWS_PER_TRACE - HORIZON_WINDOWS`` of
    each trace), float32 (windows, len(FEATURES)).
    """
    plan = FeaturePlan(FEATURES, CHANNELS)
    n = temp.shape[1]
    ts = np.arange(n, dtype=np.int64) * 1000 // SAMPLE_HZ
    lo = np.arange(WINDOWS_PER_TRACE - HORIZON_WINDOWS, dtype=np.int64) * WINDOW
    parts = [
        plan.compute(ts, np.stack([temp[i], hum[i]]), lo, lo + WINDOW) for i in range(temp.shape[0])
    ]
    return np.concatenate(parts)


# --- export --------------------------------------------------------------------------------


def to_onnx(p: Params, ranges: list[list[float]]) -> bytes:
    """Build the ONNX graph with ``onnx.helper`` and serialise it (deterministic bytes)."""
    return mlp_to_onnx(
        p,
        graph_name="excursion_risk_v1",
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        producer_version=f"train_excursion_model/{MODEL_VERSION}",
        model_version=MODEL_VERSION,
        doc_string=(
            "edgegov cold-chain excursion risk: probability that the temperature leaves "
            f"{LOW_C:g}-{HIGH_C:g} degC within the next {HORIZON_S} s, from one {WINDOW_S} s "
            f"window of {SAMPLE_HZ} Hz readings. Trained on synthetic data by "
            "configs/models/train_excursion_model.py; see configs/models/excursion-v1.md."
        ),
        props={
            "model_id": MODEL_ID,
            "version": str(MODEL_VERSION),
            "features": json.dumps(list(FEATURES)),
            "feature_ranges": json.dumps(ranges),
            "output": OUTPUT_NAME,
            "threshold": f"{THRESHOLD:g}",
            "label": (
                f"temperature outside [{LOW_C:g}, {HIGH_C:g}] degC at any reading in the "
                f"{HORIZON_S} s after the window"
            ),
            "window_seconds": str(WINDOW_S),
            "sample_rate_hz": str(SAMPLE_HZ),
            "stddev": "population (ddof=0), NaN readings ignored",
            "training_seed": str(TRAIN_SEED),
            "evaluation_seed": str(TEST_SEED),
            "init_seed": str(INIT_SEED),
            "training_data": "synthetic (configs/models/train_excursion_model.py)",
        },
    )


# --- evaluation ----------------------------------------------------------------------------


def evaluate(model_bytes: bytes, p: Params, test: Dataset) -> list[str]:
    """Score the held-out set with the exported model in onnxruntime (numpy as a check)."""
    prob = ort_scores(model_bytes, test.x, INPUT_NAME, OUTPUT_NAME)
    max_diff = float(np.max(np.abs(prob - forward(p, test.x.astype(np.float32)))))
    pred = (prob >= THRESHOLD).astype(np.float64)
    # A plain rule for comparison: "the window already comes within 0.5 degC of a limit".
    rule = ((test.x[:, 2] > HIGH_C - 0.5) | (test.x[:, 1] < LOW_C + 0.5)).astype(np.float64)
    r = test.in_range
    lines = [
        report("model, all held-out windows", test.y, pred),
        report("model, windows still inside 2-8 degC", test.y[r], pred[r]),
        report("rule max>7.5|min<2.5, windows inside 2-8", test.y[r], rule[r]),
    ]
    for k, name in enumerate(SCENARIOS):
        s = r & (test.scenario == k)
        lines.append(report(f"model, inside 2-8, scenario {name}", test.y[s], pred[s]))
    for threshold in (0.2, 0.3):
        alt = (prob[r] >= threshold).astype(np.float64)
        lines.append(report(f"model at threshold {threshold}, inside 2-8", test.y[r], alt))
    lines.append(f"max |onnxruntime - numpy| = {max_diff:.2e}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .onnx")
    args = parser.parse_args(argv)

    train_temp, train_hum, train_kinds = simulate(np.random.default_rng(TRAIN_SEED), N_TRAIN_TRACES)
    train_set = windows(train_temp, train_hum, train_kinds)
    test_set = windows(*simulate(np.random.default_rng(TEST_SEED), N_TEST_TRACES))
    # What the agent will feed the model: these float64 features rounded to float32 must be
    # exactly what native.features computes on the same windows.
    agent_x = agent_features(train_temp, train_hum)
    if not np.array_equal(agent_x, train_set.x.astype(np.float32)):
        raise SystemExit("training features differ from native.features.window_features")
    params = train(train_set)
    model_bytes = to_onnx(params, feature_ranges(agent_x))
    args.out.write_bytes(model_bytes)

    print(f"trained on {train_set.y.size} windows ({N_TRAIN_TRACES} traces, seed {TRAIN_SEED})")
    print(f"held-out set: {test_set.y.size} windows ({N_TEST_TRACES} traces, seed {TEST_SEED})")
    print("training features == native.features.window_features (float32): yes")
    for line in evaluate(model_bytes, params, test_set):
        print(line)
    print(f"wrote {args.out} ({len(model_bytes)} bytes)")
    print(f"sha256 {hashlib.sha256(model_bytes).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
