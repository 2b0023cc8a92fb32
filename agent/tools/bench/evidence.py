"""Evidence: attestation build+sign, salted leaf hashing, audit verify vs raw Ed25519.

Targets (issue 6): build+sign <= 200 us per window excluding the Merkle work;
leaf hashing >= 1,000,000 readings/s. Issue 15: ``audit verify`` (every check and the
analysis, on one core) >= 1.5x the raw Ed25519 verify rate of ``cryptography``, measured
in this run beside the raw rate of libsodium (PyNaCl), which the verifier now uses; and
``audit verify --jobs 2`` against ``--jobs 1`` on a fleet's interleaved stream (worker
start included), the speed-up the second core buys.

The open window's journal (issue 12, ``agent.evidence.journal``): one write per
``FLUSH_S`` from the main loop, with what arrived meanwhile; measured at the
batch sizes of a 20 Hz device and of a full 115200-baud line, as % of a core.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.identity.keys import PublicKey, Signer, generate_key
from agent.tools.bench.core import Row, timeit, verdict

S = "evidence"


def _evidence(rules: int = 4) -> object:
    from agent.evidence.claims import (
        Checkpoint,
        ConfigInForce,
        Evidence,
        RiskResult,
        RuleResult,
    )

    return Evidence(
        device_id="gw-bench",
        seq=1234,
        prev=b"\x11" * 32,
        window_start_ms=1_700_000_000_000,
        window_end_ms=1_700_000_005_000,
        readings=500,
        checkpoint=Checkpoint(
            "edgegov/gw-bench/0011223344556677",
            617_500,
            b"\x22" * 32,
            617_000,
            tuple(b"\x33" * 32 for _ in range(19)),
        ),
        config=ConfigInForce("cold-chain", 3, "ab" * 32, {"excursion": "cd" * 32}),
        rules=tuple(RuleResult(f"rule-{i}", 500, i, 0, None, None) for i in range(rules)),
        risk=(RiskResult("excursion", 0.25, "CPUExecutionProvider"),),
        health={"frames_ok": 500, "crc_errors": 0, "framing_errors": 0, "seq_gaps": 0},
        issued_at=1_700_000_005,
        cti=b"\x44" * 16,
        uptime_s=3600,
        bootcount=3,
        agent_version="0.1.0",
        agent_digest="ee" * 32,
        sensors={"0": {"port": "/dev/ttyUSB0", "protocol": "framed"}},
    )


def _scratch() -> str | None:
    """Where to build bench streams: tmpfs where there is one. The evidence store fsyncs
    every attestation, as it must on a device; on a disk that makes a fleet's stream take
    longer to build than to audit, and measures nothing of the verifier."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _stream(n: int, device: str = "gw-bench") -> tuple[list[tuple[bytes, str, str | None]], Signer]:
    from agent.evidence.attester import Attester
    from agent.evidence.claims import ConfigInForce, RiskResult, RuleResult
    from agent.evidence.store import EvidenceStore
    from agent.sources.reading import Reading

    with tempfile.TemporaryDirectory(dir=_scratch()) as d:
        signer = generate_key(Path(d) / "k.key")
        store = EvidenceStore(Path(d) / "e.sqlite", device)
        att = Attester(device, signer, store, "t")
        cfg = ConfigInForce("cold-chain", 3, "ab" * 32, {"excursion": "cd" * 32})
        msgs: list[tuple[bytes, str, str | None]] = []
        for w in range(n):
            t0 = 1_700_000_000_000 + 5000 * w
            rs = [Reading(t0 + 10 * i, t0 + 10 * i, 0, i, (4.0, 50.0, 0.0)) for i in range(50)]
            item = att.attest(
                (t0, t0 + 5000),
                rs,
                cfg,
                tuple(RuleResult(f"rule-{i}", 50, 0, 0) for i in range(4)),
                (RiskResult("excursion", 0.2, "CPUExecutionProvider"),),
                {"frames_ok": 50, "crc_errors": 0},
                (),
            )
            msgs.append((item.payload, f"{device}/m{w}", None))
        store.close()
    return msgs, signer


