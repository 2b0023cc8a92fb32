"""``edgegov explain``, ``edgegov calibration issue``, ``edgegov key generate`` and
``edgegov audit score``: parsers and handlers (hooked into agent/cli.py by
:func:`add_commands`; the governance modules load only when one of them runs)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.errors import Error

__all__ = ["add_commands", "parse_time_ms", "publish_statement"]

_Sub = argparse._SubParsersAction
_Cmd = Callable[..., argparse.ArgumentParser]


def parse_time_ms(text: str, what: str) -> int:
    """An ISO 8601 date or date-time (UTC unless it says otherwise) as ms since the epoch."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError as e:
        raise Error(
            f"{what} {text!r}: not an ISO 8601 date or time (2026-12-07 or 2026-12-07T14:30:00Z)"
        ) from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000)


def add_commands(
    sub: _Sub[Any],
    asub: _Sub[Any],
    ksub: _Sub[Any],
    cmd: _Cmd,
    sources: Callable[[argparse.ArgumentParser], None],
) -> None:
    e = cmd(
        "explain",
        _explain,
        "sign an explanation of a deviation (comply or explain): cause, corrective action, "
        "product disposition, with your own key; write it to a file and/or publish it",
        "edgegov explain gw-0001/temp-2-8/1796660609000 --cause 'door left open at loading' "
        "--action 'retrained loading crew' --disposition released --name 'Alice Operator' "
        "--role operator --key alice.key --out dev1.explanation",
        sub,
    )
    e.add_argument("deviation", help="DEVICE/RULE/START_MS, as audit verify lists it")
    e.add_argument("--cause", required=True, help="what caused it")
    e.add_argument("--action", required=True, help="the corrective action taken")
    e.add_argument(
        "--disposition",
        required=True,
        help="what happened to the product: released, quarantined, destroyed, returned, "
        "not applicable, pending",
    )
    e.add_argument("--text", default="", help="free text (optional)")
    _signer_args(e, "your name as the auditor's trust file lists it", "your role (operator)")
    _output_args(e)

    ca = sub.add_parser("calibration", help="calibration certificates (signed by a lab)")
    csub = ca.add_subparsers(dest="calibration_command", metavar="COMMAND")
    csub.required = True
    c = cmd(
        "issue",
        _calibration_issue,
        "sign a calibration certificate for one sensor on one channel of a device, with the "
        "calibration lab's key",
        "edgegov calibration issue --certificate CAL-2026-0042 --device gw-0001 --channel "
        "temperature --sensor PT100-7781 --valid-from 2026-01-15 --valid-until 2027-01-15 "
        "--unit degC --uncertainty 0.1 --point 0:0.02 --point 5:5.03 --name 'ACME Lab' "
        "--key lab.key --out gw-0001-temperature.calibration",
        csub,
    )
    c.add_argument("--certificate", required=True, help="the lab's certificate number")
    c.add_argument("--device", required=True, help="the device id the sensor is wired to")
    c.add_argument("--channel", required=True, help="the policy channel the sensor feeds")
    c.add_argument("--sensor", required=True, help="the sensor's serial number")
    c.add_argument("--valid-from", required=True, help="ISO 8601 date or time (UTC)")
    c.add_argument("--valid-until", required=True, help="ISO 8601 date or time (UTC)")
    c.add_argument("--unit", required=True, help="the channel's unit")
    c.add_argument("--uncertainty", required=True, type=float, help="expanded uncertainty (k=2)")
    c.add_argument(
        "--point",
        action="append",
        required=True,
        metavar="REF:OBSERVED",
        help="a reference value and what the sensor read; repeatable",
    )
    _signer_args(c, "the lab's name as the auditor's trust file lists it", None)
    _output_args(c)

    k = cmd(
        "generate",
        _key_generate,
        "create a person's or a lab's signing key (0600) and its public key beside it, for "
        "explanations and calibration certificates (device keys: edgegov init)",
        "edgegov key generate --out alice.key",
        ksub,
    )
    k.add_argument("--out", required=True, help="private key file (the .pub.pem goes beside it)")
    k.add_argument("--key-type", choices=["ed25519", "p256"], default="ed25519")

    s = cmd(
        "score",
        _score,
        "the evidence-quality score per device, every term shown (availability, sequence, "
        "restarts, losses, calibration, self-tests, explained deviations, config freshness)",
        "edgegov audit score collected/ --trust trust.yaml --policy cold-chain.yaml",
        asub,
    )
    sources(s)
    s.add_argument("--json", action="store_true", help="machine-readable result")


def _signer_args(sp: argparse.ArgumentParser, name_help: str, role_help: str | None) -> None:
    sp.add_argument("--name", required=True, help=name_help)
    if role_help is not None:
        sp.add_argument("--role", required=True, help=role_help)
    sp.add_argument("--key", required=True, help="your private key (edgegov key generate)")


def _output_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--out", help="write the signed statement to this file")
    sp.add_argument("--broker", help="publish it too: mqtt:// or mqtts:// URL")
    sp.add_argument("--fleet", help="the device's fleet (site) on the broker (with --broker)")
    sp.add_argument("--prefix", default="edgegov", help="topic prefix (edgegov)")
    sp.add_argument("--ca", help="CA certificate of the broker (mqtts)")
    sp.add_argument("--cert", help="client certificate (mutual TLS)")
    sp.add_argument("--client-key", help="client key (mutual TLS)")


