"""The evidence store keeps the chain across restarts; the auditor finds every break in it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.audit import verify_paths
from agent.errors import VerificationError
from agent.evidence.attester import Attester
from agent.evidence.claims import ConfigInForce, RiskResult, RuleResult
from agent.evidence.cose import decode_sign1
from agent.evidence.store import EvidenceStore
from agent.identity.keys import generate_key
from agent.sources.reading import Reading

CONFIG = ConfigInForce("p", 1, "ab" * 32, {"m": "cd" * 32})


def _attest(store: EvidenceStore, signer, n_windows: int, start_ms: int = 1_000_000) -> list[bytes]:
    att = Attester("dev-1", signer, store, "edgegov/f/dev-1/attestation")
    out = []
    for w in range(n_windows):
        t0 = start_ms + w * 1000
        readings = [Reading(t0 + i, t0 + i, 0, i, (5.0, 50.0)) for i in range(w + 1)]
        item = att.attest(
            (t0, t0 + 1000),
            readings,
            CONFIG,
            (
                RuleResult(
                    "r",
                    w + 1,
                    1 if w == 1 else 0,
                    0,
                    t0 if w == 1 else None,
                    t0 if w == 1 else None,
                ),
            ),
            (RiskResult("m", 0.25, "CPUExecutionProvider"),),
            {"frames_ok": w + 1},
            (),
        )
        out.append(item.payload)
    return out


def _write(files_dir: Path, msgs: list[bytes]) -> Path:
    files_dir.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(msgs):
        (files_dir / f"{i:04d}.cose").write_bytes(m)
    return files_dir


def test_chain_continues_across_a_restart(tmp_path, signer):
    db = tmp_path / "state" / "evidence.sqlite"
    first = _attest(EvidenceStore(db, "dev-1"), signer, 3)
    store = EvidenceStore(db, "dev-1")
    assert not store.new_log and store.state.next_seq == 3 and store.state.bootcount == 2
    second = _attest(store, signer, 2, start_ms=2_000_000)
    res = verify_paths([_write(tmp_path / "out", first + second)], [signer.public])
    assert res.ok, res.findings
    assert res.devices[0].attestations == 5 and res.devices[0].readings == 1 + 2 + 3 + 1 + 2
    assert res.devices[0].rules["r"]["windows_violated"] == 2  # w == 1 in each run


def test_lost_state_declares_a_new_log_instead_of_reusing_seq_numbers(tmp_path, signer):
    db = tmp_path / "evidence.sqlite"
    old = _attest(EvidenceStore(db, "dev-1"), signer, 2)
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    new = _attest(EvidenceStore(db, "dev-1"), signer, 2, start_ms=5_000_000)
    res = verify_paths([_write(tmp_path / "out", old + new)], [signer.public])
    assert res.ok, res.findings  # two well-formed logs, each complete...
    origins = {d.origin for d in res.devices}
    assert len(origins) == 2  # ...but visibly two, never one silently restarted


def test_outbox_keeps_rows_until_acknowledged(tmp_path, signer):
    store = EvidenceStore(tmp_path / "e.sqlite", "dev-1")
    _attest(store, signer, 3)
    assert [p.seq for p in store.pending()] == [0, 1, 2]
    store.acknowledge(1)
    store.close()
    assert [p.seq for p in EvidenceStore(tmp_path / "e.sqlite", "dev-1").pending()] == [0, 2]


@pytest.fixture
def chain(tmp_path, signer):
    return _attest(EvidenceStore(tmp_path / "e.sqlite", "dev-1"), signer, 5)


def _codes(tmp_path, msgs, keys):
    res = verify_paths([_write(tmp_path / "files", msgs)], keys)
    return res, sorted({f.code for f in res.findings})


def test_intact_chain_passes(tmp_path, chain, signer):
    res, codes = _codes(tmp_path, chain, [signer.public])
    assert res.ok and codes == [] and res.verified == 5


def test_dropped_attestation_is_a_gap(tmp_path, chain, signer):
    res, codes = _codes(tmp_path, chain[:2] + chain[3:], [signer.public])
    assert codes == ["CHAIN_GAP"] and not res.ok
    assert res.findings[0].seq == 3 and "seq 2..2 are missing" in res.findings[0].message


def test_missing_head_of_chain_is_reported(tmp_path, chain, signer):
    _, codes = _codes(tmp_path, chain[1:], [signer.public])
    assert codes == ["CHAIN_START"]


def test_a_byte_identical_redelivery_is_counted_not_a_finding(tmp_path, chain, signer):
    res, codes = _codes(tmp_path, chain + [chain[2], chain[4], chain[2]], [signer.public])
    assert codes == [] and res.ok  # QoS 1 at-least-once: the same evidence again
    assert res.redelivered == 3 and res.devices[0].redelivered == 3
    assert res.devices[0].attestations == 5 and res.verified == 8


def test_forged_byte_fails_the_signature(tmp_path, chain, signer):
    bad = bytearray(chain[2])
    bad[len(bad) // 2] ^= 0x40
    _, codes = _codes(tmp_path, chain[:2] + [bytes(bad)] + chain[3:], [signer.public])
    assert "BAD_SIGNATURE" in codes and "CHAIN_GAP" in codes  # the forged one does not count


def test_fork_signed_by_the_device_key_is_reported(tmp_path, signer):
    a = _attest(EvidenceStore(tmp_path / "a.sqlite", "dev-1"), signer, 3)
    store = EvidenceStore(tmp_path / "a.sqlite", "dev-1")
    # Same log, same seq, different content: roll the state back by hand to make a fork.
    b_store = EvidenceStore(tmp_path / "b.sqlite", "dev-1")
    b_store.state = type(store.state)(store.state.origin, 0, None, type(store.state.log)(), 1)
    b = _attest(b_store, signer, 1, start_ms=9_000_000)
    res, codes = _codes(tmp_path, a + b, [signer.public])
    assert codes == ["FORK"] and not res.ok
    # A copy of either side of the fork is a redelivery; the fork is still one finding.
    res, codes = _codes(tmp_path / "copies", a + b + [a[0], b[0], b[0]], [signer.public])
    assert [f.kind for f in res.findings] == ["FORK"] and res.redelivered == 3


def test_attestations_from_an_untrusted_key_are_refused(tmp_path, chain):
    other = generate_key(tmp_path / "other.key")
    res, codes = _codes(tmp_path, chain, [other.public])
    assert codes == ["UNKNOWN_KEY"] and res.verified == 0
    assert "not a trusted key" in res.findings[0].message


def test_no_trust_anchor_fails_closed(tmp_path, chain):
    with pytest.raises(VerificationError, match="no trust anchors"):
        verify_paths([_write(tmp_path / "f", chain)], [])


def test_prev_links_hash_the_exact_bytes(chain):
    for before, after in zip(chain, chain[1:]):
        from agent.evidence.claims import parse_claims

        ev = parse_claims(decode_sign1(after).claims())
        assert ev.prev == hashlib.sha256(before).digest()


def test_json_verdict_is_machine_readable(tmp_path, chain, signer):
    res = verify_paths([_write(tmp_path / "f", chain[:1] + chain[2:])], [signer.public])
    doc = json.loads(json.dumps(res.to_json()))
    assert doc["evidence"] == "findings"  # the integrity verdict; compliance is apart
    assert doc["findings"][0]["code"] == "CHAIN_GAP" and doc["findings"][0]["device"] == "dev-1"
