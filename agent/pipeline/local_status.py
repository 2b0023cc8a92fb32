"""``edgegov status``: what the agent has done, from its own files alone (no broker).

It reads the agent config, the evidence store (read-only:
:func:`agent.evidence.store_reader.read_summary` creates and changes nothing, even while
the agent runs) and, for a fleet-managed gateway (``tuf:``), the fleet config activated on
disk. The newest attestation's claims are decoded
as the agent signed them; their signature is not checked here (``edgegov audit verify``
does that with the device's public key).

The agent is **behind** when nothing has been signed yet, when the newest signed window
ended longer ago than ``max_lag`` (default: two windows plus 60 s), or when the oldest
attestation still in the outbox was signed longer ago than ``max_outbox_age`` (default: two
windows plus 300 s). It is **degraded** when the newest attestation says so (its degraded
reasons) or when a source was still offline at the end of the newest window. Either is a
finding (exit 1), with the reason.

The outbox count is the store's: the agent deletes acknowledged rows in batches (at each
window's close), so a few delivered attestations may still be counted, above all after a
crash; they are sent once more at the next start (see :meth:`EvidenceStore.acknowledge`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.errors import VerificationError
from agent.evidence.claims import Evidence, parse_claims
from agent.evidence.cose import decode_sign1
from agent.evidence.store import store_path
from agent.evidence.store_reader import StoreSummary, read_summary
from agent.pipeline.held_windows import FILE as HELD_FILE

__all__ = ["LocalStatus", "SourceQuality", "Thresholds", "local_status"]

_LAG_GRACE_S = 60.0
_OUTBOX_GRACE_S = 300.0
# A source's window record is taken as the window closes, not at its end to the
# millisecond: an offline interval ending this close to the window's end was still open.
_END_SLACK_MS = 100


@dataclass(frozen=True)
class Thresholds:
    """When the agent counts as behind; None: two windows plus a grace period."""

    max_lag_s: float | None = None
    max_outbox_age_s: float | None = None

    def lag(self, window_s: float) -> float:
        return self.max_lag_s if self.max_lag_s is not None else 2 * window_s + _LAG_GRACE_S

    def outbox_age(self, window_s: float) -> float:
        if self.max_outbox_age_s is not None:
            return self.max_outbox_age_s
        return 2 * window_s + _OUTBOX_GRACE_S


@dataclass(frozen=True)
class SourceQuality:
    """One source's data-quality record in the newest attestation (claim -70001/8)."""

    name: str
    protocol: str
    port: str
    device: str | None
    counters: dict[str, int]  # every integer counter, as attested
    offline_ms: int
    offline_at_end: bool  # still offline when the window closed
    problems: tuple[str, ...]

    @classmethod
    def from_record(cls, rec: dict[str, Any], window_end_ms: int) -> SourceQuality:
        offline = [iv for iv in rec.get("offline", ()) if isinstance(iv, list) and len(iv) == 2]
        return cls(
            str(rec.get("source", "?")),
            str(rec.get("protocol", "?")),
            str(rec.get("port", "?")),
            rec.get("device") if isinstance(rec.get("device"), str) else None,
            {
                k: v
                for k, v in rec.items()
                if isinstance(v, int) and not isinstance(v, bool) and k != "offline_ms"
            },
            int(rec.get("offline_ms", 0) or 0),
            bool(offline) and offline[-1][1] >= window_end_ms - _END_SLACK_MS,
            tuple(str(p) for p in rec.get("problems", ())),
        )

    @property
    def ok(self) -> int:
        """Readings (samples, lines, polls) that arrived intact."""
        return sum(v for k, v in self.counters.items() if k.endswith("_ok") and k != "frames_ok")

    @property
    def errors(self) -> dict[str, int]:
        """The non-zero counters other than the good ones."""
        return {k: v for k, v in sorted(self.counters.items()) if v and not k.endswith("_ok")}

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "protocol": self.protocol,
            "port": self.port,
            "device": self.device,
            "readings_ok": self.ok,
            "offline_ms": self.offline_ms,
            "offline_at_end": self.offline_at_end,
            "errors": self.errors,
            "problems": list(self.problems),
            "counters": dict(sorted(self.counters.items())),
        }


