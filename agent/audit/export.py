"""``edgegov audit export``: an evidence export bundle for one site (or devices) and
period, disclosing only the readings chosen (layout and checks: :mod:`agent.audit.bundle`).

In: attestations (a gateway's or a collector's store, or ``.cose`` files), trust anchors,
the gateway store(s) the chosen readings and their proofs come from, signed statements,
policy bundles. Only attestations whose signature verifies with a trusted key are
exported; the bundle is then checked as an auditor would (``audit verify BUNDLE``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import Error, VerificationError

if TYPE_CHECKING:  # loaded when the command runs: the parser is built at every CLI start
    from agent.audit.trust import TrustStore
    from agent.evidence.claims import Evidence

__all__ = ["add_command"]

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def add_command(
    asub: argparse._SubParsersAction[argparse.ArgumentParser],
    cmd: Callable[..., argparse.ArgumentParser],
    trust: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``edgegov audit export`` (``trust``: the --trust/--key options)."""
    e = cmd(
        "export",
        _export,
        "write an evidence export bundle for one site (or devices) and period: attestations, "
        "chosen readings with inclusion proofs, signed statements, policy digests and a "
        "manifest; readings not chosen are not disclosed (check it: audit verify BUNDLE)",
        "edgegov audit export --attestations collected.sqlite --readings-from gw-1.sqlite "
        "--statements statements/ --site site-a --trust trust.yaml --from 2026-03-01 "
        "--until 2026-04-01 --readings-of-deviation gw-1/temp-2-8/1772900000000 "
        "--policy cold-chain.yaml --out bundle-site-a-2026-03",
        asub,
    )
    e.add_argument(
        "--attestations",
        action="append",
        required=True,
        metavar="SOURCE",
        help="a gateway's evidence store, a collector store (sqlite path/URL, postgresql://) "
        "or a directory of .cose files; repeatable",
    )
    e.add_argument(
        "--readings-from",
        action="append",
        default=[],
        metavar="STORE",
        help="a gateway's evidence store to take chosen readings and proofs from; repeatable "
        "(default: the --attestations that are gateway stores)",
    )
    e.add_argument(
        "--statements",
        action="append",
        default=[],
        metavar="SOURCE",
        help="*.explanation / *.calibration files, directories of them, or a collector store",
    )
    e.add_argument("--site", help="the site (the trust file's sites:) whose devices to export")
    e.add_argument("--device", action="append", default=[], help="a device to export; repeatable")
    e.add_argument("--from", dest="start", metavar="TIME", help="ISO 8601: windows ending after")
    e.add_argument("--until", dest="end", metavar="TIME", help="ISO 8601: windows starting before")
    e.add_argument(
        "--reading-index",
        action="append",
        default=[],
        metavar="[DEVICE/]N",
        help="disclose reading N of the device's log (DEVICE/ may be left out with one device)",
    )
    e.add_argument(
        "--readings-of-deviation",
        action="append",
        default=[],
        metavar="DEVICE/RULE/START_MS",
        help="disclose every reading of the windows that list this violation episode",
    )
    e.add_argument(
        "--policy",
        action="append",
        default=[],
        help="a policy bundle the evidence was signed under: id, version, digest and model "
        "digests in the manifest, the file itself in policy/; repeatable",
    )
    e.add_argument("--exporter", help="who exports (default: the login name)")
    e.add_argument("--out", required=True, help="the bundle directory to create (must not exist)")
    trust(e)


@dataclass
class _Log:
    device: str
    origin: str
    chain: list[tuple[bytes, Evidence]] = field(default_factory=list)


@dataclass(frozen=True)
class _Choice:
    device: str
    index: int
    why: str


