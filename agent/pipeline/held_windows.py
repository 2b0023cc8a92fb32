"""Windows the agent could not sign before it stopped, kept for the next start.

When the evidence store refuses writes (disk full, I/O error, a corrupt store) the agent
holds closed windows in memory and retries. If it has to stop first, it writes them to
``state_dir/held-windows.cbor`` and the next start signs them before anything else; if
even that fails, the agent says how many windows and readings were lost and exits
non-zero (``agent.pipeline.runner``). Nothing is dropped silently.

The file holds what the agent had in memory: per window its bounds, readings, data-quality
health and the policy's results (computed once, when the window closed: the evaluator has
moved on since), plus the policy evaluator's state after the last one (``policy-state.bin``
may not have been writable either). It is signed with the device key (over a context string
no attestation starts with), so a start signs back only windows this agent wrote.

A full disk leaves no room for the file, so the agent keeps ``held-windows.reserve``
(:data:`RESERVE_BYTES`, allocated at start) beside it and deletes it to make room.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import numpy as np

from agent.errors import StorageError, VerificationError
from agent.evidence.claims import RiskResult, SelfTestResult, parse_self_test_claim, self_test_claim
from agent.pipeline.evaluate import WindowVerdicts, summarise_rules
from agent.pipeline.window import Window
from agent.policy.evaluator import BatchResult, Episode
from agent.sources.reading import Reading

if TYPE_CHECKING:
    from agent.identity.keys import PublicKey, SigningKey

__all__ = [
    "FILE",
    "RESERVE",
    "RESERVE_BYTES",
    "HeldWindows",
    "decode_held",
    "encode_held",
    "ensure_reserve",
    "save_held",
]

FILE = "held-windows.cbor"
RESERVE = "held-windows.reserve"
RESERVE_BYTES = 1 << 20  # ~80 five-second windows at 50 Hz with 3 channels
_CONTEXT = b"edgegov held windows v1\x00"
_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class HeldWindows:
    """What a stopped agent held: its windows (results set) with their health."""

    device_id: str
    origin: str  # the log they were held for
    policy_digest: str  # the policy whose results they carry
    state_after: bytes  # the evaluator's state after the last of them (Evaluator.snapshot)
    windows: list[tuple[Window, dict[str, Any]]]

    @property
    def readings(self) -> int:
        return sum(w.n for w, _ in self.windows)


def encode_held(held: HeldWindows, signer: SigningKey) -> bytes:
    """The signed file content."""
    payload = cbor2.dumps(
        {
            "device": held.device_id,
            "origin": held.origin,
            "policy": held.policy_digest,
            "state_after": held.state_after,
            "windows": [_window(w, h) for w, h in held.windows],
        }
    )
    return cbor2.dumps([payload, signer.sign(_CONTEXT + payload)])


def decode_held(
    data: bytes, key: PublicKey, n_channels: int, rule_ids: Sequence[str]
) -> HeldWindows:
    """Verify and read a held-windows file (``n_channels`` and ``rule_ids``: the policy's).

    Raises:
        StorageError: not signed by ``key``, or not a held-windows file.
    """
    try:
        payload, signature = cbor2.loads(data)
        ok = key.verify(signature, _CONTEXT + payload)
    except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
        raise StorageError(f"not a held-windows file ({e})") from e
    if not ok:
        raise StorageError("its signature does not verify with the device key")
    try:
        body = cbor2.loads(payload)
        windows = [_unwindow(w, n_channels, rule_ids) for w in body["windows"]]
        return HeldWindows(
            str(body["device"]),
            str(body["origin"]),
            str(body["policy"]),
            _bytes(body["state_after"], "state_after"),
            windows,
        )
    except (ValueError, TypeError, KeyError, IndexError, cbor2.CBORDecodeError) as e:
        raise StorageError(f"signed, but its content does not decode ({e})") from e


def save_held(state_dir: Path, data: bytes) -> Path:
    """Write ``data`` to ``state_dir/held-windows.cbor`` (fsynced, atomic rename).

    On a full disk the reserve is deleted first to make room.

    Raises:
        OSError: it could not be written even then.
    """
    path = state_dir / FILE
    tmp = state_dir / (FILE + ".tmp")
    try:
        try:
            _write(tmp, data)
        except OSError as e:
            if e.errno not in _FULL:
                raise
            (state_dir / RESERVE).unlink(missing_ok=True)  # what it is there for
            _write(tmp, data)
        os.replace(tmp, path)
        dir_fd = os.open(state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def ensure_reserve(state_dir: Path) -> None:
    """Allocate the reserve (real blocks, not a sparse file) if it is not there.

    Raises:
        OSError: it could not be allocated (the caller warns: a full disk at stop may
            then lose held windows).
    """
    path = state_dir / RESERVE
    try:
        if path.stat().st_size >= RESERVE_BYTES:
            return
    except FileNotFoundError:
        pass
    tmp = state_dir / (RESERVE + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _window(w: Window, health: Mapping[str, Any]) -> dict[str, Any]:
    assert w.results is not None, "a held window has been evaluated"
    v = w.results
    batch, risk, out_of_range, state_in = v.batch, v.risk, v.out_of_range, v.state_in
    codes = np.ascontiguousarray(batch.codes, dtype=np.uint8)
    return {
        "bounds": [w.start_ms, w.end_ms],
        "readings": [
            [r.received_ms, r.device_ms, r.source, r.frame_seq, list(r.values)] for r in w.records
        ],
        "health": dict(health),
        "codes": [list(codes.shape), codes.tobytes()],
        "episodes": [[[e.start_ms, e.end_ms, e.peak] for e in eps] for eps in batch.episodes],
        "batch_out_of_range": dict(batch.out_of_range),
        "batch_missing": dict(batch.missing),
        "risk": [
            [r.model_id, r.score, r.provider, r.reason, None if r.ood is None else list(r.ood)]
            for r in risk
        ],
        "out_of_range": out_of_range,
        "state_in": state_in,
        "self_tests": [self_test_claim(t) for t in v.self_tests],
    }


def _unwindow(
    d: Mapping[str, Any], n_channels: int, rule_ids: Sequence[str]
) -> tuple[Window, dict[str, Any]]:
    start, end = (int(x) for x in d["bounds"])
    w = Window(start, end, n_channels)
    for rec, dev, src, fseq, values in d["readings"]:
        vals = tuple(float(v) for v in values)
        if len(vals) != n_channels:
            raise ValueError(f"a reading has {len(vals)} values, the policy {n_channels}")
        w.add(Reading(int(rec), int(dev), int(src), int(fseq), vals))
    shape, raw = d["codes"]
    codes = np.frombuffer(raw, dtype=np.uint8).reshape(tuple(int(x) for x in shape)).copy()
    episodes = [
        [Episode(int(s), None if e is None else int(e), _num(p)) for s, e, p in eps]
        for eps in d["episodes"]
    ]
    batch = BatchResult(codes, episodes, dict(d["batch_out_of_range"]), dict(d["batch_missing"]))
    risk = tuple(
        RiskResult(str(m), _num(s), str(p), str(r), None if o is None else tuple(o))
        for m, s, p, r, o in d["risk"]
    )
    state_in = d["state_in"]
    # windows of another policy (another rule count) get no summary: the runner refuses
    # them by the policy digest the file names (its _held_problem), before any use
    rules = summarise_rules(rule_ids, batch, w.timestamps) if len(codes) == len(rule_ids) else ()
    # the self-tests due in the window ran when it closed; a file written before they
    # existed has none
    tests = _self_tests(d["self_tests"]) if d.get("self_tests") else ()
    w.results = WindowVerdicts(
        batch,
        rules,
        risk,
        int(d["out_of_range"]),
        None if state_in is None else str(state_in),
        None,
        tests,
    )
    return w, dict(d["health"])


def _self_tests(x: Any) -> tuple[SelfTestResult, ...]:
    try:
        return parse_self_test_claim(x)
    except VerificationError as e:
        raise ValueError(str(e)) from None


def _bytes(x: object, what: str) -> bytes:
    if not isinstance(x, bytes):
        raise TypeError(f"{what} is not a byte string")
    return x


def _num(x: object) -> float | None:
    if x is None:
        return None
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        raise ValueError(f"not a number: {x!r}")
    return float(x)