@dataclass
class LocalStatus:
    """Everything ``edgegov status`` reports; ``behind`` and ``degraded`` are the findings."""

    config: Path
    store: Path
    device: str
    summary: StoreSummary
    last: Evidence | None
    oldest_undelivered: Evidence | None
    window_s: float | None
    now: float
    thresholds: Thresholds
    sources: list[SourceQuality] = field(default_factory=list)
    fleet: dict[str, Any] | None = None  # None: no tuf configured
    behind: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.behind and not self.degraded

    def to_json(self) -> dict[str, Any]:
        s, ev, old = self.summary, self.last, self.oldest_undelivered
        return {
            "verdict": "ok" if self.ok else "behind" if self.behind else "degraded",
            "device": self.device,
            "config": str(self.config),
            "store": str(self.store),
            "log": s.origin,
            "bootcount": s.bootcount,
            "attestations": s.attestations,
            "readings_retained": s.readings,
            "last": None
            if ev is None
            else {
                "seq": ev.seq,
                "signed_at": ev.issued_at,
                "age_s": round(self.now - ev.issued_at, 3),
                "window_ms": [ev.window_start_ms, ev.window_end_ms],
                "window_ended_s_ago": round(self.now - ev.window_end_ms / 1000, 3),
                "readings": ev.readings,
            },
            "window_s": self.window_s,
            "outbox": {
                "depth": s.outbox,
                "oldest_seq": None if old is None else old.seq,
                "oldest_signed_at": None if old is None else old.issued_at,
                "oldest_age_s": None if old is None else round(self.now - old.issued_at, 3),
            },
            "sources": [q.to_json() for q in self.sources],
            "config_in_force": None if ev is None else _config_json(ev),
            "fleet": self.fleet,
            "degraded_reasons": [] if ev is None else list(ev.degraded),
            "thresholds": {
                "max_lag_s": None if self.window_s is None else self.thresholds.lag(self.window_s),
                "max_outbox_age_s": None
                if self.window_s is None
                else self.thresholds.outbox_age(self.window_s),
            },
            "behind": self.behind,
            "degraded": self.degraded,
        }

    def text(self) -> str:
        s, ev, old = self.summary, self.last, self.oldest_undelivered
        lines = [
            f"edgegov status of {self.device} (config {self.config})",
            f"  evidence log  {s.origin}",
            f"  store         {self.store}: {s.attestations} attestation(s), "
            f"{s.readings} reading(s) retained, boot {s.bootcount}",
        ]
        if ev is None:
            lines.append("  last signed   nothing yet")
        else:
            lines.append(
                f"  last signed   seq {ev.seq} at {_utc(ev.issued_at * 1000)} "
                f"({_ago(self.now - ev.issued_at)}); window {_utc(ev.window_start_ms)} to "
                f"{_utc(ev.window_end_ms)}, {ev.readings} reading(s)"
            )
        if old is None:
            lines.append(f"  outbox        {s.outbox} undelivered")
        else:
            lines.append(
                f"  outbox        {s.outbox} undelivered; oldest seq {old.seq} signed "
                f"{_utc(old.issued_at * 1000)} ({_ago(self.now - old.issued_at)})"
            )
        for q in self.sources:
            who = f", device {q.device}" if q.device else ""
            errors = ", ".join(f"{k} {v}" for k, v in q.errors.items()) or "no errors"
            lines.append(
                f"  source        {q.name} ({q.protocol} {q.port}{who}): {q.ok} reading(s) ok, "
                f"{errors}" + (" - OFFLINE at the window's end" if q.offline_at_end else "")
            )
            lines.extend(f"                  problem: {p}" for p in q.problems)
        if ev is not None:
            c = ev.config
            models = ", ".join(
                f"{m} (sha256 {d[:12]}...)" for m, d in sorted(c.model_digests.items())
            )
            lines.append(
                f"  policy        {c.policy_id} v{c.policy_version} (sha256 "
                f"{c.policy_digest[:12]}...), config version {c.config_version}"
            )
            lines.append(f"  models        {models or 'none'}")
        if self.fleet is not None:
            active = self.fleet.get("active")
            if active is None:
                lines.append("  fleet         tuf configured; no signed config activated yet")
            else:
                tuf = ", ".join(f"{k} {v}" for k, v in active["tuf"].items())
                lines.append(
                    f"  fleet         config v{active['config_version']} on disk (policy "
                    f"{active['policy']}; TUF {tuf}), activated {_utc(active['activated_ms'])}"
                )
        lines.append(
            "  degraded      "
            + ("; ".join(ev.degraded) if ev is not None and ev.degraded else "no")
        )
        lines.extend(f"BEHIND: {r}" for r in self.behind)
        lines.extend(f"DEGRADED: {r}" for r in self.degraded)
        lines.append(
            "verdict: "
            + ("OK" if self.ok else "BEHIND" if self.behind else "DEGRADED")
            + " (from the local store; signatures not checked: use 'edgegov audit verify')"
        )
        return "\n".join(lines)


