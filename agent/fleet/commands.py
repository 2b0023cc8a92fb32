"""``edgegov fleet …``: the TUF repository and the fleet view (registered by agent/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import Error
from agent.transport.options import add_broker_args, broker_tls, broker_urls

__all__ = ["add_commands"]

_ROLES = ("root", "targets", "snapshot", "timestamp", "director")


def _pairs(text: str | None, cast: Callable[[str], Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item:
            continue
        role, sep, value = item.partition("=")
        if not sep or role not in _ROLES:
            raise Error(f"{what}: {item!r} must be ROLE=VALUE with ROLE one of {', '.join(_ROLES)}")
        try:
            out[role] = cast(value)
        except ValueError as e:
            raise Error(f"{what}: {item!r}: {e}") from e
    return out


def _repo(a: argparse.Namespace) -> Any:
    from agent.fleet.repository import FleetRepository

    return FleetRepository(Path(a.repo))


def _session(a: argparse.Namespace, client_id: str) -> Any:
    from agent.fleet._mqtt import FleetSession

    urls, tls = broker_urls(a), broker_tls(a)
    return FleetSession(urls, client_id, tls=tls, version=a.mqtt_version)


def _init(a: argparse.Namespace) -> int:
    from agent.fleet.repository import FleetRepository

    repo = FleetRepository.init(
        Path(a.repo),
        a.fleet,
        prefix=a.prefix,
        keys=_pairs(a.keys, int, "--keys"),
        thresholds=_pairs(a.threshold, int, "--threshold"),
        expiry_days=_pairs(a.expiry, float, "--expiry"),
    )
    root = repo.dir / "metadata" / "1.root.json"
    print(
        f"fleet repository {repo.dir} for fleet {a.fleet}: give {root} to each gateway (tuf.root)"
    )
    return 0


def _add(a: argparse.Namespace) -> int:
    path = Path(a.file)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Error(f"{path}: cannot read: {e.strerror}") from e
    kind = a.kind or ("model" if path.suffix == ".onnx" else "policy")
    custom: dict[str, Any] = {}
    if kind == "policy":
        from agent.policy import load_policy

        bundle = load_policy(path)  # lint before signing: a broken policy is never published
        if a.preview:
            from agent.governance.preview import preview_record

            custom["preview"] = preview_record(Path(a.preview), bundle)
    elif a.preview:
        raise Error(f"--preview {a.preview}: a preview belongs to a policy target, not a model")
    tf = _repo(a).add_target(a.name, data, kind, custom)
    print(f"target {a.name}: {kind}, sha256 {tf.hashes['sha256']}, {tf.length} bytes")
    if custom:
        print(
            f"  preview {custom['preview']['file']} recorded: sha256 {custom['preview']['sha256']}"
        )
    return 0


def _assign(a: argparse.Namespace) -> int:
    if (a.device is None) == (a.group is None):
        raise Error("fleet assign: give exactly one of --device or --group")
    repo = _repo(a)
    repo.check_assignment(a.policy, a.model or ())  # as the gateway will, before signing
    asg = repo.assign(a.policy, a.model or (), device=a.device, group=a.group)
    who = a.device or f"group {a.group}"
    models = ", ".join(asg.models) or "no models"
    print(f"assignment for {who}: config version {asg.config_version}: {asg.policy} + {models}")
    return 0


def _rotate(a: argparse.Namespace) -> int:
    v = _repo(a).rotate(a.role, a.add or (), a.remove or (), a.threshold)
    print(f"root v{v}: {a.role} keys rotated (threshold {a.threshold})")
    return 0


def _sign(a: argparse.Namespace) -> int:
    snap, ts = _repo(a).release()
    print(f"signed: snapshot v{snap}, timestamp v{ts}")
    return 0


def _publish(a: argparse.Namespace) -> int:
    repo = _repo(a)
    msgs = repo.verified_messages()  # RepositoryInvalid (exit 1) before any connection
    with _session(a, f"edgegov-fleet-{repo.topics.fleet}-publisher") as s:
        s.publish_many(msgs, retain=True, content_type="application/octet-stream")
    size = sum(len(p) for _, p in msgs)
    print(f"published {len(msgs)} retained messages ({size} bytes) under {repo.topics.tuf}/")
    return 0


def _status(a: argparse.Namespace) -> int:
    from agent.fleet.status import fleet_status, format_status
    from agent.transport.topics import FleetTopics

    with _session(a, f"edgegov-fleet-{a.fleet}-status") as s:
        rows = fleet_status(s, FleetTopics(a.prefix, a.fleet))
    print(json.dumps([r.to_json() for r in rows], indent=2) if a.json else format_status(rows))
    return 1 if any(r.rejected for r in rows) else 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise Error(f"{path}: cannot write: {e.strerror}") from e


def _acl(a: argparse.Namespace) -> int:
    from agent.fleet.roles import ROLES, load_users, render_acl, role_template

    users = load_users(a.users)  # FleetError (exit 2) naming file, line and field
    acl = render_acl(users)
    if a.templates:
        tdir = Path(a.templates)
        try:
            tdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Error(f"--templates {tdir}: cannot create: {e.strerror}") from e
        for name in ROLES:
            _write(tdir / f"{name}.acl", role_template(name))
    if a.out is None:
        print(acl, end="")
        return 0
    _write(Path(a.out), acl)
    roles = sorted({u.role.name for u in users.users})
    print(f"{a.out}: ACL for {len(users.users)} users ({', '.join(roles)}); "
          f"give it to Mosquitto as acl_file and reload it (SIGHUP)")  # fmt: skip
    return 0


def add_commands(fsub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``init add assign rotate sign publish status acl`` under ``edgegov fleet``."""

    def repo_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--repo", default="fleet-repo", help="repository directory (fleet-repo)")
        return p

    p = repo_arg(cmd("init", _init, "create a TUF repository: keys, root, first release",
                     "edgegov fleet init --repo fleet-repo --fleet site-a --keys root=3 "
                     "--threshold root=2 --expiry timestamp=1", fsub))  # fmt: skip
    p.add_argument("--fleet", required=True, help="fleet name (topic level)")
    p.add_argument("--prefix", default="edgegov", help="topic prefix (edgegov)")
    p.add_argument("--keys", help="keys per role, e.g. root=3,targets=2 (1 each)")
    p.add_argument("--threshold", help="threshold per role, e.g. root=2 (1 each)")
    p.add_argument("--expiry", help="expiry in days per role, e.g. timestamp=0.5")

    p = repo_arg(cmd("add", _add, "add a policy bundle or ONNX model as a signed target",
                     "edgegov fleet add policies/cold-chain.yaml configs/policies/cold-chain.yaml",
                     fsub))  # fmt: skip
    p.add_argument("name", help="target name, e.g. policies/cold-chain.yaml")
    p.add_argument("file", help="the file")
    p.add_argument("--kind", choices=["policy", "model"], help="(from the file name)")
    p.add_argument(
        "--preview",
        metavar="FILE",
        help="the `edgegov policy preview --out` document the approver saw for this policy: "
        "its SHA-256 is recorded in the signed targets metadata (docs/governance.md)",
    )

    p = repo_arg(cmd("assign", _assign, "sign what a device or a group must run",
                     "edgegov fleet assign --group cold-stores --policy policies/cold-chain.yaml "
                     "--model models/excursion-v1.onnx", fsub))  # fmt: skip
    p.add_argument("--device")
    p.add_argument("--group")
    p.add_argument("--policy", required=True, help="policy target name")
    p.add_argument("--model", action="append", help="model target name (repeat)")

    p = repo_arg(cmd("rotate", _rotate, "rotate a role's keys (new root, signed by old and new)",
                     "edgegov fleet rotate --role timestamp --add timestamp-2 "
                     "--remove timestamp-1 --threshold 1", fsub))  # fmt: skip
    p.add_argument("--role", required=True, choices=["root", "targets", "snapshot", "timestamp"])
    p.add_argument("--add", action="append", help="key file name to add (created if new)")
    p.add_argument("--remove", action="append", help="key file name to remove")
    p.add_argument("--threshold", type=int, required=True)

    repo_arg(cmd("sign", _sign, "sign a release: new snapshot and timestamp",
                 "edgegov fleet sign --repo fleet-repo", fsub))  # fmt: skip

    p = repo_arg(cmd("publish", _publish, "publish metadata and targets as retained messages",
                     "edgegov fleet publish --repo fleet-repo --broker mqtt://localhost:1883",
                     fsub))  # fmt: skip
    add_broker_args(p)

    p = cmd("status", _status, "every gateway: online, config version, last ack, last attestation",
            "edgegov fleet status --broker mqtt://localhost:1883 --fleet site-a", fsub)  # fmt: skip
    add_broker_args(p)
    p.add_argument("--fleet", required=True)
    p.add_argument("--prefix", default="edgegov")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = cmd("acl", _acl, "render a Mosquitto acl_file from a users file (user -> role -> sites): "
            "device, operator, fleet-manager, auditor, regulator, customer, collector "
            "(docs/roles.md)",
            "edgegov fleet acl configs/broker/edgegov-users.yaml --out /etc/mosquitto/edgegov.acl",
            fsub)  # fmt: skip
    p.add_argument("users", help="users file (YAML: users: {NAME: {role: ROLE, sites: [...]}})")
    p.add_argument("--out", help="ACL file to write (standard output)")
    p.add_argument("--templates", metavar="DIR", help="also write each role's template here")

    p = cmd("simulate", _simulate, "run N emulated gateways (each its own key, evidence log and "
            "outbox) against a broker or cluster, with collectors storing what they receive; "
            "print attestations/s end to end, latency from window close to stored row (p50, "
            "p99), lost, duplicated, CPU and memory per gateway, the broker's own figures",
            "edgegov fleet simulate --gateways 50 --seconds 30 --broker mqtt://localhost:1883 "
            "--store postgresql://postgres@localhost/edgegov --collectors 2",
            fsub)  # fmt: skip
    p.add_argument("--gateways", type=int, default=10, help="how many gateways (10)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long they run (20)")
    p.add_argument(
        "--broker",
        action="append",
        metavar="URL",
        help="broker node(s); repeat for a cluster (gateways and collectors are spread over "
        "them); default: a private Mosquitto started for the run",
    )
    p.add_argument("--mqtt-version", choices=("5", "3.1.1"), default="5")
    p.add_argument(
        "--broker-monitor",
        metavar="URL",
        help="a NATS server's monitoring URL (http://host:8222): its figures (/varz) instead "
        "of Mosquitto's $SYS",
    )
    p.add_argument("--store", help="collector store: sqlite path or postgresql:// (a temp SQLite)")
    p.add_argument("--collectors", type=int, default=1, help="collectors (several: MQTT 5 shared)")
    p.add_argument("--window", type=float, default=1.0, help="window length, seconds (1)")
    p.add_argument("--readings", type=int, default=10, help="readings per window (10)")
    p.add_argument(
        "--keep",
        metavar="DIR",
        help="keep the gateways' keys and evidence logs here, with a trust.yaml for "
        "'audit verify --store STORE --trust DIR/trust.yaml' (default: a temp dir, removed)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable result")


def _simulate(a: argparse.Namespace) -> int:
    import tempfile

    from agent.fleet.simulate import simulate

    if a.gateways < 1 or a.seconds <= 0 or a.collectors < 1 or a.window <= 0:
        raise Error("--gateways, --collectors: 1 or more; --seconds, --window: above 0")
    with tempfile.TemporaryDirectory(prefix="edgegov-sim-broker-") as tmp:
        broker = None
        if not a.broker:
            from agent.tools.broker import MosquittoBroker

            broker = MosquittoBroker(Path(tmp), "allow_anonymous true\nsys_interval 1\n").start()
        try:
            say = (lambda m: print(m, file=sys.stderr)) if a.json else print
            res = simulate(
                a.gateways,
                a.seconds,
                a.broker or [broker.url if broker else ""],
                store=a.store,
                collectors=a.collectors,
                window_s=a.window,
                readings=a.readings,
                version=a.mqtt_version,
                workdir=Path(a.keep) if a.keep else None,
                monitor=a.broker_monitor,
                say=say,
            )
        finally:
            if broker is not None:
                broker.stop()
    print(json.dumps(res.to_json(), indent=2) if a.json else res.text())
    return 0 if res.lost == 0 else 1
