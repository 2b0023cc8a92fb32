"""``edgegov audit …``: the auditor's commands (parsed and dispatched by agent/cli.py).

Each handler takes the parsed arguments, prints its result and returns the exit status;
errors propagate as :class:`~agent.errors.Error` for the CLI to map to an exit code.
agent/cli.py imports this module only when an audit command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import Error

if TYPE_CHECKING:
    import argparse

    from agent.audit.analysis import Analysis
    from agent.audit.trust import TrustStore
    from agent.audit.verify import AuditResult
    from agent.governance.review import RawStatement

__all__ = [
    "audit_collect",
    "audit_prove",
    "audit_replay",
    "audit_report",
    "audit_verify",
    "governed_analysis",
]

#: signed governance statements (agent.governance.statements), found beside the evidence
STATEMENT_SUFFIXES = (".explanation", ".calibration")


def _trust(a: argparse.Namespace) -> TrustStore:
    """--trust FILE and/or --key PEM... as one TrustStore (fails closed if neither)."""
    from agent.audit.trust import TrustedKey, TrustStore, load_trust
    from agent.identity.keys import load_public_key

    trust = load_trust(Path(a.trust)) if a.trust else TrustStore()
    for k in a.key or []:
        pub = load_public_key(Path(k))
        trust.add(TrustedKey(pub, None, f"key {k}"))
    if trust.empty:
        raise Error("no trust anchors: pass --trust FILE or --key PUBLIC_KEY.pem")
    return trust


def _audit_result(a: argparse.Namespace, trust: TrustStore | None = None) -> AuditResult:
    """Verify --store or the paths given; nothing to verify is an input error (exit 2)."""
    from agent.audit.evidence_db import read_messages
    from agent.audit.verify import Message, collect_files, verify_messages

    trust = trust or _trust(a)
    jobs = _jobs(a)
    if a.store and a.paths:
        raise Error("give attestation files or directories, or --store URL, not both")
    postgres = a.store and a.store.startswith(("postgresql://", "postgres://"))
    if postgres and not a.device and jobs == 1:  # streamed: agent/audit/verify_stream.py
        from agent.audit.evidence_db import iter_messages
        from agent.audit.verify_stream import verify_stream

        res = verify_stream(iter_messages(a.store), trust)
        if not res.files:
            raise Error(f"{a.store}: no attestations in that store")
        return res
    if a.store:
        msgs: list[Message] = read_messages(a.store)
        if not msgs:
            raise Error(f"{a.store}: no attestations in that store")
        return verify_messages(msgs, trust, a.device, jobs=jobs)
    if not a.paths:
        raise Error("give attestation files or directories, or --store URL")
    files = [f for f in collect_files([Path(p) for p in a.paths]) if not _is_statement(f)]
    if not files:
        raise Error(f"{', '.join(a.paths)}: no attestations there (no .cose files)")
    msgs_of_files = (Message(f.read_bytes(), str(f)) for f in files)
    return verify_messages(msgs_of_files, trust, a.device, jobs=jobs)


def _is_statement(f: Path) -> bool:
    return f.name.endswith(STATEMENT_SUFFIXES)


def _jobs(a: argparse.Namespace) -> int:
    """--jobs N (audit verify; 1 where a command has no such option): the processes that
    check signatures, this one and N - 1 workers. An input error (exit 2) unless N >= 1."""
    jobs: int = getattr(a, "jobs", 1)
    if jobs < 1:
        raise Error(
            f"--jobs {jobs}: give the number of processes to check signatures in, 1 or more "
            "(1: this process alone)"
        )
    return jobs


def governed_analysis(a: argparse.Namespace) -> Analysis:
    """Verify, analyse (with --policy: compliance per goal) and review governance: the
    signed statements found beside the evidence (``*.explanation``, ``*.calibration`` in
    the directories given, or the collector store's) checked against the trust file's
    people and labs; deviations and their explanations; calibration cover
    (``agent.governance.review``)."""

    from agent.audit.analysis import analyze
    from agent.audit.bundle import check_bundles
    from agent.governance.commands import parse_time_ms
    from agent.governance.people import load_authorities
    from agent.governance.review import default_as_of, review

    as_of = parse_time_ms(a.as_of, "--as-of") if a.as_of else None
    policy = None
    if a.policy:
        from agent.policy import load_policy

        policy = load_policy(Path(a.policy))
    authorities = load_authorities(Path(a.trust) if a.trust else None)
    trust = _trust(a)
    res = _audit_result(a, trust)
    disclosed = check_bundles([Path(p) for p in a.paths], res, trust)  # export bundles
    an = analyze(res, policy)  # PolicyMismatch: an input error, exit 2
    an.disclosure = [d.to_json() for d in disclosed] or None
    if as_of is None:
        as_of = default_as_of(an)
    an.governance = review(an, _statements(a), authorities, policy, as_of)
    return an


def _statements(a: argparse.Namespace) -> list[RawStatement]:
    from agent.audit.evidence_db import read_statements
    from agent.governance.review import RawStatement

    if a.store:
        return [RawStatement(raw, src) for raw, src in read_statements(a.store)]
    out: list[RawStatement] = []
    for p in map(Path, a.paths):
        files = (
            sorted(f for kind in STATEMENT_SUFFIXES for f in p.rglob(f"*{kind}"))
            if p.is_dir()
            else [p] if p.name.endswith(STATEMENT_SUFFIXES) else []
        )  # fmt: skip
        out.extend(RawStatement(f.read_bytes(), str(f)) for f in files)
    return out


def _audit_exit(a: argparse.Namespace, an: Analysis) -> int:
    """0 intact; 1 evidence findings, or (--require-compliance) a goal or rule not met."""
    if not an.intact:
        return 1
    if a.require_compliance and an.not_met():
        names = "; ".join(f"{c.kind} {c.id} {c.status}" for c in an.not_met())
        print(f"edgegov: compliance required, not met: {names}", file=sys.stderr)
        return 1
    return 0


def audit_verify(a: argparse.Namespace) -> int:
    from agent.audit import format_result

    an = governed_analysis(a)
    # allow_nan=False: a NaN or infinity can never reach an auditor's JSON parser as
    # invalid JSON (the verifier refuses them in claims; were one to slip through, it
    # is a bug, exit 70, not a document)
    print(json.dumps(an.to_json(), indent=2, allow_nan=False) if a.json else format_result(an))
    return _audit_exit(a, an)


def audit_report(a: argparse.Namespace) -> int:
    from agent.audit.report import render_html

    an = governed_analysis(a)
    Path(a.html).write_text(render_html(an), encoding="utf-8")
    goals = ", ".join(f"{c.id} {c.status}" for c in an.compliance) or "nothing to judge"
    print(
        f"report written to {a.html}: evidence {an.evidence} "
        f"({len(an.findings)} finding(s)); {an.scope}: {goals}"
    )
    return _audit_exit(a, an)


def audit_prove(a: argparse.Namespace) -> int:
    from agent.audit.prove import check_proof, make_proof

    if a.check:
        p = check_proof(Path(a.check).read_bytes(), _trust(a))
        r = p.reading
        print(
            f"{a.check}: reading {r.index} of {p.evidence.device_id} is in the log "
            f"{p.evidence.checkpoint.origin} (attestation seq {p.evidence.seq}, tree size "
            f"{p.evidence.checkpoint.size}, {p.proof_hashes} proof hashes)\n"
            f"  received_ms {r.received_ms}  device_ms {r.device_ms}  source {r.source}  "
            f"frame {r.frame_seq}  values {list(r.values)}"
        )
        return 0
    if a.store is None or a.index is None or a.out is None:
        raise Error("to make a proof pass --store PATH --index N --out FILE (or --check FILE)")
    Path(a.out).write_bytes(make_proof(Path(a.store), a.index))
    print(f"proof for reading {a.index} written to {a.out}")
    return 0


def audit_replay(a: argparse.Namespace) -> int:
    from agent.audit.replay import replay
    from agent.policy import load_policy

    bundle = load_policy(Path(a.policy))
    providers = a.provider or ["CPUExecutionProvider"]
    res = replay(Path(a.store), bundle, _trust(a), a.seq or (), providers)
    print(json.dumps(res.to_json(), indent=2, allow_nan=False) if a.json else res.text())
    return 0 if res.ok else 1


def audit_collect(a: argparse.Namespace) -> int:
    import signal
    import threading
    import time

    from agent.audit.collector import StoreCollector
    from agent.transport.options import broker_tls

    c = StoreCollector(a.broker, a.store, fleet=a.fleet, share=a.share, tls=broker_tls(a),
                       version=a.mqtt_version, session_id=a.session)  # fmt: skip
    # SIGTERM (systemd, kill) and SIGINT (Ctrl-C) stop it; set here, since a process started
    # in the background of a shell inherits SIGINT ignored and Python would leave it so
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    c.start()
    print(
        f"collecting {c.topic} and the signed statements beside it (explanations, calibration "
        f"certificates) from {c.url} into {a.store} (Ctrl-C to stop)",
        file=sys.stderr,
    )
    try:
        deadline = time.monotonic() + a.seconds if a.seconds else None
        while not stop.wait(0.2) and (deadline is None or time.monotonic() < deadline):
            pass
    finally:
        c.stop()
    print(f"received {c.received}, stored {len(c.stored)} new", file=sys.stderr)
    return 0
