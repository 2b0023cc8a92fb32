"""Code shared by the training scripts in configs/models (not a model of its own).

* the inputs themselves come from ``agent.risk.features.FeaturePlan`` (spec parsing and
  ``native.features.window_features``), so a training script computes them with the very
  code the agent scores with;
* :func:`feature_ranges`: the per-input training ranges stored as ONNX metadata
  ``feature_ranges`` (the agent flags a window whose inputs leave them);
* :class:`Params`, :func:`train_mlp`, :func:`forward`: the one-hidden-layer tanh MLP with
  sigmoid output, trained by full-batch Adam in float64, parameters rounded to
  ``decimals`` places;
* :func:`mlp_to_onnx`: the ONNX graph (standardisation as its first nodes), built field by
  field with ``onnx.helper`` so the bytes are deterministic;
* :func:`ort_scores`, :func:`report`: scoring with onnxruntime and one evaluation line.

Determinism is the scripts' business too: they pin BLAS to one thread before numpy is
imported, use fixed seeds and fix the ONNX IR version and opset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "IR_VERSION",
    "OPSET",
    "Params",
    "feature_ranges",
    "forward",
    "mlp_to_onnx",
    "ort_scores",
    "perturbation_check",
    "report",
    "train_mlp",
]

OPSET = 17
IR_VERSION = 8
RANGE_DECIMALS = 5


# --- features ------------------------------------------------------------------------------


def feature_ranges(x: np.ndarray, decimals: int = RANGE_DECIMALS) -> list[list[float]]:
    """Per input column ``[lo, hi]``: its training min and max, rounded outward.

    Taken over the inputs as the model receives them (float32), rounded with exact decimal
    arithmetic (floor / ceiling at ``10**-decimals``), so every training input lies inside
    its range also after the agent parses the JSON numbers back.
    """
    x32 = np.asarray(x, dtype=np.float32)
    if x32.ndim != 2 or x32.shape[0] == 0 or not np.isfinite(x32).all():
        raise ValueError("feature_ranges needs a non-empty 2-D array of finite inputs")
    quantum = Decimal(1).scaleb(-decimals)
    ranges = []
    for lo, hi in zip(x32.min(axis=0), x32.max(axis=0)):
        lo_d = Decimal(float(lo)).quantize(quantum, rounding=ROUND_FLOOR)
        hi_d = Decimal(float(hi)).quantize(quantum, rounding=ROUND_CEILING)
        # + 0.0 turns a -0.0 into 0.0; float(d) of a decimal d <= v never exceeds v
        ranges.append([float(lo_d) + 0.0, float(hi_d) + 0.0])
    return ranges


# --- model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,) = 1 / std
    w1: np.ndarray  # (F, H)
    b1: np.ndarray  # (H,)
    w2: np.ndarray  # (H, 1)
    b2: np.ndarray  # (1,)

    def rounded(self, decimals: int) -> Params:
        return Params(*(np.round(a, decimals) for a in self.arrays()))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.mean, self.scale, self.w1, self.b1, self.w2, self.b2)


def sigmoid(z: np.ndarray) -> np.ndarray:
    p: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))
    return p


def forward(p: Params, x: np.ndarray) -> np.ndarray:
    """The exported graph's computation in numpy: probability per row."""
    hidden = np.tanh(((x - p.mean) * p.scale) @ p.w1 + p.b1)
    return sigmoid(hidden @ p.w2 + p.b2)[:, 0]


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    *,
    hidden: int,
    steps: int,
    learning_rate: float,
    l2: float,
    init_seed: int,
    decimals: int,
    schedule: str = "constant",
) -> Params:
    """Full-batch Adam on mean binary cross-entropy (+ L2 on the weights), float64.

    The standardisation (training mean and 1/std, rounded to ``decimals`` places) is part
    of the model; the trained parameters are rounded to ``decimals`` places too.
    ``schedule``: ``"constant"`` learning rate, or ``"cosine"``, decaying from
    ``learning_rate`` to 0 over the steps. Rounding only hides last-bit differences (BLAS
    kernels, SIMD builds of tanh/exp) if training does not amplify them: Adam at a constant
    rate can end in a chaotic regime where it does; see :func:`perturbation_check`.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}")
    mean = np.round(x.mean(axis=0), decimals)
    scale = np.round(1.0 / x.std(axis=0), decimals)
    xs = (x - mean) * scale
    yy = y[:, None]
    rng = np.random.default_rng(init_seed)
    n_feat = x.shape[1]
    params = [
        rng.standard_normal((n_feat, hidden)) / np.sqrt(n_feat),
        np.zeros(hidden),
        rng.standard_normal((hidden, 1)) / np.sqrt(hidden),
        np.zeros(1),
    ]
    m = [np.zeros_like(a) for a in params]
    v = [np.zeros_like(a) for a in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n = xs.shape[0]
    for step in range(1, steps + 1):
        rate = learning_rate
        if schedule == "cosine":
            rate = learning_rate * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / steps))
        w1, b1, w2, b2 = params
        act = np.tanh(xs @ w1 + b1)
        prob = sigmoid(act @ w2 + b2)
        dz = (prob - yy) / n
        dh = (dz @ w2.T) * (1.0 - act * act)
        grads = [xs.T @ dh + l2 * w1, dh.sum(axis=0), act.T @ dz + l2 * w2, dz.sum(axis=0)]
        for k, g in enumerate(grads):
            m[k] = beta1 * m[k] + (1.0 - beta1) * g
            v[k] = beta2 * v[k] + (1.0 - beta2) * g * g
            m_hat = m[k] / (1.0 - beta1**step)
            v_hat = v[k] / (1.0 - beta2**step)
            params[k] = params[k] - rate * m_hat / (np.sqrt(v_hat) + eps)
    return Params(mean, scale, *params).rounded(decimals)


def perturbation_check(
    x: np.ndarray, y: np.ndarray, trained: Params, seed: int, relative: float = 1e-12, **kw: Any
) -> bool:
    """True if training on ``x * (1 + relative * noise)`` gives the same rounded parameters.

    A stand-in for "another machine": last-bit differences in the data or the arithmetic
    must not reach the file. ``kw`` are the :func:`train_mlp` arguments used for ``trained``.
    """
    noise = np.random.default_rng(seed).standard_normal(x.shape)
    again = train_mlp(x * (1.0 + relative * noise), y, **kw)
    return all(np.array_equal(a, b) for a, b in zip(trained.arrays(), again.arrays()))


# --- export --------------------------------------------------------------------------------


def mlp_to_onnx(
    p: Params,
    *,
    graph_name: str,
    input_name: str,
    output_name: str,
    producer_version: str,
    model_version: int,
    doc_string: str,
    props: Mapping[str, str],
) -> bytes:
    """Build the MLP's ONNX graph with ``onnx.helper`` and serialise it (deterministic bytes).

    ``features -> (x - feature_mean) * feature_scale -> Gemm/Tanh -> Gemm/Sigmoid``; fixed IR
    version and opset, producer ``edgegov``, no timestamps; ``props`` become the metadata.
    """

    def init(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name)

    n_inputs = int(p.mean.shape[0])
    initializers = [
        init("feature_mean", p.mean),
        init("feature_scale", p.scale),
        init("w1", p.w1),
        init("b1", p.b1),
        init("w2", p.w2),
        init("b2", p.b2),
    ]
    node = helper.make_node
    nodes = [
        node("Sub", [input_name, "feature_mean"], ["centred"], name="standardise_sub"),
        node("Mul", ["centred", "feature_scale"], ["standardised"], name="standardise_mul"),
        node("Gemm", ["standardised", "w1", "b1"], ["hidden_pre"], name="hidden"),
        node("Tanh", ["hidden_pre"], ["hidden_act"], name="hidden_tanh"),
        node("Gemm", ["hidden_act", "w2", "b2"], ["logit"], name="output"),
        node("Sigmoid", ["logit"], [output_name], name="output_sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", n_inputs])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 1])],
        initializers,
        doc_string="features -> (x - feature_mean) * feature_scale -> Gemm/Tanh -> Gemm/Sigmoid",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgegov",
        producer_version=producer_version,
        domain="org.edgegov",
        model_version=model_version,
        doc_string=doc_string,
    )
    model.ir_version = IR_VERSION  # fixed, so the bytes do not follow the onnx package
    helper.set_model_props(model, dict(props))
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


# --- evaluation ----------------------------------------------------------------------------


def ort_scores(model_bytes: bytes, x: np.ndarray, input_name: str, output_name: str) -> np.ndarray:
    """Score float32 inputs with onnxruntime (CPU, one thread): probability per row."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run([output_name], {input_name: x.astype(np.float32)})[0][:, 0]
    return out


def report(name: str, y: np.ndarray, pred: np.ndarray, width: int = 42) -> str:
    """One evaluation line: counts, precision, recall, accuracy of 0/1 predictions."""
    tp = int(np.sum((pred == 1) & (y == 1)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    precision = f"{tp / (tp + fp):.3f}" if tp + fp else "n/a"
    recall = f"{tp / (tp + fn):.3f}" if tp + fn else "n/a"
    accuracy = float(np.mean(pred == y)) if y.size else float("nan")
    return (
        f"{name:<{width}} n={y.size:6d} positives={int(y.sum()):5d} alarms={tp + fp:5d}  "
        f"precision={precision}  recall={recall}  accuracy={accuracy:.3f}"
    )
