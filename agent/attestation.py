"""The edgegov attestation profile: EAT claims (RFC 9711) in a CWT, as typed objects.

This module is the one place that knows claim labels; the agent builds
:class:`Evidence` and calls :func:`encode_claims`, the auditor's tools call
:func:`parse_claims` on the verified payload. ``docs/attestation-profile.md``
documents every label and every check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from agent.errors import VerificationError

__all__ = [
    "CONTENT_TYPE",
    "EAT_PROFILE",
    "Checkpoint",
    "ConfigInForce",
    "Evidence",
    "RiskResult",
    "RuleResult",
    "encode_claims",
    "parse_claims",
    "ueid_for",
]

EAT_PROFILE = "tag:edgegov.org,2026:eat-profile:v1"
CONTENT_TYPE = "application/eat+cwt"

# Standard claims (RFC 8392 §4, RFC 9711 §4)
IAT, CTI, UEID, UPTIME, PROFILE, BOOTCOUNT = 6, 7, 256, 261, 265, 267
# Our private-use claim (RFC 8392 §9.1: labels < -65536 are private use)
EDGEGOV = -70001
SEQ, PREV, CHECKPOINT, WINDOW, CONFIG, RULES, RISK, HEALTH, DEVICE, READINGS, DEGRADED = range(
    1, 12
)


def ueid_for(device_id: str) -> bytes:
    """A stable UEID for a device id: type 0x01 (RAND) + 16 bytes derived from it."""
    return b"\x01" + hashlib.sha256(b"edgegov-ueid\x00" + device_id.encode()).digest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """State of the device's Merkle log of readings after this window."""

    origin: str
    size: int
    root: bytes


@dataclass(frozen=True)
class ConfigInForce:
    policy_id: str
    policy_version: int
    policy_digest: str  # hex
    model_digests: Mapping[str, str]  # model id -> hex
    config_version: int = 0


@dataclass(frozen=True)
class RuleResult:
    rule_id: str
    evaluated: int
    violated: int
    errors: int
    first_violation_ms: int | None = None
    last_violation_ms: int | None = None


@dataclass(frozen=True)
class RiskResult:
    model_id: str
    score: float | None  # None: not available this window (reason says why)
    provider: str
    reason: str = ""


@dataclass(frozen=True)
class Evidence:
    """Everything one attestation says."""

    device_id: str
    seq: int
    prev: bytes | None  # SHA-256 of the previous attestation's full COSE bytes
    window_start_ms: int
    window_end_ms: int
    readings: int
    checkpoint: Checkpoint
    config: ConfigInForce
    rules: tuple[RuleResult, ...]
    risk: tuple[RiskResult, ...]
    health: Mapping[str, int]
    degraded: tuple[str, ...] = ()
    issued_at: int = 0  # seconds since the epoch
    cti: bytes = b""
    uptime_s: int = 0
    bootcount: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


def encode_claims(ev: Evidence) -> bytes:
    """Deterministic CBOR of the claims set (RFC 8949 §4.2 core deterministic encoding)."""
    private = {
        SEQ: ev.seq,
        PREV: ev.prev,
        CHECKPOINT: {1: ev.checkpoint.origin, 2: ev.checkpoint.size, 3: ev.checkpoint.root},
        WINDOW: [ev.window_start_ms, ev.window_end_ms],
        CONFIG: {
            1: ev.config.policy_id,
            2: ev.config.policy_version,
            3: bytes.fromhex(ev.config.policy_digest),
            4: {k: bytes.fromhex(v) for k, v in sorted(ev.config.model_digests.items())},
            5: ev.config.config_version,
        },
        RULES: [
            {
                1: r.rule_id,
                2: r.evaluated,
                3: r.violated,
                4: r.errors,
                5: r.first_violation_ms,
                6: r.last_violation_ms,
            }
            for r in ev.rules
        ],
        RISK: [{1: r.model_id, 2: r.score, 3: r.provider, 4: r.reason} for r in ev.risk],
        HEALTH: dict(sorted(ev.health.items())),
        DEVICE: ev.device_id,
        READINGS: ev.readings,
        DEGRADED: list(ev.degraded),
    }
    claims = {
        IAT: ev.issued_at,
        CTI: ev.cti,
        UEID: ueid_for(ev.device_id),
        UPTIME: ev.uptime_s,
        PROFILE: EAT_PROFILE,
        BOOTCOUNT: ev.bootcount,
        EDGEGOV: private,
    }
    return cbor2.dumps(claims, canonical=True)