def _export(a: argparse.Namespace) -> int:
    from agent.audit.bundle import FORMAT, MANIFEST, file_entry
    from agent.audit.commands import _trust
    from agent.governance.commands import parse_time_ms

    trust = _trust(a)
    start = parse_time_ms(a.start, "--from") if a.start else None
    end = parse_time_ms(a.end, "--until") if a.end else None
    devices = _devices(a)
    logs = _logs(a.attestations, trust, devices, start, end)
    if not logs:
        raise Error(f"no verified attestations of {', '.join(sorted(devices))} in that period")
    choices = _choices(a, logs)
    out = Path(a.out)
    if out.exists():
        raise Error(f"{out}: already exists; give a new directory for the bundle")
    files: dict[str, bytes] = {}  # written once everything is made and checked

    def put(rel: str, data: bytes) -> str:
        files[rel] = data
        return rel

    scope = []
    for lg in logs:
        multi = sum(1 for other in logs if other.device == lg.device) > 1
        base = f"attestations/{lg.device}" + (f"/{_slug(lg.origin)}" if multi else "")
        seen: dict[int, int] = {}
        for raw, ev in lg.chain:
            n = seen[ev.seq] = seen.get(ev.seq, 0) + 1
            put(f"{base}/{ev.seq:08d}" + (f"-{n}" if n > 1 else "") + ".cose", raw)
        evs = [ev for _, ev in lg.chain]
        scope.append(
            {
                "device": lg.device,
                "origin": lg.origin,
                "first_seq": evs[0].seq,
                "last_seq": evs[-1].seq,
                "attestations": len(evs),
                "windows_from": _iso(evs[0].window_start_ms),
                "windows_until": _iso(evs[-1].window_end_ms),
                "readings_in_windows": sum(ev.readings for ev in evs),
            }
        )
    readings = [
        {
            "device": c.device,
            "index": c.index,
            "window_seq": seq,
            "why": why,
            "file": put(rel, data),
        }
        for c, seq, why, rel, data in _proofs(choices, logs, a, trust)
    ]
    statements = [
        {"kind": kind, "device": dev, "about": about, "file": put(rel, raw)}
        for kind, dev, about, rel, raw in _statements(a.statements, logs)
    ]
    policies = [
        p | ({"file": put(rel, data)} if rel else {}) for p, rel, data in _policies(a.policy)
    ]
    manifest = {
        "format": FORMAT,
        "exported": {
            "by": a.exporter or getpass.getuser(),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "tool": f"edgegov {_version()}",
        },
        "signed": False,
        "scope": {
            "site": a.site,
            "devices": sorted({lg.device for lg in logs}),
            "from": a.start,
            "until": a.end,
            "logs": scope,
        },
        "readings": readings,
        "statements": statements,
        "policies": policies,
    }
    out.mkdir(parents=True)
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    manifest["files"] = [file_entry(out, rel) for rel in sorted(files)]
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8")
    n_read = sum(ev.readings for lg in logs for _, ev in lg.chain)
    print(
        f"bundle written to {out}: {sum(len(lg.chain) for lg in logs)} attestation(s) of "
        f"{len({lg.device for lg in logs})} device(s) (seq "
        + ", ".join(f"{lg.device} {lg.chain[0][1].seq}..{lg.chain[-1][1].seq}" for lg in logs)
        + f"), {len(readings)} of {n_read} reading(s) disclosed, {len(statements)} "
        f"statement(s), {len(policies)} polic(ies); check it: edgegov audit verify {out} "
        "--trust TRUST.yaml"
    )
    return 0


def _devices(a: argparse.Namespace) -> set[str]:
    devices = set(a.device)
    if a.site:
        if not a.trust:
            raise Error("--site needs --trust: the trust file's sites: names a site's devices")
        from agent.governance.people import load_authorities

        auth = load_authorities(Path(a.trust))
        at_site = {d for d, sites in auth.site_of.items() if a.site in sites}
        if not at_site:
            known = sorted({s for ss in auth.site_of.values() for s in ss})
            raise Error(f"--site {a.site}: not in {a.trust}'s sites (sites: {', '.join(known)})")
        devices |= at_site
    if not devices:
        raise Error("say what to export: --site NAME (with --trust) or --device ID")
    for d in devices:
        if not _SAFE.fullmatch(d):
            raise Error(f"device id {d!r} cannot name a directory in the bundle")
    return devices


