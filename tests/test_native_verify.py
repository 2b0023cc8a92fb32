"""native.verify: the compiled and pure twins agree, and the parse fast paths change nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
import os
import subprocess
import sys
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import VerificationError
from agent.evidence.cbor_limits import check_cbor
from agent.evidence.claims import (
    Checkpoint,
    ConfigInForce,
    Evidence,
    RiskResult,
    RuleEpisode,
    RuleResult,
    _build,
    encode_claims,
    parse_claims,
)
from agent.evidence.cose import sig_structure
from agent.evidence.merkle import CompactRange, RangeHasher, leaf_hash

IMPLS = ["native._verify_py", "native._verify"]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Any:
    return importlib.import_module(request.param)


def _same(a: Any, b: Any, _seen: set[tuple[int, int]] | None = None) -> bool:
    """Equal values of the same types (NaN equal to NaN; cbor2's shared references, tags
    28/29, may make a container hold itself: a pair already being compared is equal)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, dict)):
        seen = set() if _seen is None else _seen
        if (id(a), id(b)) in seen:
            return True
        seen.add((id(a), id(b)))
        if isinstance(a, list):
            return len(a) == len(b) and all(_same(x, y, seen) for x, y in zip(a, b))
        return list(a) == list(b) and all(_same(a[k], b[k], seen) for k in a)
    return bool(a == b)


def _outcome(f: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", f(data)
    except Exception as e:  # the exception type and text are what must agree
        return type(e).__name__, str(e)


_scalars = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.floats()
    | st.booleans()
    | st.none()
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-300, 300) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_values, st.booleans())
def test_compiled_loads_decodes_as_cbor2_does(value, canonical):
    data = cbor2.dumps(value, canonical=canonical)
    c = importlib.import_module("native._verify").loads
    assert _same(c(data), cbor2.loads(data))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_compiled_and_pure_loads_agree_on_arbitrary_bytes(data):
    c = importlib.import_module("native._verify").loads
    p = importlib.import_module("native._verify_py").loads
    (kc, vc), (kp, vp) = _outcome(c, data), _outcome(p, data)
    assert kc == kp
    assert _same(vc, vp) if kc == "ok" else vc == vp


def test_loads_hands_tags_undefined_and_bad_utf8_to_cbor2(impl):
    tagged = cbor2.dumps(cbor2.CBORTag(18, [1, [2]]))
    assert impl.loads(tagged) == cbor2.CBORTag(18, (1, (2,)))  # cbor2 6: tuples under tags
    assert impl.loads(b"\xf7") is cbor2.undefined
    with pytest.raises(cbor2.CBORDecodeError):
        impl.loads(b"\x62\xff\xfe")
    assert impl.loads(b"\xa1\x81\x01\x02") == {(1,): 2}  # cbor2 makes container keys immutable


def _log(size1: int, size2: int) -> tuple[bytes, bytes, list[bytes]]:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size2)]
    old = CompactRange()
    old.extend(leaves[:size1])
    rh = RangeHasher(old, leaves[size1:])
    new = old.copy()
    new.extend(leaves[size1:])
    return old.root(), new.root(), rh.consistency_proof()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(0, 300), st.data())
def test_consistency_twins_agree_on_valid_and_tampered_proofs(size1, grow, data):
    c = importlib.import_module("native._verify").consistency_error
    p = importlib.import_module("native._verify_py").consistency_error
    r1, r2, proof = _log(size1, size1 + grow)
    assert c(size1, size1 + grow, r1, r2, proof) is None
    assert p(size1, size1 + grow, r1, r2, proof) is None
    mutation = data.draw(st.sampled_from(["flip", "drop", "extra", "size1", "size2", "swap"]))
    s1, s2, q, a, b = size1, size1 + grow, list(proof), r1, r2
    if mutation == "flip" and q:
        i = data.draw(st.integers(0, len(q) - 1))
        q[i] = bytes([q[i][0] ^ 1]) + q[i][1:]
    elif mutation == "drop" and q:
        q.pop(data.draw(st.integers(0, len(q) - 1)))
    elif mutation == "extra":
        q.append(hashlib.sha256(b"x").digest())
    elif mutation == "size1":
        s1 = data.draw(st.integers(-2, s2 + 2))
    elif mutation == "size2":
        s2 = data.draw(st.integers(-2, 2**64))
    else:
        a, b = b, a
    assert c(s1, s2, a, b, q) == p(s1, s2, a, b, q)


