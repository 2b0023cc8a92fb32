"""Claims-set mutations: what a buggy or hostile device could sign.

Each entry of :data:`CLAIMS_MUTATIONS` takes the decoded genuine claims set (a fresh copy)
and returns what to encode with :func:`agent.tools.bench.fuzz.rawcbor.encode`. ``in_profile``
says whether the profile (docs/attestation-profile.md; RFC 8949 §4.2.1 core deterministic
encoding; scores finite in [0, 1], sane times, 64-bit integers) allows the result: a
re-signed payload that is out of profile must be a finding, one in profile may pass.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NamedTuple

from agent.evidence.claims import EDGEGOV
from agent.tools.bench.fuzz.rawcbor import Float, Int, Map, Raw, head

__all__ = ["CLAIMS_MUTATIONS", "ClaimsMutation"]

_IAT, _CTI, _UPTIME, _BOOTCOUNT = 6, 7, 261, 267
_SEQ, _WINDOW, _RULES, _RISK, _HEALTH, _DEVICE, _READINGS = 1, 4, 6, 7, 8, 9, 10

_Claims = dict[Any, Any]


class ClaimsMutation(NamedTuple):
    name: str
    in_profile: bool
    apply: Callable[[_Claims, random.Random], Any]


def _ours(c: _Claims) -> _Claims:
    ours: _Claims = c[EDGEGOV]
    return ours


def _set(path: tuple[Any, ...], value: Any) -> Callable[[_Claims, random.Random], Any]:
    """Set the claim at ``path`` (below -70001) to ``value``; return the whole claims set."""

    def apply(c: _Claims, rng: random.Random) -> Any:
        node: Any = _ours(c)
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return c

    return apply


def _top(key: int, value: Any) -> Callable[[_Claims, random.Random], Any]:
    def apply(c: _Claims, rng: random.Random) -> Any:
        c[key] = value(c[key]) if callable(value) else value
        return c

    return apply


def _duplicate(where: str) -> Callable[[_Claims, random.Random], Any]:
    """A map with a key twice (the second with another value: last-wins would take it)."""

    def apply(c: _Claims, rng: random.Random) -> Any:
        if where == "top":
            return Map((*c.items(), (_IAT, c[_IAT] + 3600)))
        ours = _ours(c)
        if where == "seq":
            c[EDGEGOV] = Map((*ours.items(), (_SEQ, ours[_SEQ] + 1)))
        else:  # a risk record with two scores
            rec = ours[_RISK][0]
            ours[_RISK][0] = Map((*rec.items(), (2, 0.9)))
        return c

    return apply


def _unsorted(c: _Claims, rng: random.Random) -> Any:
    return Map(tuple(reversed(list(c.items()))))


def _unsorted_ours(c: _Claims, rng: random.Random) -> Any:
    c[EDGEGOV] = Map(tuple(reversed(list(_ours(c).items()))))
    return c


def _wide_map_head(c: _Claims, rng: random.Random) -> Any:
    return Map(tuple(c.items()), width=1)  # decoded in the signed (canonical) order


def _bad_utf8(n: int = 2) -> Raw:
    return Raw(head(3, n) + b"\xff\xfe"[:n])


def _source(field: str, value: Any) -> Callable[[_Claims, random.Random], Any]:
    def apply(c: _Claims, rng: random.Random) -> Any:
        _ours(c)[_HEALTH]["sources"][0][field] = value
        return c

    return apply


def _sources(value: Any) -> Callable[[_Claims, random.Random], Any]:
    def apply(c: _Claims, rng: random.Random) -> Any:
        _ours(c)[_HEALTH]["sources"] = value
        return c

    return apply


def _episodes(value: Any) -> Callable[[_Claims, random.Random], Any]:
    return _set((_RULES, 0, 7), value)


def _cyclic() -> Raw:
    """A list containing itself (value sharing, tags 28/29): cbor2 decodes it as such."""
    return Raw(b"\xd8\x1c\x81\xd8\x1d\x00")


def _bignum(n: int) -> Raw:
    data = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return Raw(b"\xc2" + head(2, len(data)) + data)


_M = ClaimsMutation
CLAIMS_MUTATIONS: tuple[ClaimsMutation, ...] = (
    # in profile: a hostile device may sign these, and the chain or nothing says more
    _M("score-0.5", True, _set((_RISK, 0, 2), 0.5)),
    _M("score-0", True, _set((_RISK, 0, 2), 0.0)),
    _M("cti-other", True, _top(_CTI, lambda v: bytes(16))),
    _M("uptime-plus-1", True, _top(_UPTIME, lambda v: v + 1)),
    # risk scores: finite numbers in [0, 1] only
    _M("score-text", False, _set((_RISK, 0, 2), "0.1")),
    _M("score-list", False, _set((_RISK, 0, 2), [0.1])),
    _M("score-map", False, _set((_RISK, 0, 2), {1: 2})),
    _M("score-cyclic", False, _set((_RISK, 0, 2), _cyclic())),
    _M("score-nan", False, _set((_RISK, 0, 2), float("nan"))),
    _M("score-inf", False, _set((_RISK, 0, 2), float("inf"))),
    _M("score-minus-inf", False, _set((_RISK, 0, 2), float("-inf"))),
    _M("score-true", False, _set((_RISK, 0, 2), True)),
    _M("score-2**70", False, _set((_RISK, 0, 2), 2**70)),
    _M("score-minus-1", False, _set((_RISK, 0, 2), -1)),
    _M("score-1.5", False, _set((_RISK, 0, 2), 1.5)),
    _M("score-bytes", False, _set((_RISK, 0, 2), b"\x00")),
    # times
    _M("window-end-2**64-1", False, _set((_WINDOW, 1), 2**64 - 1)),
    _M("window-start-2**64-1", False, _set((_WINDOW, 0), 2**64 - 1)),
    _M("window-start-minus-2**63", False, _set((_WINDOW, 0), -(2**63))),
    _M("window-both-2**64-1", False, _set((_WINDOW,), [2**64 - 1, 2**64 - 1])),
    _M("window-both-minus-2**63", False, _set((_WINDOW,), [-(2**63), -(2**63) + 1000])),
    _M("window-float", False, _set((_WINDOW, 1), 1.5e12)),
    _M("window-three-items", False, _set((_WINDOW,), lambda w: [*w, w[1]])),
    _M("iat-2**64-1", False, _top(_IAT, 2**64 - 1)),
    _M("iat-2**63", False, _top(_IAT, 2**63)),
    _M("iat-bignum", False, _top(_IAT, 2**70)),
    _M("iat-minus-2**63", False, _top(_IAT, -(2**63))),
    # integers: 64 bits at most, shortest heads (RFC 8949 §4.2.1)
    _M("seq-8-byte-head", False, _set((_SEQ,), lambda v: Int(v, 8))),
    _M("seq-1-byte-head", False, _set((_SEQ,), lambda v: Int(v, 1))),
    _M("seq-bignum", False, _set((_SEQ,), _bignum)),
    _M("seq-2**64", False, _set((_SEQ,), 2**64)),
    _M("readings-4-byte-head", False, _set((_READINGS,), lambda v: Int(v, 4))),
    _M("bootcount-2-byte-head", False, _top(_BOOTCOUNT, lambda v: Int(v, 2))),
    _M("iat-8-byte-head", False, _top(_IAT, lambda v: Int(v, 8))),
    _M("map-head-wide", False, _wide_map_head),
    # floats: the shortest form that keeps the value
    _M("score-0.5-as-f64", False, _set((_RISK, 0, 2), Float(0.5, 8))),
    _M("score-0.5-as-f32", False, _set((_RISK, 0, 2), Float(0.5, 4))),
    _M(
        "peak-as-f64-wider",
        False,
        _episodes(lambda e: [[*(e[0][:2] if e else (0, 10)), Float(1.5, 8)]]),
    ),
    # maps: each key once, in order
    _M("duplicate-iat", False, _duplicate("top")),
    _M("duplicate-seq", False, _duplicate("seq")),
    _M("duplicate-score", False, _duplicate("risk")),
    _M("unsorted-claims", False, _unsorted),
    _M("unsorted-edgegov", False, _unsorted_ours),
    # counters: non-negative
    _M("health-counter-minus-1", False, _set((_HEALTH, "frames_ok"), -1)),
    _M("health-counter-2**64", False, _set((_HEALTH, "crc_errors"), 2**64)),
    _M("rule-evaluated-minus-1", False, _set((_RULES, 0, 2), -1)),
    _M("rule-violated-minus-1", False, _set((_RULES, 0, 3), -1)),
    _M("readings-minus-1", False, _set((_READINGS,), -1)),
    _M("bootcount-minus-1", False, _top(_BOOTCOUNT, -1)),
    _M("source-counter-minus-1", False, _source("frames_ok", -1)),
    _M("source-offline-ms-text", False, _source("offline_ms", "200")),
    # per-source health records of the wrong shape
    _M("source-gaps-int", False, _source("gaps", 5)),
    _M("source-gaps-text", False, _source("gaps", "1-3")),
    _M("source-offline-int", False, _source("offline", 7)),
    _M("source-offline-strings", False, _source("offline", [["a", "b"]])),
    _M("source-offline-one-item", False, _source("offline", [[1]])),
    _M("source-offline-huge", False, _source("offline", [[0, 2**64 - 1]])),
    _M("source-problems-int", False, _source("problems", 3)),
    _M("source-device-int", False, _source("device", 12)),
    _M("sources-map", False, _sources({"source": "0"})),
    _M("sources-record-list", False, _sources([["source", "0"]])),
    _M("sources-name-int", False, _sources([{"source": 0}])),
    # rule episodes with junk
    _M("episodes-text", False, _episodes("junk")),
    _M("episodes-strings", False, _episodes([["x", None, None]])),
    _M("episodes-one-item", False, _episodes([[1]])),
    _M("episodes-huge", False, _episodes([[2**64 - 1, 0, 1.0]])),
    _M("episodes-nan-peak", False, _episodes([[0, 10, float("nan")]])),
    _M("episodes-inf-peak", False, _episodes([[0, 10, float("inf")]])),
    _M("episodes-map", False, _episodes([{1: 2}])),
    # text claims that are not UTF-8
    _M("device-bad-utf8", False, _set((_DEVICE,), _bad_utf8())),
    _M("rule-id-bad-utf8", False, _set((_RULES, 0, 1), _bad_utf8())),
    _M("model-id-bad-utf8", False, _set((_RISK, 0, 1), _bad_utf8(1))),
    _M("source-name-bad-utf8", False, _source("source", _bad_utf8())),
    _M("profile-bad-utf8", False, _top(265, _bad_utf8())),
)