def _fleet(devices: int, n: int) -> tuple[list[tuple[bytes, str, str | None]], list[PublicKey]]:
    """``devices`` streams of ``n`` attestations, interleaved as a collector receives them."""
    streams = [_stream(n, f"gw-bench-{i}") for i in range(devices)]
    msgs = [m for batch in zip(*(s for s, _ in streams)) for m in batch]
    return msgs, [signer.public for _, signer in streams]


def _audit_rows(quick: bool) -> list[Row]:
    """Raw Ed25519 verify in both libraries, ``audit verify`` on one core against them, and
    ``--jobs 2`` against ``--jobs 1`` on a fleet's stream (issue 15)."""
    import nacl.signing

    from agent.audit.verify import verify_messages
    from agent.evidence.cose import decode_sign1, sig_structure

    rows: list[Row] = []
    msgs, vsigner = _stream(100 if quick else 300)
    parsed = [decode_sign1(raw) for raw, _, _ in msgs]
    pairs = [(p.signature, sig_structure(p.protected, p.payload)) for p in parsed]
    key = vsigner.public.key
    if not isinstance(key, Ed25519PublicKey):  # pragma: no cover - generate_key default
        raise RuntimeError("the bench stream must be signed with Ed25519")
    raw_key = key.public_bytes_raw()

    def raw_verify() -> None:
        for sig, msg in pairs:
            key.verify(sig, msg)

    def raw_sodium() -> None:  # what agent.evidence.cose does per message: a VerifyKey each
        for sig, msg in pairs:
            nacl.signing.VerifyKey(raw_key).verify(msg, sig)

    raw = "ed25519 verify (raw, cryptography)"
    rows.append(Row(S, raw, timeit(raw_verify, len(pairs), repeat=3), "sigs/s"))
    sodium = timeit(raw_sodium, len(pairs), repeat=3)
    rows.append(Row(S, "ed25519 verify (raw, PyNaCl/libsodium)", sodium, "sigs/s", baseline=raw))
    anchors = [vsigner.public]

    def audit(
        msgs: list[tuple[bytes, str, str | None]] = msgs,
        anchors: list[PublicKey] = anchors,
        jobs: int = 1,
    ) -> None:
        res = verify_messages(msgs, anchors, jobs=jobs)
        if not res.ok:  # pragma: no cover - the bench must measure a passing audit
            raise RuntimeError(f"bench stream did not verify: {res.findings[:3]}")
        res.analysis  # noqa: B018 - what `audit verify` prints is computed too (issue 12)

    one = timeit(audit, len(msgs), repeat=3)
    rows.append(
        Row(
            S,
            "audit verify (all checks + analysis)",
            one,
            "atts/s",
            baseline=raw,
            target=1.5,
            note=f"{one / sodium:.2f}x raw libsodium, one core",
        )
    )
    devices, n = (2, 500) if quick else (4, 1000)
    fleet, keys = _fleet(devices, n)
    base = f"audit verify --jobs 1 ({devices} devices x {n})"
    rows.append(Row(S, base, timeit(lambda: audit(fleet, keys), len(fleet), repeat=3), "atts/s"))
    t0 = time.perf_counter()
    audit(fleet, keys, 2)  # the first: starts the fork server where one is needed
    cold = len(fleet) / (time.perf_counter() - t0)
    rows.append(
        Row(
            S,
            f"audit verify --jobs 2 ({devices} devices x {n})",
            timeit(lambda: audit(fleet, keys, 2), len(fleet), repeat=3),
            "atts/s",
            baseline=base,
            note=f"{os.cpu_count()} CPUs; workers started in every run; the first run, "
            f"with the fork server's start: {cold / 1000:,.2f} katts/s",
        )
    )
    return rows