@pytest.mark.parametrize(
    "args",
    [
        (1, 2, b"x" * 31, b"y" * 32, []),
        (1, 2, b"x" * 32, b"y" * 32, [b"z" * 31]),
        (1, 2, b"x" * 32, b"y" * 32, [bytearray(32)]),
        (2, 2, b"x" * 32, b"x" * 32, [b"z" * 32]),
        (3, 3, b"x" * 32, b"y" * 32, []),
        (3, 2, b"x" * 32, b"y" * 32, []),
        (0, 5, b"x" * 32, b"y" * 32, []),
        (3, 5, b"x" * 32, b"y" * 32, []),
        (2**70, 2**71, b"x" * 32, b"y" * 32, [b"z" * 32]),
    ],
)
def test_consistency_rejections_are_worded_alike(args):
    c = importlib.import_module("native._verify").consistency_error
    p = importlib.import_module("native._verify_py").consistency_error
    assert p(*args) is not None
    assert c(*args) == p(*args)


def test_edgegov_pure_forces_the_pure_verifier():
    code = "import native.verify as v; print(v.IMPLEMENTATION, v.loads.__module__)"
    env = {k: v for k, v in os.environ.items() if k != "EDGEGOV_PURE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "EDGEGOV_PURE": "1"})  # fmt: skip
    assert out.stdout.split() == ["python", "native._verify_py"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["cython", "native._verify"]


@pytest.mark.parametrize("lengths", [(0, 0), (5, 23), (24, 255), (256, 65535), (65536, 1)])
def test_hand_encoded_sig_structure_is_cbor2s(lengths):
    prot, pay = b"p" * lengths[0], b"q" * lengths[1]
    assert sig_structure(prot, pay) == cbor2.dumps(["Signature1", prot, b"", pay])


@pytest.mark.parametrize("cls", [Evidence, Checkpoint, ConfigInForce, RuleResult, RiskResult])
def test_fast_build_matches_the_dataclass_constructor(cls):
    # _build skips __init__: it is only sound while none of these classes has
    # __post_init__ or slots, and while the parser passes every field.
    assert "__post_init__" not in vars(cls) and not hasattr(cls, "__slots__")
    ev = _evidence()
    sample = {
        Evidence: ev,
        Checkpoint: ev.checkpoint,
        ConfigInForce: ev.config,
        RuleResult: ev.rules[0],
        RiskResult: ev.risk[0],
    }[cls]
    fields = {f.name: getattr(sample, f.name) for f in dataclasses.fields(cls)}
    built = _build(cls, fields)
    assert built == cls(**fields)
    required = {f.name: fields[f.name] for f in dataclasses.fields(cls)
                if f.default is f.default_factory is dataclasses.MISSING}  # fmt: skip
    assert _build(cls, required) == cls(**required)  # defaults filled in as __init__ does
    with pytest.raises(TypeError):
        _build(cls, {k: v for k, v in list(required.items())[1:]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.__setattr__(dataclasses.fields(cls)[0].name, None)


def test_parsed_evidence_round_trips_through_the_claims_encoder():
    ev = _evidence()
    back = parse_claims(cbor2.loads(encode_claims(ev)))
    assert back == dataclasses.replace(ev, sensors={})  # sensors are not parsed back


def _evidence() -> Evidence:
    from agent.tools.bench.evidence import _evidence as bench_evidence

    ev = bench_evidence()
    assert isinstance(ev, Evidence)
    return dataclasses.replace(
        ev,
        rules=(*ev.rules, RuleResult("r-ep", 5, 2, 1, 10, 20, ())),
        degraded=("model refused",),
        nonce=b"n" * 8,
    )


# --- claims layout, envelope split, claims decoding: compiled vs pure -----------------

_TYPES = (Evidence, Checkpoint, ConfigInForce, RuleResult, RiskResult, RuleEpisode)


def _rich_evidence() -> Evidence:
    """Every optional part present: episodes, fleet config, nonce, source records."""
    ev = _evidence()
    return dataclasses.replace(
        ev,
        rules=(
            *ev.rules,
            RuleResult(
                "r-open", 9, 3, 0, 1, 2, (RuleEpisode(1, 5, 2.5), RuleEpisode(7, None, None))
            ),
        ),
        config=dataclasses.replace(
            ev.config,
            config_version=4,
            tuf={"root": 1, "timestamp": 9, "snapshot": 8, "targets": 7},
            targets={"policy.bundle": "ab" * 32},
            changed=(3, 1_700_000_000_000),
        ),
        source_health=({"source": "s0", "problems": ["gap"]},),
        health={"frames_ok": 5, "crc_errors": 1},
    )


def _claims_outcome(impl: Any, claims: Any) -> tuple[str, Any]:
    from native._verify_py import ClaimsTypes

    try:
        return "ok", impl.evidence_from_claims(claims, ClaimsTypes(*_TYPES))
    except Exception as e:  # the exception type and text are what must agree
        return type(e).__name__, str(e)


_leaf_values = (
    st.none()
    | st.booleans()
    | st.integers(-3, 70_000)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(max_size=40)
    | st.sampled_from([b"\x00" * 32, b"n" * 8])
    | st.lists(st.integers(0, 3), max_size=3)
    | st.dictionaries(st.integers(1, 4), st.integers(0, 3))
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=600, deadline=None)
@given(st.booleans(), st.data())
def test_claims_twins_agree_on_valid_and_tampered_claims(rich, data):
    ev = _rich_evidence() if rich else _evidence()
    claims = cbor2.loads(encode_claims(ev))
    c = importlib.import_module("native._verify")
    p = importlib.import_module("native._verify_py")
    ok_c, ok_p = _claims_outcome(c, claims), _claims_outcome(p, claims)
    assert ok_c == ok_p and ok_c[0] == "ok"
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(claims)))
        parent = claims
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_leaf_values)
    out_c, out_p = _claims_outcome(c, claims), _claims_outcome(p, claims)
    assert out_c == out_p
    if out_c[0] not in ("ok", "ClaimsError"):  # the verifier must only ever see our errors
        pytest.fail(f"untrusted claims raised {out_c}")


@pytest.mark.parametrize("rich", [False, True])
def test_parsed_objects_hold_exactly_their_fields(impl, rich):
    from native._verify_py import ClaimsTypes

    ev = _rich_evidence() if rich else _evidence()
    back = impl.evidence_from_claims(cbor2.loads(encode_claims(ev)), ClaimsTypes(*_TYPES))
    assert back == dataclasses.replace(ev, sensors={})
    objs = [back, back.checkpoint, back.config, *back.rules, *back.risk]
    objs += [e for r in back.rules for e in r.episodes]
    for o in objs:
        assert sorted(vars(o)) == sorted(f.name for f in dataclasses.fields(o))
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.seq = 1


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (11, 5, "claim -70001/11 degraded must be a list of text"),
        (11, ["ok", 3], "claim -70001/11 degraded must be a list of text"),
        (5, {4: {"m": 7}}, "claim -70001/5 models must map model ids to digests"),
        (5, {4: {1: b"x" * 32}}, "claim -70001/5 models must map model ids to digests"),
    ],
)
def test_malformed_degraded_and_models_are_findings_not_crashes(where, value, message):
    claims = cbor2.loads(encode_claims(_evidence()))
    if where == 5:
        claims[-70001][5].update(value)
    else:
        claims[-70001][where] = value
    with pytest.raises(VerificationError, match=message):
        parse_claims(claims)


