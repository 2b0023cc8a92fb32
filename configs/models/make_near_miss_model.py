"""Build configs/models/near-miss-v0.onnx: a hand-set (not trained) near-miss risk score.

A logistic score over one window of a robot cell's readings, for the example
policy ``configs/policies/machine-zone.yaml``. It is a *demonstration* of how
a risk model plugs into a policy (``risk("near-miss")``), not a validated
safety model: risk rises with the peak robot speed and with how close a
person came; replace it with a model trained on the cell's own data.

    score = sigmoid(4 * max(speed) - 2 * min(distance) + 0.5 * stddev(distance) - 1)

The metadata ``feature_ranges`` (one ``[lo, hi]`` per input, which the agent uses to flag
out-of-distribution windows) holds the *design* ranges the weights were set for, since
there is no training set: the channel ranges declared in machine-zone.yaml (speed 0-3 m/s,
distance 0-20 m, load 0-50 kg) for the means, minima and maxima, and 0-10 m for
``stddev(distance)``, the largest population standard deviation of readings confined to
0-20 m.

Run ``python configs/models/make_near_miss_model.py`` to rebuild it (bytes
are deterministic), then update the sha256 in the policy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = ("mean(speed)", "min(distance)", "max(speed)", "stddev(distance)", "mean(load)")
#: design range of each input, in FEATURES order (see the module docstring)
FEATURE_RANGES = ((0.0, 3.0), (0.0, 20.0), (0.0, 3.0), (0.0, 10.0), (0.0, 50.0))
WEIGHTS = (0.0, -2.0, 4.0, 0.5, 0.0)
BIAS = -1.0
OUT = Path(__file__).with_name("near-miss-v0.onnx")


def build() -> bytes:
    w = numpy_helper.from_array(np.array(WEIGHTS, dtype=np.float32).reshape(5, 1), "w")
    b = numpy_helper.from_array(np.array([BIAS], dtype=np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["features", "w", "b"], ["logit"], name="score"),
            helper.make_node("Sigmoid", ["logit"], ["probability"], name="sigmoid"),
        ],
        "near_miss_v0",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        [w, b],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgegov"
    )
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "model_id": "near-miss",
            "features": json.dumps(list(FEATURES)),
            "feature_ranges": json.dumps([list(r) for r in FEATURE_RANGES]),
            "output": "probability",
            "threshold": "0.8",
            "training_data": "none: hand-set demonstration weights",
            "feature_ranges_basis": "design ranges of the policy's channels, not training data",
        },
    )
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the .onnx")
    args = parser.parse_args(argv)
    data = build()
    args.out.write_bytes(data)
    print(f"{args.out}: sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
