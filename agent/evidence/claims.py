"""The edgegov attestation profile: EAT claims (RFC 9711) in a CWT, as typed objects.

This module is the one place that knows claim labels; the agent builds
:class:`Evidence` and calls :func:`encode_claims`, the auditor's tools call
:func:`parse_claims` on the verified payload. ``docs/attestation-profile.md``
documents every label and every check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cbor2

from agent.errors import VerificationError
from native._verify_py import INT_MAX, MAX_TIME_MS  # the profile's ranges (pure constants)
from native.verify import ClaimsError, ClaimsTypes, evidence_from_claims

__all__ = [
    "CONTENT_TYPE",
    "EAT_PROFILE",
    "Checkpoint",
    "ConfigInForce",
    "Evidence",
    "Restart",
    "RiskResult",
    "RuleEpisode",
    "RuleResult",
    "SelfTestResult",
    "SourceDowntime",
    "encode_claims",
    "parse_claims",
    "parse_self_test_claim",
    "self_test_claim",
    "ueid_for",
]

_T = TypeVar("_T")

EAT_PROFILE = "tag:edgegov.org,2026:eat-profile:v1"
CONTENT_TYPE = "application/eat+cwt"

# Standard claims (RFC 8392 §4, RFC 9711 §4)
IAT, CTI, NONCE, UEID, UPTIME, PROFILE, SUBMODS, BOOTCOUNT = 6, 7, 10, 256, 261, 265, 266, 267
SWNAME, SWVERSION, MEASUREMENTS, MEASRES = 270, 271, 273, 274
# measurements content type: CoAP Content-Format 65000 (experimental range, RFC 7252
# §12.3), profile-defined as "a raw SHA-256 digest of the component".
CF_SHA256 = 65000
MEASRES_SUCCESS, MEASRES_FAIL, MEASRES_NOT_RUN = 1, 2, 3  # RFC 9711 §4.2.17
AGENT_SWNAME = "edgegov-agent"
# Our private-use claim (RFC 8392 §9.1: labels < -65536 are private use)
EDGEGOV = -70001
SEQ, PREV, CHECKPOINT, WINDOW, CONFIG, RULES, RISK, HEALTH, DEVICE, READINGS, DEGRADED = range(
    1, 12
)
RESTART = 12
SELF_TESTS = 13


def ueid_for(device_id: str) -> bytes:
    """A stable UEID for a device id: type 0x01 (RAND) + 16 bytes derived from it."""
    return b"\x01" + hashlib.sha256(b"edgegov-ueid\x00" + device_id.encode()).digest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """State of the device's Merkle log of readings after this window.

    ``prev_size`` is the size at the previous checkpoint and ``consistency`` the
    RFC 9162 §2.1.4 proof that this tree extends that one (empty if prev_size is
    0 or nothing was added).
    """

    origin: str
    size: int
    root: bytes
    prev_size: int = 0
    consistency: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ConfigInForce:
    """Claim -70001/5. Keys 6-8 only with a fleet (TUF) config, see agent/fleet."""

    policy_id: str
    policy_version: int
    policy_digest: str  # hex
    model_digests: Mapping[str, str]  # model id -> hex
    config_version: int = 0
    tuf: Mapping[str, int] | None = None  # root/timestamp/snapshot/targets versions
    targets: Mapping[str, str] | None = None  # TUF target name -> sha256 hex
    changed: tuple[int, int] | None = None  # (previous config version, switch ms)
    # SHA-256 hex of the policy evaluator's and the risk features' state at the window's
    # start (key 9): lets `edgegov audit replay` prove it starts from the same state
    state_in: str | None = None


@dataclass(frozen=True)
class RuleEpisode:
    """One violation episode of a rule (claim -70001/6 key 7).

    ``start_ms`` is when the condition first went false (it may precede the
    window: an episode carried over); ``end_ms`` is None while it is still
    open at the end of the window; ``peak`` is the extreme of the rule's
    measure during the episode (None when there is none).
    """

    start_ms: int
    end_ms: int | None
    peak: float | None = None


@dataclass(frozen=True)
class RuleResult:
    rule_id: str
    evaluated: int
    violated: int
    errors: int
    first_violation_ms: int | None = None
    last_violation_ms: int | None = None
    episodes: tuple[RuleEpisode, ...] = ()


@dataclass(frozen=True)
class RiskResult:
    model_id: str
    score: float | None  # None: not available this window (reason says why)
    provider: str
    reason: str = ""
    # inputs outside the model's training ranges; () = none, None = not assessed
    ood: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SourceDowntime:
    """One source's time without recorded data around an agent restart (-70001/12 key 4).

    ``last_frame_seq`` is the device frame counter of the last frame this log recorded
    from the source before the stop (framed sources; None for text/Modbus, or if none was
    recorded): the frames the device sent meanwhile show up, once its next frame arrives,
    as that source's ``frames_unrecorded`` health counter and a ``gaps`` range.
    """

    source: str
    no_data_ms: int  # from the last reading recorded before the stop to this start
    last_frame_seq: int | None = None


@dataclass(frozen=True)
class Restart:
    """Claim -70001/12, only in the first attestation an agent process signs.

    States the start (``started_ms``, gateway clock), the end of the last window signed
    before it in this log (None: nothing signed before), whether the previous run stopped
    cleanly, the readings of a window in progress at a crash that were recovered from the
    store (attested in this window) or are not in the log, and, when the log is new while
    state of an earlier log was found beside it, why and which log that was.
    """

    started_ms: int
    last_end_ms: int | None
    clean: bool
    sources: tuple[SourceDowntime, ...] = ()
    recovered_readings: int = 0
    unrecorded_readings: int | None = 0  # None: not known how many
    new_log: str | None = None  # why a new log began beside an earlier log's state
    previous_log: str | None = None  # that log: "origin seq N head sha256:HEX", or "unknown"

    @property
    def down_ms(self) -> int:
        """Time no window was being signed: from the last signed window's end to this start."""
        return max(0, self.started_ms - self.last_end_ms) if self.last_end_ms is not None else 0


