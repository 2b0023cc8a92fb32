"""The `edgegov` command line. Thin: parse, call the package, map errors to exit codes.

Exit codes: 0 ok, 1 a finding (violation, invalid evidence, rejected config),
2 usage or input error (the message names the file, field or line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.errors import Error

if TYPE_CHECKING:  # the commands import what they use, when they run
    from agent.audit.trust import TrustStore
    from agent.audit.verify import AuditResult

__all__ = ["main"]

_Handler = Callable[[argparse.Namespace], int]


def _cmd_demo(a: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(
        seconds=a.seconds, out=Path(a.out), scenario=a.scenario, use_broker=not a.no_broker
    )


def _cmd_init(a: argparse.Namespace) -> int:
    from agent.init import init_device

    init_device(a.device_id, Path(a.dir), a.key_type)
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.runner import Agent

    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    agent = Agent(load_config(a.config))
    agent.install_signal_handlers()
    agent.run()
    return 0


def _cmd_emulate(a: argparse.Namespace) -> int:
    from firmware_bridge.emulator import emulate_main

    return emulate_main(a.rest)


def _cmd_policy_check(a: argparse.Namespace) -> int:
    from agent.policy import load_policy
    from agent.policy.lint import check_models, lint

    b = load_policy(a.file)
    findings = lint(b) + check_models(b)
    if a.json:
        print(
            json.dumps(
                {
                    "id": b.id,
                    "version": b.version,
                    "digest": b.digest,
                    "extends": list(b.extends),
                    "rules": [r.id for r in b.rules],
                    "models": [m.id for m in b.models],
                    "findings": [
                        {"kind": f.kind, "subject": f.subject, "message": f.message}
                        for f in findings
                    ],
                }
            )
        )
    else:
        verdict = "OK" if not findings else f"{len(findings)} finding(s)"
        print(
            f"{a.file}: {verdict} - policy {b.id} v{b.version}, {len(b.goals)} goal(s), "
            f"{len(b.rules)} rule(s), {len(b.channels)} channel(s), {len(b.models)} model(s)"
        )
        for f in findings:
            print(f"  {f.kind}: {f}")
        print(f"digest sha256:{b.digest}")
    return 1 if findings else 0


def _cmd_policy_eval(a: argparse.Namespace) -> int:
    from agent.policy import load_policy
    from agent.policy.replay import replay

    b = load_policy(a.file)
    reports, bad = replay(b, a.readings)
    if a.json:
        doc = {
            "policy": {"id": b.id, "version": b.version, "digest": b.digest},
            "rules": [r.to_json() for r in reports],
            "out_of_range": bad,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"policy {b.id} v{b.version} over {a.readings}")
        width = max(len(r.rule_id) for r in reports)
        for r in reports:
            print(
                f"  {r.rule_id:<{width}}  {r.severity:<8}  {r.violated:>7} of "
                f"{r.evaluated + r.errors:>7} readings violated, {len(r.episodes)} episode(s)"
                + (f", {r.errors} not evaluable" if r.errors else "")
            )
            for text in r.explanations:
                print(f"      - {text}")
        for ch, n in bad.items():
            if n:
                print(f"  data quality: {n} reading(s) of {ch} outside its valid range (not used)")
    return 1 if any(r.violated for r in reports) else 0


def _trust(a: argparse.Namespace) -> TrustStore:
    """--trust FILE and/or --key PEM... as one TrustStore (fails closed if neither)."""
    from agent.audit.trust import TrustedKey, TrustStore, load_trust
    from agent.keys import load_public_key

    trust = load_trust(Path(a.trust)) if a.trust else TrustStore()
    for k in a.key or []:
        pub = load_public_key(Path(k))
        trust.add(TrustedKey(pub, None, f"key {k}"))
    if trust.empty:
        raise Error("no trust anchors: pass --trust FILE or --key PUBLIC_KEY.pem")
    return trust


def _audit_result(a: argparse.Namespace) -> AuditResult:
    from agent.audit.evidence_db import open_db
    from agent.audit.verify import verify_messages, verify_paths

    trust = _trust(a)
    if a.store:
        db = open_db(a.store)
        try:
            return verify_messages(list(db.messages()), trust, a.device)
        finally:
            db.close()
    if not a.paths:
        raise Error("give attestation files or directories, or --store URL")
    return verify_paths([Path(p) for p in a.paths], trust, a.device)


def _cmd_audit_verify(a: argparse.Namespace) -> int:
    from agent.audit import format_result

    res = _audit_result(a)
    print(json.dumps(res.to_json(), indent=2) if a.json else format_result(res))
    return 0 if res.ok else 1


def _cmd_audit_report(a: argparse.Namespace) -> int:
    from agent.audit.report import render_html

    res = _audit_result(a)
    Path(a.html).write_text(render_html(res), encoding="utf-8")
    print(
        f"report written to {a.html}: {'PASS' if res.ok else 'FAIL'}, "
        f"{len(res.findings)} finding(s)"
    )
    return 0 if res.ok else 1


def _cmd_audit_prove(a: argparse.Namespace) -> int:
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


def _cmd_audit_replay(a: argparse.Namespace) -> int:
    from agent.audit.replay import replay
    from agent.policy import load_policy

    bundle = load_policy(Path(a.policy))
    providers = a.provider or ["CPUExecutionProvider"]
    res = replay(Path(a.store), bundle, _trust(a), a.seq or (), providers)
    print(json.dumps(res.to_json(), indent=2) if a.json else res.text())
    return 0 if res.ok else 1


def _cmd_audit_collect(a: argparse.Namespace) -> int:
    import time

    from agent.audit.collector import StoreCollector

    c = StoreCollector(a.broker, a.store, fleet=a.fleet, share=a.share)
    c.start()
    print(f"collecting {c.topic} from {c.url} into {a.store} (Ctrl-C to stop)", file=sys.stderr)
    try:
        deadline = time.monotonic() + a.seconds if a.seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
    print(f"received {c.received}, stored {len(c.stored)} new", file=sys.stderr)
    return 0


def _cmd_fleet_ca(a: argparse.Namespace) -> int:
    from agent import fleet_ca

    d = Path(a.dir)
    if a.action == "init":
        print(f"fleet CA certificate: {fleet_ca.init_ca(d, a.name, a.key_type)}")
    elif a.action == "issue":
        if not a.file or not a.out:
            raise Error("fleet ca issue needs a CSR file and --out CERT")
        Path(a.out).write_bytes(fleet_ca.issue_certificate(d, Path(a.file).read_bytes()))
        print(f"device certificate: {a.out}")
    else:
        if not a.file:
            raise Error("fleet ca revoke needs the device certificate file")
        print(f"CRL: {fleet_ca.revoke_certificate(d, Path(a.file).read_bytes())}")
    return 0


def _cmd_key_rotate(a: argparse.Namespace) -> int:
    from agent.keys import generate_key, load_signer
    from agent.rotation import make_rotation

    old = load_signer(Path(a.old))
    new = generate_key(Path(a.new), a.key_type)
    Path(a.out).write_bytes(make_rotation(a.device_id, old, new))
    print(
        f"new key {a.new} (kid {new.kid.hex()}); rotation statement {a.out} "
        "(add it to the auditors' trust file under rotations)"
    )
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from agent.bench import SECTIONS, format_rows, run_sections

    names = tuple(a.only.split(",")) if a.only else SECTIONS
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise Error(f"unknown bench section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    logging.basicConfig(level=logging.ERROR)  # the sections' own reconnects are not news
    rows = run_sections(names, quick=a.quick)
    print(json.dumps([r.to_json() for r in rows], indent=2) if a.json else format_rows(rows))
    return 0


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="edgegov",
        formatter_class=fmt,
        description="Edge-device governance agent: signed, verifiable compliance evidence "
        "from serial sensors.",
        epilog="examples:\n  edgegov demo\n  edgegov run --config /etc/edgegov/agent.yaml\n"
        "  edgegov audit verify attestations/ --key device.pub.pem",
    )
    p.add_argument("--version", action="version", version=f"edgegov {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(
        name: str,
        handler: _Handler,
        help: str,
        example: str,
        parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
    ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=help, formatter_class=fmt, epilog=f"example:\n  {example}"
        )
        sp.set_defaults(handler=handler)
        return sp

    d = cmd(
        "demo",
        _cmd_demo,
        "run the whole path on an emulated device, then audit it",
        "edgegov demo --seconds 20 --out /tmp/edgegov-demo",
    )
    d.add_argument("--seconds", type=float, default=15.0, help="how long the agent runs (15)")
    d.add_argument("--out", default="demo-out", help="output directory (./demo-out)")
    d.add_argument(
        "--scenario",
        default="excursion",
        choices=["normal", "excursion", "drift", "garbage", "noisy-line"],
        help="emulator scenario (excursion)",
    )
    d.add_argument(
        "--no-broker",
        action="store_true",
        help="write attestations to a local spool even if mosquitto is installed",
    )

    i = cmd(
        "init",
        _cmd_init,
        "create a device key (0600) and a config skeleton",
        "edgegov init --device-id gw-0001 --dir /etc/edgegov",
    )
    i.add_argument("--device-id", required=True)
    i.add_argument("--dir", default=".", help="where to write keys/ and agent.yaml (.)")
    i.add_argument("--key-type", choices=["ed25519", "p256"], default="ed25519")

    r = cmd(
        "run",
        _cmd_run,
        "run the agent daemon (SIGTERM flushes and exits 0, SIGHUP reloads the policy)",
        "edgegov run --config /etc/edgegov/agent.yaml",
    )
    r.add_argument("--config", required=True, help="agent config file (YAML)")
    r.add_argument("-v", "--verbose", action="store_true")

    e = cmd(
        "emulate",
        _cmd_emulate,
        "run the device emulator (see 'edgegov emulate --help')",
        "edgegov emulate --pty --scenario excursion",
    )
    e.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    pol = sub.add_parser("policy", help="check policy bundles")
    psub = pol.add_subparsers(dest="policy_command", metavar="COMMAND")
    psub.required = True
    pc = cmd(
        "check",
        _cmd_policy_check,
        "lint a policy bundle and print its digest",
        "edgegov policy check configs/policies/cold-chain.yaml",
        psub,
    )
    pc.add_argument("file")
    pc.add_argument("--json", action="store_true")
    pe = cmd(
        "eval",
        _cmd_policy_eval,
        "run a policy over recorded readings (CSV: timestamp + one column per channel); "
        "exit 1 if any rule is violated",
        "edgegov policy eval configs/policies/cold-chain.yaml --readings recording.csv",
        psub,
    )
    pe.add_argument("file")
    pe.add_argument("--readings", required=True, help="CSV with a timestamp column")
    pe.add_argument("--json", action="store_true")

    b = cmd(
        "bench",
        _cmd_bench,
        "measure the hot paths beside their baselines, in one run",
        "edgegov bench --only policy",
    )
    b.add_argument("--only", help="comma-separated sections")
    b.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run)")
    b.add_argument("--json", action="store_true")

    aud = sub.add_parser("audit", help="verify attestation streams offline")
    asub = aud.add_subparsers(dest="audit_command", metavar="COMMAND")
    asub.required = True
    av = cmd(
        "verify",
        _cmd_audit_verify,
        "verify signatures and the hash chain of attestations",
        "edgegov audit verify demo-out/attestations --key demo-out/device/device.pub.pem",
        asub,
    )

    def trust(sp: argparse.ArgumentParser) -> None:  # read by _trust()
        sp.add_argument("--trust", help="trust file (YAML): keys, fleet CAs, revocations, ...")
        sp.add_argument(
            "--key", action="append", help="trusted device public key (PEM); repeatable"
        )

    def sources(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("paths", nargs="*", help=".cose files or directories")
        sp.add_argument(
            "--store", help="a collector store URL instead (sqlite:///F, postgresql://)"
        )
        trust(sp)
        sp.add_argument("--device", help="audit this device's stream: others are findings")

    sources(av)
    av.add_argument("--json", action="store_true", help="machine-readable verdict")
    ar = cmd(
        "report",
        _cmd_audit_report,
        "verify, then write a self-contained HTML report (inline SVG charts)",
        "edgegov audit report attestations/ --trust trust.yaml --html report.html",
        asub,
    )
    sources(ar)
    ar.add_argument("--html", required=True, help="output file")
    ap = cmd(
        "prove",
        _cmd_audit_prove,
        "make an inclusion proof for one reading, or check one offline",
        "edgegov audit prove --store state/evidence.sqlite --index 17 --out r17.proof",
        asub,
    )
    ap.add_argument("--store", help="the gateway's evidence store (SQLite file)")
    ap.add_argument("--index", type=int, help="leaf index of the reading")
    ap.add_argument("--out", help="where to write the proof")
    ap.add_argument("--check", help="a proof file to check")
    trust(ap)
    arp = cmd(
        "replay",
        _cmd_audit_replay,
        "re-run stored windows through the attested policy and models; show the verdict "
        "and risk scores are reproduced (bit for bit on CPU)",
        "edgegov audit replay --store state/evidence.sqlite --policy cold-chain.yaml "
        "--key device.pub.pem --seq 12",
        asub,
    )
    arp.add_argument("--store", required=True, help="the gateway's evidence store (SQLite)")
    arp.add_argument(
        "--policy", required=True, help="the policy bundle in force (its models beside it)"
    )
    arp.add_argument("--seq", type=int, action="append", help="window to replay (default: newest)")
    trust(arp)
    arp.add_argument(
        "--provider",
        action="append",
        help="onnxruntime execution provider to replay on (default CPUExecutionProvider)",
    )
    arp.add_argument("--json", action="store_true", help="machine-readable verdict")
    ac = cmd(
        "collect",
        _cmd_audit_collect,
        "store a fleet's attestations from a broker (SQLite or PostgreSQL)",
        "edgegov audit collect --broker mqtt://broker:1883 --store postgresql://db/audit "
        "--share auditors",
        asub,
    )
    ac.add_argument("--broker", required=True, help="mqtt:// or mqtts:// URL")
    ac.add_argument("--store", default="collected.sqlite", help="sqlite path/URL or postgresql://")
    ac.add_argument("--fleet", default="+", help="fleet to follow (all)")
    ac.add_argument("--share", help="MQTT v5 shared-subscription group (several collectors)")
    ac.add_argument("--seconds", type=float, default=0, help="stop after this long (never)")

    fleet = sub.add_parser("fleet", help="fleet identity (CA) and signed configuration (TUF)")
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND")
    fsub.required = True
    fc = cmd(
        "ca",
        _cmd_fleet_ca,
        "fleet CA: init, issue a device certificate from a CSR, revoke one",
        "edgegov fleet ca issue gw-0001.csr --dir fleet-ca --out gw-0001.pem",
        fsub,
    )
    fc.add_argument("action", choices=["init", "issue", "revoke"])
    fc.add_argument("file", nargs="?", help="CSR (issue) or certificate (revoke)")
    fc.add_argument("--dir", default="fleet-ca", help="CA directory (fleet-ca)")
    fc.add_argument("--out", help="certificate file to write (issue)")
    fc.add_argument("--name", default="edgegov fleet CA", help="CA name (init)")
    fc.add_argument("--key-type", choices=["ed25519", "p256"], default="ed25519")
    from agent.fleet.cli import add_commands as fleet_tuf_commands  # signed config (TUF)

    fleet_tuf_commands(fsub, cmd)

    key = sub.add_parser("key", help="device key management")
    ksub = key.add_subparsers(dest="key_command", metavar="COMMAND")
    ksub.required = True
    kr = cmd(
        "rotate",
        _cmd_key_rotate,
        "make a new device key and a rotation statement signed by the old and the new key",
        "edgegov key rotate --device-id gw-0001 --old keys/device.key --new keys/device2.key "
        "--out rotation.cbor",
        ksub,
    )
    kr.add_argument("--device-id", required=True)
    kr.add_argument("--old", required=True)
    kr.add_argument("--new", required=True)
    kr.add_argument("--out", required=True)
    kr.add_argument("--key-type", choices=["ed25519", "p256"], default="ed25519")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulate"]:  # the emulator owns its own argument parser
        from firmware_bridge.emulator import emulate_main

        return emulate_main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        return int(args.handler(args))
    except Error as e:
        print(f"edgegov: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
