"""COSE_Sign1 envelopes written by hand: the genuine shape, and the ones it must not take.

The genuine shape (docs/attestation-profile.md, RFC 9052 §4.2) is
``d2 84 bstr(protected) a0 bstr(payload) bstr(signature)`` with shortest heads. Every
variant in :data:`ENVELOPE_VARIANTS` keeps the three signed byte strings as they are and
changes only what the signature does not cover.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2

from agent.tools.bench.fuzz.rawcbor import head

__all__ = ["ENVELOPE_VARIANTS", "build", "signed_parts"]

MAX_FILE = (
    64 * 1024
)  # agent.evidence.cose.MAX_MESSAGE_BYTES: a larger file is refused before decoding


def build(
    protected: bytes,
    payload: bytes,
    signature: bytes,
    *,
    tag: bytes = b"\xd2",
    array: bytes = b"\x84",
    unprotected: bytes = b"\xa0",
    widths: tuple[int | None, int | None, int | None] = (None, None, None),
    trailer: bytes = b"",
) -> bytes:
    """An envelope: the genuine shape unless told otherwise."""
    p, pl, s = (head(2, len(x), w) + x for x, w in zip((protected, payload, signature), widths))
    return tag + array + p + unprotected + pl + s + trailer


def signed_parts(raw: bytes) -> tuple[bytes, bytes] | None:
    """Protected header and payload, read leniently (any tags, trailing bytes ignored).

    What the signature covers (RFC 9052 §4.4): two envelopes with the same parts carry the
    same signed statement. None if ``raw`` has no such parts.
    """
    try:
        obj: Any = cbor2.loads(raw)
        while isinstance(obj, cbor2.CBORTag):
            obj = obj.value
    except Exception:  # whatever does not decode simply has no signed parts
        return None
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        return None
    protected, payload = obj[0], obj[2]
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        return None
    return protected, payload


def _padding(p: bytes, pl: bytes, s: bytes) -> bytes:
    """An unprotected header ``{"p": h'00...'}`` that brings the file to about 63 KB."""
    size = 63 * 1000 - len(build(p, pl, s)) - 8
    return b"\xa1\x61p" + head(2, size) + bytes(size)


def _indefinite(data: bytes) -> bytes:
    half = len(data) // 2
    return b"\x5f" + head(2, half) + data[:half] + head(2, len(data) - half) + data[half:] + b"\xff"


_Variant = Callable[[bytes, bytes, bytes], bytes]

ENVELOPE_VARIANTS: dict[str, _Variant] = {
    "unprotected-x": lambda p, pl, s: build(p, pl, s, unprotected=b"\xa1\x61x\x61y"),
    "unprotected-kid": lambda p, pl, s: build(p, pl, s, unprotected=b"\xa1\x04\x50" + bytes(16)),
    "unprotected-crit": lambda p, pl, s: build(p, pl, s, unprotected=b"\xa1\x02\x81\x01"),
    "unprotected-x5chain": lambda p, pl, s: build(
        p, pl, s, unprotected=b"\xa1\x18\x21\x43\x30\x03\x02"
    ),
    "unprotected-alg": lambda p, pl, s: build(p, pl, s, unprotected=b"\xa1\x01\x27"),
    "unprotected-duplicate-keys": lambda p, pl, s: build(
        p, pl, s, unprotected=b"\xa2\x61x\x61y\x61x\x61z"
    ),
    "unprotected-63kb-padding": lambda p, pl, s: build(p, pl, s, unprotected=_padding(p, pl, s)),
    "unprotected-b800": lambda p, pl, s: build(p, pl, s, unprotected=b"\xb8\x00"),
    "unprotected-b90000": lambda p, pl, s: build(p, pl, s, unprotected=b"\xb9\x00\x00"),
    "unprotected-indefinite": lambda p, pl, s: build(p, pl, s, unprotected=b"\xbf\xff"),
    "tag-d812": lambda p, pl, s: build(p, pl, s, tag=b"\xd8\x12"),
    "tag-d90012": lambda p, pl, s: build(p, pl, s, tag=b"\xd9\x00\x12"),
    "tag-self-described": lambda p, pl, s: b"\xd9\xd9\xf7" + build(p, pl, s),
    "tag-twice": lambda p, pl, s: b"\xd2" + build(p, pl, s),
    "untagged": lambda p, pl, s: build(p, pl, s, tag=b""),
    "array-9804": lambda p, pl, s: build(p, pl, s, array=b"\x98\x04"),
    "array-indefinite": lambda p, pl, s: build(p, pl, s, array=b"\x9f", trailer=b"\xff"),
    "protected-head-1": lambda p, pl, s: build(p, pl, s, widths=(1, None, None)),
    "protected-head-8": lambda p, pl, s: build(p, pl, s, widths=(8, None, None)),
    "payload-head-4": lambda p, pl, s: build(p, pl, s, widths=(None, 4, None)),
    "payload-head-8": lambda p, pl, s: build(p, pl, s, widths=(None, 8, None)),
    "signature-head-2": lambda p, pl, s: build(p, pl, s, widths=(None, None, 2)),
    "signature-head-4": lambda p, pl, s: build(p, pl, s, widths=(None, None, 4)),
    "payload-indefinite": lambda p, pl, s: (
        b"\xd2\x84" + head(2, len(p)) + p + b"\xa0" + _indefinite(pl) + head(2, len(s)) + s
    ),
    "trailing-00": lambda p, pl, s: build(p, pl, s, trailer=b"\x00"),
    "trailing-f6": lambda p, pl, s: build(p, pl, s, trailer=b"\xf6"),
    "trailing-copy": lambda p, pl, s: build(p, pl, s) * 2,
}