@dataclass(frozen=True)
class SelfTestResult:
    """One scheduled self-test's result (claim -70001/13, ``docs/self-tests.md``).

    ``channels``: (a, b) of a ``redundant`` test, (channel,) of a ``reference`` one;
    ``readings``: the valid readings used, per channel. Redundant: ``observed`` = mean(a),
    ``reference`` = mean(b), ``error`` = |a - b|; reference: ``observed`` = mean(channel),
    ``error`` = observed - reference. ``passed`` when |error| <= ``tolerance``. A value
    that could not be computed is None and ``reason`` says why (``no readings``).
    ``time_ms`` is the end of the window it ran in, ``every_ms`` the declared period.
    """

    test_id: str
    kind: str
    channels: tuple[str, ...]
    reference: float | None
    observed: float | None
    error: float | None
    tolerance: float
    passed: bool
    time_ms: int
    readings: tuple[int, ...]
    every_ms: int
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
    nonce: bytes | None = None  # eat_nonce: a verifier challenge or an epoch id
    agent_version: str = ""
    agent_digest: str = ""  # hex SHA-256 over the agent's code (submods "agent")
    sensors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # -70001/8 "sources": per-source data-quality records (agent/sources/quality.py)
    source_health: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart | None = None  # -70001/12: the first attestation of an agent process
    self_tests: tuple[SelfTestResult, ...] = ()  # -70001/13: only when a self-test was due


def _measured(digest_hex: str) -> list[list[Any]]:
    return [[CF_SHA256, bytes.fromhex(digest_hex)]] if digest_hex else []