def _journal_rows(quick: bool) -> list[Row]:
    """The journal write per FLUSH_S: pack the new readings, one SQLite transaction
    (no fsync) with the source's mark, on a real store in a temporary directory."""
    from agent.evidence.journal import FLUSH_S, Journal, SourceMark
    from agent.evidence.store import EvidenceStore
    from agent.sources.quality import QualityLedger
    from agent.sources.reading import Reading

    rows = []
    ledger = QualityLedger("cold-room", "framed", "/dev/ttyUSB0")
    ledger.add_many({"frames_ok": 170, "samples_ok": 170})
    pending = ledger.peek(1_700_000_000_000)
    for hz, label in ((20, "a 20 Hz device"), (340, "a 115200-baud line")):
        n = int(hz * FLUSH_S)
        rs = [Reading(1_700_000_000_000 + i, i, 0, i, (4.0, 50.0, 0.0)) for i in range(n)]
        marks = [SourceMark("cold-room", "framed", n, pending)]
        with tempfile.TemporaryDirectory() as d:
            store = EvidenceStore(Path(d) / "e.sqlite", "gw-bench")
            journal = Journal(store, [("cold-room", "framed")], ["t", "h", "door"])
            journal.begin(1_700_000_000_000)
            batch = [(0, rs)]

            def flush(j: Journal = journal, b: list = batch, m: list = marks) -> None:  # type: ignore[type-arg]
                j.write(b, m)

            rate = timeit(flush, n, repeat=3 if quick else 5)
            store.close()
        us = 1e6 * n / rate
        rows.append(
            Row(
                S,
                f"journal the open window ({n} readings/flush)",
                rate,
                "readings/s",
                baseline="salted leaf hashing (Reading objects)",
                note=f"{us:.0f} us per flush every {FLUSH_S:g} s: "
                f"{100 * us / 1e6 / FLUSH_S:.3f} % of a core for {label}",
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    from agent.evidence.claims import encode_claims
    from agent.evidence.cose import encode_sign1
    from agent.evidence.leaves import (
        encode_columns,
        encode_records,
        leaf_hashes,
        record_leaf_hashes,
    )
    from agent.sources.reading import Reading

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d:
        signer: Signer = generate_key(Path(d) / "k.key")
    ev = _evidence()
    data = b"x" * 600
    rows.append(
        Row(S, "ed25519 sign (raw, cryptography)", timeit(lambda: signer.sign(data), 1), "sigs/s")
    )
    build = timeit(lambda: encode_sign1(encode_claims(ev), signer), 1)  # type: ignore[arg-type]
    us = 1e6 / build
    rows.append(
        Row(
            S,
            "attestation build+sign (no Merkle)",
            build,
            "windows/s",
            note=f"{us:.0f} us/window; target <= 200 us: {verdict(us <= 200)}",
        )
    )

    n = 100_000 if quick else 1_000_000
    rng = np.random.default_rng(1)
    rx = np.arange(n, dtype=np.int64) + 1_700_000_000_000
    vals = rng.uniform(0, 10, (n, 3))
    src = np.zeros(n, np.uint16)
    fseq = np.arange(n, dtype=np.uint32)
    secret = secrets.token_bytes(32)

    def hash_columns() -> None:
        buf, stride = encode_columns(0, secret, rx, rx, src, fseq, vals)
        leaf_hashes(buf, stride)

    rate = timeit(hash_columns, n, repeat=3)
    rows.append(
        Row(
            S,
            "salted leaf hashing (typed arrays)",
            rate,
            "readings/s",
            note=f"target >= 1,000,000/s: {verdict(rate >= 1e6)}",
        )
    )
    m = 20_000
    objs = [Reading(int(rx[i]), int(rx[i]), 0, i, tuple(vals[i])) for i in range(m)]
    rows.append(
        Row(
            S,
            "salted leaf hashing (Reading objects)",
            timeit(lambda: record_leaf_hashes(encode_records(0, secret, objs)), m, repeat=3),
            "readings/s",
            note="the agent's per-window path: records and leaf hashes",
        )
    )
    rows.extend(_journal_rows(quick))

    rows.extend(_audit_rows(quick))
    return rows
