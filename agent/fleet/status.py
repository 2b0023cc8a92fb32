"""``edgegov fleet status``: every gateway's state, from retained messages only.

Each agent keeps ``{prefix}/{fleet}/{device}/status`` (retained; its Last Will
marks it offline) and ``…/config/ack`` (retained: its answer to the latest
assignment) up to date, so one read of the broker shows the whole fleet.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from agent.fleet._mqtt import FleetSession
from agent.transport.topics import FleetTopics, device_of

__all__ = ["GatewayStatus", "fleet_status", "format_status"]


@dataclass(frozen=True)
class GatewayStatus:
    device: str
    online: bool | None  # None: no status seen
    config_version: int | None
    last_ack: dict[str, Any] | None
    last_seq: int | None
    degraded: tuple[str, ...] = ()

    @property
    def rejected(self) -> bool:
        return self.last_ack is not None and self.last_ack.get("state") == "rejected"

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "online": self.online,
            "config_version": self.config_version,
            "last_ack": self.last_ack,
            "last_attestation_seq": self.last_seq,
            "degraded": list(self.degraded),
        }


def _json(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        v = json.loads(raw)
    except ValueError:
        return {"unreadable": raw[:80].decode(errors="replace")}
    return v if isinstance(v, dict) else {"unreadable": str(v)[:80]}


def fleet_status(session: FleetSession, topics: FleetTopics) -> list[GatewayStatus]:
    """Read every retained status and ack of the fleet (untrusted JSON: shown, not believed)."""
    statuses = session.read_retained_all(str(topics.statuses))
    acks = session.read_retained_all(str(topics.acks))
    devices = {device_of(t) for t in (*statuses, *acks)} - {"tuf"}
    out = []
    for dev in sorted(devices):
        st = _json(statuses.get(topics.status(dev)))
        ack = _json(acks.get(topics.ack(dev)))
        fleet = st.get("fleet") if st else None
        cv = fleet.get("config_version") if isinstance(fleet, dict) else None
        if cv is None and ack is not None:
            cv = ack.get("config_version")
        out.append(
            GatewayStatus(
                dev,
                None if st is None else st.get("state") == "online",
                cv if isinstance(cv, int) else None,
                ack,
                st.get("last_seq") if st else None,
                tuple(str(d) for d in (st.get("degraded") or [])) if st else (),
            )
        )
    return out


def format_status(rows: list[GatewayStatus], now_ms: int | None = None) -> str:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    lines = [f"{'device':<16} {'online':<7} {'config':>6}  {'last ack':<40} last attestation"]
    for r in rows:
        online = {True: "yes", False: "NO", None: "?"}[r.online]
        ack = "-"
        if r.last_ack is not None:
            age = (now_ms - int(r.last_ack.get("time_ms", now_ms))) / 1000
            ack = f"{r.last_ack.get('state')} v{r.last_ack.get('config_version')} {age:.0f}s ago"
            if r.rejected:
                ack += f": {r.last_ack.get('reason', '')}"
        cv = "-" if r.config_version is None else str(r.config_version)
        seq = "-" if r.last_seq is None else f"seq {r.last_seq}"
        lines.append(f"{r.device:<16} {online:<7} {cv:>6}  {ack:<40} {seq}")
    if not rows:
        lines.append("(no gateway has reported on this fleet)")
    return "\n".join(lines)
