"""The frame check sequence: CRC-32/ISO-HDLC (PROTOCOL.md §3).

Parameters in the Rocksoft/Williams model, as catalogued by Greg Cook's CRC
catalogue under the name CRC-32/ISO-HDLC (also "CRC-32", IEEE 802.3, zlib):

    width 32, poly 0x04C11DB7 (reflected 0xEDB88320), init 0xFFFFFFFF,
    refin true, refout true, xorout 0xFFFFFFFF, check 0xCBF43926

``zlib.crc32`` computes exactly this; the constants are here for
documentation and for the tests that pin them.
"""

from __future__ import annotations

import zlib

__all__ = ["CHECK_INPUT", "CHECK_VALUE", "POLY", "POLY_REFLECTED", "crc32"]

POLY = 0x04C11DB7
POLY_REFLECTED = 0xEDB88320
CHECK_INPUT = b"123456789"
CHECK_VALUE = 0xCBF43926


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/ISO-HDLC of *data* as an unsigned 32-bit integer."""
    return zlib.crc32(data) & 0xFFFFFFFF