def _submods(ev: Evidence) -> dict[str, Any]:
    """RFC 9711 §4.2.18 submodules: agent, policy, each model, each sensor."""
    subs: dict[str, Any] = {
        "agent": {
            SWNAME: AGENT_SWNAME,
            SWVERSION: [ev.agent_version or "0"],
            MEASUREMENTS: _measured(ev.agent_digest),
        },
        "policy": {
            SWNAME: ev.config.policy_id,
            SWVERSION: [str(ev.config.policy_version)],
            MEASUREMENTS: _measured(ev.config.policy_digest),
        },
    }
    for model, digest in sorted(ev.config.model_digests.items()):
        subs[f"model:{model}"] = {MEASUREMENTS: _measured(digest)}
    for name, info in sorted(ev.sensors.items()):
        subs[f"sensor:{name}"] = {1: dict(sorted(info.items()))}  # 1: profile-defined info
    return subs


def _measres(ev: Evidence) -> list[Any]:
    """RFC 9711 §4.2.17 measurement results: one entry per policy rule."""
    results = [
        [
            r.rule_id,
            MEASRES_NOT_RUN
            if r.evaluated == 0
            else MEASRES_FAIL
            if r.violated
            else MEASRES_SUCCESS,
        ]
        for r in ev.rules
    ]
    return [[f"policy:{ev.config.policy_id}@{ev.config.policy_version}", results]]


def _risk_claim(r: RiskResult) -> dict[int, Any]:
    claim: dict[int, Any] = {1: r.model_id, 2: r.score, 3: r.provider, 4: r.reason}
    if r.ood is not None:
        claim[5] = list(r.ood)
    return claim


def encode_claims(ev: Evidence) -> bytes:
    """Deterministic CBOR of the claims set (RFC 8949 §4.2 core deterministic encoding)."""
    private = {
        SEQ: ev.seq,
        PREV: ev.prev,
        CHECKPOINT: {
            1: ev.checkpoint.origin,
            2: ev.checkpoint.size,
            3: ev.checkpoint.root,
            4: ev.checkpoint.prev_size,
            5: list(ev.checkpoint.consistency),
        },
        WINDOW: [ev.window_start_ms, ev.window_end_ms],
        CONFIG: {
            1: ev.config.policy_id,
            2: ev.config.policy_version,
            3: bytes.fromhex(ev.config.policy_digest),
            4: {k: bytes.fromhex(v) for k, v in sorted(ev.config.model_digests.items())},
            5: ev.config.config_version,
            **_fleet_config(ev.config),
        },
        RULES: [
            {
                1: r.rule_id,
                2: r.evaluated,
                3: r.violated,
                4: r.errors,
                5: r.first_violation_ms,
                6: r.last_violation_ms,
                7: [[e.start_ms, e.end_ms, e.peak] for e in r.episodes],
            }
            for r in ev.rules
        ],
        RISK: [_risk_claim(r) for r in ev.risk],
        HEALTH: _health_claim(ev),
        DEVICE: ev.device_id,
        READINGS: ev.readings,
        DEGRADED: list(ev.degraded),
    }
    if ev.restart is not None:
        private[RESTART] = _restart_claim(ev.restart)
    if ev.self_tests:
        private[SELF_TESTS] = [self_test_claim(t) for t in ev.self_tests]
    claims = {
        IAT: ev.issued_at,
        CTI: ev.cti,
        UEID: ueid_for(ev.device_id),
        UPTIME: ev.uptime_s,
        PROFILE: EAT_PROFILE,
        SUBMODS: _submods(ev),
        BOOTCOUNT: ev.bootcount,
        MEASUREMENTS: _measured(ev.agent_digest),
        MEASRES: _measres(ev),
        EDGEGOV: private,
    }
    if ev.nonce is not None:
        claims[NONCE] = ev.nonce
    return cbor2.dumps(claims, canonical=True)


_TUF_ROLES = ("root", "timestamp", "snapshot", "targets")


def _restart_claim(r: Restart) -> dict[int, Any]:
    claim: dict[int, Any] = {
        1: r.started_ms,
        2: r.last_end_ms,
        3: r.clean,
        4: [
            {"source": s.source, "no_data_ms": s.no_data_ms, "last_frame_seq": s.last_frame_seq}
            for s in r.sources
        ],
        5: r.recovered_readings,
        6: r.unrecorded_readings,
    }
    if r.new_log is not None:
        claim[7] = r.new_log
        claim[8] = r.previous_log
    return claim