def _sign1_mutants(raw: bytes, data: Any) -> bytes:
    kind = data.draw(st.sampled_from(["byte", "cut", "extend", "none"]))
    if kind == "byte":
        i = data.draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1 :]
    if kind == "cut":
        return raw[: data.draw(st.integers(0, len(raw)))]
    if kind == "extend":
        return raw + data.draw(st.binary(min_size=1, max_size=3))
    return raw


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_split_sign1_twins_agree_and_match_cbor2(data):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from agent.evidence.cose import encode_sign1
    from agent.identity.keys import Signer

    signer = Signer(ed25519.Ed25519PrivateKey.from_private_bytes(b"k" * 32))
    payload = data.draw(st.binary(max_size=300))
    raw = _sign1_mutants(encode_sign1(payload, signer), data)
    c = importlib.import_module("native._verify").split_sign1
    p = importlib.import_module("native._verify_py").split_sign1
    got = c(raw)
    assert got == p(raw)
    if got is not None:  # the shortcut only takes what the full decoder reads the same way
        check_cbor(raw, "COSE_Sign1", max_depth=4, max_items=64)
        obj = cbor2.loads(raw)
        assert obj.tag == 18 and obj.value[1] == {}
        assert got == (obj.value[0], obj.value[2], obj.value[3])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=60))
def test_split_sign1_twins_agree_on_arbitrary_bytes(data):
    c = importlib.import_module("native._verify").split_sign1
    p = importlib.import_module("native._verify_py").split_sign1
    assert c(b"\xd2\x84" + data) == p(b"\xd2\x84" + data)
    assert c(data) == p(data)


@pytest.mark.parametrize("lengths", [(0, 0), (23, 24), (24, 255), (256, 65535), (65536, 1)])
def test_sig_structure_twins_are_cbor2s(impl, lengths):
    prot, pay = b"p" * lengths[0], b"q" * lengths[1]
    assert impl.sig_structure(prot, pay) == cbor2.dumps(["Signature1", prot, b"", pay])


