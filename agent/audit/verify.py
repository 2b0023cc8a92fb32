"""Offline verification of attestation streams with only trust anchors: evidence integrity.

Checks, per device log (PRODUCT.md §6, docs/attestation-profile.md):
1. every message is a well-formed COSE_Sign1 within the size and CBOR limits;
   its ``kid`` selects a trusted key (a listed key, a key a rotation statement
   hands over to, or the key of an ``x5chain`` certificate that chains to a fleet
   CA), the key pins the algorithm, the key is not revoked, and the signature
   verifies; nothing is read from a payload before that (a message that fails is
   labelled with the device and seq its carrier or payload *claims*, marked
   unverified);
2. the chain: seq starts at 0 and has no gap, fork or reordering, and each
   ``prev`` is the SHA-256 of the previous attestation's exact bytes; byte-identical
   copies of one attestation (QoS 1 redelivery) are counted, not findings;
3. the Merkle log: each checkpoint grows by exactly the window's readings and
   its consistency proof links it to the previous checkpoint (RFC 9162 §2.1.4);
4. time: windows and ``iat`` move forward, ``bootcount`` never drops;
5. config: policy and model digests are on the approved list (when given);
6. identity: the device a key or certificate is bound to is the one that speaks,
   and (with ``device=``) every attestation is from the device being audited.

Every problem is a :class:`Finding` naming device, seq, kind and detail; the
verifier never stops at the first one, so an auditor sees the whole picture. What
the verified evidence *says* (periods, completeness, episodes, restarts, goals) is
:func:`agent.audit.analysis.analyze`'s job: one analysis for every rendering.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from agent.attestation import EDGEGOV, ConfigInForce, Evidence, parse_claims
from agent.audit.trust import CertificateError, RevokedKey, TrustStore, UnknownKey
from agent.cose import AlgorithmMismatch, Sign1, decode_sign1
from agent.errors import Error, VerificationError
from agent.keys import PublicKey
from agent.merkle import ProofError, verify_consistency

if TYPE_CHECKING:
    from agent.audit.analysis import Analysis, DeviceAnalysis

__all__ = [
    "AuditResult",
    "Finding",
    "Message",
    "VerifiedLog",
    "collect_files",
    "verify_messages",
    "verify_paths",
]

_sha256 = hashlib.sha256


@dataclass(frozen=True)
class Finding:
    """One problem: which device and seq, what kind, in words, and where it came from.

    ``label_from`` is empty when device and seq come from a verified attestation;
    otherwise it says where the unverified label was read (a message that failed
    verification proves nothing, not even whose it is).
    """

    device: str
    seq: int | None
    kind: str
    detail: str
    file: str = ""
    label_from: str = ""

    @property
    def code(self) -> str:  # the name the first version of the JSON used
        return self.kind

    @property
    def message(self) -> str:
        return self.detail

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "seq": self.seq,
            "kind": self.kind,
            "detail": self.detail,
            "file": self.file,
            "label_verified": not self.label_from,
            "label_from": self.label_from or None,
            "code": self.kind,
            "message": self.detail,
        }

    def __str__(self) -> str:
        where = f"{self.device} seq {self.seq}" if self.seq is not None else self.device
        if self.label_from:
            where += f" (unverified, {self.label_from})"
        return f"[{self.kind}] {where}: {self.detail}" + (f" ({self.file})" if self.file else "")


class Message(NamedTuple):
    """One message to verify, as delivered.

    ``via``: the device it was delivered for (its MQTT topic, as a collector recorded
    it); one that claims another device is a ``REPLAY``. ``device_hint`` / ``seq_hint``:
    what the carrier says it is (a store row), used only to label a finding about a
    message that fails verification, never as evidence.
    """

    raw: bytes
    source: str
    via: str | None = None
    device_hint: str | None = None
    seq_hint: int | None = None
    hint_from: str = ""


@dataclass
class VerifiedLog:
    """One device log (``origin``) as verified: the chain, one attestation per seq, in seq
    order (the first delivered where two differ: the other is a ``FORK`` finding), and how
    many byte-identical copies were delivered besides (``redelivered``)."""

    origin: str
    device: str
    signer: str
    evidence: list[Evidence]
    redelivered: int = 0


@dataclass
class AuditResult:
    """Evidence integrity: what verified, what did not (:attr:`findings`), per log.

    ``verified`` counts valid signatures, redelivered copies included; ``ok`` is the
    evidence verdict *intact*: at least one valid attestation and no finding. Compliance
    is a separate verdict, in :func:`agent.audit.analysis.analyze`.
    """

    files: int = 0
    verified: int = 0
    logs: list[VerifiedLog] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    _analysis: Analysis | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.findings and self.verified > 0

    @property
    def redelivered(self) -> int:
        return sum(log.redelivered for log in self.logs)

    @property
    def analysis(self) -> Analysis:
        """The analysis without a policy (compliance per rule), made once."""
        if self._analysis is None:
            from agent.audit.analysis import analyze  # it reads this module's types

            self._analysis = analyze(self)
        return self._analysis

    @property
    def devices(self) -> list[DeviceAnalysis]:
        return self.analysis.devices

    def to_json(self) -> dict[str, Any]:
        return self.analysis.to_json()


class _Entry(NamedTuple):  # a tuple: built once per attestation (issue 6 measures it)
    ev: Evidence
    raw: bytes
    file: str
    signer: str
    order: int  # position in the input (delivery order)


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to the ``*.cose`` files below them, sorted by name."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(p.rglob("*.cose")))
        elif p.exists():
            out.append(p)
        else:  # an input error (exit 2), not a finding about the evidence
            raise Error(f"{p}: no such file or directory")
    return out


def _as_trust(anchors: Sequence[PublicKey] | TrustStore) -> TrustStore:
    trust = anchors if isinstance(anchors, TrustStore) else TrustStore.of_keys(anchors)
    if trust.empty:
        raise VerificationError(
            "no trust anchors given: pass --trust FILE or at least one --key PUBLIC_KEY.pem"
        )
    return trust


def _files(paths: Sequence[Path]) -> Iterator[Message]:
    for f in collect_files(paths):
        yield Message(f.read_bytes(), str(f))


def verify_paths(
    paths: Sequence[Path],
    anchors: Sequence[PublicKey] | TrustStore,
    device: str | None = None,
) -> AuditResult:
    """Verify every attestation below ``paths`` (in name order) against ``anchors``."""
    return verify_messages(_files(paths), anchors, device)


def verify_messages(
    messages: Iterable[Message | tuple[bytes, str, str | None]],
    anchors: Sequence[PublicKey] | TrustStore,
    device: str | None = None,
) -> AuditResult:
    """Verify messages (:class:`Message`, or ``(bytes, source name, via)``) in delivery order.

    ``via`` is the device a message arrived for (its MQTT topic); a message
    claiming another device is a replay. ``device`` restricts the audit to one
    device: attestations of any other are findings too. A byte-identical copy of a
    message already verified is not verified again: it is the same evidence.
    """
    trust = _as_trust(anchors)
    res = AuditResult()
    logs: dict[str, list[_Entry]] = defaultdict(list)
    known: dict[bytes, _Entry] = {}
    for order, m in enumerate(messages):
        raw, src, via = m[0], m[1], m[2]
        res.files += 1
        entry = known.get(raw)
        if entry is None:
            entry = _verify_one(m, order, trust, res.findings)
            if entry is None:
                continue
            known[raw] = entry
        else:
            entry = entry._replace(file=src, order=order)
        res.verified += 1
        ev = entry.ev
        expected = device or via
        if expected is not None and ev.device_id != expected:
            res.findings.append(
                Finding(
                    expected,
                    ev.seq,
                    "REPLAY",
                    f"attestation of device {ev.device_id} (log {ev.checkpoint.origin}, "
                    f"seq {ev.seq}) in the stream of {expected}",
                    src,
                )
            )
            continue
        logs[ev.checkpoint.origin].append(entry)
    for origin, entries in sorted(logs.items()):
        res.logs.append(_check_log(origin, entries, res.findings, trust))
    return res


def _verify_one(
    m: Message | tuple[bytes, str, str | None],
    order: int,
    trust: TrustStore,
    findings: list[Finding],
) -> _Entry | None:
    raw, src = m[0], m[1]
    msg: Sign1 | None = None

    def bad(kind: str, detail: str) -> None:
        findings.append(_unverified(m, msg, kind, detail))

    try:
        msg = decode_sign1(raw)
    except VerificationError as e:
        bad("INVALID", str(e))
        return None
    try:
        tk = trust.resolve(msg)
    except RevokedKey as e:
        bad("REVOKED_KEY", str(e))
        return None
    except CertificateError as e:
        bad("CERTIFICATE", str(e))
        return None
    except UnknownKey as e:
        bad("UNKNOWN_KEY", str(e))
        return None
    try:
        msg.verify(tk.key)
    except AlgorithmMismatch as e:
        bad("ALG_MISMATCH", str(e))
        return None
    except VerificationError as e:
        bad("BAD_SIGNATURE", str(e))
        return None
    try:
        ev = parse_claims(msg.claims(unread=False))
    except VerificationError as e:
        bad("INVALID", f"signed payload: {e}")
        return None
    if tk.device is not None and tk.device != ev.device_id:
        findings.append(
            Finding(
                ev.device_id,
                ev.seq,
                "KEY_DEVICE",
                f"signed by the key of {tk.device} ({tk.how}) but claims device {ev.device_id}",
                src,
            )
        )
        return None
    try:
        trust.check_validity(msg, ev.issued_at)
    except CertificateError as e:
        findings.append(Finding(ev.device_id, ev.seq, "CERTIFICATE", str(e), src))
        return None
    return _Entry(ev, raw, src, tk.how, order)


def _unverified(
    m: Message | tuple[bytes, str, str | None], msg: Sign1 | None, kind: str, detail: str
) -> Finding:
    """A finding about a message rejected before its claims could be trusted.

    Labelled with what its carrier says (a store row: the topic's device and the seq it
    was filed under), else with device and seq read from the unverified payload, and
    marked so: a forged or corrupted message may claim anything.
    """
    device, seq, how = m[2], None, ""
    if isinstance(m, Message):
        device = m.device_hint or device
        seq = m.seq_hint
        how = m.hint_from
    if device is not None and not how:
        how = "the device it was delivered for"
    if (device is None or seq is None) and msg is not None:
        peeked = _peek(msg)
        if peeked is not None:
            device = device or peeked[0]
            seq = peeked[1] if seq is None else seq
            how = f"{how} and the unsigned payload" if how else "the unsigned payload"
    if device is None:
        return Finding("?", seq, kind, detail, m[1])
    return Finding(device, seq, kind, detail, m[1], how or "unknown")


def _peek(msg: Sign1) -> tuple[str | None, int | None] | None:
    """Device and seq as the payload claims them, for a label only (never trusted)."""
    try:
        ours = msg.claims().get(EDGEGOV)
    except (VerificationError, ValueError, TypeError, KeyError, RecursionError):
        return None
    if not isinstance(ours, dict):
        return None
    dev, seq = ours.get(9), ours.get(1)
    return (
        dev if isinstance(dev, str) and dev else None,
        seq if type(seq) is int and seq >= 0 else None,
    )


def _check_log(
    origin: str, entries: list[_Entry], findings: list[Finding], trust: TrustStore
) -> VerifiedLog:
    entries.sort(key=_order)  # delivery order (verify_messages appends in it already)
    dev = entries[0].ev.device_id
    # Reordering: seq numbers that arrived after a higher one of the same log. A seq seen
    # before is a copy (redelivery) or a fork, never a reordering.
    high = -1
    seen: set[int] = set()
    for e in entries:
        seq = e.ev.seq
        if seq < high and seq not in seen:
            findings.append(
                Finding(dev, seq, "REORDER", f"delivered after seq {high} of this log", e.file)
            )
        if seq > high:
            high = seq
        seen.add(seq)
    entries.sort(key=_seq)  # stable: equal seqs stay in delivery order
    first = entries[0].ev
    log = VerifiedLog(origin, first.device_id, entries[0].signer, [])
    chain = log.evidence
    dev = first.device_id
    prev_ev: Evidence | None = None
    prev_raw = b""
    same_seq: set[bytes] = set()  # the distinct messages of prev_ev's seq (forks)
    last_cfg: ConfigInForce | None = None
    seen_configs: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    if first.seq != 0:
        findings.append(
            Finding(
                dev,
                first.seq,
                "CHAIN_START",
                f"log {origin} starts at seq {first.seq}: seq 0..{first.seq - 1} are missing",
                entries[0].file,
            )
        )
    for entry in entries:
        ev, raw, file = entry.ev, entry.raw, entry.file

        def add(kind: str, msg: str) -> None:
            findings.append(Finding(dev, ev.seq, kind, msg, file))  # noqa: B023

        if prev_ev is not None and ev.seq == prev_ev.seq:
            if raw == prev_raw or raw in same_seq:
                log.redelivered += 1  # QoS 1 at-least-once: the same evidence again
            else:
                same_seq.add(raw)
                add("FORK", "two different attestations carry this seq")
            continue
        same_seq.clear()
        if ev.device_id != dev:
            add("DEVICE_MISMATCH", f"log {origin} mixes devices {dev} and {ev.device_id}")
        cfg = ev.config
        if last_cfg is None or not _same_config(cfg, last_cfg):
            _check_config(ev, trust, seen_configs, add)
        last_cfg = cfg
        cp = ev.checkpoint
        if cp.size != cp.prev_size + ev.readings:
            add(
                "CHECKPOINT",
                f"log size {cp.size} != previous size {cp.prev_size} + "
                f"{ev.readings} readings in this window",
            )
        if prev_ev is not None:
            if ev.seq != prev_ev.seq + 1:
                add("CHAIN_GAP", f"seq {prev_ev.seq + 1}..{ev.seq - 1} are missing")
            else:
                if ev.prev != _sha256(prev_raw).digest():
                    add("PREV_MISMATCH", f"prev does not hash the attestation seq {prev_ev.seq}")
                if cp.prev_size != prev_ev.checkpoint.size:
                    add(
                        "CHECKPOINT",
                        f"previous size {cp.prev_size} != size {prev_ev.checkpoint.size} "
                        f"at seq {prev_ev.seq}",
                    )
                else:
                    _check_consistency(prev_ev, ev, add)
            if ev.window_start_ms < prev_ev.window_end_ms:
                add(
                    "WINDOW_ORDER",
                    f"window starts at {ev.window_start_ms}, before the previous "
                    f"one ended ({prev_ev.window_end_ms})",
                )
            if ev.issued_at < prev_ev.issued_at:
                add("TIME_ORDER", f"iat {ev.issued_at} is before seq {prev_ev.seq}'s")
            if ev.bootcount < prev_ev.bootcount:
                add(
                    "BOOTCOUNT",
                    f"bootcount dropped from {prev_ev.bootcount} to {ev.bootcount}",
                )
        elif ev.seq == 0:
            if ev.prev is not None:
                add("PREV_MISMATCH", "seq 0 must have no prev")
            if cp.prev_size != 0:
                add("CHECKPOINT", f"seq 0 continues a log of size {cp.prev_size}")
        if ev.window_end_ms <= ev.window_start_ms:
            add("WINDOW_ORDER", "window ends before it starts")
        chain.append(ev)
        prev_ev, prev_raw = ev, raw
        same_seq.add(raw)
    return log


def _order(e: _Entry) -> int:
    return e.order


def _seq(e: _Entry) -> int:
    return e.ev.seq


def _same_config(a: ConfigInForce, b: ConfigInForce) -> bool:
    """What the config checks and the report's policy list read is the same in both."""
    return (
        a.policy_digest == b.policy_digest
        and a.model_digests == b.model_digests
        and a.policy_id == b.policy_id
        and a.policy_version == b.policy_version
    )


