"""Inclusion proofs for single readings (`edgegov audit prove`).

A proof file is self-contained CBOR::

    proof = { 1: record bstr,            ; the salted leaf record (agent.evidence.leaves)
              2: leaf index uint,
              3: tree size uint,         ; = the checkpoint size of the window's attestation
              4: [* bstr(32)],           ; RFC 9162 §2.1.3 inclusion path, ceil(log2 N) hashes
              5: attestation bstr }      ; the COSE_Sign1 of the reading's window

Checking needs only trust anchors: the attestation's signature, then
``leaf = SHA-256(0x00 || record)`` included at ``index`` under its checkpoint
root, and the record's own index field equal to ``index``. The proof reveals
this reading and its salt only; its path holds hashes of salted neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2

from agent.audit.trust import TrustStore
from agent.errors import VerificationError
from agent.evidence.cbor_limits import check_cbor
from agent.evidence.claims import Evidence
from agent.evidence.leaves import LeafRecord, decode_record
from agent.evidence.merkle import ProofError, leaf_hash, verify_inclusion
from agent.evidence.store_reader import read_retained
from agent.identity.keys import PublicKey

__all__ = ["ProvenReading", "check_proof", "make_proof"]


def make_proof(store: Path, index: int) -> bytes:
    """The proof file for reading ``index`` of the evidence store at ``store``."""
    r = read_retained(store, index)
    return cbor2.dumps(
        {1: r.record, 2: r.index, 3: r.tree_size, 4: list(r.proof), 5: r.attestation}
    )


@dataclass(frozen=True)
class ProvenReading:
    reading: LeafRecord
    evidence: Evidence
    proof_hashes: int


def check_proof(data: bytes, anchors: Sequence[PublicKey] | TrustStore) -> ProvenReading:
    """Verify a proof file; raises VerificationError saying what does not hold."""
    trust = anchors if isinstance(anchors, TrustStore) else TrustStore.of_keys(anchors)
    if trust.empty:
        raise VerificationError("no trust anchors given: pass --trust FILE or --key PEM")
    if len(data) > 128 * 1024:
        raise VerificationError(f"proof is {len(data)} bytes; the limit is 131072")
    check_cbor(data, "proof", max_depth=3, max_items=200)
    p = cbor2.loads(data)
    if not isinstance(p, dict) or not all(k in p for k in (1, 2, 3, 4, 5)):
        raise VerificationError("proof must be a map with keys 1..5 (see docs)")
    record, index, size, path, att = p[1], p[2], p[3], p[4], p[5]
    if not (isinstance(record, bytes) and isinstance(att, bytes) and isinstance(path, list)):
        raise VerificationError("proof fields have the wrong types")
    if not (isinstance(index, int) and isinstance(size, int)):
        raise VerificationError("proof index and size must be integers")
    ev = trust.evidence(att)
    if size != ev.checkpoint.size:
        raise VerificationError(
            f"proof is for a tree of {size} leaves, the attestation's checkpoint has "
            f"{ev.checkpoint.size}"
        )
    try:
        verify_inclusion(index, size, leaf_hash(record), path, ev.checkpoint.root)
    except ProofError as e:
        raise VerificationError(f"reading {index}: {e}") from e
    try:
        reading = decode_record(record)
    except ValueError as e:
        raise VerificationError(f"reading {index}: {e}") from e
    if reading.index != index:
        raise VerificationError(f"the record says index {reading.index}, the proof {index}")
    if not ev.checkpoint.prev_size <= index < ev.checkpoint.size:
        raise VerificationError(f"reading {index} is not in window seq {ev.seq}")
    return ProvenReading(reading, ev, len(path))