def _parse_restart(c: Any) -> Restart:
    """-70001/12 as a :class:`Restart`; VerificationError names the bad key."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise VerificationError(f"claim -70001/12 restart: {what}")

    def uint(v: Any, top: int = INT_MAX) -> bool:
        return type(v) is int and 0 <= v <= top

    need(isinstance(c, Mapping), "must be a map")
    need(uint(c.get(1), MAX_TIME_MS), f"1 (started_ms) must be a time in ms (0..{MAX_TIME_MS})")
    need(
        c.get(2) is None or uint(c.get(2), MAX_TIME_MS),
        f"2 (last_end_ms) must be a time in ms (0..{MAX_TIME_MS}) or null",
    )
    need(type(c.get(3)) is bool, "3 (clean) must be a bool")
    srcs = c.get(4, [])
    need(isinstance(srcs, list), "4 (sources) must be a list")
    sources = []
    for s in srcs:
        need(
            isinstance(s, Mapping)
            and type(s.get("source")) is str
            and uint(s.get("no_data_ms"))
            and (s.get("last_frame_seq") is None or uint(s.get("last_frame_seq"), 2**32 - 1)),
            "4 (sources): each entry needs source, no_data_ms and last_frame_seq",
        )
        sources.append(SourceDowntime(s["source"], s["no_data_ms"], s.get("last_frame_seq")))
    need(uint(c.get(5, 0)), "5 (recovered readings) must be an unsigned integer")
    need(c.get(6) is None or uint(c.get(6)), "6 (unrecorded readings) must be an integer or null")
    for k, name in ((7, "new_log"), (8, "previous_log")):
        need(c.get(k) is None or type(c.get(k)) is str, f"{k} ({name}) must be text")
    return Restart(c[1], c.get(2), c[3], tuple(sources), c.get(5, 0), c.get(6), c.get(7), c.get(8))


def self_test_claim(t: SelfTestResult) -> dict[int, Any]:
    """One entry of -70001/13 (CDDL ``self-test-result``, docs/attestation-profile.md)."""
    return {
        1: t.test_id,
        2: t.kind,
        3: list(t.channels),
        4: t.reference,
        5: t.observed,
        6: t.error,
        7: t.tolerance,
        8: t.passed,
        9: t.time_ms,
        10: list(t.readings),
        11: t.every_ms,
        12: t.reason,
    }


_ST_KINDS = {"redundant": 2, "reference": 1}  # kind -> channels it names


def parse_self_test_claim(c: Any) -> tuple[SelfTestResult, ...]:
    """-70001/13 as :class:`SelfTestResult` values; VerificationError names the bad key."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise VerificationError(f"claim -70001/13 self-tests: {what}")

    def num(v: Any) -> bool:
        return type(v) is float and math.isfinite(v)

    need(isinstance(c, list) and len(c) > 0, "must be a non-empty list (absent when none ran)")
    out = []
    for t in c:
        need(isinstance(t, Mapping) and set(t) == set(range(1, 13)), "each needs keys 1 to 12")
        need(type(t[1]) is str and t[1] != "", "1 (id) must be text")
        need(t[2] in _ST_KINDS, "2 (kind) must be redundant or reference")
        n = _ST_KINDS[t[2]]
        need(
            isinstance(t[3], list) and len(t[3]) == n and all(type(x) is str for x in t[3]),
            f"3 (channels) must name {n} channel(s) for a {t[2]} test",
        )
        for k, name in ((4, "reference"), (5, "observed"), (6, "error")):
            need(t[k] is None or num(t[k]), f"{k} ({name}) must be a finite float or null")
        need(num(t[7]) and t[7] > 0, "7 (tolerance) must be a float > 0")
        need(type(t[8]) is bool, "8 (passed) must be a bool")
        need(type(t[9]) is int and 0 <= t[9] <= MAX_TIME_MS, "9 (time) must be a time in ms")
        need(
            isinstance(t[10], list)
            and len(t[10]) == n
            and all(type(x) is int and 0 <= x <= INT_MAX for x in t[10]),
            "10 (readings) must count the readings used per channel",
        )
        need(type(t[11]) is int and 0 < t[11] <= INT_MAX, "11 (every) must be a period in ms")
        need(type(t[12]) is str, "12 (reason) must be text")
        need(
            not t[8] or (t[6] is not None and abs(t[6]) <= t[7]),
            "8 (passed) is true but the error is not within the tolerance",
        )
        out.append(
            SelfTestResult(
                t[1], t[2], tuple(t[3]), t[4], t[5], t[6], t[7], t[8], t[9], tuple(t[10]),
                t[11], t[12],
            )
        )  # fmt: skip
    return tuple(out)


