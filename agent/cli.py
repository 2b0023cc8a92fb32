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

from agent import __version__
from agent.errors import INTERNAL_ERROR_EXIT, Error
from agent.logs import FORMATS as LOG_FORMATS
from agent.logs import LEVELS as LOG_LEVELS

__all__ = ["main"]

_Handler = Callable[[argparse.Namespace], int]


def _cmd_demo(a: argparse.Namespace) -> int:
    from agent.tools.demo import run_demo

    return run_demo(
        seconds=a.seconds, out=Path(a.out), scenario=a.scenario, use_broker=not a.no_broker
    )


def _cmd_doctor(a: argparse.Namespace) -> int:
    from agent.tools.doctor import diagnose

    d = diagnose()
    print(json.dumps(d.to_json(), indent=2) if a.json else d.format())
    return 1 if d.findings else 0


class _VersionAction(argparse.Action):
    """``--version``: the version, then which native modules are compiled (and why not)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from native import format_native_status

        print(f"edgegov {__version__}\n{format_native_status()}")
        parser.exit()


def _cmd_init(a: argparse.Namespace) -> int:
    from agent.identity.device_init import init_device

    init_device(a.device_id, Path(a.dir), a.key_type)
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.logs import configure, set_level
    from agent.pipeline.runner import Agent
    from agent.pipeline.service import Notifier

    level = a.log_level or ("debug" if a.verbose else None)
    configure(level or "info", a.log_format)
    notifier = Notifier.from_env()  # systemd Type=notify (NOTIFY_SOCKET); else a no-op
    try:
        config = load_config(a.config)
        if level is None and config.log_level is not None:
            set_level(config.log_level)  # --log-level wins over the file's log.level
        agent = Agent(config, notifier)
    except Error as e:
        notifier.status(f"failed to start: {e}")  # systemctl status shows why
        raise
    agent.install_signal_handlers()
    agent.run()
    notifier.close()
    return 0


def _cmd_emulate(a: argparse.Namespace) -> int:
    from firmware_bridge.emulate_cli import emulate_main

    return emulate_main(a.rest)


def _cmd_status(a: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.pipeline.local_status import Thresholds, local_status

    st = local_status(load_config(a.config), Thresholds(a.max_lag, a.max_outbox_age))
    print(json.dumps(st.to_json(), indent=2) if a.json else st.text())
    return 0 if st.ok else 1


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds, >= 0."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return v


def _cmd_policy_check(a: argparse.Namespace) -> int:
    """Each file in turn (one that fails to load does not stop the others): exit 2 if any
    failed to load, else 1 if any has findings."""
    codes = []
    for file in a.files:
        try:
            codes.append(_policy_check_one(file, a.json))
        except Error as e:
            if a.json:
                print(json.dumps({"file": file, "error": str(e)}), flush=True)
            print(f"edgegov: error: {e}", file=sys.stderr, flush=True)
            codes.append(e.exit_code)
    return 2 if 2 in codes else max(codes)


def _policy_check_one(file: str, as_json: bool) -> int:
    from agent.policy import load_policy
    from agent.policy.lint import check_models, lint

    b = load_policy(file)
    findings = lint(b) + check_models(b)
    if as_json:
        print(
            json.dumps(
                {
                    "file": file,
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
            ),
            flush=True,
        )
    else:
        verdict = "OK" if not findings else f"{len(findings)} finding(s)"
        print(
            f"{file}: {verdict} - policy {b.id} v{b.version}, {len(b.goals)} goal(s), "
            f"{len(b.rules)} rule(s), {len(b.channels)} channel(s), {len(b.models)} model(s)"
        )
        for f in findings:
            print(f"  {f.kind}: {f}")
        print(f"digest sha256:{b.digest}", flush=True)
    return 1 if findings else 0


def _cmd_policy_eval(a: argparse.Namespace) -> int:
    from agent.policy import load_policy
    from agent.policy.csv_eval import replay

    b = load_policy(a.file)
    reports, bad = replay(
        b, a.readings, warn=lambda msg: print(f"edgegov: warning: {msg}", file=sys.stderr)
    )
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


def _audit(name: str) -> _Handler:
    """The handler ``name`` of agent/audit/commands.py, imported when the command runs."""

    def handler(a: argparse.Namespace) -> int:
        from agent.audit import commands

        run: _Handler = getattr(commands, name)
        return run(a)

    return handler


def _cmd_fleet_ca(a: argparse.Namespace) -> int:
    from agent.identity import fleet_ca

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
    from agent.evidence.rotation import make_rotation
    from agent.identity.keys import generate_key, load_signer

    old = load_signer(Path(a.old))
    new = generate_key(Path(a.new), a.key_type)
    Path(a.out).write_bytes(make_rotation(a.device_id, old, new))
    print(
        f"new key {a.new} (kid {new.kid.hex()}); rotation statement {a.out} "
        "(add it to the auditors' trust file under rotations)"
    )
    return 0


def _cmd_key_create(a: argparse.Namespace) -> int:
    from agent.identity.pkcs11 import create_token_key, pin_from_env

    out = Path(a.pub_out)
    if out.exists() or not out.parent.is_dir():
        why = "exists (not overwritten)" if out.exists() else "its directory does not exist"
        raise Error(f"--pub-out {out}: {why}; nothing was created")
    pin = pin_from_env(a.pin_env, "--pin-env")
    signer = create_token_key(a.pkcs11_module, a.token, a.label, pin, a.key_type)
    try:
        with open(out, "xb") as f:
            f.write(signer.public.pem())
    except OSError as e:
        raise Error(
            f"--pub-out {out}: {e.strerror}; the key {a.label!r} was created: export its public "
            "key with 'edgegov key export-pub'"
        ) from e
    finally:
        signer.close()
    print(
        f"created {a.key_type} key {a.label!r} in token {a.token!r} (kid {signer.kid.hex()}; "
        f"the private key cannot leave the token)\npublic key   {out}\n"
        f"use it as a device key (agent.yaml): device: {{pkcs11: {{module: {a.pkcs11_module}, "
        f"token: {a.token}, key: {a.label}, pin_env: {a.pin_env}}}}}\n"
        f"or as a fleet key (Ed25519): write fleet-repo/keys/<name>.pkcs11 with the same four "
        "fields"
    )
    return 0


def _cmd_key_export_pub(a: argparse.Namespace) -> int:
    import os

    from agent.identity.pkcs11 import export_public

    pub = export_public(a.pkcs11_module, a.token, a.label, os.environ.get(a.pin_env))
    out = Path(a.pub_out)
    try:
        out.write_bytes(pub.pem())
    except OSError as e:
        raise Error(f"--pub-out {out}: cannot write: {e.strerror}") from e
    print(f"public key of {a.label!r} in token {a.token!r} (kid {pub.kid.hex()}): {out}")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from agent.tools.bench import SECTIONS, format_rows, run_sections

    if a.mode == "faults":
        return _bench_faults(a)
    if a.mode == "fuzz":
        return _bench_fuzz(a)
    names = tuple(a.only.split(",")) if a.only else SECTIONS
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise Error(f"unknown bench section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    logging.basicConfig(level=logging.ERROR)  # the sections' own reconnects are not news
    rows = run_sections(names, quick=a.quick)
    print(json.dumps([r.to_json() for r in rows], indent=2) if a.json else format_rows(rows))
    return 0


def _bench_faults(a: argparse.Namespace) -> int:
    """``edgegov bench faults``: exit 1 when a fault broke the promise (a row's problems)."""
    from agent.tools.bench.core import machine
    from agent.tools.bench.faults import SCENARIOS, format_table, run_faults

    names = a.only.split(",") if a.only else None
    unknown = [n for n in names or () if n not in SCENARIOS]
    if unknown:
        raise Error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    logging.basicConfig(level=logging.ERROR)
    keep = Path(a.keep) if a.keep else None
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise Error(f"--keep {keep}: not empty (each run needs fresh state: a new directory)")
    rows = run_faults(names, quick=a.quick, workdir=keep, jobs=a.jobs, seed=a.seed)
    if a.json:
        doc = {"machine": machine(), "quick": a.quick, "rows": [r.to_json() for r in rows]}
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(rows))
    return 1 if any(r.problems for r in rows) else 0


