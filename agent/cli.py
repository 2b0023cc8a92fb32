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
from agent.errors import Error

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

    b = load_policy(a.file)
    if a.json:
        print(
            json.dumps(
                {
                    "id": b.id,
                    "version": b.version,
                    "digest": b.digest,
                    "rules": [r.id for r in b.rules],
                    "models": [m.id for m in b.models],
                }
            )
        )
    else:
        print(
            f"{a.file}: OK - policy {b.id} v{b.version}, {len(b.goals)} goal(s), "
            f"{len(b.rules)} rule(s), {len(b.channels)} channel(s), {len(b.models)} model(s)"
        )
        print(f"digest sha256:{b.digest}")
    return 0


def _cmd_audit_verify(a: argparse.Namespace) -> int:
    from agent.audit import format_result, verify_paths
    from agent.keys import load_public_key

    res = verify_paths([Path(p) for p in a.paths], [load_public_key(Path(k)) for k in a.key])
    print(json.dumps(res.to_json(), indent=2) if a.json else format_result(res))
    return 0 if res.ok else 1


def _cmd_bench(a: argparse.Namespace) -> int:
    from agent.bench import SECTIONS, format_rows, run_sections

    names = tuple(a.only.split(",")) if a.only else SECTIONS
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise Error(f"unknown bench section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
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
    av.add_argument("paths", nargs="+", help=".cose files or directories")
    av.add_argument(
        "--key",
        action="append",
        required=True,
        help="trusted device public key (PEM); repeat for several devices",
    )
    av.add_argument("--json", action="store_true", help="machine-readable verdict")
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