def local_status(
    config: AgentConfig, thresholds: Thresholds | None = None, now: float | None = None
) -> LocalStatus:
    """Read the agent's local state; creates and changes nothing.

    Raises:
        StorageError: the store is missing or unreadable (exit 2: nothing to report).
        VerificationError: a stored attestation does not decode (exit 1).
    """
    th = thresholds or Thresholds()
    path = store_path(config.state_dir)
    summary = read_summary(path)
    last = _decode(path, summary.last.seq, summary.last.cose) if summary.last else None
    oldest = summary.oldest_undelivered
    old = _decode(path, oldest.seq, oldest.cose) if oldest else None
    st = LocalStatus(
        config=config.source,
        store=path,
        device=config.device_id,
        summary=summary,
        last=last,
        oldest_undelivered=old,
        window_s=None if summary.window_ms is None else summary.window_ms / 1000,
        now=time.time() if now is None else now,
        thresholds=th,
    )
    if config.tuf is not None:
        st.fleet = _fleet(config)
    if last is None:
        st.behind.append(
            f"no attestation signed yet (the agent has started {summary.bootcount} time(s) "
            "with this store)"
        )
        return st
    assert st.window_s is not None
    st.sources = [
        SourceQuality.from_record(dict(r), last.window_end_ms) for r in last.source_health
    ]
    ended = st.now - last.window_end_ms / 1000
    if ended > th.lag(st.window_s):
        st.behind.append(
            f"the newest signed window (seq {last.seq}) ended {_ago(ended)}, more than "
            f"{th.lag(st.window_s):g} s ({_why(th.max_lag_s, st.window_s, _LAG_GRACE_S)}): "
            "is the agent running?"
        )
    if old is not None:
        age = st.now - old.issued_at
        if age > th.outbox_age(st.window_s):
            st.behind.append(
                f"the oldest undelivered attestation (seq {old.seq}) was signed {_ago(age)}, "
                f"more than {th.outbox_age(st.window_s):g} s "
                f"({_why(th.max_outbox_age_s, st.window_s, _OUTBOX_GRACE_S)}); "
                f"{summary.outbox} attestation(s) wait in the outbox: can the agent reach "
                "its broker (or write its spool)?"
            )
    st.degraded.extend(f"seq {last.seq}: {r}" for r in last.degraded)
    for q in st.sources:
        if q.offline_at_end:
            st.degraded.append(
                f"source {q.name} ({q.port}) was offline at the end of window seq {last.seq} "
                f"({q.offline_ms} ms offline in that window)"
            )
    held = config.state_dir / HELD_FILE
    if held.exists():  # windows the store refused, kept signed until the next start signs them
        st.degraded.append(
            f"{held} holds window(s) the evidence store refused ({held.stat().st_size} bytes); "
            "the agent signs them at its next start"
        )
    return st


def _decode(path: Path, seq: int, cose: bytes) -> Evidence:
    try:
        return parse_claims(decode_sign1(cose).claims())
    except VerificationError as e:
        raise VerificationError(f"{path}: stored attestation seq {seq} does not decode: {e}") from e


def _fleet(config: AgentConfig) -> dict[str, Any]:
    from agent.fleet.activation import fleet_dir, read_current  # no python-tuf needed

    assert config.tuf is not None
    active = read_current(fleet_dir(config.state_dir))
    return {
        "root": str(config.tuf.root),
        "group": config.tuf.group,
        "active": None
        if active is None
        else {
            "directory": str(active.directory),
            "config_version": active.config_version,
            "policy": active.policy,
            "assignment": active.assignment,
            "tuf": active.tuf.as_dict(),
            "targets": dict(sorted(active.targets.items())),
            "activated_ms": active.activated_ms,
        },
    }


def _config_json(ev: Evidence) -> dict[str, Any]:
    c = ev.config
    return {
        "policy": {"id": c.policy_id, "version": c.policy_version, "sha256": c.policy_digest},
        "models": dict(sorted(c.model_digests.items())),
        "config_version": c.config_version,
        "tuf": None if c.tuf is None else dict(c.tuf),
        "targets": None if c.targets is None else dict(sorted(c.targets.items())),
    }


def _why(given: float | None, window_s: float, grace: float) -> str:
    if given is not None:
        return "the threshold given"
    return f"two {window_s:g} s windows plus {grace:g} s"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _ago(seconds: float) -> str:
    if seconds < 0:
        return f"{-seconds:.1f} s in the future (clock?)"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min ago"
    return f"{seconds / 3600:.1f} h ago"