def _messages(source: str) -> Iterable[bytes]:
    p = Path(source)
    if p.is_dir() or p.suffix == ".cose":
        from agent.audit.verify import collect_files

        return (f.read_bytes() for f in collect_files([p]))
    from agent.audit.evidence_db import read_messages

    return (m.raw for m in read_messages(source))


def _logs(
    sources: list[str], trust: TrustStore, devices: set[str], start: int | None, end: int | None
) -> list[_Log]:
    """The verified attestations of ``devices`` whose windows overlap the period, per log
    in seq order (identical copies once)."""
    logs: dict[str, _Log] = {}
    seen: set[bytes] = set()
    bad = 0
    for src in sources:
        for raw in _messages(src):
            if raw in seen:
                continue
            seen.add(raw)
            try:
                ev = trust.evidence(raw)
            except VerificationError:
                bad += 1
                continue
            if ev.device_id not in devices:
                continue
            if (start is not None and ev.window_end_ms <= start) or (
                end is not None and ev.window_start_ms >= end
            ):
                continue
            origin = ev.checkpoint.origin
            logs.setdefault(origin, _Log(ev.device_id, origin)).chain.append((raw, ev))
    if bad:
        print(f"edgegov: {bad} message(s) did not verify and are not exported", file=sys.stderr)
    for lg in logs.values():
        lg.chain.sort(key=lambda x: x[1].seq)
    return sorted(logs.values(), key=lambda lg: (lg.device, lg.chain[0][1].seq, lg.origin))


def _choices(a: argparse.Namespace, logs: list[_Log]) -> list[_Choice]:
    from agent.governance.statements import parse_deviation_id

    devices = sorted({lg.device for lg in logs})
    out: list[_Choice] = []
    for text in a.reading_index:
        dev, _, n = text.rpartition("/")
        if not n.isdigit():
            raise Error(f"--reading-index {text!r}: give [DEVICE/]N, N a reading's log index")
        if not dev:
            if len(devices) != 1:
                raise Error(f"--reading-index {text}: say which device: DEVICE/{n}")
            dev = devices[0]
        out.append(_Choice(dev, int(n), f"--reading-index {text}"))
    for text in a.readings_of_deviation:
        dev, rule, start = parse_deviation_id(text)
        wins = [
            ev
            for lg in logs
            if lg.device == dev
            for _, ev in lg.chain
            if any(
                r.rule_id == rule and any(e.start_ms == start for e in r.episodes) for r in ev.rules
            )
        ]
        if not wins:
            raise Error(f"--readings-of-deviation {text}: no exported window lists that episode")
        why = f"deviation {text} (windows seq {wins[0].seq}..{wins[-1].seq})"
        for ev in wins:
            out.extend(
                _Choice(dev, i, why) for i in range(ev.checkpoint.prev_size, ev.checkpoint.size)
            )
    return out


