# cython: language_level=3
"""Compiled twin of ``native._cbor_scan_py`` (same codes, same positions)."""

from libc.math cimport frexp, isinf, isnan, fabs, ldexp, floor
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

DEF STACK = 64

cdef uint64_t[4] _MIN_ARG = [24, 0x100, 0x10000, 0x100000000]


cdef bint _fits(double x, int bits, int min_exp, int max_exp) noexcept:
    """The pure twin's ``_fits``: ``x`` is exactly a float of that format."""
    cdef int e
    cdef double m, scaled
    if x == 0.0:
        return True
    m = frexp(fabs(x), &e)
    e -= 1
    if e > max_exp:
        return False
    if e < min_exp:
        bits -= min_exp - e
        if bits <= 0:
            return False
    scaled = ldexp(m, bits)
    return scaled == floor(scaled)


cdef double _float_at(const unsigned char[::1] data, Py_ssize_t pos, int width) noexcept:
    """The single (width 4) or double (width 8) float at ``pos``."""
    cdef uint64_t d = 0
    cdef uint32_t w
    cdef float f
    cdef double x
    cdef int k
    for k in range(width):
        d = (d << 8) | data[pos + k]
    if width == 8:
        memcpy(&x, &d, 8)
        return x
    w = <uint32_t>d
    memcpy(&f, &w, 4)
    return <double>f


cdef bint _float_is_shortest(int ai, double x) noexcept:
    """A single (ai 26) or double (ai 27) float in its shortest form."""
    if isnan(x) or isinf(x):  # the only NaN and infinities allowed are halves
        return False
    if ai == 26:
        return not _fits(x, 11, -14, 15)
    return not _fits(x, 24, -126, 127)


def scan(const unsigned char[::1] data, int max_depth, Py_ssize_t max_items,
         bint strict=False):
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t items = 0
    cdef uint64_t remaining[STACK]
    cdef bint is_map[STACK]
    cdef Py_ssize_t key_start[STACK]
    cdef Py_ssize_t key_end[STACK]
    cdef int top = 0
    cdef unsigned char ib, major, ai
    cdef uint64_t arg, count
    cdef int width, k, c
    cdef bint is_key
    cdef Py_ssize_t head, ln, lb
    if max_depth < 0 or max_depth > STACK - 2:
        raise ValueError(f"max_depth must be 0..{STACK - 2}")
    remaining[0] = 1
    is_map[0] = False
    key_end[0] = 0
    while top >= 0:
        if remaining[top] == 0:
            top -= 1
            continue
        is_key = strict and is_map[top] and remaining[top] % 2 == 0
        remaining[top] -= 1
        if pos >= n:
            return 1, pos
        items += 1
        if items > max_items:
            return 2, pos
        head = pos
        ib = data[pos]
        pos += 1
        major = ib >> 5
        ai = ib & 0x1F
        if ai < 24:
            arg = ai
        elif ai <= 27:
            width = 1 << (ai - 24)
            if pos + width > n:
                return 3, pos
            arg = 0
            for k in range(width):
                arg = (arg << 8) | data[pos + k]
            pos += width
            if strict:
                if major == 7:
                    if ai == 24:
                        return 16, head
                    if ai == 25:  # a half: the shortest unless a NaN other than 7e00
                        if (arg & 0x7C00) == 0x7C00 and (arg & 0x3FF) and arg != 0x7E00:
                            return 11, head
                    elif not _float_is_shortest(ai, _float_at(data, head + 1, width)):
                        return 11, head
                elif arg < _MIN_ARG[ai - 24]:
                    return 10, head
        elif ai == 31:
            return 4, pos - 1
        else:
            return 5, pos - 1
        if strict:
            if is_key and not (major == 0 or major == 1 or major == 3):
                return 14, head
            if major == 6:
                return 15, head
            if major == 7 and ai < 24 and not (ai == 20 or ai == 21 or ai == 22):
                return 16, head
        if major == 2 or major == 3:
            if arg > <uint64_t>(n - pos):
                return 6, pos
            pos += <Py_ssize_t>arg
        elif major >= 4 and major <= 6:
            if major == 4:
                count = arg
            elif major == 5:
                if arg > <uint64_t>(n - pos):
                    return 7, pos
                count = 2 * arg
            else:
                count = 1
            if count > <uint64_t>(n - pos):
                return 7, pos
            top += 1
            if top > max_depth:
                return 8, pos
            remaining[top] = count
            is_map[top] = major == 5
            key_end[top] = 0
        if is_key:
            if key_end[top]:
                ln = pos - head
                lb = key_end[top] - key_start[top]
                c = memcmp(&data[head], &data[key_start[top]], ln if ln < lb else lb)
                if c == 0 and ln == lb:
                    return 13, head
                if c < 0 or (c == 0 and ln < lb):
                    return 12, head
            key_start[top] = head
            key_end[top] = pos
    if pos != n:
        return 9, pos
    return 0, pos