_claims_like = st.dictionaries(
    st.sampled_from([6, 7, 256, 265, 266, 273, 274, -70001, "x"]),
    _values
    | st.dictionaries(st.sampled_from(["agent", "policy", "model:m", 1]), _values, max_size=4),
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(_claims_like, st.booleans())
def test_loads_claims_twins_agree_and_only_drop_unread_claims(claims, canonical):
    data = cbor2.dumps(claims, canonical=canonical)
    c = importlib.import_module("native._verify")
    p = importlib.import_module("native._verify_py")
    got = c.loads_claims(data)
    assert _same(got, p.loads_claims(data))
    assert _same(got, p.trim_claims(cbor2.loads(data)))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_loads_claims_twins_agree_on_arbitrary_bytes(data):
    c = importlib.import_module("native._verify")
    p = importlib.import_module("native._verify_py")
    (kc, vc), (kp, vp) = _outcome(c.loads_claims, data), _outcome(p.loads_claims, data)
    assert kc == kp
    assert _same(vc, vp) if kc == "ok" else vc == vp


def test_short_text_cache_survives_collisions():
    c = importlib.import_module("native._verify")
    words = [f"w{i}" for i in range(2000)] + ["", "é", "a" * 64, "b" * 65]
    data = cbor2.dumps(words * 2)
    assert c.loads(data) == words * 2


def test_merkle_nodes_are_hashed_by_libcrypto_or_hashlib_alike():
    c = importlib.import_module("native._verify")
    assert c._node_backend() in ("libcrypto", "hashlib")
    r1, r2, proof = _log(250, 300)
    assert c.consistency_error(250, 300, r1, r2, proof) is None


def test_protected_header_cache_keeps_rejecting_bad_headers():
    from agent.evidence.cose import decode_sign1

    bad = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), {}, b"p", b"s" * 64]))
    for _ in range(2):
        with pytest.raises(VerificationError, match="kid missing"):
            decode_sign1(bad)
    good = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8, 4: b"k" * 16}), {}, b"p", b"s" * 64]))
    assert decode_sign1(good) == decode_sign1(good)
    assert decode_sign1(good).kid == b"k" * 16 and decode_sign1(good).alg == -8


@pytest.mark.parametrize("rich", [False, True])
def test_claims_fields_twins_return_the_same_field_dicts(rich):
    ev = _rich_evidence() if rich else _evidence()
    claims = cbor2.loads(encode_claims(ev))
    c = importlib.import_module("native._verify").claims_fields(claims)
    p = importlib.import_module("native._verify_py").claims_fields(claims)
    assert c == p
    assert sorted(c[0]) == sorted(
        f.name for f in dataclasses.fields(Evidence)
        if f.name not in ("checkpoint", "config", "rules", "risk")
    )  # fmt: skip


# --- -70001/12 restart: the first attestation of an agent process ---------------------


def test_restart_claim_round_trips_and_is_absent_otherwise():
    from agent.evidence.claims import Restart, SourceDowntime

    ev = _evidence()
    assert parse_claims(cbor2.loads(encode_claims(ev))).restart is None
    r = Restart(
        started_ms=1_700_000_009_000,
        last_end_ms=1_700_000_004_000,
        clean=False,
        sources=(SourceDowntime("cold-room", 5_000, 41), SourceDowntime("rs485", 5_200)),
        recovered_readings=12,
        unrecorded_readings=None,
        new_log="evidence store missing",
        previous_log="unknown",
    )
    back = parse_claims(cbor2.loads(encode_claims(dataclasses.replace(ev, restart=r))))
    assert back.restart == r
    assert r.down_ms == 5_000
    assert dataclasses.replace(r, last_end_ms=None).down_ms == 0


@pytest.mark.parametrize(
    ("claim", "what"),
    [
        ("x", "must be a map"),
        ({1: -1, 3: True}, "started_ms"),
        ({1: 5, 2: "x", 3: True}, "last_end_ms"),
        ({1: 5, 3: 1}, "clean"),
        ({1: 5, 3: True, 4: [{"source": "s"}]}, "sources"),
        ({1: 5, 3: True, 6: -2}, "unrecorded"),
        ({1: 5, 3: True, 7: 3}, "new_log"),
    ],
)
def test_a_malformed_restart_claim_is_named(claim, what):
    from agent.evidence.claims import EDGEGOV, RESTART

    claims = cbor2.loads(encode_claims(_evidence()))
    claims[EDGEGOV][RESTART] = claim
    with pytest.raises(VerificationError, match=rf"claim -70001/12 restart: .*{what}"):
        parse_claims(claims)