def _emit(a: argparse.Namespace, raw: bytes, device: str, kind: str, what: str) -> int:
    if not a.out and not a.broker:
        raise Error("say where the statement goes: --out FILE, --broker URL --fleet F, or both")
    if a.out:
        out = Path(a.out)
        if not out.name.endswith(f".{kind}"):
            raise Error(f"--out {a.out}: name it *.{kind} (audit verify finds it by that suffix)")
        out.write_bytes(raw)
        print(f"{what} written to {out}")
    if a.broker:
        if not a.fleet:
            raise Error("--broker needs --fleet: the device's fleet (site) on the broker")
        topic = publish_statement(a.broker, a.prefix, a.fleet, device, kind, raw, a)
        print(f"{what} published to {topic} (acknowledged by the broker)")
    return 0


def publish_statement(
    url: str, prefix: str, fleet: str, device: str, kind: str, raw: bytes, a: Any = None
) -> str:
    """Publish one signed statement (QoS 1, retained) and wait for the PUBACK."""
    import secrets

    from agent.fleet._mqtt import FleetSession
    from agent.transport.mqtt import BrokerURL, TlsFiles
    from agent.transport.topics import FleetTopics

    device_topics = FleetTopics(prefix, fleet).device(device)
    topic = device_topics.explanation if kind == "explanation" else device_topics.calibration
    tls = TlsFiles.given(
        getattr(a, "ca", None), getattr(a, "cert", None), getattr(a, "client_key", None)
    )
    with FleetSession(
        BrokerURL.parse(url, "--broker"), f"edgegov-{kind}-{secrets.token_hex(4)}", tls=tls
    ) as s:
        # not retained: the collector stores each one; a retained message keeps only the
        # last statement per device, and a later one would hide an earlier one
        s.publish(topic, raw, retain=False, content_type="application/cose")
    return topic


def _explain(a: argparse.Namespace) -> int:
    from agent.governance.people import EXPLAINING_ROLES
    from agent.governance.statements import (
        DISPOSITIONS,
        Explanation,
        parse_deviation_id,
        sign_statement,
    )
    from agent.identity.keys import load_signer

    device, rule, start = parse_deviation_id(a.deviation)
    if a.disposition not in DISPOSITIONS:
        raise Error(f"--disposition {a.disposition!r}: one of {', '.join(DISPOSITIONS)}")
    if a.role not in EXPLAINING_ROLES:
        raise Error(
            f"--role {a.role!r}: only {' or '.join(EXPLAINING_ROLES)} may explain a deviation"
        )
    ex = Explanation(
        device, rule, start, a.cause, a.action, a.disposition, a.text, a.name, a.role,
        int(time.time() * 1000),
    )  # fmt: skip
    raw = sign_statement(ex, load_signer(Path(a.key)))
    return _emit(a, raw, device, "explanation", f"explanation of {ex.deviation}")


def _calibration_issue(a: argparse.Namespace) -> int:
    from agent.governance.statements import CalibrationCertificate, sign_statement
    from agent.identity.keys import load_signer

    points = []
    for p in a.point:
        ref, sep, obs = p.partition(":")
        try:
            points.append((float(ref), float(obs)))
        except ValueError:
            raise Error(f"--point {p!r}: give REFERENCE:OBSERVED, two numbers") from None
        if not sep:
            raise Error(f"--point {p!r}: give REFERENCE:OBSERVED, two numbers")
    cert = CalibrationCertificate(
        a.certificate, a.device, a.channel, a.sensor,
        parse_time_ms(a.valid_from, "--valid-from"), parse_time_ms(a.valid_until, "--valid-until"),
        a.unit, a.uncertainty, tuple(points), a.name, int(time.time() * 1000),
    )  # fmt: skip
    if cert.valid_until_ms <= cert.valid_from_ms:
        raise Error("--valid-until must be after --valid-from")
    raw = sign_statement(cert, load_signer(Path(a.key)))
    return _emit(a, raw, a.device, "calibration", f"calibration certificate {a.certificate}")


def _key_generate(a: argparse.Namespace) -> int:
    from agent.identity.keys import generate_key, public_key_path

    out = Path(a.out)
    signer = generate_key(out, a.key_type)
    print(
        f"key written to {out} (mode 0600, never share it); public key {public_key_path(out)} "
        f"(kid {signer.kid.hex()}): give it to the auditor for the trust file"
    )
    return 0


def _score(a: argparse.Namespace) -> int:
    from agent.audit.commands import governed_analysis

    an = governed_analysis(a)
    scores = an.scores()
    if a.json:
        print(
            json.dumps({"evidence": an.evidence, "scores": [s.to_json() for s in scores]}, indent=2)
        )
    else:
        from agent.audit._format import ts

        for sc in scores:
            print(
                f"{sc.device}: evidence-quality score {sc.score:.1f} / 100 "
                f"({ts(sc.period_start_ms)} .. {ts(sc.period_end_ms)})"
            )
            for t in sc.terms:
                print(
                    f"  {t.name:<22} {t.value:7.2%} x {t.weight:>2} = {t.points:5.1f}   {t.basis}"
                )
        if not scores:
            print("no verified evidence to score", file=sys.stderr)
    return 0 if an.intact else 1
