"""ONNX risk models: load one only if its digest matches, compute its features, score it.

A policy names each risk model by id, file, SHA-256 and input features (PRODUCT.md §4).
:func:`load_model` reads the file once, checks the digest of exactly those bytes and only
then hands them to onnxruntime, so the bytes that were checked are the bytes that run (no
window for the file to change between check and load). A model that cannot be used raises
:class:`~agent.errors.ModelError`; the agent then falls back to the rules alone and marks
the evidence as degraded.

Feature specs are strings ``AGG(channel)`` with ``AGG`` one of :data:`FEATURE_AGGREGATES`,
e.g. ``"mean(temperature)"``. :func:`compute_features` evaluates them over one window of
columnar readings (NaN = missing reading); ``stddev`` is the population standard deviation
(ddof=0), as in the training script ``configs/models/train_excursion_model.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.errors import ModelError

__all__ = [
    "FEATURE_AGGREGATES",
    "RiskModel",
    "compute_features",
    "load_model",
    "parse_feature",
]

log = logging.getLogger("edgegov.risk")

FEATURE_AGGREGATES = ("mean", "min", "max", "stddev")

_CPU = "CPUExecutionProvider"
_FEATURE_RE = re.compile(r"(?P<agg>[a-z]+)\((?P<channel>[A-Za-z_][A-Za-z0-9_]*)\)")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_FLOAT_TENSORS = ("tensor(float)", "tensor(double)")


def parse_feature(spec: str) -> tuple[str, str]:
    """Split a feature spec ``"AGG(channel)"`` into ``(AGG, channel)``.

    Raises:
        ModelError: the spec is not of that form or names an unknown aggregate.
    """
    match = _FEATURE_RE.fullmatch(spec)
    if match is None:
        raise ModelError(
            f"feature {spec!r} is not of the form AGG(channel) with AGG one of "
            f"{', '.join(FEATURE_AGGREGATES)} and channel an identifier"
        )
    agg = match["agg"]
    if agg not in FEATURE_AGGREGATES:
        raise ModelError(
            f"feature {spec!r}: unknown aggregate {agg!r}; expected one of "
            f"{', '.join(FEATURE_AGGREGATES)}"
        )
    return agg, match["channel"]


def compute_features(
    specs: Sequence[str], columns: np.ndarray, channel_index: Mapping[str, int]
) -> np.ndarray:
    """Compute the features ``specs`` over one window of readings.

    Args:
        specs: feature specs such as ``"max(temperature)"``, in the model's input order.
        columns: float64 array (n_channels, n_readings); NaN marks a missing reading.
        channel_index: row of ``columns`` for each channel name.

    Returns:
        float32 array (1, len(specs)). NaN readings are ignored; a feature whose channel has
        no valid reading in the window is NaN (and :meth:`RiskModel.score` refuses it).

    Raises:
        ModelError: a spec is malformed or names a channel not in ``channel_index``.
    """
    out = np.empty((1, len(specs)), dtype=np.float32)
    valid: dict[int, np.ndarray] = {}  # channel row -> its non-NaN readings
    with np.errstate(all="ignore"):  # inf readings give inf/NaN features, refused at scoring
        for j, spec in enumerate(specs):
            agg, channel = parse_feature(spec)
            row = channel_index.get(channel)
            if row is None:
                raise ModelError(
                    f"feature {spec!r} needs channel {channel!r}, which is not among the "
                    f"channels {sorted(channel_index)}"
                )
            values = valid.get(row)
            if values is None:
                column = columns[row]
                values = valid[row] = column[~np.isnan(column)]
            if values.size == 0:
                out[0, j] = np.nan
            elif agg == "mean":
                out[0, j] = values.mean()
            elif agg == "min":
                out[0, j] = values.min()
            elif agg == "max":
                out[0, j] = values.max()
            else:  # stddev, population (ddof=0)
                out[0, j] = values.std()
    return out


class RiskModel:
    """A loaded, digest-checked ONNX risk model. Build it with :func:`load_model`.

    Attributes:
        id: model id from the policy.
        sha256: hex digest of the exact bytes that were loaded.
        provider: the onnxruntime execution provider actually in use.
        features: the input feature specs, in input order.
        output: name of the probability output.
        threshold: the policy's decision threshold on the score.
    """

    __slots__ = (
        "_input_name",
        "_n_features",
        "_output_names",
        "_run",
        "_session",
        "features",
        "id",
        "output",
        "provider",
        "sha256",
        "threshold",
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
    ) -> None:
        self.id = model_id
        self.sha256 = sha256
        self.features = features
        self.output = output
        self.threshold = threshold
        self.provider: str = session.get_providers()[0]
        self._session = session
        self._run = session.run
        self._input_name: str = session.get_inputs()[0].name
        self._output_names = [output]
        self._n_features = len(features)

    def __repr__(self) -> str:
        return (
            f"RiskModel(id={self.id!r}, sha256={self.sha256[:12]}..., "
            f"provider={self.provider!r}, features={self.features!r})"
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """Score a batch of feature rows.

        Args:
            features: float32 array (N, F), F = len(self.features).

        Returns:
            float64 array (N,) of scores.

        Raises:
            ModelError: an input is NaN or infinite, the model's output is NaN or infinite,
                has the wrong size, or onnxruntime fails. The caller marks that window's risk
                as not available.
            ValueError: ``features`` is not a 2-D array with F columns.
        """
        x = np.ascontiguousarray(features, dtype=np.float32)  # no copy in the usual case
        if x.ndim != 2 or x.shape[1] != self._n_features:
            raise ValueError(
                f"model {self.id}: expected features of shape (N, {self._n_features}), "
                f"got {x.shape}"
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
    return so


def _check_signature(
    model_id: str, path: Path, session: Any, features: tuple[str, ...], output: str
) -> None:
    where = f"model {model_id}: file {path}"
    inputs = session.get_inputs()
    if len(inputs) != 1:
        found = ", ".join(f"{i.name!r}" for i in inputs)
        raise ModelError(f"{where} has inputs {found}; expected exactly one (the features)")
    inp = inputs[0]
    shape = list(inp.shape)
    if inp.type != "tensor(float)" or len(shape) != 2 or shape[1] != len(features):
        raise ModelError(
            f"{where}: input {inp.name!r} is {inp.type} of shape {shape}; expected "
            f"tensor(float) of shape [N, {len(features)}] for features {list(features)}"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    if output not in outputs:
        raise ModelError(f"{where} has no output {output!r}; its outputs are {sorted(outputs)}")
    out = outputs[output]
    if out.type not in _FLOAT_TENSORS:
        raise ModelError(
            f"{where}: output {output!r} is {out.type}; expected tensor(float) or tensor(double)"
        )
    meta = session.get_modelmeta().custom_metadata_map.get("features")
    if meta is not None:
        try:
            declared = json.loads(meta)
        except ValueError:
            declared = meta
        if declared != list(features):
            raise ModelError(
                f"{where} declares features {declared}; the policy feeds it {list(features)}"
            )


def _check_runs(model_id: str, path: Path, session: Any, n_features: int, output: str) -> None:
    """Run the model once on zeros: it must execute and give one score per row."""
    probe = np.zeros((2, n_features), dtype=np.float32)
    try:
        y = session.run([output], {session.get_inputs()[0].name: probe})[0]
    except Exception as e:  # onnxruntime's pybind errors share no base class
        raise ModelError(f"model {model_id}: file {path} does not run: {e}") from e
    if y.size != probe.shape[0]:
        raise ModelError(
            f"model {model_id}: file {path}: output {output!r} has shape {list(y.shape)} for "
            f"{probe.shape[0]} input rows; expected one score per row ([N] or [N, 1])"
        )


def load_model(
    model_id: str,
    path: Path,
    sha256: str,
    features: Sequence[str],
    output: str = "probability",
    threshold: float = 0.5,
    providers: Sequence[str] = (_CPU,),
    intra_op_threads: int = 1,
) -> RiskModel:
    """Load an ONNX risk model if, and only if, its bytes have the pinned SHA-256.

    The file is read once; the digest of those bytes is checked before onnxruntime sees
    them, and the same bytes are then loaded. The requested execution providers that this
    onnxruntime has are used in order, with the CPU provider always last as the fallback.

    Args:
        model_id: id of the model in the policy (used in messages and attestations).
        path: the .onnx file.
        sha256: expected hex SHA-256 of the file, from the policy.
        features: feature specs, in the model's input order (see :func:`parse_feature`).
        output: name of the model output holding the probability.
        threshold: the policy's decision threshold (kept on the model for the caller).
        providers: onnxruntime execution providers in order of preference.
        intra_op_threads: onnxruntime intra-op threads (1 on small gateways).

    Raises:
        ModelError: the file is missing or unreadable, its digest differs, onnxruntime
            cannot load it, a feature spec is malformed, or its input/output signature does
            not match ``features`` / ``output``.
    """
    path = Path(path)
    features = tuple(features)
    for spec in features:
        parse_feature(spec)
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

    chosen = _choose_providers(model_id, providers)
    try:
        session = ort.InferenceSession(
            data, sess_options=_session_options(intra_op_threads), providers=chosen
        )
    except Exception as e:  # onnxruntime's pybind errors share no base class
        raise ModelError(f"model {model_id}: onnxruntime cannot load file {path}: {e}") from e
    _check_signature(model_id, path, session, features, output)
    _check_runs(model_id, path, session, len(features), output)
    model = RiskModel(
        model_id=model_id,
        sha256=actual,
        session=session,
        features=features,
        output=output,
        threshold=threshold,
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