def _check_consistency(prev: Evidence, ev: Evidence, add: Any) -> None:
    a, b = prev.checkpoint, ev.checkpoint
    if a.size == 0:  # every tree extends the empty one; RFC 9162 has no proof for it
        if b.consistency:
            add("CONSISTENCY", "a consistency proof from an empty log must be empty")
        return
    try:
        verify_consistency(a.size, b.size, a.root, b.root, b.consistency)
    except ProofError as e:
        add("CONSISTENCY", f"checkpoint is not consistent with seq {prev.seq}'s: {e}")


def _check_config(
    ev: Evidence,
    trust: TrustStore,
    seen: set[tuple[str, tuple[tuple[str, str], ...]]],
    add: Any,
) -> None:
    key = (ev.config.policy_digest, tuple(sorted(ev.config.model_digests.items())))
    if key in seen:
        return
    seen.add(key)
    if trust.approved_policies is not None and ev.config.policy_digest not in (
        trust.approved_policies
    ):
        add(
            "CONFIG_UNAPPROVED",
            f"policy {ev.config.policy_id} v{ev.config.policy_version} digest "
            f"{ev.config.policy_digest[:16]}... is not on the approved list",
        )
    if trust.approved_models is not None:
        for model, digest in sorted(ev.config.model_digests.items()):
            if digest not in trust.approved_models:
                add(
                    "CONFIG_UNAPPROVED",
                    f"model {model} digest {digest[:16]}... is not on the approved list",
                )
