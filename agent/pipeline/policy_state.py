"""The policy evaluator's state across restarts: checkpoints, and the windows replayed since.

In: the evaluator (``agent.policy.evaluator``), the evidence store. Out: an evaluator that
continues from the state after the last signed window, bit for bit, or a warning that it
does not.

The state digest is taken after every window (it is signed, claim -70001/5 key 9, and each
journal commit records it), but the state itself (with a ``mean(x, 10m)`` at 1 kHz, about
10 MB of ring buffer) is written only every :data:`CHECKPOINT_MS` of windows, at a policy
switch and at a stop: ``policy-state.bin``, the one before it kept as
``policy-state.prev.bin``. After a crash the state after the last signed window is rebuilt
from the newest checkpoint at or before it by evaluating the windows signed since, from the
readings the store holds (the same step the agent ran, ``agent.pipeline.evaluate``), and is
used only if it reaches the signed digest.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cbor2

from agent.errors import Error
from agent.evidence.claims import parse_claims
from agent.evidence.cose import decode_sign1
from agent.evidence.leaves import records_to_columns
from agent.evidence.store_reader import StoreReader
from agent.identity.keys import PublicKey
from agent.pipeline.evaluate import evaluate_windows
from agent.policy import PolicyBundle
from agent.policy.evaluator import Evaluator, snapshot_digest
from agent.risk.engine import RiskEngine
from agent.risk.onnx_model import RiskModel

__all__ = ["CHECKPOINT_MS", "Checkpoints", "replay_since"]

log = logging.getLogger("edgegov.agent")

#: How much window time may pass between two saved states: what a crash costs in replay
#: at the next start (at most this much of stored readings evaluated again, ~0.1 s per
#: minute of 1 kHz readings), traded against writing the whole state more often.
CHECKPOINT_MS = 300_000


@dataclass(frozen=True)
class Checkpoint:
    snapshot: bytes
    digest: str  # the state digest the snapshot names
    after_ms: int | None  # the end of the window it is the state after (None: unknown)


class Checkpoints:
    """``policy-state.bin`` (the newest saved state) and ``policy-state.prev.bin``.

    A file is ``<end of the window, 8 bytes big-endian, or all ones>`` followed by the
    evaluator's snapshot (``Evaluator.snapshot``).
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "policy-state.bin"
        self.prev = state_dir / "policy-state.prev.bin"
        self.saved_ms: int | None = None  # the window end of the newest checkpoint written

    def due(self, window_end_ms: int) -> bool:
        return self.saved_ms is None or window_end_ms - self.saved_ms >= CHECKPOINT_MS

    def save(self, snapshot: bytes, after_ms: int | None) -> None:
        """Write a checkpoint, the one before kept as the previous (a write that fails is
        logged: the next start replays from the older one)."""
        try:
            os.replace(self.path, self.prev)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("cannot keep the previous policy state: %s", e)
        tag = (2**64 - 1 if after_ms is None else after_ms).to_bytes(8, "big")
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_bytes(tag + snapshot)
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot save the policy state to %s: %s", self.path, e)
            return
        self.saved_ms = after_ms

    def load(self, which: Path) -> Checkpoint:
        """Raises OSError (FileNotFoundError: none there) or PolicyError (not a state)."""
        data = which.read_bytes()
        tag = int.from_bytes(data[:8], "big")
        snapshot = data[8:]
        return Checkpoint(snapshot, snapshot_digest(snapshot), None if tag == 2**64 - 1 else tag)


def replay_since(
    evaluator: Evaluator,
    after_ms: int,
    signed: str,
    store_path: Path,
    bundle: PolicyBundle,
    models: list[RiskModel],
    key: PublicKey,
) -> int:
    """Evaluate the signed windows that start at or after ``after_ms`` (the checkpoint's),
    in seq order, until the evaluator's state digest is ``signed``; returns how many.

    Each attestation is verified with ``key`` and must be under ``bundle``; the risk scores
    are computed again from the readings (the engine primed with those before, as at a
    start), and only the models each attestation has results for count, as in
    ``edgegov audit replay``.

    Raises:
        Error: a window cannot be replayed (another policy, readings missing, a bad
            signature), or the digest was not reached; the evaluator is then in an
            unspecified state and must be replaced.
    """
    if evaluator.state_digest() == signed:
        return 0
    store = StoreReader(store_path)
    try:
        seqs = store.seqs_from(after_ms)
        if not seqs:
            raise Error(f"no signed window starts at or after {after_ms}")
        engine = RiskEngine(models, [c.name for c in bundle.channels])
        engine.prime(store.records_before(seqs[0], *engine.lookback), bundle)
        for n, seq in enumerate(seqs, 1):
            row = store.window(seq)
            assert row is not None  # listed by seqs_from on the same read-only connection
            msg = decode_sign1(row.cose)
            msg.verify(key)
            ev = parse_claims(cbor2.loads(msg.payload))
            if ev.config.policy_digest != bundle.digest:
                raise Error(f"seq {seq} ran under another policy")
            records = store.records(seq)
            if len(records) != ev.readings:
                raise Error(f"the store holds {len(records)} of seq {seq}'s {ev.readings} readings")
            window = records_to_columns(records, len(bundle.channels))
            evaluate_windows(bundle, evaluator, engine, [window], [{r.model_id for r in ev.risk}])
            if evaluator.state_digest() == signed:
                return n
        raise Error(f"{len(seqs)} window(s) replayed and the state is not the signed one")
    finally:
        store.close()