def _bench_fuzz(a: argparse.Namespace) -> int:
    """``edgegov bench fuzz``: exit 1 when a case crashed, got through or blamed the wrong file
    (or, with --differential, the compiled and pure paths disagree)."""
    from agent.tools.bench.fuzz import format_report, run_differential, run_fuzz

    if a.cases < 1 or a.cli < 0:
        raise Error("--cases must be at least 1 and --cli not negative")
    if a.differential:
        diff = run_differential(a.cases, a.seed, a.cli)
        print(json.dumps(diff.to_json(), indent=2) if a.json else diff.format())
        return 1 if diff.failed else 0
    report = run_fuzz(a.cases, a.seed, a.cli)
    print(json.dumps(report.to_json(per_case=False), indent=2) if a.json else format_report(report))
    return 1 if report.failed else 0


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
    p.add_argument(
        "--version", action=_VersionAction, help="show the version and the native modules in use"
    )
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

    doc = cmd(
        "doctor",
        _cmd_doctor,
        "check this installation: Python, platform, which native modules are compiled, "
        "onnxruntime and its execution providers, mosquitto; exit 1 on a finding",
        "edgegov doctor --json",
    )
    doc.add_argument("--json", action="store_true", help="machine-readable report")

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
        "run the agent daemon (SIGTERM flushes and exits 0, SIGHUP reloads the config file; "
        "systemd: Type=notify with a watchdog, see configs/systemd/)",
        "edgegov run --config /etc/edgegov/agent.yaml --log-format json",
    )
    r.add_argument("--config", required=True, help="agent config file (YAML)")
    r.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one object per line with time, level, logger, message "
        "and fields such as seq, device, reason",
    )
    r.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="overrides the config's log.level (default info)",
    )
    r.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")

    e = cmd(
        "emulate",
        _cmd_emulate,
        "run the device emulator (see 'edgegov emulate --help')",
        "edgegov emulate --pty --scenario excursion",
    )
    e.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    st = cmd(
        "status",
        _cmd_status,
        "the agent's state from its local files alone (no broker; reads, never writes): "
        "device, evidence log, last signed seq, outbox, sources' last-window quality, config "
        "in force, degraded reasons, boot count; exit 1 if it is behind or degraded",
        "edgegov status --config /etc/edgegov/agent.yaml --json",
    )
    st.add_argument("--config", required=True, help="agent config file (YAML)")
    st.add_argument("--json", action="store_true", help="machine-readable status")
    st.add_argument(
        "--max-lag",
        type=_seconds,
        metavar="SECONDS",
        help="behind if the newest signed window ended longer ago (default: two windows + 60 s)",
    )
    st.add_argument(
        "--max-outbox-age",
        type=_seconds,
        metavar="SECONDS",
        help="behind if the oldest undelivered attestation was signed longer ago "
        "(default: two windows + 300 s)",
    )

    pol = sub.add_parser("policy", help="check policy bundles")
    psub = pol.add_subparsers(dest="policy_command", metavar="COMMAND")
    psub.required = True
    pc = cmd(
        "check",
        _cmd_policy_check,
        "lint policy bundles and print their digests (one line or JSON object per file); "
        "exit 1 if any has findings, 2 if any does not load (the others are still checked)",
        "edgegov policy check configs/policies/*.yaml",
        psub,
    )
    pc.add_argument("files", nargs="+", metavar="FILE")
    pc.add_argument("--json", action="store_true", help="one JSON object per line, per file")
    pe = cmd(
        "eval",
        _cmd_policy_eval,
        "run a policy over recorded readings (CSV: timestamp + one column per channel); "
        "exit 1 if any rule is violated",
        "edgegov policy eval configs/policies/cold-chain.yaml --readings recording.csv",
        psub,
    )
    pe.add_argument("file")
    pe.add_argument(
        "--readings",
        required=True,
        help="CSV with a header: a time column, then one column per channel (a channel "
        "without a column is all missing readings: a warning) and risk:<model-id> scores",
    )
    pe.epilog = (
        "time column (one of):\n"
        "  timestamp     ISO 8601 with a time zone: 2026-01-01T00:00:00Z,\n"
        "                2026-01-01T01:00:00.250+01:00 (a bare number is refused:\n"
        "                seconds or milliseconds?)\n"
        "  timestamp_ms  Unix time in integer milliseconds: 1767225600000\n\n"
        f"{pe.epilog}"
    )
    pe.add_argument("--json", action="store_true")
    from agent.governance.preview_command import add_command as policy_preview  # issue 16

    policy_preview(psub, cmd)

    b = cmd(
        "bench",
        _cmd_bench,
        "measure the hot paths beside their baselines, in one run; 'bench faults': inject "
        "faults into the real agent (broker outages, kill -9, serial faults, a full disk, "
        "clock steps, corrupt state, a dead sensor) and count what survived (exit 1 when a "
        "fault lost an attestation or an undeclared reading)",
        "edgegov bench --only policy\n  edgegov bench faults --quick\n"
        "  edgegov bench fuzz --cases 20000 --cli 400 --differential",
    )
    b.add_argument(
        "mode",
        nargs="?",
        choices=["faults", "fuzz"],
        help="faults: the fault table; fuzz: the audit verifier's mutation fuzzer (issue 13)",
    )
    b.add_argument("--only", help="comma-separated sections (or, with faults, fault scenarios)")
    b.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--jobs", type=int, default=1, help="faults: scenarios run at once (default: 1)")
    b.add_argument(
        "--seed", type=int, default=12, help="faults: seed of the kill moments; fuzz: of the cases"
    )
    b.add_argument("--cases", type=int, default=2000, help="fuzz: in-process cases (2000)")
    b.add_argument("--cli", type=int, default=0, help="fuzz: of them, also run via the CLI (0)")
    b.add_argument(
        "--differential",
        action="store_true",
        help="fuzz: run on the compiled and the pure path and compare them case by case",
    )
    b.add_argument("--keep", metavar="DIR", help="faults: keep each run's files in DIR")

    aud = sub.add_parser("audit", help="verify attestation streams offline")
    asub = aud.add_subparsers(dest="audit_command", metavar="COMMAND")
    asub.required = True
    audit_exits = (
        "\n\nexit codes:\n"
        "  0  the evidence is intact (whatever the compliance, unless --require-compliance)\n"
        "  1  evidence findings; with --require-compliance also a goal (rule) not met\n"
        "  2  input error: no such file, directory or store (nothing is created), nothing\n"
        "     to verify, a --policy the evidence was not signed under, no trust anchors"
    )
    av = cmd(
        "verify",
        _audit("audit_verify"),
        "verify attestations (evidence: intact or findings) and judge compliance per goal "
        "(--policy) or per rule (met, violated, not evaluable, not quality-assured)",
        "edgegov audit verify demo-out/attestations --key demo-out/device/device.pub.pem "
        "--policy configs/policies/cold-chain.yaml",
        asub,
    )
    av.epilog = f"{av.epilog}{audit_exits}"

    def trust(sp: argparse.ArgumentParser) -> None:  # read by _trust() in agent/audit/commands.py
        sp.add_argument("--trust", help="trust file (YAML): keys, fleet CAs, revocations, ...")
        sp.add_argument(
            "--key", action="append", help="trusted device public key (PEM); repeatable"
        )

    def sources(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("paths", nargs="*", help=".cose files or directories")
        sp.add_argument(
            "--store",
            help="a store instead: a collector's (sqlite:///F, postgresql://) or a gateway's "
            "own state_dir/evidence.sqlite; read-only, never created",
        )
        trust(sp)
        sp.add_argument("--device", help="audit this device's stream: others are findings")
        sp.add_argument(
            "--policy",
            help="the policy bundle the evidence was signed under (its digest must match): "
            "compliance per goal, with owners, clauses and data thresholds",
        )
        sp.add_argument(
            "--require-compliance",
            action="store_true",
            help="exit 1 unless every goal (or rule) is met, naming those that are not",
        )
        sp.add_argument(
            "--as-of",
            metavar="TIME",
            help="judge explanation deadlines at this ISO 8601 time (default: the end of "
            "the newest window, so the same evidence always gives the same verdict)",
        )

    sources(av)
    av.add_argument("--json", action="store_true", help="machine-readable result")
    av.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="check signatures in N processes, this one and N - 1 workers (default: 1); "
        "the output is the same",
    )
    ar = cmd(
        "report",
        _audit("audit_report"),
        "verify, then write a self-contained HTML report (inline SVG charts) with the same "
        "numbers as audit verify --json",
        "edgegov audit report attestations/ --trust trust.yaml --policy cold-chain.yaml "
        "--html report.html",
        asub,
    )
    ar.epilog = f"{ar.epilog}{audit_exits}"
    sources(ar)
    ar.add_argument("--html", required=True, help="output file")
    ap = cmd(
        "prove",
        _audit("audit_prove"),
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
        _audit("audit_replay"),
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
    from agent.audit.export import add_command as audit_export  # issue 16: export bundles
    from agent.transport.options import add_broker_args

    audit_export(asub, cmd, trust)
    ac = cmd(
        "collect",
        _audit("audit_collect"),
        "store a fleet's attestations from a broker (SQLite or PostgreSQL)",
        "edgegov audit collect --broker mqtt://broker:1883 --store postgresql://db/audit "
        "--share auditors",
        asub,
    )
    add_broker_args(ac)  # --broker (repeat: a cluster), --mqtt-version, --ca, --cert, --key
    ac.add_argument("--store", default="collected.sqlite", help="sqlite path/URL or postgresql://")
    ac.add_argument("--fleet", default="+", help="fleet to follow (all)")
    ac.add_argument("--share", help="shared-subscription group (several collectors; MQTT 5)")
    ac.add_argument(
        "--session",
        help="persistent session under this client id (one per collector): what arrives "
        "while it is away, or on a cluster node that died, is delivered when it is back",
    )
    ac.add_argument("--seconds", type=float, default=0, help="stop after this long (never)")
    from agent.audit.pgstore import add_command as audit_retention  # PostgreSQL partitions

    audit_retention(asub, cmd)

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
    from agent.fleet.commands import add_commands as fleet_tuf_commands  # signed config (TUF)

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

    def token_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--pkcs11-module", required=True, metavar="MODULE", help="PKCS#11 library (.so)"
        )
        sp.add_argument("--token", required=True, help="token label")
        sp.add_argument("--label", required=True, help="key label (CKA_LABEL)")
        sp.add_argument(
            "--pin-env",
            default="EDGEGOV_PKCS11_PIN",
            metavar="VAR",
            help="environment variable holding the user PIN (EDGEGOV_PKCS11_PIN); "
            "never pass a PIN as an argument",
        )
        sp.add_argument("--pub-out", required=True, metavar="FILE", help="public key (PEM)")

    kc = cmd(
        "create",
        _cmd_key_create,
        "create a device or fleet key inside a PKCS#11 token (HSM, TPM, SoftHSM2) and export "
        "its public key; refuses a label already in use. Needs python-pkcs11: "
        "pip install 'edgegov[pkcs11]'",
        "edgegov key create --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token gw "
        "--label device --pub-out device.pub.pem   (PIN in $EDGEGOV_PKCS11_PIN)",
        ksub,
    )
    token_args(kc)
    kc.add_argument("--key-type", choices=["ed25519", "p256"], default="ed25519")
    ke = cmd(
        "export-pub",
        _cmd_key_export_pub,
        "write the public key of a key pair in a PKCS#11 token (PEM)",
        "edgegov key export-pub --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token gw "
        "--label device --pub-out device.pub.pem",
        ksub,
    )
    token_args(ke)
    from agent.governance.commands import add_commands as governance_commands

    governance_commands(sub, asub, ksub, cmd, sources)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulate"]:  # the emulator owns its own argument parser
        from firmware_bridge.emulate_cli import emulate_main

        return emulate_main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        return int(args.handler(args))
    except Error as e:
        print(f"edgegov: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: never to be read as findings (1) or input errors (2)
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(
            f"edgegov: internal error: {type(e).__name__}: {e}\n"
            f"edgegov: this is a bug in edgegov, not a verdict on any input; please report "
            f"it with the command line (and, for audit commands, the evidence). "
            f"Exit status {INTERNAL_ERROR_EXIT}.",
            file=sys.stderr,
        )
        return INTERNAL_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
