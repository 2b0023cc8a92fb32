"""Pure-Python twin of ``native._cbor_scan``: walk CBOR bytes without decoding them.

``scan(data, max_depth, max_items)`` returns ``(code, position)``; code 0 means
one well-formed, definite-length item within the limits that fills ``data``
exactly. Other codes are listed in ``MESSAGES`` (``agent.cbor_limits`` turns
them into errors). RFC 8949 §3: the initial byte holds the major type (3 bits)
and the additional information (5 bits).
"""

from __future__ import annotations

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
}


def scan(data: bytes, max_depth: int, max_items: int) -> tuple[int, int]:
    if not 0 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be 0..{MAX_DEPTH_LIMIT}")
    n = len(data)
    pos = 0
    items = 0
    remaining = [1]  # items still to read in each open container
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            continue
        remaining[-1] -= 1
        if pos >= n:
            return 1, pos
        items += 1
        if items > max_items:
            return 2, pos
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
        elif ai == 31:
            return 4, pos - 1
        else:
            return 5, pos - 1
        if major in (2, 3):
            if arg > n - pos:
                return 6, pos
            pos += arg
        elif major in (4, 5, 6):
            count = arg if major == 4 else 2 * arg if major == 5 else 1
            if count > n - pos:  # every item needs at least one byte
                return 7, pos
            remaining.append(count)
            if len(remaining) > max_depth + 1:
                return 8, pos
    if pos != n:
        return 9, pos
    return 0, pos
