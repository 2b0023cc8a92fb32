"""Consistent Overhead Byte Stuffing (COBS), as used on the edgegov serial wire.

COBS (Cheshire & Baker, IEEE/ACM Trans. Networking 7(2), 1999) rewrites a
byte string so that it contains no 0x00, at a cost of at most one byte per 254
bytes (plus one). The wire then uses 0x00 as the frame delimiter, and a
receiver that loses sync simply waits for the next 0x00 (PROTOCOL.md §2).

Encoding rule (canonical form, what :func:`encode` emits and the test vectors
pin): the data is split at every 0x00; each piece is emitted as blocks of
``code, bytes...`` where ``code = len(bytes) + 1``. A full block of 254
non-zero bytes has code 0xFF and implies *no* zero after it. A piece that is a
non-empty multiple of 254 bytes long at the very end of the data gets no
trailing ``0x01`` block. :func:`decode` also accepts that trailing ``0x01``.
"""

from __future__ import annotations

__all__ = ["decode", "encode", "max_encoded_len"]

_BLOCK = 254  # data bytes in a full (code 0xFF) block


def max_encoded_len(n: int) -> int:
    """Largest COBS encoding of *n* bytes (without the 0x00 delimiter)."""
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    return n + 1 + n // _BLOCK


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """Return the COBS encoding of *data* (no delimiter appended)."""
    out = bytearray()
    pieces = bytes(data).split(b"\x00")
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        n = len(piece)
        pos = 0
        while n - pos >= _BLOCK:
            out.append(0xFF)
            out += piece[pos : pos + _BLOCK]
            pos += _BLOCK
        # A piece ending exactly on a full block at the end of the data needs
        # no closing block; everywhere else the closing block stands for the
        # 0x00 that followed the piece (or is the single 0x01 of empty data).
        if i == last and n and pos == n:
            break
        out.append(n - pos + 1)
        out += piece[pos:]
    return bytes(out)


def decode(data: bytes | bytearray | memoryview) -> bytes | None:
    """Return the bytes that *data* (one COBS block sequence) encodes.

    Returns ``None`` if *data* is not valid COBS: empty, contains 0x00, or a
    code byte points past the end. Invalid input is untrusted line data, not a
    programming error, so it is reported by value for the caller to count.
    """
    data = bytes(data)
    n = len(data)
    if n == 0 or 0 in data:
        return None
    out = bytearray()
    i = 0
    while True:
        code = data[i]
        j = i + code
        if j > n:
            return None
        out += data[i + 1 : j]
        if j == n:
            return bytes(out)
        if code != 0xFF:
            out.append(0)
        i = j
