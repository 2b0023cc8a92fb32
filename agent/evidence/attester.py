"""Turn a closed window into a signed, chained, durably stored attestation.

Order matters (docs/attestation-profile.md): salt and hash the readings into the device
log -> build claims with the checkpoint and the consistency proof from the
previous one -> sign -> commit attestation, readings, outbox row and new chain
state in one fsynced transaction -> only then hand it to the publisher. A crash
before the commit loses an unsigned window at most (the next attestation's
checkpoint and health show it); a crash after it loses nothing.

The first attestation an agent process signs carries the restart claim (-70001/12) the
agent gives :attr:`Attester.restart`; the journal of the open window (``agent.evidence.journal``)
leaves the store in the same transaction that commits the window it belongs to.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from agent import __version__
from agent.evidence.claims import (
    Checkpoint,
    ConfigInForce,
    Evidence,
    Restart,
    RiskResult,
    RuleResult,
    SelfTestResult,
    encode_claims,
)
from agent.evidence.cose import encode_sign1
from agent.evidence.leaves import encode_window
from agent.evidence.merkle import RangeHasher
from agent.evidence.store import ChainState, EvidenceStore, OutboxItem
from agent.identity.keys import SigningKey
from agent.sources.reading import Reading, ReadingBatch

__all__ = ["Attester", "agent_code_digest"]


@lru_cache(maxsize=1)
def agent_code_digest() -> str:
    """SHA-256 over the agent's own code (paths and bytes), for submods "agent"."""
    root = Path(__file__).resolve().parents[2]  # agent/evidence/attester.py -> the root
    h = hashlib.sha256()
    for pkg in ("agent", "native", "firmware_bridge"):
        for f in sorted((root / pkg).rglob("*")):
            if f.suffix in (".py", ".pyx", ".so") and "__pycache__" not in f.parts:
                rel = f.relative_to(root).as_posix().encode()
                h.update(len(rel).to_bytes(4, "big") + rel)
                data = f.read_bytes()
                h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


class Attester:
    """Owns the device key and the chain; one instance per agent."""

    def __init__(
        self,
        device_id: str,
        signer: SigningKey,
        store: EvidenceStore,
        topic: str,
        *,
        x5chain: tuple[bytes, ...] = (),
        retention_ms: int | None = None,
        sensors: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.device_id = device_id
        self.signer = signer
        self.store = store
        self.topic = topic
        self.x5chain = x5chain
        self.retention_ms = retention_ms
        self.sensors = dict(sensors or {})
        self._started = time.monotonic()
        self._digest = agent_code_digest()
        # -70001/12 for the first attestation this process signs; cleared once one is stored
        self.restart: Restart | None = None

    def attest(
        self,
        window: tuple[int, int],
        readings: Sequence[Reading],
        config: ConfigInForce,
        rules: tuple[RuleResult, ...],
        risk: tuple[RiskResult, ...],
        health: Mapping[str, int],
        degraded: tuple[str, ...],
        nonce: bytes | None = None,
        journal: Callable[[sqlite3.Connection], None] | None = None,
        self_tests: tuple[SelfTestResult, ...] = (),
    ) -> OutboxItem:
        """Sign and durably store one window; returns the outbox item to publish.

        ``journal`` runs inside the commit's transaction (``EvidenceStore.commit(also=)``).
        """
        state = self.store.state
        before = state.log
        batch = (
            readings
            if isinstance(readings, ReadingBatch)
            else ReadingBatch.of(readings, len(readings[0].values) if readings else 0)
        )
        records = encode_window(before.size, secrets.token_bytes(32), batch)
        leaves = records.leaf_hashes()
        log = before.copy()
        log.extend(leaves)
        ev = Evidence(
            device_id=self.device_id,
            seq=state.next_seq,
            prev=state.prev,
            window_start_ms=window[0],
            window_end_ms=window[1],
            readings=len(readings),
            checkpoint=Checkpoint(
                state.origin,
                log.size,
                log.root(),
                before.size,
                tuple(RangeHasher(before, leaves).consistency_proof()),
            ),
            config=config,
            rules=rules,
            risk=risk,
            health=health,
            degraded=degraded,
            issued_at=int(time.time()),
            cti=secrets.token_bytes(16),
            uptime_s=int(time.monotonic() - self._started),
            bootcount=state.bootcount,
            nonce=nonce,
            agent_version=__version__,
            agent_digest=self._digest,
            sensors=self.sensors,
            restart=self.restart,
            self_tests=self_tests,
        )
        cose = encode_sign1(encode_claims(ev), self.signer, self.x5chain)
        new_state = ChainState(
            state.origin, ev.seq + 1, hashlib.sha256(cose).digest(), log, state.bootcount
        )
        self.store.commit(ev.seq, window, cose, self.topic, new_state, records, also=journal)
        self.restart = None  # stated once, in the first attestation stored
        if self.retention_ms is not None:
            self.store.prune(window[1] - self.retention_ms)
        return OutboxItem(ev.seq, self.topic, cose)
