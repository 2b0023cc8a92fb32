"""Offline verification of attestation streams with only trust anchors: evidence integrity.

Everything a device signed is untrusted input: the device may be buggy or an attacker's.
Nothing in a message may raise out of here; every problem is a :class:`Finding`.

Checks, per device log (docs/attestation-profile.md):
1. every message is the profile's COSE_Sign1 in its one byte form (``agent.evidence.cose``:
   exact envelope, deterministic CBOR, every claim's type and range) within the size
   and CBOR limits; its ``kid`` selects a trusted key (a listed key, a key a rotation statement
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
verifier never stops at the first one, so an auditor sees the whole picture. A finding
about two attestations names both files and, where the rest of the chain decides it,
blames the one out of line (:func:`_blame`, :func:`_gap`). What
the verified evidence *says* (periods, completeness, episodes, restarts, goals) is
:func:`agent.audit.analysis.analyze`'s job: one analysis for every rendering. With
``audit verify --jobs N`` the signatures are checked ahead in worker processes
(:mod:`agent.audit.parallel`); every check and finding is still made here.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import cbor2

from agent.audit.parallel import SignatureChecks
from agent.audit.trust import CertificateError, RevokedKey, TrustStore, UnknownKey
from agent.errors import Error, VerificationError
from agent.evidence.cbor_limits import check_cbor
from agent.evidence.claims import EDGEGOV, ConfigInForce, Evidence, parse_claims
from agent.evidence.cose import AlgorithmMismatch, EnvelopeError, HighS, Sign1, decode_sign1
from agent.evidence.merkle import ProofError, verify_consistency
from agent.identity.keys import PublicKey

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
    verification proves nothing, not even whose it is). A finding about two
    attestations (a link of the chain, a fork, a reordering) has ``file`` for the one
    to blame where that can be decided, else the later one, and ``related`` for the
    other.
    """

    device: str
    seq: int | None
    kind: str
    detail: str
    file: str = ""
    label_from: str = ""
    related: str = ""  # the other attestation's file, for a finding about two of them

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
            "related_file": self.related or None,
            "label_verified": not self.label_from,
            "label_from": self.label_from or None,
            "code": self.kind,
            "message": self.detail,
        }

    def __str__(self) -> str:
        where = f"{self.device} seq {self.seq}" if self.seq is not None else self.device
        if self.label_from:
            where += f" (unverified, {self.label_from})"
        files = ", see also ".join(f for f in (self.file, self.related) if f)
        return f"[{self.kind}] {where}: {self.detail}" + (f" ({files})" if files else "")


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
    copy_of: str = ""  # a byte-identical copy: the file of the first delivery


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
    *,
    jobs: int = 1,
) -> AuditResult:
    """Verify every attestation below ``paths`` (in name order) against ``anchors``."""
    return verify_messages(_files(paths), anchors, device, jobs=jobs)


