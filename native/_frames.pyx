# cython: language_level=3
"""Columnar stream decoding of the serial protocol: the compiled module.

Same semantics as the pure-Python twin ``native._frames_py`` (documented
there); the DATA path -- delimiter search, COBS, CRC-32, header checks and the
float32 -> float64 columns -- runs in C without the GIL-level object churn of
the twin. Frames other than DATA are rare and are parsed by
``firmware_bridge.frames.parse_frame``, exactly as the twin does.
"""

import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy

from firmware_bridge.frames import parse_frame
from native._frames_py import STAT_NAMES, Batch


__all__ = ["STAT_NAMES", "Batch", "BatchDecoder"]

DEF MAX_ENCODED = 258
DEF MAX_FRAME = 256
DEF MIN_FRAME = 18

cdef uint32_t CRC_TABLE[8][256]


cdef void _init_crc() noexcept:
    """Slicing-by-8 tables for CRC-32/ISO-HDLC (reflected poly 0xEDB88320)."""
    cdef uint32_t c
    cdef int i, k, _bit
    for i in range(256):
        c = i
        for _bit in range(8):
            c = (c >> 1) ^ (<uint32_t>0xEDB88320 & (<uint32_t>0 - (c & 1)))
        CRC_TABLE[0][i] = c
    for i in range(256):
        c = CRC_TABLE[0][i]
        for k in range(1, 8):
            c = CRC_TABLE[0][c & 0xFF] ^ (c >> 8)
            CRC_TABLE[k][i] = c


_init_crc()