def _fleet_config(c: ConfigInForce) -> dict[int, Any]:
    """-70001/5 keys 6-9: TUF versions, target digests, a change at this window's start,
    the state digest."""
    out: dict[int, Any] = {}
    if c.tuf is not None:
        out[6] = {i: c.tuf[r] for i, r in enumerate(_TUF_ROLES, 1)}
    if c.targets is not None:
        out[7] = {k: bytes.fromhex(v) for k, v in sorted(c.targets.items())}
    if c.changed is not None:
        out[8] = list(c.changed)
    if c.state_in is not None:
        out[9] = bytes.fromhex(c.state_in)
    return out


def _health_claim(ev: Evidence) -> dict[str, Any]:
    """-70001/8: window counters summed over sources, plus ``sources`` (one record each)."""
    claim: dict[str, Any] = dict(ev.health)
    if ev.source_health:
        claim["sources"] = [dict(r) for r in ev.source_health]
    return dict(sorted(claim.items()))


_Spec = tuple[dict[str, Any], tuple[tuple[str, Any], ...], int]
_SPECS: dict[type, _Spec] = {}


def _spec(cls: type) -> _Spec:
    fs = dataclasses.fields(cls)
    defaults = {f.name: f.default for f in fs if f.default is not dataclasses.MISSING}
    factories = tuple(
        (f.name, f.default_factory) for f in fs if f.default_factory is not dataclasses.MISSING
    )
    _SPECS[cls] = spec = (defaults, factories, len(fs))
    return spec


def _build(cls: type[_T], fields: dict[str, Any]) -> _T:
    """``cls(**fields)`` for our frozen dataclasses, without the per-field ``__setattr__``.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` (~2 us for :class:`Evidence`); the parser builds eight
    such objects per attestation (issue 6: audit verify throughput). Defaults
    fill the fields not given, as the constructor would. None of these classes
    has ``__post_init__`` or slots (``tests/test_native_verify.py`` checks it and
    that the result equals the constructor's).
    """
    defaults, factories, n = _SPECS.get(cls) or _spec(cls)
    obj = object.__new__(cls)
    d = obj.__dict__
    d.update(defaults)
    d.update(fields)
    for name, factory in factories:
        if name not in d:
            d[name] = factory()
    if len(d) != n:
        raise TypeError(f"{cls.__name__}: missing or unknown fields in {sorted(fields)}")
    return obj


_TYPES = ClaimsTypes(Evidence, Checkpoint, ConfigInForce, RuleResult, RiskResult, RuleEpisode)


def parse_claims(claims: Mapping[Any, Any]) -> Evidence:
    """Typed view of a verified claims set; VerificationError names the bad claim.

    The profile's layout checks live in ``native.verify`` (compiled, with a
    pure-Python twin: the audit verifier parses every attestation, issue 6);
    it builds these dataclasses as :func:`_build` does, without ``__init__``.
    """
    try:
        ev: Evidence = evidence_from_claims(claims, _TYPES)
    except ClaimsError as e:
        raise VerificationError(str(e)) from None
    private = claims[EDGEGOV]
    restart = private.get(RESTART)  # rare (once per agent start): parsed here
    if restart is not None:
        ev = dataclasses.replace(ev, restart=_parse_restart(restart))
    if SELF_TESTS in private:  # only in the windows a self-test was due in
        ev = dataclasses.replace(ev, self_tests=parse_self_test_claim(private[SELF_TESTS]))
    return ev