def _get(m: Mapping[Any, Any], key: Any, types: type | tuple[type, ...], where: str) -> Any:
    if key not in m:
        raise VerificationError(f"claim {where} is missing")
    v = m[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in _as_tuple(types)):
        raise VerificationError(f"claim {where} has type {type(v).__name__}")
    return v


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def parse_claims(claims: Mapping[Any, Any]) -> Evidence:
    """Typed view of a verified claims set; VerificationError names the bad claim."""
    if _get(claims, PROFILE, str, "eat_profile (265)") != EAT_PROFILE:
        raise VerificationError(f"eat_profile is {claims[PROFILE]!r}, expected {EAT_PROFILE!r}")
    p = _get(claims, EDGEGOV, Mapping, "edgegov (-70001)")
    cp = _get(p, CHECKPOINT, Mapping, "-70001/3 checkpoint")
    win = _get(p, WINDOW, (list, tuple), "-70001/4 window")
    if len(win) != 2 or not all(isinstance(x, int) for x in win):
        raise VerificationError("claim -70001/4 window must be [start_ms, end_ms]")
    cfg = _get(p, CONFIG, Mapping, "-70001/5 config")
    rules = tuple(
        RuleResult(
            _get(r, 1, str, "-70001/6 rule id"),
            _get(r, 2, int, "-70001/6 evaluated"),
            _get(r, 3, int, "-70001/6 violated"),
            _get(r, 4, int, "-70001/6 errors"),
            r.get(5),
            r.get(6),
        )
        for r in _get(p, RULES, (list, tuple), "-70001/6 rules")
    )
    risk = tuple(
        RiskResult(
            _get(r, 1, str, "-70001/7 model id"),
            r.get(2),
            _get(r, 3, str, "-70001/7 provider"),
            r.get(4, ""),
        )
        for r in _get(p, RISK, (list, tuple), "-70001/7 risk")
    )
    prev = p.get(PREV)
    if prev is not None and (not isinstance(prev, bytes) or len(prev) != 32):
        raise VerificationError("claim -70001/2 prev must be a 32-byte SHA-256 or null")
    return Evidence(
        device_id=_get(p, DEVICE, str, "-70001/9 device"),
        seq=_get(p, SEQ, int, "-70001/1 seq"),
        prev=prev,
        window_start_ms=win[0],
        window_end_ms=win[1],
        readings=_get(p, READINGS, int, "-70001/10 readings"),
        checkpoint=Checkpoint(
            _get(cp, 1, str, "-70001/3 origin"),
            _get(cp, 2, int, "-70001/3 size"),
            _get(cp, 3, bytes, "-70001/3 root"),
        ),
        config=ConfigInForce(
            _get(cfg, 1, str, "-70001/5 policy id"),
            _get(cfg, 2, int, "-70001/5 policy version"),
            _get(cfg, 3, bytes, "-70001/5 policy digest").hex(),
            {k: v.hex() for k, v in _get(cfg, 4, Mapping, "-70001/5 models").items()},
            cfg.get(5, 0),
        ),
        rules=rules,
        risk=risk,
        health=dict(_get(p, HEALTH, Mapping, "-70001/8 health")),
        degraded=tuple(p.get(DEGRADED, ())),
        issued_at=_get(claims, IAT, int, "iat (6)"),
        cti=claims.get(CTI, b""),
        uptime_s=claims.get(UPTIME, 0),
        bootcount=claims.get(BOOTCOUNT, 0),
    )
