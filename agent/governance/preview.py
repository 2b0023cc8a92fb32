"""``edgegov policy preview``: a proposed policy bundle replayed over the evidence collected.

Before a fleet manager signs a rule change into a release, the change is run over the
readings the gateways already recorded, with the same evaluator and models, and set
beside what the policy in force said of the same readings::

    gateway evidence store(s) --+-- replay (agent.audit.replay): signatures, checkpoints,
                                |   the policy in force; must reproduce what was attested
                                +-- the same verified readings, windows and model
                                    look-back through the proposed bundle (fresh evaluator
                                    state at the same window as the replay's)
    both -> analyze() (agent.audit.analysis), as an auditor would see each
         -> per goal and device: status current -> proposed, episodes only in the
            proposed run ("new") or only in the current one ("vanished"), readings not
            evaluable under each

Only a gateway's store keeps raw readings; a collector's store (SQLite or PostgreSQL)
holds attestations only, so a preview over it is refused (:func:`gateway_stores`).

The preview document (:meth:`Preview.to_json`) is canonical JSON; its SHA-256
(:attr:`Preview.digest`) is what ``edgegov fleet add --preview`` records in the signed
release (docs/governance.md, *Previewing a rule change*).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.audit._format import dur, ts
from agent.audit.analysis import Analysis, DeviceAnalysis, Episode, analyze
from agent.audit.evidence_db import store_kind
from agent.audit.replay import StoredInput, replay
from agent.audit.trust import TrustStore
from agent.audit.verify import AuditResult, VerifiedLog
from agent.errors import Error, ModelError, VerificationError
from agent.evidence.claims import Evidence
from agent.evidence.store_reader import StoreReader
from agent.pipeline.evaluate import WindowVerdicts, evaluate_windows
from agent.policy import PolicyBundle
from agent.risk.engine import RiskEngine
from agent.risk.onnx_model import load_declared

__all__ = ["FORMAT", "Preview", "gateway_stores", "parse_since", "preview", "preview_record"]

FORMAT = "edgegov-policy-preview/1"
_CPU = "CPUExecutionProvider"
_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_since(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as milliseconds.

    Raises:
        Error: not such a duration.
    """
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if m is None or int(m[1]) == 0:
        raise Error(f"--since {text!r}: give a positive duration such as 30d, 12h, 90m or 45s")
    return int(m[1]) * _UNITS[m[2]]


def gateway_stores(against: str) -> list[Path]:
    """The gateway evidence stores ``against`` names: a store, or a directory searched
    for ``*.sqlite`` stores (a gateway's state_dir, or a folder of copies of them).

    Raises:
        Error: nothing there, or a collector's store (it holds no readings to replay).
    """
    if against.startswith(("postgresql://", "postgres://")) or "://" in against:
        candidates = [against]
    else:
        path = Path(against)
        if path.is_dir():
            candidates = [str(p) for p in sorted(path.rglob("*.sqlite"))]
            if not candidates:
                raise Error(f"{against}: no evidence store (*.sqlite) in that directory")
        else:
            candidates = [against]
    out = []
    for c in candidates:
        if store_kind(c) == "collector":
            raise Error(
                f"{c}: a collector's store holds the attestations only, not the raw readings; "
                "a preview re-evaluates the readings, so it needs the gateways' own evidence "
                "stores (state_dir/evidence.sqlite, or a directory of copies of them) as "
                "--against. To see what the policy in force said over this store, run "
                "`edgegov audit verify --store` instead"
            )
        out.append(Path(c[len("sqlite://") :] if c.startswith("sqlite:///") else c))
    return out


@dataclass(frozen=True)
class StoreRun:
    """What was replayed from one store."""

    path: str
    device: str
    log: str
    windows: int  # in the period previewed
    readings: int
    first_seq: int
    last_seq: int
    start_ms: int
    end_ms: int
    replayed_from_seq: int  # the fresh-state window both runs started from

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


class _Proposed:
    """The proposed bundle run over the windows the replay of the current one verified."""

    def __init__(
        self, store: Path, bundle: PolicyBundle, current: PolicyBundle, providers: Sequence[str]
    ) -> None:
        self.store, self.bundle = store, bundle
        self.evaluator = bundle.evaluator()
        try:
            models = [load_declared(ref, providers) for ref in bundle.models]
        except ModelError as e:
            raise Error(f"{bundle.source}: cannot preview: {e}") from e
        self.engine = RiskEngine(models, [c.name for c in bundle.channels])
        self.primed = False
        # a model the current bundle does not have runs on every window; one it has, where
        # the agent ran it (a model the agent had refused gives no score there either)
        self.added = {m.id for m in bundle.models} - {m.id for m in current.models}
        self.windows: dict[int, tuple[Evidence, WindowVerdicts]] = {}

    def __call__(self, batch: Sequence[StoredInput]) -> None:
        if not self.primed:
            reader = StoreReader(self.store)
            try:
                records = reader.records_before(batch[0].row.seq, *self.engine.lookback)
            finally:
                reader.close()
            self.engine.prime(records, self.bundle)
            self.primed = True
        verdicts = evaluate_windows(
            self.bundle,
            self.evaluator,
            self.engine,
            [(w.timestamps, w.columns) for w in batch],
            ran=[{r.model_id for r in w.evidence.risk} | self.added for w in batch],
        )
        for w, v in zip(batch, verdicts):
            self.windows[w.row.seq] = (w.evidence, v)