def _proofs(
    choices: list[_Choice], logs: list[_Log], a: argparse.Namespace, trust: TrustStore
) -> Iterable[tuple[_Choice, int, list[str], str, bytes]]:
    """Each chosen reading once (with every reason it was chosen): its proof, made from the
    store of its device's log and checked before it is written."""
    from agent.audit.evidence_db import store_kind
    from agent.audit.prove import check_proof, make_proof
    from agent.evidence.store_reader import read_summary

    if not choices:
        return
    stores = a.readings_from or [s for s in a.attestations if _is_gateway(s, store_kind)]
    origin_store = {read_summary(Path(s)).origin: Path(s) for s in stores}
    exported = {(ev.device_id, ev.seq): ev.checkpoint for lg in logs for _, ev in lg.chain}
    why: dict[tuple[str, int], list[str]] = {}
    for c in choices:
        why.setdefault((c.device, c.index), []).append(c.why)
    for (dev, index), reasons in sorted(why.items()):
        store = next(
            (
                origin_store[lg.origin]
                for lg in logs
                if lg.device == dev and lg.origin in origin_store
            ),
            None,
        )
        if store is None:
            raise Error(f"reading {index} of {dev}: give that gateway's store with --readings-from")
        data = make_proof(store, index)
        p = check_proof(data, trust)
        if p.evidence.device_id != dev:
            raise Error(f"{store}: holds the log of {p.evidence.device_id}, not {dev}")
        if exported.get((dev, p.evidence.seq)) != p.evidence.checkpoint:
            raise Error(
                f"reading {index} of {dev} is in window seq {p.evidence.seq}, which is not "
                "exported: widen --from/--until to include it"
            )
        yield (
            _Choice(dev, index, ""),
            p.evidence.seq,
            reasons,
            f"readings/{dev}/{index:010d}.proof",
            data,
        )


def _is_gateway(source: str, kind: Callable[[str], str]) -> bool:
    p = Path(source)
    return not p.is_dir() and p.suffix != ".cose" and kind(source) == "gateway"


def _statements(sources: list[str], logs: list[_Log]) -> Iterable[tuple[str, str, str, str, bytes]]:
    """The statements about the exported evidence: explanations of an episode one of its
    windows lists, calibration certificates of its devices valid in its period."""
    import hashlib

    from agent.audit.commands import STATEMENT_SUFFIXES
    from agent.audit.evidence_db import read_statements
    from agent.governance.statements import Explanation, read_statement

    episodes = {
        f"{ev.device_id}/{r.rule_id}/{e.start_ms}"
        for lg in logs
        for _, ev in lg.chain
        for r in ev.rules
        for e in r.episodes
    }
    span: dict[str, tuple[int, int]] = {}
    for lg in logs:
        lo, hi = lg.chain[0][1].window_start_ms, lg.chain[-1][1].window_end_ms
        old = span.get(lg.device, (lo, hi))
        span[lg.device] = (min(lo, old[0]), max(hi, old[1]))
    raws: list[tuple[bytes, str]] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            raws += [
                (f.read_bytes(), str(f))
                for k in STATEMENT_SUFFIXES
                for f in sorted(p.rglob(f"*{k}"))
            ]
        elif p.name.endswith(STATEMENT_SUFFIXES):
            raws.append((p.read_bytes(), str(p)))
        else:
            raws += read_statements(src)
    done: set[bytes] = set()
    for raw, where in raws:
        try:
            st = read_statement(raw, where)
        except VerificationError as e:
            print(f"edgegov: {where}: not a statement, not exported: {e}", file=sys.stderr)
            continue
        body = st.body
        if isinstance(body, Explanation):
            if body.deviation not in episodes:
                continue
            kind, about = "explanation", body.deviation
        else:
            lo, hi = span.get(body.device, (0, -1))
            if body.valid_until_ms <= lo or body.valid_from_ms >= hi:
                continue
            kind, about = "calibration", f"certificate {body.certificate} ({body.channel})"
        if raw in done:
            continue
        done.add(raw)
        name = f"{body.device}-{hashlib.sha256(raw).hexdigest()[:16]}.{kind}"
        yield kind, body.device, about, f"statements/{kind}/{name}", raw


def _policies(files: list[str]) -> Iterable[tuple[dict[str, Any], str, bytes]]:
    from agent.policy import load_policy

    for f in files:
        p = load_policy(Path(f))
        entry = {
            "id": p.id,
            "version": p.version,
            "digest": p.digest,
            "models": {m.id: m.sha256 for m in p.models},
        }
        yield entry, f"policy/{_slug(Path(f).name)}", Path(f).read_bytes()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _version() -> str:
    from agent import __version__

    return __version__
