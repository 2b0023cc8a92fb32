"""One ONNX risk model: load it only if its digest matches, check it, score it.

A policy declares each risk model (README.md, Risk models; agent/policy/model.py): id, file,
SHA-256, opset, input name and features, output name and meaning, threshold, goal and a
model card. :func:`load_model` reads the file once, checks the digest of exactly those bytes
and only then hands them to onnxruntime, so the bytes that were checked are the bytes that
run (no window for the file to change between check and load). It then checks the opset
(:func:`model_opset`, a few lines of protobuf reading), the input and output signature
against the declaration and runs the model once. The requested execution providers that
this onnxruntime has are used in order, the CPU provider always last. A model that cannot
be used raises :class:`~agent.errors.ModelError`; the agent then falls back to the rules
alone and marks the evidence as degraded.

:class:`RiskModel` is the loaded model; its ``score`` runs one batch of feature rows.
Scoring a policy's models over windows is agent/risk/engine.py's job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from agent.errors import ModelError
from agent.risk.features import parse_feature

if TYPE_CHECKING:
    from agent.policy.model import ModelRef

__all__ = [
    "RiskModel",
    "load_declared",
    "load_model",
    "model_opset",
]

log = logging.getLogger("edgegov.risk")

_CPU = "CPUExecutionProvider"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_FLOAT_TENSORS = ("tensor(float)", "tensor(double)")


class RiskModel:
    """A loaded, digest-checked ONNX risk model. Build it with :func:`load_model`.

    Attributes:
        id: model id from the policy.
        sha256: hex digest of the exact bytes that were loaded.
        provider: the onnxruntime execution provider actually in use.
        features: the declared feature specs, in input order (a ``lag`` fills several inputs).
        width: number of input columns.
        output: name of the probability output.
        threshold: the policy's decision threshold on the score.
        ranges: float64 (2, width), each input's [min, max] in training, or None when the
            model does not carry them (out-of-distribution is then not assessed).
    """

    __slots__ = (
        "_input_name",
        "_output_names",
        "_run",
        "features",
        "id",
        "inputs",
        "output",
        "provider",
        "ranges",
        "sha256",
        "threshold",
        "width",
    )

    def __init__(
        self,
        *,
        model_id: str,
        sha256: str,
        session: Any,
        features: tuple[str, ...],
        output: str,
        threshold: float,
        ranges: np.ndarray | None = None,
    ) -> None:
        self.id = model_id
        self.sha256 = sha256
        self.features = features
        self.inputs = tuple(name for f in features for name in parse_feature(f).inputs())
        self.width = len(self.inputs)
        self.output = output
        self.threshold = threshold
        self.ranges = ranges
        self.provider: str = session.get_providers()[0]
        self._run = session.run
        self._input_name: str = session.get_inputs()[0].name
        self._output_names = [output]

    def __repr__(self) -> str:
        return (
            f"RiskModel(id={self.id!r}, sha256={self.sha256[:12]}..., "
            f"provider={self.provider!r}, features={self.features!r})"
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """Score a batch of feature rows.

        Args:
            features: float32 array (N, width).

        Returns:
            float64 array (N,) of scores.

        Raises:
            ModelError: an input is NaN or infinite, the model's output is NaN, infinite
                or outside [0, 1], has the wrong size, or onnxruntime fails. The caller
                marks that window's risk as not available.
            ValueError: ``features`` is not a 2-D array with ``width`` columns.
        """
        x = np.ascontiguousarray(features, dtype=np.float32)  # no copy in the usual case
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(
                f"model {self.id}: expected features of shape (N, {self.width}), got {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ModelError(
                f"model {self.id}: input features contain NaN or infinity "
                f"(a channel without valid readings in the window?); not scoring them"
            )
        try:
            y = self._run(self._output_names, {self._input_name: x})[0]
        except Exception as e:  # onnxruntime's pybind errors share no base class
            raise ModelError(f"model {self.id}: onnxruntime failed to score: {e}") from e
        if y.size != x.shape[0]:
            raise ModelError(
                f"model {self.id}: output {self.output!r} has shape {list(y.shape)}; "
                f"expected one score per row ({x.shape[0]})"
            )
        scores: np.ndarray = y.reshape(-1).astype(np.float64)
        if not np.isfinite(scores).all():
            raise ModelError(f"model {self.id}: output {self.output!r} contains NaN or infinity")
        if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
            raise ModelError(
                f"model {self.id}: output {self.output!r} has values outside [0, 1] "
                f"({scores.min():.4g}..{scores.max():.4g}); a risk score is a probability "
                "(docs/attestation-profile.md, -70001/7)"
            )
        return scores


def _choose_providers(model_id: str, requested: Sequence[str]) -> list[str]:
    available = ort.get_available_providers()
    chosen = [p for p in dict.fromkeys(requested) if p in available]
    missing = [p for p in dict.fromkeys(requested) if p not in available]
    if missing:
        log.warning(
            "model %s: execution provider(s) %s not available in this onnxruntime "
            "(available: %s); falling back",
            model_id,
            ", ".join(missing),
            ", ".join(available),
        )
    if _CPU not in chosen:
        chosen.append(_CPU)
    return chosen


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: gateways log to stderr, keep it quiet
    # Deterministic kernels where the provider has a choice (CUDA's cuDNN algorithm search,
    # atomics in reductions); the CPU provider is deterministic at a fixed thread count.
    so.use_deterministic_compute = True
    # Memory only, never numbers: no BFC arena (it keeps its high-water mark for the life of
    # the session, e.g. after a large catch-up batch) and no memory-pattern planning (buffers
    # cached per input shape). Scores stay bit-for-bit the same (tests/test_footprint.py).
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    return so


def _check_signature(
    model_id: str, path: Path, session: Any, input_name: str, width: int, output: str
) -> None:
    where = f"model {model_id}: file {path}"
    inputs = session.get_inputs()
    if len(inputs) != 1:
        found = ", ".join(f"{i.name!r}" for i in inputs)
        raise ModelError(f"{where} has inputs {found}; expected exactly one (the features)")
    inp = inputs[0]
    if inp.name != input_name:
        raise ModelError(
            f"{where} has input {inp.name!r}; the policy declares input {input_name!r}"
        )
    shape = list(inp.shape)
    if inp.type != "tensor(float)" or len(shape) != 2 or shape[1] != width:
        raise ModelError(
            f"{where}: input {inp.name!r} is {inp.type} of shape {shape}; the policy's "
            f"features fill tensor(float) of shape [N, {width}]"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    if output not in outputs:
        raise ModelError(f"{where} has no output {output!r}; its outputs are {sorted(outputs)}")
    out = outputs[output]
    if out.type not in _FLOAT_TENSORS:
        raise ModelError(
            f"{where}: output {output!r} is {out.type}; expected tensor(float) or tensor(double)"
        )


def _metadata(
    model_id: str, path: Path, session: Any, features: tuple[str, ...], width: int
) -> np.ndarray | None:
    """Check the model's own ``features`` metadata; return its ``feature_ranges`` (or None)."""
    where = f"model {model_id}: file {path}"
    meta = session.get_modelmeta().custom_metadata_map
    declared = meta.get("features")
    if declared is not None:
        try:
            declared = json.loads(declared)
        except ValueError:
            pass
        if declared != list(features):
            raise ModelError(
                f"{where} declares features {declared}; the policy feeds it {list(features)}"
            )
    text = meta.get("feature_ranges")
    if text is None:
        log.warning(
            "%s carries no feature_ranges metadata: out-of-distribution inputs are not flagged",
            where,
        )
        return None
    try:
        ranges = np.array(json.loads(text), dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise ModelError(f"{where}: metadata feature_ranges is not a JSON list of [lo, hi]") from e
    if ranges.shape != (width, 2) or not (ranges[:, 0] <= ranges[:, 1]).all():
        raise ModelError(
            f"{where}: metadata feature_ranges must hold {width} pairs [lo, hi] with lo <= hi "
            f"(one per input); it has shape {list(ranges.shape)}"
        )
    return np.ascontiguousarray(ranges.T)


def _check_runs(model_id: str, path: Path, session: Any, width: int, output: str) -> None:
    """Run the model once on zeros: it must execute and give one score per row."""
    probe = np.zeros((2, width), dtype=np.float32)
    try:
        y = session.run([output], {session.get_inputs()[0].name: probe})[0]
    except Exception as e:  # onnxruntime's pybind errors share no base class
        raise ModelError(f"model {model_id}: file {path} does not run: {e}") from e
    if y.size != probe.shape[0]:
        raise ModelError(
            f"model {model_id}: file {path}: output {output!r} has shape {list(y.shape)} for "
            f"{probe.shape[0]} input rows; expected one score per row ([N] or [N, 1])"
        )


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The top-level fields of a protobuf message: (field number, int or bytes)."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, value))
        elif wire == 2:
            n, i = _varint(data, i)
            if i + n > len(data):
                raise ValueError("truncated field")
            out.append((number, data[i : i + n]))
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def model_opset(data: bytes) -> dict[str, int]:
    """The opset imports of a serialised ONNX ModelProto: domain -> version ("" = ai.onnx).

    A few lines of protobuf reading (ModelProto field 8 = OperatorSetIdProto{1: domain,
    2: version}) rather than the ``onnx`` package, which a gateway does not otherwise need.

    Raises:
        ModelError: the bytes are not a well-formed protobuf message.
    """
    opsets: dict[str, int] = {}
    try:
        for number, value in _fields(data):
            if number == 8 and isinstance(value, bytes):
                domain, version = "", 0
                for n2, v2 in _fields(value):
                    if n2 == 1 and isinstance(v2, bytes):
                        domain = v2.decode("utf-8", "replace")
                    elif n2 == 2 and isinstance(v2, int):
                        version = v2
                opsets["" if domain == "ai.onnx" else domain] = version
    except ValueError as e:
        raise ModelError(f"not an ONNX model ({e})") from e
    return opsets


def load_model(
    model_id: str,
    path: Path,
    sha256: str,
    features: Sequence[str],
    output: str = "probability",
    threshold: float = 0.5,
    providers: Sequence[str] = (_CPU,),
    intra_op_threads: int = 1,
    *,
    input_name: str = "features",
    opset: int | None = None,
) -> RiskModel:
    """Load an ONNX risk model if, and only if, its bytes have the pinned SHA-256.

    The file is read once; the digest of those bytes is checked before onnxruntime sees
    them, and the same bytes are then loaded. The requested execution providers that this
    onnxruntime has are used in order, with the CPU provider always last as the fallback.

    Args:
        model_id: id of the model in the policy (used in messages and attestations).
        path: the .onnx file.
        sha256: expected hex SHA-256 of the file, from the policy.
        features: feature specs, in the model's input order (see agent/risk/features.py).
        output: name of the model output holding the probability.
        threshold: the policy's decision threshold (kept on the model for the caller).
        providers: onnxruntime execution providers in order of preference.
        intra_op_threads: onnxruntime intra-op threads (1 on small gateways).
        input_name: the name the model's one input must have.
        opset: the ai.onnx opset the policy declares; the model must import exactly it.

    Raises:
        ModelError: the file is missing or unreadable, its digest differs, it is not a
            well-formed ONNX model or imports another opset, onnxruntime cannot load it, a
            feature spec is malformed, or its input/output signature does not match.
    """
    path = Path(path)
    features = tuple(features)
    try:
        width = sum(parse_feature(spec).width for spec in features)
    except ModelError as e:
        raise ModelError(f"model {model_id}: {e}") from e
    expected = sha256.strip().lower()
    if not _SHA256_RE.fullmatch(expected):
        raise ModelError(
            f"model {model_id}: the policy's SHA-256 {sha256!r} for {path} is not 64 hex "
            f"digits; refusing to load it"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ModelError(f"model {model_id}: file {path} does not exist") from e
    except OSError as e:
        raise ModelError(f"model {model_id}: cannot read file {path}: {e.strerror}") from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelError(
            f"model {model_id}: file {path} has SHA-256 {actual}, the policy expects "
            f"{expected}; refusing to load it"
        )
    if opset is not None:
        try:
            found = model_opset(data).get("")
        except ModelError as e:
            raise ModelError(f"model {model_id}: file {path} is {e}") from e
        if found != opset:
            raise ModelError(
                f"model {model_id}: file {path} uses ai.onnx opset {found}; the policy "
                f"declares opset {opset}"
            )

    chosen = _choose_providers(model_id, providers)
    try:
        session = ort.InferenceSession(
            data, sess_options=_session_options(intra_op_threads), providers=chosen
        )
    except Exception as e:  # onnxruntime's pybind errors share no base class
        raise ModelError(f"model {model_id}: onnxruntime cannot load file {path}: {e}") from e
    _check_signature(model_id, path, session, input_name, width, output)
    ranges = _metadata(model_id, path, session, features, width)
    _check_runs(model_id, path, session, width, output)
    model = RiskModel(
        model_id=model_id,
        sha256=actual,
        session=session,
        features=features,
        output=output,
        threshold=threshold,
        ranges=ranges,
    )
    if model.provider != chosen[0]:
        log.warning(
            "model %s: onnxruntime uses %s, not the preferred %s",
            model_id,
            model.provider,
            chosen[0],
        )
    log.info("model %s (sha256 %s) loaded on %s", model_id, actual, model.provider)
    return model


def load_declared(
    ref: ModelRef, providers: Sequence[str] = (_CPU,), intra_op_threads: int = 1
) -> RiskModel:
    """:func:`load_model` for a policy's declaration of the model."""
    return load_model(
        ref.id,
        ref.path,
        ref.sha256,
        ref.features,
        ref.output,
        ref.threshold,
        providers,
        intra_op_threads,
        input_name=ref.input,
        opset=ref.opset,
    )