def _check_channels(current: PolicyBundle, proposed: PolicyBundle) -> None:
    """The stored columns are the current bundle's channels: the proposal must read them."""
    have = [c.name for c in current.channels]
    want = [c.name for c in proposed.channels]
    if have == want:
        return
    for i in range(max(len(have), len(want))):
        h = have[i] if i < len(have) else None
        w = want[i] if i < len(want) else None
        if h != w:
            break
    said = f"declares channel {i + 1} as {w!r}" if w else f"has no channel {i + 1}"
    held = f"{h!r}" if h else "nothing"
    raise Error(
        f"{proposed.source}: {said}, but column {i + 1} of the stored readings is {held} "
        f"(the evidence holds {', '.join(have)}, in that order): a preview replays the "
        "stored columns, so the proposed bundle must declare the same channels in the same "
        "order (valid ranges may differ)"
    )


def _replay_store(
    path: Path,
    current: PolicyBundle,
    proposed: PolicyBundle,
    trust: TrustStore,
    since_ms: int | None,
    providers: Sequence[str],
) -> tuple[StoreRun, VerifiedLog, VerifiedLog]:
    reader = StoreReader(path)
    try:
        first, last = reader.bounds()
        if first is None or last is None:
            raise Error(f"{path}: the store holds no attestations")
        newest = reader.window(last)
        assert newest is not None
        seqs = reader.seqs_from(newest.end_ms - since_ms) if since_ms else range(first, last + 1)
    finally:
        reader.close()
    run = _Proposed(path, proposed, current, providers)
    try:
        base = replay(path, current, trust, seqs, providers, alongside=run)
    except VerificationError as e:
        raise type(e)(f"{path}: {e}") from e
    except Error as e:
        raise Error(f"{path}: cannot replay the policy in force: {e}") from e
    if not base.ok:
        for w in base.windows:
            attested = run.windows[w.seq][0].readings
            if w.readings != attested:  # pruned by retention or shed by the disk quota
                raise Error(
                    f"{path}: seq {w.seq} keeps {w.readings} of its {attested} readings (the "
                    "gateway's retention or disk quota removed them): give a --since within "
                    "the readings the gateway retains, from a window after seq "
                    f"{w.seq} that started from a fresh evaluator state"
                )
        bad = next(w for w in base.windows if not w.ok)
        why = "; ".join(bad.mismatches) or "the evaluator state differs from the attested one"
        raise VerificationError(
            f"{path}: seq {bad.seq} does not reproduce under {current.source} ({why}): the "
            "readings or the evidence are not what was attested, so no preview is made over "
            "them; `edgegov audit replay` shows every window"
        )
    targets = [w for w in base.windows if w.target]
    old = [run.windows[w.seq][0] for w in targets]
    new = [_as_proposed(ev, v, proposed) for ev, v in (run.windows[w.seq] for w in targets)]
    device, log = old[0].device_id, base.origin
    store = StoreRun(
        str(path),
        device,
        log,
        len(targets),
        sum(w.readings for w in targets),
        targets[0].seq,
        targets[-1].seq,
        targets[0].start_ms,
        targets[-1].end_ms,
        base.start_seq,
    )
    return store, VerifiedLog(log, device, "replay", old), VerifiedLog(log, device, "preview", new)


def _as_proposed(ev: Evidence, v: WindowVerdicts, bundle: PolicyBundle) -> Evidence:
    """The attestation the window would have had under ``bundle`` (unsigned: analysed only)."""
    config = replace(
        ev.config,
        policy_id=bundle.id,
        policy_version=bundle.version,
        policy_digest=bundle.digest,
        model_digests={m.id: m.sha256 for m in bundle.models},
    )
    return replace(ev, config=config, rules=v.rules, risk=v.risk)