def verify_messages(
    messages: Iterable[Message | tuple[bytes, str, str | None]],
    anchors: Sequence[PublicKey] | TrustStore,
    device: str | None = None,
    *,
    jobs: int = 1,
) -> AuditResult:
    """Verify messages (:class:`Message`, or ``(bytes, source name, via)``) in delivery order.

    ``via`` is the device a message arrived for (its MQTT topic); a message
    claiming another device is a replay. ``device`` restricts the audit to one
    device: attestations of any other are findings too. A byte-identical copy of a
    message already verified is not verified again: it is the same evidence.

    ``jobs`` > 1 checks the signatures ahead in ``jobs - 1`` worker processes besides this one
    (:class:`SignatureChecks`, in :mod:`agent.audit.parallel`: ``audit verify --jobs``);
    everything else runs here, in delivery order, as with one job, so the result is the same
    to the byte.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    trust = _as_trust(anchors)
    if jobs == 1:
        return _verify_all(messages, trust, device, None)
    msgs = list(messages)
    checks = SignatureChecks.start([m[0] for m in msgs], trust, jobs)
    try:
        return _verify_all(msgs, trust, device, checks)
    finally:
        if checks is not None:
            checks.close()


def _verify_all(
    messages: Iterable[Message | tuple[bytes, str, str | None]],
    trust: TrustStore,
    device: str | None,
    checks: SignatureChecks | None,
) -> AuditResult:
    """:func:`verify_messages`, with the signatures ``checks`` has checked ahead (if any)."""
    res = AuditResult()
    logs, rejected = _verify_each(messages, trust, device, checks, res, {})
    for origin, entries in sorted(logs.items()):
        dev = entries[0].ev.device_id
        here = [(o, f) for o, f, d in rejected if d in (dev, "?")]
        res.logs.append(_check_log(origin, entries, res.findings, trust, here))
    return res


def _verify_each(
    messages: Iterable[Message | tuple[bytes, str, str | None]],
    trust: TrustStore,
    device: str | None,
    checks: SignatureChecks | None,
    res: AuditResult,
    known: dict[bytes, _Entry],
) -> tuple[dict[str, list[_Entry]], list[tuple[int, str, str]]]:
    """Every message's own checks, into ``res``: the logs' entries and the rejected
    (order, file, device label); ``known``: the messages verified so far, by bytes."""
    logs: dict[str, list[_Entry]] = defaultdict(list)
    rejected: list[tuple[int, str, str]] = []
    for order, m in enumerate(messages):
        raw, src, via = m[0], m[1], m[2]
        res.files += 1
        entry = known.get(raw)
        if entry is None:
            kid = checks.kid(order) if checks is not None else None
            entry = _verify_one(m, order, trust, res.findings, kid)
            if entry is None:
                rejected.append((order, src, res.findings[-1].device))
                continue
            known[raw] = entry
        else:
            entry = entry._replace(file=src, order=order, copy_of=entry.file)
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
    return logs, rejected


def _verify_one(
    m: Message | tuple[bytes, str, str | None],
    order: int,
    trust: TrustStore,
    findings: list[Finding],
    checked_kid: bytes | None = None,
) -> _Entry | None:
    """One message through every check of its own, or None and its finding.

    ``checked_kid``: a worker process (:class:`SignatureChecks`) has run
    :meth:`Sign1.verify` on these exact bytes and it passed with the trusted key of that
    kid; if the key resolved here is the same one, the signature arithmetic is not
    repeated. Every other step is, so the findings are those of one job.
    """
    raw, src = m[0], m[1]
    msg: Sign1 | None = None

    def bad(kind: str, detail: str) -> None:
        findings.append(_unverified(m, msg, kind, detail))

    try:
        msg = decode_sign1(raw)
    except EnvelopeError as e:
        findings.append(_unverified(m, None, "INVALID", str(e), e.payload))
        return None
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
        if checked_kid is None or checked_kid != tk.key.kid:
            msg.verify(tk.key)
    except AlgorithmMismatch as e:
        bad("ALG_MISMATCH", str(e))
        return None
    except HighS as e:
        bad("INVALID", str(e))
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
    m: Message | tuple[bytes, str, str | None],
    msg: Sign1 | None,
    kind: str,
    detail: str,
    payload: bytes | None = None,
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
    if device is None or seq is None:
        peeked = _peek(msg.payload if msg is not None else payload)
        if peeked is not None:
            device = device or peeked[0]
            seq = peeked[1] if seq is None else seq
            how = f"{how} and the unsigned payload" if how else "the unsigned payload"
    if device is None:
        return Finding("?", seq, kind, detail, m[1])
    return Finding(device, seq, kind, detail, m[1], how or "unknown")


def _peek(payload: bytes | None) -> tuple[str | None, int | None] | None:
    """Device and seq as the payload claims them, for a label only (never trusted)."""
    if payload is None:
        return None
    try:
        check_cbor(payload, "payload")
        claims = cbor2.loads(payload)
        ours = claims.get(EDGEGOV) if isinstance(claims, dict) else None
    except (VerificationError, cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
        return None
    if not isinstance(ours, dict):
        return None
    dev, seq = ours.get(9), ours.get(1)
    return (
        dev if isinstance(dev, str) and dev else None,
        seq if type(seq) is int and 0 <= seq < 2**63 else None,
    )


def _check_log(
    origin: str,
    entries: list[_Entry],
    findings: list[Finding],
    trust: TrustStore,
    rejected: Sequence[tuple[int, str]] = (),
) -> VerifiedLog:
    """One log's chain: ``entries`` as verified (delivery order in ``order``), and the
    messages ``rejected`` before they could be assigned to a log ((order, file): named
    where they stand in place of a missing seq)."""
    entries.sort(key=_order)  # delivery order (verify_messages appends in it already)
    delivered = _Delivered(entries, rejected)
    dev = entries[0].ev.device_id
    # Reordering: seq numbers that arrived after a higher one of the same log. A seq seen
    # before is a copy (redelivery) or a fork, never a reordering.
    high: _Entry | None = None
    seen: set[int] = set()
    for e in entries:
        seq = e.ev.seq
        if high is not None and seq < high.ev.seq and seq not in seen:
            findings.append(
                Finding(
                    dev,
                    seq,
                    "REORDER",
                    f"delivered after seq {high.ev.seq} of this log ({delivered.files(high)})",
                    e.file,
                    related=high.file,
                )
            )
        if high is None or seq > high.ev.seq:
            high = e
        seen.add(seq)
    entries.sort(key=_seq)  # stable: equal seqs stay in delivery order
    first = entries[0].ev
    log = VerifiedLog(origin, first.device_id, entries[0].signer, [])
    dev = first.device_id
    # One entry per seq (the first delivered); later different ones are forks.
    chain: list[_Entry] = []
    for entry in entries:
        if chain and entry.ev.seq == chain[-1].ev.seq:
            if entry.copy_of or entry.raw == chain[-1].raw:
                log.redelivered += 1  # QoS 1 at-least-once: the same evidence again
            else:
                findings.append(
                    Finding(
                        dev,
                        entry.ev.seq,
                        "FORK",
                        "two different attestations carry this seq",
                        entry.file,
                        related=chain[-1].file,
                    )
                )
            continue
        chain.append(entry)
    log.evidence.extend(e.ev for e in chain)
    if first.seq != 0:
        start = (
            f"log {origin} starts at seq {first.seq} ({delivered.files(chain[0])}): "
            f"seq 0..{first.seq - 1} are missing"
        )
        early = delivered.between(-1, chain[0].order)
        findings.append(
            Finding(
                dev,
                first.seq,
                "CHAIN_START",
                f"{start}; delivered in their place: {delivered.misplaced(early)}",
                early.file,
                related=chain[0].file,
            )
            if early is not None
            else Finding(dev, first.seq, "CHAIN_START", start, chain[0].file)
        )
    last_cfg: ConfigInForce | None = None
    seen_configs: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for entry in chain:  # what each attestation says of itself
        ev = entry.ev

        def add(kind: str, msg: str) -> None:
            findings.append(Finding(dev, ev.seq, kind, msg, entry.file))  # noqa: B023

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
        if ev.seq == 0:
            if ev.prev is not None:
                add("PREV_MISMATCH", "seq 0 must have no prev")
            if cp.prev_size != 0:
                add("CHECKPOINT", f"seq 0 continues a log of size {cp.prev_size}")
        if ev.window_end_ms <= ev.window_start_ms:
            add("WINDOW_ORDER", "window ends before it starts")
    # The links between neighbours: for each broken one, which side to blame (_blame).
    links = [_link_problems(a, b) for a, b in zip(chain, chain[1:])]
    for i, problems in enumerate(links):
        a, b = chain[i], chain[i + 1]
        if a.ev.seq + 1 != b.ev.seq:
            findings.append(_gap(dev, a, b, delivered))
        elif problems:
            blame, other, why = _blame(chain, links, i)
            for kind, detail in problems:
                findings.append(
                    Finding(dev, blame.ev.seq, kind, detail + why, blame.file, related=other.file)
                )
    return log


def _blame(
    chain: Sequence[_Entry], links: Sequence[list[tuple[str, str]]], i: int
) -> tuple[_Entry, _Entry, str]:
    """For the broken link between ``chain[i]`` (a) and ``chain[i + 1]`` (b): the one to
    blame, the other, and why (empty: it cannot be decided, and the later one is named).

    1. An attestation whose links on *both* sides break, while the links beyond hold, is
       the one out of line (planted, or signed out of turn).
    2. Else, for what must not go backwards (iat, bootcount, windows): the one that fits
       neither between its neighbours (a's iat is ahead of b and of b's successor, while
       b fits after a's predecessor: a is out of line).
    """
    a, b = chain[i], chain[i + 1]

    def fails(j: int) -> bool:  # a link beside a gap proves nothing either way
        return 0 <= j < len(links) and bool(links[j]) and links[j][0][0] != "CHAIN_GAP"

    def holds(j: int) -> bool:
        return not 0 <= j < len(links) or not links[j]

    if fails(i - 1) and holds(i + 1) and holds(i - 2):
        return a, b, f"; seq {a.ev.seq} breaks the chain on both sides, its neighbours do not"
    if fails(i + 1) and holds(i - 1) and holds(i + 2):
        return b, a, f"; seq {b.ev.seq} breaks the chain on both sides, its neighbours do not"
    p = chain[i - 1].ev if i > 0 else None
    n = chain[i + 2].ev if i + 2 < len(chain) else None
    for order in _ORDERS:
        if order(a.ev, b.ev):
            continue
        a_out = p is not None and p.seq + 1 == a.ev.seq and order(p, b.ev)
        b_out = n is not None and n.seq == b.ev.seq + 1 and order(a.ev, n)
        if a_out != b_out:
            odd, fine = (a, b) if a_out else (b, a)
            return odd, fine, f"; seq {odd.ev.seq} is out of order with both its neighbours"
    return b, a, ""


def _iat_order(p: Evidence, q: Evidence) -> bool:
    return p.issued_at <= q.issued_at


def _boot_order(p: Evidence, q: Evidence) -> bool:
    return p.bootcount <= q.bootcount


def _window_order(p: Evidence, q: Evidence) -> bool:
    return p.window_end_ms <= q.window_start_ms


# what must not go backwards between neighbours (p before q)
_ORDERS = (_iat_order, _boot_order, _window_order)


def _link_problems(a: _Entry, b: _Entry) -> list[tuple[str, str]]:
    """What is wrong between neighbours ``a`` (seq n) and ``b`` (seq n + 1)."""
    if a.ev.seq + 1 != b.ev.seq:
        return [("CHAIN_GAP", "")]
    p, ev = a.ev, b.ev
    out: list[tuple[str, str]] = []
    if ev.prev != _sha256(a.raw).digest():
        out.append(("PREV_MISMATCH", f"seq {ev.seq}'s prev does not hash seq {p.seq}"))
    cp = ev.checkpoint
    if cp.prev_size != p.checkpoint.size:
        out.append(
            (
                "CHECKPOINT",
                f"seq {ev.seq}'s previous size {cp.prev_size} != size {p.checkpoint.size} "
                f"at seq {p.seq}",
            )
        )
    else:
        _check_consistency(p, ev, lambda kind, msg: out.append((kind, msg)))
    if ev.window_start_ms < p.window_end_ms:
        out.append(
            (
                "WINDOW_ORDER",
                f"seq {ev.seq}'s window starts at {ev.window_start_ms}, before seq {p.seq}'s "
                f"ended ({p.window_end_ms})",
            )
        )
    if ev.issued_at < p.issued_at:
        out.append(("TIME_ORDER", f"seq {ev.seq}'s iat {ev.issued_at} is before seq {p.seq}'s"))
    if ev.bootcount < p.bootcount:
        out.append(
            (
                "BOOTCOUNT",
                f"bootcount dropped from {p.bootcount} at seq {p.seq} to {ev.bootcount} "
                f"at seq {ev.seq}",
            )
        )
    return out


class _Delivered:
    """One log's messages in delivery order, for naming what stands where: looked up by
    position (bisect), so a stream with many gaps stays linear-logarithmic."""

    def __init__(self, entries: Sequence[_Entry], rejected: Sequence[tuple[int, str]]) -> None:
        self.entries = sorted(entries, key=_order)
        self.orders = [e.order for e in self.entries]
        self.rejected = sorted(rejected)
        self.rejected_orders = [o for o, _ in self.rejected]
        self.again: dict[bytes, list[str]] = defaultdict(list)  # raw -> files of its copies
        for e in self.entries:
            if e.copy_of:
                self.again[e.raw].append(Path(e.file).name)

    def between(self, lo: int, hi: int) -> _Entry | None:
        """The first message of the log delivered after position ``lo``, before ``hi``."""
        k = bisect_right(self.orders, lo)
        return self.entries[k] if k < len(self.entries) and self.orders[k] < hi else None

    def rejected_between(self, lo: int, hi: int) -> str | None:
        k = bisect_right(self.rejected_orders, lo)
        ok = k < len(self.rejected) and self.rejected_orders[k] < hi
        return self.rejected[k][1] if ok else None

    def files(self, e: _Entry) -> str:
        """An attestation's file, and the files of its copies, for a finding's detail."""
        name = Path(e.file).name
        again = [f for f in self.again.get(e.raw, ()) if f != name]
        return f"{name}, again in {', '.join(again)}" if again else name

    def misplaced(self, e: _Entry) -> str:
        """A message delivered where another seq was expected, in words."""
        if e.copy_of:
            return f"a copy of seq {e.ev.seq} (first delivered in {Path(e.copy_of).name})"
        return f"seq {e.ev.seq} ({self.files(e)}), out of its order"


def _gap(dev: str, a: _Entry, b: _Entry, delivered: _Delivered) -> Finding:
    """seq ``a + 1 .. b - 1`` are missing: name what was delivered in their place.

    A message delivered between ``a`` and ``b`` that belongs elsewhere in the chain (a
    copy of another attestation, one delivered out of order) or that was rejected stands
    where the missing seq should be: the finding names it (a planted copy, or the
    attestation a change made unverifiable), else ``b``. The detail names both
    neighbours' files and their copies (a copy planted over a missing one is often the
    neighbour's).
    """
    missing = (
        f"seq {a.ev.seq + 1}..{b.ev.seq - 1} are missing between seq {a.ev.seq} "
        f"({delivered.files(a)}) and seq {b.ev.seq} ({delivered.files(b)})"
    )
    lo, hi = min(a.order, b.order), max(a.order, b.order)
    e = delivered.between(lo, hi)
    if e is not None:
        return Finding(
            dev,
            b.ev.seq,
            "CHAIN_GAP",
            f"{missing}; delivered in their place: {delivered.misplaced(e)}",
            e.file,
            related=b.file,
        )
    file = delivered.rejected_between(lo, hi)
    if file is not None:
        return Finding(
            dev,
            b.ev.seq,
            "CHAIN_GAP",
            f"{missing}; delivered in their place: a message that was rejected (see its finding)",
            file,
            related=b.file,
        )
    return Finding(dev, b.ev.seq, "CHAIN_GAP", missing, b.file, related=a.file)


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
