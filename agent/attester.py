"""Turn a closed window into a signed, chained, durably stored attestation.

Order matters (PRODUCT.md §5, §7): build claims -> sign -> commit attestation,
outbox row and new chain state in one fsynced transaction -> only then hand it
to the publisher. A crash before the commit loses an unsigned window at most
(the next attestation's checkpoint and health show it); a crash after it
loses nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping, Sequence

import cbor2

from agent.attestation import (
    Checkpoint,
    ConfigInForce,
    Evidence,
    RiskResult,
    RuleResult,
    encode_claims,
)
from agent.cose import encode_sign1
from agent.keys import Signer
from agent.merkle import CompactRange, leaf_hash
from agent.store import ChainState, EvidenceStore, OutboxItem
from agent.window import Reading

__all__ = ["Attester", "reading_record"]


def reading_record(r: Reading) -> bytes:
    """One reading as Merkle leaf bytes: CBOR [received_ms, device_ms, source, seq, values]."""
    return cbor2.dumps([r.received_ms, r.device_ms, r.source, r.frame_seq, list(r.values)])


class Attester:
    """Owns the device key and the chain; one instance per agent."""

    def __init__(self, device_id: str, signer: Signer, store: EvidenceStore, topic: str) -> None:
        self.device_id = device_id
        self.signer = signer
        self.store = store
        self.topic = topic
        self._started = time.monotonic()

    def attest(
        self,
        window: tuple[int, int],
        readings: Sequence[Reading],
        config: ConfigInForce,
        rules: tuple[RuleResult, ...],
        risk: tuple[RiskResult, ...],
        health: Mapping[str, int],
        degraded: tuple[str, ...],
    ) -> OutboxItem:
        """Sign and durably store one window; returns the outbox item to publish."""
        state = self.store.state
        log = CompactRange(state.log.size, state.log.nodes)
        log.extend(leaf_hash(reading_record(r)) for r in readings)
        ev = Evidence(
            device_id=self.device_id,
            seq=state.next_seq,
            prev=state.prev,
            window_start_ms=window[0],
            window_end_ms=window[1],
            readings=len(readings),
            checkpoint=Checkpoint(state.origin, log.size, log.root()),
            config=config,
            rules=rules,
            risk=risk,
            health=health,
            degraded=degraded,
            issued_at=int(time.time()),
            cti=secrets.token_bytes(16),
            uptime_s=int(time.monotonic() - self._started),
            bootcount=state.bootcount,
        )
        cose = encode_sign1(encode_claims(ev), self.signer)
        new_state = ChainState(
            state.origin, ev.seq + 1, hashlib.sha256(cose).digest(), log, state.bootcount
        )
        self.store.commit(ev.seq, window, cose, self.topic, new_state)
        return OutboxItem(ev.seq, self.topic, cose)
