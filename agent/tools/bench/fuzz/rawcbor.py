"""CBOR written by hand, for the shapes a hostile device can send and cbor2 will not write.

``encode`` writes ordinary values as ``cbor2.dumps(..., canonical=True)`` does (so an
unmutated claims set comes out byte for byte as the agent signed it) and these markers
as they say: :class:`Raw` (bytes already encoded), :class:`Map` (entries in the given
order, duplicates allowed, optionally a wider length head), :class:`Int` (an integer
head wider than RFC 8949 §4.2.1 allows) and :class:`Float` (a float wider than needed).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

import cbor2

__all__ = ["Float", "Int", "Map", "Raw", "encode", "head"]

_WIDTH_INFO = {1: 24, 2: 25, 4: 26, 8: 27}


def head(major: int, value: int, width: int | None = None) -> bytes:
    """A CBOR head (RFC 8949 §3): shortest form, or ``width`` bytes of argument (0: inline)."""
    if width is None:
        width = 0 if value < 24 else next(w for w in (1, 2, 4, 8) if value < 1 << 8 * w)
    if width == 0:
        return bytes([major << 5 | value])
    return bytes([major << 5 | _WIDTH_INFO[width]]) + value.to_bytes(width, "big")


class Raw(NamedTuple):
    """An item already encoded: written as is."""

    data: bytes


class Map(NamedTuple):
    """A map written with its entries in this order (duplicates kept), head ``width`` wide."""

    items: tuple[tuple[Any, Any], ...]
    width: int | None = None


class Int(NamedTuple):
    """An integer with a head ``width`` bytes wide (1, 2, 4 or 8)."""

    value: int
    width: int


class Float(NamedTuple):
    """A float written in ``width`` bytes (2, 4 or 8) whatever its shortest form."""

    value: float
    width: int


_FLOAT = {2: (b"\xf9", ">e"), 4: (b"\xfa", ">f"), 8: (b"\xfb", ">d")}


def encode(obj: Any) -> bytes:
    """``obj`` as CBOR: canonical for plain values, the markers as they say."""
    if isinstance(obj, Raw):
        return obj.data
    if isinstance(obj, Map):
        body = b"".join(encode(k) + encode(v) for k, v in obj.items)
        return head(5, len(obj.items), obj.width) + body
    if isinstance(obj, Int):
        if obj.value >= 0:
            return head(0, obj.value, obj.width)
        return head(1, -1 - obj.value, obj.width)
    if isinstance(obj, Float):
        prefix, fmt = _FLOAT[obj.width]
        return prefix + struct.pack(fmt, obj.value)
    if isinstance(obj, Mapping):
        # cbor2's canonical order (RFC 7049 §3.9: shorter key first, then bytewise)
        pairs = sorted(((encode(k), encode(v)) for k, v in obj.items()), key=_key_order)
        return head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    if isinstance(obj, (list, tuple)):
        return head(4, len(obj)) + b"".join(encode(x) for x in obj)
    return cbor2.dumps(obj, canonical=True)


def _key_order(pair: tuple[bytes, bytes]) -> tuple[int, bytes]:
    return len(pair[0]), pair[0]
