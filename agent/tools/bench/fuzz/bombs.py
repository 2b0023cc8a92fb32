"""CBOR bombs: inputs made to exhaust a decoder's stack, memory or time.

Each shape is built to a byte budget so that it fits the 64 KiB a message may have
(``agent.evidence.cose.MAX_MESSAGE_BYTES``), except those that only *declare* a huge size. The
fuzzer places each one three ways: as a whole file, as a payload the device signs, and
inside a signed claims set (as a risk score).
"""

from __future__ import annotations

from collections.abc import Callable

from agent.tools.bench.fuzz.rawcbor import head

__all__ = ["BOMB_SHAPES", "PLACEMENTS"]

PLACEMENTS = ("file", "payload", "claim")


def _nested(prefix: bytes, leaf: bytes) -> Callable[[int], bytes]:
    return lambda budget: prefix * ((budget - len(leaf)) // len(prefix)) + leaf


def _many(item: bytes, indefinite: bytes = b"", major: int = 4) -> Callable[[int], bytes]:
    """As many ``item`` as fit, in a definite (``indefinite`` empty) or indefinite container."""

    def build(budget: int) -> bytes:
        n = (budget - 9) // len(item)
        if indefinite:
            return indefinite + item * n + b"\xff"
        return head(major, n) + item * n

    return build


def _shared_doubling(budget: int) -> bytes:
    """Value sharing (tags 28/29): level k is [level k-1, ref level k-1]: 2**60 leaves."""
    depth = 60
    out = b"\xd8\x1c\x81\x00"
    for k in range(1, depth + 1):
        out = b"\xd8\x1c\x82" + out + b"\xd8\x1d" + head(0, depth - k + 1)
    return out


BOMB_SHAPES: dict[str, Callable[[int], bytes]] = {
    "deep-arrays": _nested(b"\x81", b"\x00"),
    "deep-maps": _nested(b"\xa1\x00", b"\x00"),
    "deep-tags": _nested(b"\xc6", b"\x00"),
    "deep-indefinite-arrays": _nested(b"\x9f", b""),
    "deep-shareable-tags": _nested(b"\xd8\x1c", b"\x00"),
    "count-2**64-1-array": lambda b: b"\x9b" + b"\xff" * 8,
    "count-2**64-1-map": lambda b: b"\xbb" + b"\xff" * 8,
    "count-2**32-1-array": lambda b: b"\x9a\xff\xff\xff\xff" + b"\x00" * 64,
    "length-2**63-bytes": lambda b: b"\x5b" + (2**63).to_bytes(8, "big") + b"\x00" * 64,
    "length-2**64-1-text": lambda b: b"\x7b" + b"\xff" * 8,
    "length-2**32-1-bytes": lambda b: b"\x5a\xff\xff\xff\xff" + b"\x00" * 64,
    "indefinite-bytes-chunks": _many(b"\x41\x00", b"\x5f"),
    "indefinite-text-chunks": _many(b"\x61a", b"\x7f"),
    "indefinite-array-unclosed": lambda b: b"\x9f" + b"\x00" * (b - 1),
    "indefinite-array-items": _many(b"\x00", b"\x9f"),
    "small-items-64k": _many(b"\x00"),
    "empty-arrays-64k": _many(b"\x80"),
    "map-pairs-64k": _many(b"\x00\x00", major=5),
    "bignum-64k": lambda b: b"\xc2" + head(2, b - 6) + b"\xff" * (b - 6),
    "shared-refs-doubling": _shared_doubling,
}
