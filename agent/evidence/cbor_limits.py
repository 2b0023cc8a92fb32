"""Structural limits checked on untrusted CBOR *before* it is decoded.

cbor2 builds Python objects as it goes, so a hostile message could make it
build deeply nested containers or many items before we see any of it.
:func:`check_cbor` walks the encoded bytes (``native.cbor_scan``, compiled with
a pure-Python twin) without building anything, and rejects: more nesting than
``max_depth``, more data items than ``max_items``, indefinite lengths (the
profile requires deterministic, definite-length CBOR, RFC 8949 §4.2.1),
lengths past the end of the input, and trailing bytes. With ``strict=True`` it
also holds the bytes to the profile's deterministic encoding (shortest heads and
floats, sorted unique integer or text map keys, no tags, no simple values but
false/true/null: ``native/_cbor_scan_py.py``), so a signed payload or envelope
has exactly one byte form.
"""

from __future__ import annotations

from agent.errors import VerificationError
from native.cbor_scan import MESSAGES, scan

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "check_cbor"]

MAX_DEPTH = 16
MAX_ITEMS = 20_000


def check_cbor(
    data: bytes,
    what: str,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    *,
    strict: bool = False,
    offset: int = 0,
) -> None:
    """Raise VerificationError unless ``data`` is one well-formed item within the limits
    (and, ``strict``, deterministically encoded). ``offset``: where ``data`` starts in
    the bytes the message names (positions are counted from there)."""
    code, pos = scan(data, max_depth, max_items, strict)
    if code:
        raise VerificationError(f"{what}: {MESSAGES[code]} (byte {pos + offset})")