cdef inline uint32_t _le32(const uint8_t* p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef uint32_t _crc32(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint32_t c = ~(<uint32_t>0)
    cdef uint32_t lo, hi
    while n >= 8:
        lo = _le32(p) ^ c
        hi = _le32(p + 4)
        c = (CRC_TABLE[7][lo & 0xFF] ^ CRC_TABLE[6][(lo >> 8) & 0xFF]
             ^ CRC_TABLE[5][(lo >> 16) & 0xFF] ^ CRC_TABLE[4][lo >> 24]
             ^ CRC_TABLE[3][hi & 0xFF] ^ CRC_TABLE[2][(hi >> 8) & 0xFF]
             ^ CRC_TABLE[1][(hi >> 16) & 0xFF] ^ CRC_TABLE[0][hi >> 24])
        p += 8
        n -= 8
    while n > 0:
        c = CRC_TABLE[0][(c ^ p[0]) & 0xFF] ^ (c >> 8)
        p += 1
        n -= 1
    return ~c


cdef Py_ssize_t _cobs(const uint8_t* s, Py_ssize_t n, uint8_t* out) noexcept nogil:
    """Decode one segment (no 0x00 inside, n <= MAX_ENCODED); -1 if invalid."""
    cdef Py_ssize_t i = 0, o = 0, j
    cdef uint8_t code
    if n == 0:
        return -1
    while True:
        code = s[i]
        j = i + code
        if j > n:
            return -1
        if o + (code - 1) > MAX_ENCODED:
            return -1
        memcpy(out + o, s + i + 1, code - 1)
        o += code - 1
        if j == n:
            return o
        if code != 0xFF:
            out[o] = 0
            o += 1
        i = j


cdef class BatchDecoder:
    """Incremental columnar decoder for one serial line (see ``native._frames_py``)."""

    cdef public int n_channels
    cdef bytes _buf
    cdef bint _synced, _skipping, _lost
    cdef int64_t _c[7]

    def __init__(self, int n_channels=0):
        if not 0 <= n_channels <= 255:
            raise ValueError(f"n_channels must be in [0, 255], got {n_channels}")
        self.n_channels = n_channels
        self._buf = b""
        self._synced = False
        self._skipping = False
        self._lost = False
        cdef int i
        for i in range(7):
            self._c[i] = 0

    def stats(self):
        """Cumulative counters (names in ``STAT_NAMES``)."""
        return {name: self._c[i] for i, name in enumerate(STAT_NAMES)}

    def set_channels(self, int n_channels):
        """Change the channel count DATA must carry (after a HELLO)."""
        if not 0 <= n_channels <= 255:
            raise ValueError(f"n_channels must be in [0, 255], got {n_channels}")
        self.n_channels = n_channels

    cdef inline void _good(self) noexcept:
        self._c[0] += 1
        if self._lost:
            self._c[6] += 1
            self._lost = False

    cdef inline void _reject(self, int counter, Py_ssize_t nbytes, bint counted) noexcept:
        if self._synced or counted:
            self._c[counter] += 1
            self._lost = True
        self._c[5] += nbytes

    def feed(self, data):
        """Consume *data*; return the samples and frames it completed (a ``Batch``)."""
        cdef bytes chunk = bytes(data)
        cdef const uint8_t* cp
        cdef Py_ssize_t i
        cdef int nc = self.n_channels
        if self._skipping:
            cp = chunk
            i = _find0(cp, 0, len(chunk))
            if i < 0:
                self._c[5] += len(chunk)
                return self._empty()
            self._c[5] += i
            chunk = chunk[i + 1:]
            self._skipping = False
            self._synced = True
        cdef bytes buf = self._buf + chunk if self._buf else chunk
        cdef const uint8_t* p = buf
        cdef Py_ssize_t n = len(buf)
        # Every sample needs 4 * nc value bytes inside the encoded stream.
        cdef Py_ssize_t cap = n // (4 * nc) + 1 if nc > 0 else 1
        seq_a = np.empty(cap, dtype=np.uint32)
        ts_a = np.empty(cap, dtype=np.int64)
        val_a = np.empty((cap, nc if nc > 0 else 1), dtype=np.float64)
        cdef uint32_t[::1] seqs = seq_a
        cdef int64_t[::1] times = ts_a
        cdef double[:, ::1] vals = val_a
        fseq_a = np.empty(n // 22 + 1, dtype=np.uint32)  # a DATA frame is >= 22 raw bytes
        flen_a = np.empty(n // 22 + 1, dtype=np.uint16)
        cdef uint32_t[::1] fseq = fseq_a
        cdef unsigned short[::1] flen = flen_a
        cdef list others = []
        cdef Py_ssize_t start = 0, end, seglen, rawlen, ns_count = 0
        cdef Py_ssize_t data_frames = 0
        cdef uint8_t raw[MAX_ENCODED + 1]
        cdef uint32_t seq, bits
        cdef uint64_t ts, interval
        cdef int ns, k, ch
        cdef float f
        cdef const uint8_t* v
        while True:
            end = _find0(p, start, n)
            if end < 0:
                break
            seglen = end - start
            if seglen > 0:
                rawlen = _cobs(p + start, seglen, raw) if seglen <= MAX_ENCODED else -1
                if rawlen < MIN_FRAME or rawlen > MAX_FRAME:
                    self._reject(2, seglen, False)
                elif _crc32(raw, rawlen - 4) != _le32(raw + rawlen - 4):
                    self._reject(1, seglen, False)
                elif raw[0] != 1:
                    self._reject(3, seglen, True)
                elif not (raw[1] == 0x01 or raw[1] == 0x02 or raw[1] == 0x03
                          or raw[1] == 0x04 or raw[1] == 0x81 or raw[1] == 0x82):
                    self._reject(4, seglen, True)
                elif (raw[1] == 0x02 and nc > 0 and rawlen >= 22 and raw[14] == nc
                      and raw[15] > 0 and rawlen == 22 + 4 * nc * raw[15]):
                    seq = _le32(raw + 2)
                    ts = <uint64_t>_le32(raw + 6) | (<uint64_t>_le32(raw + 10) << 32)
                    ns = raw[15]
                    interval = <uint64_t>raw[16] | (<uint64_t>raw[17] << 8)
                    v = raw + 18
                    for k in range(ns):
                        seqs[ns_count] = seq
                        times[ns_count] = <int64_t>(ts + <uint64_t>k * interval)
                        for ch in range(nc):
                            bits = _le32(v)
                            memcpy(&f, &bits, 4)
                            vals[ns_count, ch] = f
                            v += 4
                        ns_count += 1
                    fseq[data_frames] = seq
                    flen[data_frames] = ns
                    data_frames += 1
                    self._good()
                else:
                    frame = parse_frame(bytes(raw[:rawlen]))
                    if frame is None:
                        self._reject(2, seglen, True)
                    else:
                        others.append((ns_count, frame))
                        self._good()
            self._synced = True
            start = end + 1
        rest = buf[start:]
        if len(rest) > MAX_ENCODED:
            if self._synced:
                self._c[2] += 1
                self._lost = True
            self._c[5] += len(rest)
            rest = b""
            self._skipping = True
        self._buf = rest
        values = np.ascontiguousarray(val_a[:ns_count, :nc].T) if nc > 0 else np.empty((0, 0))
        return Batch(seq_a[:ns_count].copy(), ts_a[:ns_count].copy(), values, others,
                     fseq_a[:data_frames].copy(), flen_a[:data_frames].copy())

    cdef _empty(self):
        return Batch(np.empty(0, np.uint32), np.empty(0, np.int64),
                     np.empty((self.n_channels, 0)), [], np.empty(0, np.uint32),
                     np.empty(0, np.uint16))


cdef inline Py_ssize_t _find0(const uint8_t* p, Py_ssize_t start, Py_ssize_t n) noexcept:
    cdef const void* hit
    if start >= n:
        return -1
    hit = memchr(p + start, 0, n - start)
    if hit == NULL:
        return -1
    return <const uint8_t*>hit - p