def preview(
    stores: Sequence[Path],
    current: PolicyBundle,
    proposed: PolicyBundle,
    trust: TrustStore,
    since: str | None = None,
    providers: Sequence[str] = (_CPU,),
) -> Preview:
    """Replay ``stores`` under ``current`` (which must reproduce every attested result)
    and ``proposed``, over the windows of the last ``since`` (default: all), and compare.

    Raises:
        Error: a store cannot be read or replayed, the proposal reads other channels.
        VerificationError: an attestation does not verify with ``trust`` (unknown key,
            bad signature), or the current policy does not reproduce it.
    """
    _check_channels(current, proposed)
    since_ms = parse_since(since) if since else None
    runs: list[StoreRun] = []
    old_logs: list[VerifiedLog] = []
    new_logs: list[VerifiedLog] = []
    for path in stores:
        run, old, new = _replay_store(path, current, proposed, trust, since_ms, providers)
        if any(r.log == run.log for r in runs):
            raise Error(f"{path}: holds the log {run.log} that another store given holds too")
        runs.append(run)
        old_logs.append(old)
        new_logs.append(new)
    n = sum(len(log.evidence) for log in old_logs)
    before = analyze(AuditResult(verified=n, logs=old_logs), current)
    after = analyze(AuditResult(verified=n, logs=new_logs), proposed)
    return Preview(current, proposed, since, runs, _goals(current, proposed, before, after))


def _episode(e: Episode) -> dict[str, Any]:
    return {"rule": e.rule, "start_ms": e.start_ms, "end_ms": e.end_ms, "peak": e.peak}


def _episodes(d: DeviceAnalysis, goal: str) -> dict[tuple[Any, ...], Episode]:
    return {(e.rule, e.start_ms, e.end_ms, e.peak): e for e in d.episodes if e.goal == goal}


def _goals(
    current: PolicyBundle, proposed: PolicyBundle, before: Analysis, after: Analysis
) -> list[dict[str, Any]]:
    """Per goal (the proposal's, then any it drops), per device: what changed."""
    ids = [g.id for g in proposed.goals]
    ids += [g.id for g in current.goals if g.id not in ids]
    items = [{c.id: c for c in an.compliance} for an in (before, after)]
    bundles = (current, proposed)
    out = []
    for gid in ids:
        rules = [[r.id for r in b.rules if r.goal == gid] for b in bundles]
        devices: list[dict[str, Any]] = []
        for d_old, d_new in zip(before.devices, after.devices):
            verdicts = []
            for item, dev in ((items[0].get(gid), d_old), (items[1].get(gid), d_new)):
                v = (
                    None
                    if item is None
                    else next(x for x in item.devices if x.device == dev.device)
                )
                verdicts.append(v)
            eps_old, eps_new = _episodes(d_old, gid), _episodes(d_new, gid)
            order = sorted(set(rules[0]) | set(rules[1]), key=(rules[1] + rules[0]).index)
            not_evaluable = {
                rid: [
                    d.rules.get(rid, {}).get("errors", 0) if rid in rs else None
                    for d, rs in ((d_old, rules[0]), (d_new, rules[1]))
                ]
                for rid in order
            }
            devices.append(
                {
                    "device": d_old.device,
                    "log": d_old.origin,
                    "status": [None if v is None else v.status for v in verdicts],
                    "reason": [None if v is None else v.reason for v in verdicts],
                    "new": _only(eps_new, eps_old),
                    "vanished": _only(eps_old, eps_new),
                    "not_evaluable": not_evaluable,
                }
            )
        status = [None if it.get(gid) is None else it[gid].status for it in items]
        out.append(
            {
                "goal": gid,
                "status": status,
                "rules": rules,
                "new": sum(len(d["new"]) for d in devices),
                "vanished": sum(len(d["vanished"]) for d in devices),
                "not_evaluable": [
                    sum(v[k] or 0 for d in devices for v in d["not_evaluable"].values())
                    for k in (0, 1)
                ],
                "devices": devices,
            }
        )
    return out


def _only(
    these: dict[tuple[Any, ...], Episode], not_in: dict[tuple[Any, ...], Episode]
) -> list[Any]:
    """The episodes of ``these`` that ``not_in`` lacks, by start, rule, end."""
    keys = sorted(these.keys() - not_in.keys(), key=lambda k: (k[1], k[0], k[2] or -1))
    return [_episode(these[k]) for k in keys]


