"""Pure-Python twin of ``native._verify``: the audit verifier's per-attestation hot path.

Four functions, with semantics the compiled twin must match on every input
(``tests/test_native_verify.py`` holds them to it):

``loads(data)``
    Decode one CBOR item exactly as ``cbor2.loads`` does: same value, same
    exception. The compiled twin decodes the plain subset attestations use
    (integers, strings, arrays, maps with integer or text keys, floats,
    false/true/null) itself and hands everything else -- tags, ``undefined``,
    malformed input -- to cbor2, so errors always come from cbor2. Callers
    check the structural limits (``agent.evidence.cbor_limits``) before calling it.

``consistency_error(size1, size2, root1, root2, proof)``
    RFC 9162 §2.1.4.2 verification of a consistency proof, with the extra
    rules the transparency-dev vectors encode (32-byte hashes, exact proof
    length, no proof from size 0). Returns ``None`` when tree 2 extends tree 1,
    otherwise the reason in words (``agent.evidence.merkle`` raises ``ProofError``).

``loads_claims(data)``
    ``loads`` for a CWT claims set that only ``claims_fields`` will read: the
    values it never reads (ueid 256, measurements 273, measurement results 274,
    and every submodule but ``agent``) are left out of the map once they have
    decoded (the compiled twin checks them without building them).

``sig_structure(protected, payload)``
    The bytes a COSE_Sign1 signature covers (RFC 9052 §4.4):
    ``["Signature1", protected, h'', payload]`` in the shortest CBOR encoding,
    the same bytes as ``cbor2.dumps``.

``split_sign1(raw)``
    ``(protected, payload, signature)`` when ``raw`` is exactly the profile's
    COSE_Sign1 envelope ``18([bstr, {}, bstr, bstr])`` in its one byte form
    (shortest heads, definite lengths, nothing after it), else ``None``
    (``agent.evidence.cose`` then rejects it, saying what is wrong).

``claims_fields(claims)``
    Check a verified claims set (a decoded CWT map) against the layout of
    ``docs/attestation-profile.md`` and return the fields of the objects
    ``agent.evidence.claims.parse_claims`` assembles: ``(evidence, checkpoint,
    config, rules, risk)``, dicts keyed by dataclass field name (``evidence``
    without its four nested objects; rule episodes as ``(start, end, peak)``).
    A layout problem raises :class:`ClaimsError` naming the claim. The compiled
    twin handles the exact types ``loads`` returns and hands anything else to
    this one, so every error is worded here.

``evidence_from_claims(claims, types)``
    ``claims_fields`` assembled into objects of ``types`` (a :class:`ClaimsTypes`):
    each is ``object.__new__(cls)`` with the field dict as its ``__dict__``, no
    ``__init__`` (the audit verifier builds eight per attestation; the classes
    are frozen dataclasses without ``__post_init__`` or slots, and
    ``tests/test_native_verify.py`` checks the result equals the constructor's).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import cbor2

__all__ = [
    "ClaimsError",
    "ClaimsFields",
    "ClaimsTypes",
    "claims_fields",
    "consistency_error",
    "evidence_from_claims",
    "loads",
    "loads_claims",
    "sig_structure",
    "split_sign1",
    "trim_claims",
]

_sha256 = hashlib.sha256

# (evidence, checkpoint, config, rules, risk): see claims_fields
ClaimsFields = tuple[
    dict[str, Any], dict[str, Any], dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]
]


def loads(data: bytes) -> Any:
    return cbor2.loads(data)


_UNREAD = (256, 273, 274)  # ueid, measurements, measurement results (RFC 9711 §4)


def trim_claims(claims: Any) -> Any:
    """``claims`` without the values ``claims_fields`` never reads (a copy; others as is)."""
    if type(claims) is not dict:
        return claims
    out = {k: v for k, v in claims.items() if not (type(k) is int and k in _UNREAD)}
    subs = out.get(266)
    if type(subs) is dict:
        out[266] = {k: v for k, v in subs.items() if type(k) is str and k == "agent"}
    return out


def loads_claims(data: bytes) -> Any:
    return trim_claims(loads(data))


def _bstr_head(n: int) -> bytes:
    """RFC 8949 §3.1 head of a byte string of length ``n`` (major type 2, shortest form)."""
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return b"\x58" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x5a" + n.to_bytes(4, "big")
    return b"\x5b" + n.to_bytes(8, "big")


_SIG1_HEAD = b"\x84\x6aSignature1"  # array(4), tstr "Signature1"


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return b"".join(
        (
            _SIG1_HEAD,
            _bstr_head(len(protected)),
            protected,
            b"\x40",
            _bstr_head(len(payload)),
            payload,
        )
    )


_MIN_LEN = (24, 0x100, 0x10000, 0x100000000)  # the shortest head for ai 24..27


def _bstr(raw: bytes, pos: int) -> tuple[bytes, int] | None:
    """The byte string whose head is at ``pos`` and the position after it, or None."""
    if pos >= len(raw) or raw[pos] >> 5 != 2:
        return None
    ai = raw[pos] & 0x1F
    pos += 1
    if ai < 24:
        n = ai
    elif ai <= 27:
        width = 1 << (ai - 24)
        if pos + width > len(raw):
            return None
        n = int.from_bytes(raw[pos : pos + width], "big")
        pos += width
        if n < _MIN_LEN[ai - 24]:  # not the shortest head: one byte form per message
            return None
    else:  # indefinite length (31) or reserved
        return None
    if n > len(raw) - pos:
        return None
    return raw[pos : pos + n], pos + n


def split_sign1(raw: bytes) -> tuple[bytes, bytes, bytes] | None:
    # tag 18 (0xd2), array(4) (0x84): RFC 9052 §4.2; an empty unprotected map is 0xa0
    if type(raw) is not bytes or raw[:2] != b"\xd2\x84":
        return None
    protected = _bstr(raw, 2)
    if protected is None or raw[protected[1] : protected[1] + 1] != b"\xa0":
        return None
    payload = _bstr(raw, protected[1] + 1)
    if payload is None:
        return None
    signature = _bstr(raw, payload[1])
    if signature is None or signature[1] != len(raw):
        return None
    return protected[0], payload[0], signature[0]


def _is_hash(h: object) -> bool:
    return isinstance(h, bytes) and len(h) == 32


def consistency_error(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> str | None:
    if not _is_hash(root1):
        return "old root must be a 32-byte SHA-256 hash"
    if not _is_hash(root2):
        return "new root must be a 32-byte SHA-256 hash"
    if size1 < 0 or size2 < size1:
        return f"tree shrank from {size1} to {size2} leaves"
    if size1 == size2:
        if proof:
            return "equal tree sizes need an empty consistency proof"
        if root1 != root2:
            return f"two different roots for the same tree size {size1}"
        return None
    if size1 == 0:
        return "no consistency proof exists from an empty tree"
    for p in proof:
        if not _is_hash(p):
            return "proof element must be a 32-byte SHA-256 hash"
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is a node of tree 2
        path.insert(0, root1)
    if not path:
        return "consistency proof is empty"
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return "consistency proof is too long"
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return "consistency proof is too short"
    if fr != root1:
        return "consistency proof does not reproduce the previous root"
    if sr != root2:
        return "consistency proof does not reproduce the new root"
    return None


# --- claims layout (docs/attestation-profile.md) ------------------------------------

# Claim labels, as agent.evidence.claims encodes them (it imports the profile from there).
IAT, CTI, NONCE, UPTIME, PROFILE, SUBMODS, BOOTCOUNT = 6, 7, 10, 261, 265, 266, 267
SWVERSION, MEASUREMENTS = 271, 273
CF_SHA256 = 65000
EDGEGOV = -70001
SEQ, PREV, CHECKPOINT, WINDOW, CONFIG, RULES, RISK, HEALTH, DEVICE, READINGS, DEGRADED = range(
    1, 12
)
EAT_PROFILE = "tag:edgegov.org,2026:eat-profile:v1"
# Ranges (docs/attestation-profile.md, *Claims*): integers within 64 bits, as every
# int64 reader (SQLite, JSON consumers in other languages) holds them; times from the
# epoch to the last millisecond ISO 8601 and Python's datetime can write.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_TIME_S = MAX_TIME_MS // 1000
_TUF_ROLES = ("root", "timestamp", "snapshot", "targets")


class ClaimsError(ValueError):
    """A verified claims set does not follow the profile (the message names the claim)."""


_MISSING: Any = object()


def _get(m: Mapping[Any, Any], key: Any, types: type | tuple[type, ...], where: str) -> Any:
    if key not in m:
        raise ClaimsError(f"claim {where} is missing")
    v = m[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in allowed):
        raise ClaimsError(f"claim {where} has type {type(v).__name__}")
    return v


def _int(m: Mapping[Any, Any], key: Any, where: str) -> int:
    v = m.get(key, _MISSING)
    return v if type(v) is int else _get(m, key, int, where)


def _str(m: Mapping[Any, Any], key: Any, where: str) -> str:
    v = m.get(key, _MISSING)
    return v if type(v) is str else _get(m, key, str, where)


def _bytes(m: Mapping[Any, Any], key: Any, where: str) -> bytes:
    v = m.get(key, _MISSING)
    return v if type(v) is bytes else _get(m, key, bytes, where)


def _map(m: Mapping[Any, Any], key: Any, where: str) -> Mapping[Any, Any]:
    v = m.get(key, _MISSING)
    return v if type(v) is dict else _get(m, key, Mapping, where)


def _seq(m: Mapping[Any, Any], key: Any, where: str) -> list[Any] | tuple[Any, ...]:
    v = m.get(key, _MISSING)
    t = type(v)
    return v if t is list or t is tuple else _get(m, key, (list, tuple), where)  # type: ignore[no-any-return]


def _uint(m: Mapping[Any, Any], key: Any, where: str) -> int:
    v = _int(m, key, where)
    if not 0 <= v <= INT_MAX:
        raise ClaimsError(f"claim {where} is {v}, outside 0..2^63-1")
    return v


def _is_time(v: Any, limit: int = MAX_TIME_MS) -> bool:
    return type(v) is int and 0 <= v <= limit


def _time(v: Any, where: str, *, null: bool = False) -> Any:
    """A time in ms (the profile's range), or None where ``null``."""
    if (v is None and null) or _is_time(v):
        return v
    raise ClaimsError(f"claim {where} must be a time in ms (0..{MAX_TIME_MS}), not {_show(v)}")


def _show(v: Any) -> str:
    """A claim value for a message: short, whatever a hostile device put there."""
    r = repr(v) if type(v) in (int, float, bool, type(None)) else type(v).__name__
    return r if len(r) <= 40 else r[:37] + "..."


def _score(v: Any) -> float | None:
    if v is None or (type(v) is float and 0.0 <= v <= 1.0):  # NaN fails both comparisons
        return v
    raise ClaimsError(f"claim -70001/7 score must be a float in [0, 1] or null, not {_show(v)}")


def _episodes(raw: Any) -> tuple[tuple[int, int | None, float | None], ...]:
    """Claim -70001/6 key 7: ``[* [start_ms, end_ms / null, peak / null]]``."""
    if not isinstance(raw, (list, tuple)):
        raise ClaimsError("claim -70001/6 episodes must be a list")
    out = []
    for e in raw:
        ok = (
            isinstance(e, (list, tuple))
            and len(e) == 3
            and _is_time(e[0])
            and (e[1] is None or _is_time(e[1]))
            and (e[2] is None or _is_number(e[2]))
        )
        if not ok:
            raise ClaimsError(
                "claim -70001/6 episode must be [start_ms, end_ms / null, peak / null] "
                f"(times 0..{MAX_TIME_MS}, a finite peak)"
            )
        out.append((e[0], e[1], None if e[2] is None else float(e[2])))
    return tuple(out)


def _is_number(v: Any) -> bool:
    """A finite float, or an integer within 64 bits (never a bool)."""
    t = type(v)
    return (t is float and math.isfinite(v)) or (t is int and INT_MIN <= v <= INT_MAX)


def _fleet_config(cfg: Mapping[Any, Any], out: dict[str, Any]) -> None:
    """-70001/5 keys 6-9 (TUF versions, target digests, a config change, state digest).

    None where absent.
    """
    out["tuf"] = out["targets"] = out["changed"] = None
    if 6 in cfg:
        v = _map(cfg, 6, "-70001/5 tuf versions")
        if (
            not all(type(k) is int for k in v)
            or sorted(v) != [1, 2, 3, 4]
            or not all(type(x) is int and 0 <= x <= INT_MAX for x in v.values())
        ):
            raise ClaimsError("claim -70001/5 key 6 must be {1..4: TUF version}")
        out["tuf"] = {r: v[i] for i, r in enumerate(_TUF_ROLES, 1)}
    if 7 in cfg:
        t = _map(cfg, 7, "-70001/5 targets")
        if not all(type(k) is str and type(d) is bytes and len(d) == 32 for k, d in t.items()):
            raise ClaimsError("claim -70001/5 key 7 must map target names to SHA-256")
        out["targets"] = {k: d.hex() for k, d in t.items()}
    if 8 in cfg:
        c = _seq(cfg, 8, "-70001/5 change")
        if len(c) != 2 or not (type(c[0]) is int and 0 <= c[0] <= INT_MAX and _is_time(c[1])):
            raise ClaimsError("claim -70001/5 key 8 must be [previous version, ms]")
        out["changed"] = (c[0], c[1])
    out["state_in"] = None
    if 9 in cfg:
        d = cfg[9]
        if type(d) is not bytes or len(d) != 32:
            raise ClaimsError("claim -70001/5 key 9 must be the 32-byte SHA-256 of the state")
        out["state_in"] = d.hex()


def _health_counters(h: Mapping[Any, Any]) -> dict[str, int]:
    out = {}
    for k, v in h.items():
        if k == "sources":
            continue
        if not (type(k) is str and type(v) is int and 0 <= v <= INT_MAX):
            raise ClaimsError(
                f"claim -70001/8 health: {_show(k)} must be a text key with a count (0..2^63-1)"
            )
        out[k] = v
    return out


def _health_sources(h: Mapping[Any, Any]) -> tuple[Mapping[str, Any], ...]:
    recs = h.get("sources", ())
    if not isinstance(recs, (list, tuple)) or not all(
        isinstance(r, Mapping) and isinstance(r.get("source"), str) for r in recs
    ):
        raise ClaimsError("claim -70001/8 health.sources must be a list of source records")
    for r in recs:
        bad = record_problem(r)
        if bad:
            raise ClaimsError(f"claim -70001/8 health.sources {_show(r['source'])}: {bad}")
    return tuple(recs)


_U32 = 2**32 - 1  # frame seq numbers (firmware_bridge/PROTOCOL.md)


def _pairs(v: Any, ok: Any) -> bool:
    return type(v) is list and all(
        type(p) is list and len(p) == 2 and ok(p[0]) and ok(p[1]) for p in v
    )


def _is_seq32(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _U32


def record_problem(r: Mapping[Any, Any]) -> str:
    """What is wrong with one source record of the health claim (``""``: nothing).

    The layout of ``docs/attestation-profile.md`` (*Health per source*): text for
    source, protocol and port, text or null for device, ``gaps`` as frame seq pairs,
    ``offline`` as [start_ms, end_ms] with start <= end, ``problems`` as text, every
    other key a counter (0..2^63-1).
    """
    for k, v in r.items():
        if type(k) is not str:
            return f"key {_show(k)} is not text"
        if k == "source" or k == "protocol" or k == "port":
            ok = type(v) is str
        elif k == "device":
            ok = v is None or type(v) is str
        elif k == "gaps":
            ok = _pairs(v, _is_seq32)
        elif k == "offline":
            ok = _pairs(v, _is_time) and all(a <= b for a, b in v)
        elif k == "problems":
            ok = type(v) is list and all(type(x) is str for x in v)
        else:  # a counter
            ok = type(v) is int and 0 <= v <= INT_MAX
        if not ok:
            return f"{k} has a value outside the profile ({_show(v)})"
    return ""


def _iat(claims: Mapping[Any, Any]) -> int:
    v = _int(claims, IAT, "iat (6)")
    if not _is_time(v, MAX_TIME_S):
        raise ClaimsError(f"claim iat (6) is {v}, outside 0..{MAX_TIME_S} s")
    return v


def _cti(claims: Mapping[Any, Any]) -> bytes:
    v = claims.get(CTI, _MISSING)
    if v is _MISSING:
        return b""
    if type(v) is not bytes or len(v) != 16:
        raise ClaimsError("claim cti (7) must be a 16-byte string")
    return v


def _digest_of(measurements: Any) -> str:
    for m in measurements:
        ok = isinstance(m, (list, tuple)) and len(m) == 2 and m[0] == CF_SHA256
        if ok and isinstance(m[1], bytes):
            return str(m[1].hex())
    return ""


def claims_fields(claims: Mapping[Any, Any]) -> ClaimsFields:
    """Check a verified claims set against the profile; return the fields of its objects."""
    if _str(claims, PROFILE, "eat_profile (265)") != EAT_PROFILE:
        raise ClaimsError(f"eat_profile is {claims[PROFILE]!r}, expected {EAT_PROFILE!r}")
    p = _map(claims, EDGEGOV, "edgegov (-70001)")
    cp = _map(p, CHECKPOINT, "-70001/3 checkpoint")
    win = _seq(p, WINDOW, "-70001/4 window")
    if len(win) != 2 or not all(_is_time(x) for x in win):
        raise ClaimsError(
            f"claim -70001/4 window must be [start_ms, end_ms], times 0..{MAX_TIME_MS}"
        )
    cfg = _map(p, CONFIG, "-70001/5 config")
    rules = []
    for r in _seq(p, RULES, "-70001/6 rules"):
        if not isinstance(r, Mapping):
            raise ClaimsError("claim -70001/6 rules must hold maps")
        rule_id = _str(r, 1, "-70001/6 rule id")
        evaluated = _uint(r, 2, "-70001/6 evaluated")
        violated = _uint(r, 3, "-70001/6 violated")
        errors = _uint(r, 4, "-70001/6 errors")
        first = _time(r.get(5), "-70001/6 first violation", null=True)
        last = _time(r.get(6), "-70001/6 last violation", null=True)
        eps = r.get(7, ())
        rules.append(
            {
                "rule_id": rule_id,
                "evaluated": evaluated,
                "violated": violated,
                "errors": errors,
                "first_violation_ms": first,
                "last_violation_ms": last,
                "episodes": _episodes(eps) if eps or type(eps) is not list else (),
            }
        )
    risk = []
    for r in _seq(p, RISK, "-70001/7 risk"):
        if not isinstance(r, Mapping):
            raise ClaimsError("claim -70001/7 risk must hold maps")
        model_id = _str(r, 1, "-70001/7 model id")
        score = _score(r.get(2))
        provider = _str(r, 3, "-70001/7 provider")
        reason = r.get(4, "")
        if type(reason) is not str:
            raise ClaimsError("claim -70001/7 reason must be text")
        ood = r.get(5)
        if ood is not None:
            if not isinstance(ood, list) or not all(isinstance(n, str) for n in ood):
                raise ClaimsError("claim -70001/7 out-of-distribution inputs must be a text list")
            ood = tuple(ood)
        risk.append(
            {
                "model_id": model_id,
                "score": score,
                "provider": provider,
                "reason": reason,
                "ood": ood,
            }
        )
    prev = p.get(PREV)
    if prev is not None and (not isinstance(prev, bytes) or len(prev) != 32):
        raise ClaimsError("claim -70001/2 prev must be a 32-byte SHA-256 or null")
    proof = tuple(_seq(cp, 5, "-70001/3 consistency proof"))
    for h in proof:
        if not isinstance(h, bytes) or len(h) != 32:
            raise ClaimsError("claim -70001/3 consistency proof must hold 32-byte hashes")
    root = _bytes(cp, 3, "-70001/3 root")
    if len(root) != 32:
        raise ClaimsError("claim -70001/3 root must be a 32-byte SHA-256")
    nonce = claims.get(NONCE)
    if nonce is not None and (not isinstance(nonce, bytes) or not 8 <= len(nonce) <= 64):
        raise ClaimsError("claim eat_nonce (10) must be 8 to 64 bytes")
    subs = _map(claims, SUBMODS, "submods (266)")
    agent = _map(subs, "agent", "submods agent")
    agent_ver = _seq(agent, SWVERSION, "submods agent swversion (271)")
    agent_meas = _seq(agent, MEASUREMENTS, "submods agent measurements (273)")
    device_id = _str(p, DEVICE, "-70001/9 device")
    seq = _uint(p, SEQ, "-70001/1 seq")
    readings = _uint(p, READINGS, "-70001/10 readings")
    checkpoint = {
        "origin": _str(cp, 1, "-70001/3 origin"),
        "size": _uint(cp, 2, "-70001/3 size"),
        "root": root,
        "prev_size": _uint(cp, 4, "-70001/3 prev_size"),
        "consistency": proof,
    }
    policy_id = _str(cfg, 1, "-70001/5 policy id")
    policy_version = _uint(cfg, 2, "-70001/5 policy version")
    policy_digest = _bytes(cfg, 3, "-70001/5 policy digest").hex()
    models = _map(cfg, 4, "-70001/5 models")
    if not all(type(k) is str and type(d) is bytes for k, d in models.items()):
        raise ClaimsError("claim -70001/5 models must map model ids to digests")
    config = {
        "policy_id": policy_id,
        "policy_version": policy_version,
        "policy_digest": policy_digest,
        "model_digests": {k: v.hex() for k, v in models.items()},
        "config_version": _uint(cfg, 5, "-70001/5 config version") if 5 in cfg else 0,
    }
    _fleet_config(cfg, config)
    health = _map(p, HEALTH, "-70001/8 health")
    counters = _health_counters(health)
    sources = _health_sources(health)
    degraded = p.get(DEGRADED, ())
    if not isinstance(degraded, (list, tuple)) or not all(type(d) is str for d in degraded):
        raise ClaimsError("claim -70001/11 degraded must be a list of text")
    evidence = {
        "device_id": device_id,
        "seq": seq,
        "prev": prev,
        "window_start_ms": win[0],
        "window_end_ms": win[1],
        "readings": readings,
        "health": counters,
        "source_health": sources,
        "degraded": tuple(degraded),
        "issued_at": _iat(claims),
        "cti": _cti(claims),
        "uptime_s": _uint(claims, UPTIME, "uptime (261)") if UPTIME in claims else 0,
        "bootcount": _uint(claims, BOOTCOUNT, "bootcount (267)"),
        "nonce": nonce,
        "agent_version": str(agent_ver[0]) if agent_ver else "",
        "agent_digest": _digest_of(agent_meas),
        "sensors": {},
        "extra": {},
        "restart": None,  # -70001/12: agent.evidence.claims.parse_claims reads it
        "self_tests": (),  # -70001/13: agent.evidence.claims.parse_claims reads it
    }
    return evidence, checkpoint, config, rules, risk


class ClaimsTypes(NamedTuple):
    """The classes :func:`evidence_from_claims` builds (``agent.evidence.claims``'s)."""

    evidence: type
    checkpoint: type
    config: type
    rule: type
    risk: type
    episode: type


def _instance(cls: type, fields: dict[str, Any]) -> Any:
    obj: Any = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def evidence_from_claims(claims: Mapping[Any, Any], types: ClaimsTypes) -> Any:
    ev, cp, cfg, rules, risk = claims_fields(claims)
    for r in rules:
        if r["episodes"]:
            r["episodes"] = tuple(
                _instance(types.episode, {"start_ms": a, "end_ms": b, "peak": c})
                for a, b, c in r["episodes"]
            )
    ev["checkpoint"] = _instance(types.checkpoint, cp)
    ev["config"] = _instance(types.config, cfg)
    ev["rules"] = tuple(_instance(types.rule, r) for r in rules)
    ev["risk"] = tuple(_instance(types.risk, r) for r in risk)
    return _instance(types.evidence, ev)
