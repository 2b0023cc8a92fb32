"""Small ONNX models made here, for tests that need a model of a given shape or behaviour."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model: onnx.ModelProto, path: Path) -> str:
    """Write ``model``; return the file's SHA-256 (what a policy pins)."""
    data = model.SerializeToString()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def logistic(
    weights: Sequence[float],
    bias: float = 0.0,
    *,
    features: Sequence[str] | None = None,
    ranges: Sequence[tuple[float, float]] | None = None,
    input_name: str = "features",
    opset: int = 17,
) -> onnx.ModelProto:
    """probability = sigmoid(features @ weights + bias): float32 [N, len(weights)] -> [N, 1]."""
    n = len(weights)
    w = np.array(weights, dtype=np.float32).reshape(n, 1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "w"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["probability"]),
        ],
        "logistic",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgegov-tests"
    )
    model.ir_version = 8
    meta = {}
    if features is not None:
        meta["features"] = json.dumps(list(features))
    if ranges is not None:
        meta["feature_ranges"] = json.dumps([list(r) for r in ranges])
    helper.set_model_props(model, meta)
    return model


def throws_above(limit: int) -> onnx.ModelProto:
    """One input; runs for inputs 0..limit-1 and fails at run time above (Gather out of bounds).

    Loading and the agent's trial run on zeros succeed: the failure only shows on real data.
    """
    table = np.linspace(0.1, 0.9, limit).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["features"], ["idx"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "idx"], ["probability"], axis=0),
        ],
        "throws",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
