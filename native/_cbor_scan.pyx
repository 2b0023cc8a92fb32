# cython: language_level=3
"""Compiled twin of ``native._cbor_scan_py`` (same codes, same positions)."""

from libc.stdint cimport uint64_t

DEF STACK = 64


def scan(const unsigned char[::1] data, int max_depth, Py_ssize_t max_items):
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t items = 0
    cdef uint64_t remaining[STACK]
    cdef int top = 0
    cdef unsigned char ib, major, ai
    cdef uint64_t arg, count
    cdef int width, k
    if max_depth < 0 or max_depth > STACK - 2:
        raise ValueError(f"max_depth must be 0..{STACK - 2}")
    remaining[0] = 1
    while top >= 0:
        if remaining[top] == 0:
            top -= 1
            continue
        remaining[top] -= 1
        if pos >= n:
            return 1, pos
        items += 1
        if items > max_items:
            return 2, pos
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
        elif ai == 31:
            return 4, pos - 1
        else:
            return 5, pos - 1
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
    if pos != n:
        return 9, pos
    return 0, pos
