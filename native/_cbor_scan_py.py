"""Pure-Python twin of ``native._cbor_scan``: walk CBOR bytes without decoding them.

``scan(data, max_depth, max_items, strict=False)`` returns ``(code, position)``;
code 0 means one well-formed, definite-length item within the limits that fills
``data`` exactly. Other codes are listed in ``MESSAGES`` (``agent.evidence.cbor_limits``
turns them into errors). RFC 8949 §3: the initial byte holds the major type (3
bits) and the additional information (5 bits).

``strict=True`` also holds the item to the attestation profile's deterministic
encoding (``docs/attestation-profile.md``, RFC 8949 §4.2.1 core deterministic
encoding): every head in its shortest form, every float in the shortest of
half/single/double that keeps its value (NaN only as ``f9 7e00``), map keys
that are integers or text strings, in bytewise order of their encodings with no
duplicate, no tags (which also rules out bignums), and no simple values but
false, true and null. One encoding per value: a signed payload or an envelope
that passes has no other byte form that also passes.
"""

from __future__ import annotations

import math
import struct

__all__ = ["MAX_DEPTH_LIMIT", "MESSAGES", "scan"]

MAX_DEPTH_LIMIT = 62  # the compiled twin keeps its stack in a fixed array

MESSAGES = {
    1: "CBOR ends early",
    2: "more CBOR items than allowed",
    3: "CBOR ends inside a header",
    4: "indefinite-length CBOR is not allowed",
    5: "reserved CBOR additional information",
    6: "a CBOR string runs past the end",
    7: "a CBOR container claims more items than there are bytes",
    8: "CBOR nested deeper than allowed",
    9: "bytes after the CBOR item",
    # strict (deterministic encoding, RFC 8949 §4.2.1)
    10: "a CBOR head is longer than its value needs (not the shortest form)",
    11: "a CBOR float is wider than its value needs (not the shortest form)",
    12: "CBOR map keys are not in deterministic (bytewise) order",
    13: "a CBOR map holds the same key twice",
    14: "a CBOR map key is not an integer or a text string",
    15: "a CBOR tag (the profile uses none; integers past 64 bits are not allowed)",
    16: "a CBOR simple value other than false, true or null",
}

# the smallest argument each head width is for: ai 24..27 (RFC 8949 §4.2.1)
_MIN_ARG = (24, 0x100, 0x10000, 0x100000000)


def _fits(x: float, bits: int, min_exp: int, max_exp: int) -> bool:
    """Whether finite ``x`` is exactly a binary float with ``bits`` significant bits,
    normal exponents ``min_exp..max_exp`` (unbiased) and subnormals below."""
    if x == 0.0:
        return True
    m, e = math.frexp(abs(x))  # |x| = m * 2**e, 0.5 <= m < 1
    e -= 1  # |x| = (2m) * 2**e, 1 <= 2m < 2
    if e > max_exp:
        return False
    if e < min_exp:  # subnormal: a multiple of 2**(min_exp - bits + 1)
        bits -= min_exp - e
        if bits <= 0:
            return False
    return (m * 2.0**bits).is_integer()


def _float_is_shortest(ai: int, x: float) -> bool:
    """Whether a single (ai 26) or double (ai 27) float is the shortest form of ``x``
    (never a NaN: the one NaN allowed is the half ``f97e00``)."""
    if not math.isfinite(x):
        return False
    if ai == 26:
        return not _fits(x, 11, -14, 15)
    return not _fits(x, 24, -126, 127)


def scan(data: bytes, max_depth: int, max_items: int, strict: bool = False) -> tuple[int, int]:
    if not 0 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be 0..{MAX_DEPTH_LIMIT}")
    n = len(data)
    pos = 0
    items = 0
    remaining = [1]  # items still to read in each open container
    # strict: per open container, whether it is a map, and its previous key's span
    is_map = [False]
    key_at = [(0, 0)]
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            is_map.pop()
            key_at.pop()
            continue
        is_key = strict and is_map[-1] and remaining[-1] % 2 == 0
        remaining[-1] -= 1
        if pos >= n:
            return 1, pos
        items += 1
        if items > max_items:
            return 2, pos
        head = pos
        ib = data[pos]
        pos += 1
        major, ai = ib >> 5, ib & 0x1F
        if ai < 24:
            arg = ai
        elif ai <= 27:
            width = 1 << (ai - 24)
            if pos + width > n:
                return 3, pos
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
            if strict:
                if major == 7:
                    if ai == 24:  # simple values 32..255 (24..31 are not well-formed)
                        return 16, head
                    if ai == 25:  # a half: the shortest unless a NaN other than 7e00
                        if arg & 0x7C00 == 0x7C00 and arg & 0x3FF and arg != 0x7E00:
                            return 11, head
                    elif not _float_is_shortest(ai, _float(data, head + 1, width)):
                        return 11, head
                elif arg < _MIN_ARG[ai - 24]:
                    return 10, head
        elif ai == 31:
            return 4, pos - 1
        else:
            return 5, pos - 1
        if strict:
            if is_key and major not in (0, 1, 3):
                return 14, head
            if major == 6:
                return 15, head
            if major == 7 and ai < 24 and ai not in (20, 21, 22):
                return 16, head
        if major in (2, 3):
            if arg > n - pos:
                return 6, pos
            pos += arg
        elif major in (4, 5, 6):
            count = arg if major == 4 else 2 * arg if major == 5 else 1
            if count > n - pos:  # every item needs at least one byte
                return 7, pos
            remaining.append(count)
            is_map.append(major == 5)
            key_at.append((0, 0))
            if len(remaining) > max_depth + 1:
                return 8, pos
        if is_key:
            start, end = key_at[-1]
            if end:
                here, before = data[head:pos], data[start:end]
                if here == before:
                    return 13, head
                if here < before:
                    return 12, head
            key_at[-1] = (head, pos)
    if pos != n:
        return 9, pos
    return 0, pos


_FLOAT = {4: struct.Struct(">f"), 8: struct.Struct(">d")}


def _float(data: bytes, pos: int, width: int) -> float:
    return _FLOAT[width].unpack_from(data, pos)[0]  # type: ignore[no-any-return]
