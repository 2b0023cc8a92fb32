"""Evidence: what the agent signs, stores and proves.

In: closed windows of readings with their verdicts (``agent.pipeline``), the device key
(``agent.identity``). Out: signed COSE_Sign1 attestations (``cose``, claims laid out by
``claims``: ``docs/attestation-profile.md``) stored with the raw readings, the Merkle log
(``leaves``, ``merkle``) and the chain state in one SQLite file (``store``, the only owner
of its schema), handed to ``agent.transport`` to publish. Also what keeps that store
honest across crashes and faults: the open window's ``journal``, ``chain_check`` and
``log_head`` at start, and key ``rotation`` statements. The auditor's side reads the
same modules (``agent.audit``; what only reads the store does it through
``store_reader``).
"""

__all__ = [
    "attester",
    "cbor_limits",
    "chain_check",
    "claims",
    "cose",
    "journal",
    "leaves",
    "log_head",
    "merkle",
    "rotation",
    "store",
    "store_reader",
]