class Preview:
    """A preview's result: :meth:`to_json` is the document, :attr:`digest` its SHA-256."""

    def __init__(
        self,
        current: PolicyBundle,
        proposed: PolicyBundle,
        since: str | None,
        stores: list[StoreRun],
        goals: list[dict[str, Any]],
    ) -> None:
        self.current, self.proposed, self.since = current, proposed, since
        self.stores, self.goals = stores, goals

    @property
    def changed(self) -> bool:
        """Whether the proposal would have flagged anything differently."""
        return any(
            g["new"] or g["vanished"] or g["status"][0] != g["status"][1]
            or g["not_evaluable"][0] != g["not_evaluable"][1]
            for g in self.goals
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        def policy(b: PolicyBundle) -> dict[str, Any]:
            return {"id": b.id, "version": b.version, "sha256": b.digest, "file": b.source.name}

        return {
            "format": FORMAT,
            "current": policy(self.current),
            "proposed": policy(self.proposed),
            "since": self.since,
            "stores": [s.to_json() for s in self.stores],
            "windows": sum(s.windows for s in self.stores),
            "readings": sum(s.readings for s in self.stores),
            "changed": self.changed,
            "goals": self.goals,
        }

    def canonical_bytes(self) -> bytes:
        """The document as ``--out`` writes it: sorted keys, no spaces, UTF-8."""
        return json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
            allow_nan=False,
        ).encode()  # fmt: skip

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def text(self) -> str:
        cur, new = self.current, self.proposed
        lines = [
            f"preview of {new.id} v{new.version} (sha256 {new.digest[:16]}...) against "
            f"{cur.id} v{cur.version} (sha256 {cur.digest[:16]}...), the policy in force",
        ]
        for g in self.goals:
            old_s, new_s = (s or "not in the policy" for s in g["status"])
            ne = g["not_evaluable"]
            change = (
                f"{g['new']} new episode(s), {g['vanished']} vanished, "
                f"readings not evaluable {ne[0]} -> {ne[1]}"
            )
            if old_s == new_s and not (g["new"] or g["vanished"]) and ne[0] == ne[1]:
                change = "no difference"
            lines.append(f"goal {g['goal']}: {old_s} -> {new_s}; {change}")
        for s in self.stores:
            lines.append(
                f"  {s.device} ({s.path}): seq {s.first_seq}..{s.last_seq}, {s.windows} "
                f"window(s), {s.readings} reading(s), {ts(s.start_ms)} to {ts(s.end_ms)}; "
                f"baseline reproduced as attested (replayed from seq {s.replayed_from_seq})"
            )
        for g in self.goals:
            for d in g["devices"]:
                lines.extend(_device_lines(g["goal"], d))
        lines.append(
            "verdict: "
            + ("the change would have flagged this evidence differently" if self.changed
               else "no difference: the change flags this evidence as the policy in force did")
        )  # fmt: skip
        lines.append(f"preview sha256 {self.digest}")
        return "\n".join(lines)


def _device_lines(goal: str, d: dict[str, Any]) -> list[str]:
    changes = [(ep, "+ new     ") for ep in d["new"]] + [(ep, "- vanished") for ep in d["vanished"]]
    ne = {rid: v for rid, v in d["not_evaluable"].items() if v[0] != v[1]}
    old_s, new_s = d["status"]
    if not changes and not ne and old_s == new_s:
        return []
    lines = [f"{goal} on {d['device']}: {old_s or '-'} -> {new_s or '-'}"]
    if old_s != new_s:
        lines.append(f"  now: {d['reason'][1] or 'not in the proposed policy'}")
    for ep, sign in sorted(changes, key=lambda c: (c[0]["start_ms"], c[0]["rule"])):
        end = ep["end_ms"]
        span = f"open at the end (from {ts(ep['start_ms'])})" if end is None else (
            f"{ts(ep['start_ms'])} to {ts(end)} ({dur(end - ep['start_ms'])})"
        )  # fmt: skip
        peak = "" if ep["peak"] is None else f", peak {ep['peak']:g}"
        lines.append(f"  {sign} {ep['rule']}: {span}{peak}")
    for rid, (old_n, new_n) in ne.items():
        lines.append(
            f"  not evaluable {rid}: {'-' if old_n is None else old_n} -> "
            f"{'-' if new_n is None else new_n} reading(s)"
        )
    return lines


def preview_record(file: Path, bundle: PolicyBundle) -> dict[str, Any]:
    """What ``edgegov fleet add --preview FILE`` records in the signed targets metadata
    (``custom.edgegov.preview``): the file's SHA-256 and name, and the policy in force it
    was compared with, once the file is checked to be a preview of ``bundle``.

    Raises:
        Error: unreadable, not a preview document, or a preview of another bundle.
    """
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise Error(f"--preview {file}: cannot read: {e.strerror}") from e
    try:
        doc = json.loads(raw)
        proposed, current = doc["proposed"]["sha256"], doc["current"]
        ok = doc["format"] == FORMAT
    except (ValueError, KeyError, TypeError) as e:
        raise Error(f"--preview {file}: not an `edgegov policy preview --out` document") from e
    if not ok:
        raise Error(f"--preview {file}: format {doc['format']!r}, expected {FORMAT!r}")
    if proposed != bundle.digest:
        raise Error(
            f"--preview {file}: previews the policy with sha256 {proposed}, not "
            f"{bundle.source} (sha256 {bundle.digest}): preview the file being released"
        )
    return {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "file": file.name,
        "current": {k: current.get(k) for k in ("id", "version", "sha256")},
    }
