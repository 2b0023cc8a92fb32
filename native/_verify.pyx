# cython: language_level=3
"""Compiled twin of ``native._verify_py`` (same values, same errors, same messages)."""

import hashlib

import cbor2

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_New, PyDict_SetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.math cimport INFINITY, NAN, isfinite, ldexp
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

import native._verify_py as _py

cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    int PyObject_GenericSetDict(object o, object value, void *context) except -1
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

DEF MAX_NEST = 64  # deeper input goes to cbor2 (callers bound depth well below this)

cdef object _sha256 = hashlib.sha256

# Short ASCII text repeats from attestation to attestation (map keys, rule and model
# ids, the profile): one str object per distinct text in a small direct-mapped cache
# saves decoding it and hashing it as a dict key each time (issue 6). str objects
# are immutable, so sharing them is invisible.
DEF SHORT_STR = 64
DEF STR_SLOTS = 256
cdef PyObject *_str_slots[STR_SLOTS]


cdef object _short_ascii(const unsigned char *p, Py_ssize_t n):
    """The str of ``p[:n]`` if it is ASCII (from the cache when there), else None."""
    cdef uint32_t h = 2166136261u
    cdef Py_ssize_t i
    cdef PyObject *c
    cdef object s
    for i in range(n):
        if p[i] & 0x80:
            return None
        h = (h ^ p[i]) * 16777619u  # FNV-1a
    h ^= <uint32_t>n
    c = _str_slots[h & (STR_SLOTS - 1)]
    if c is not NULL and PyUnicode_GET_LENGTH(<object>c) == n and (
        n == 0 or memcmp(PyUnicode_DATA(<object>c), p, n) == 0
    ):
        return <object>c
    s = PyUnicode_DecodeUTF8(<const char *>p, n, "strict")  # ASCII: cannot fail
    hash(s)  # computed once, kept in the object
    Py_XDECREF(c)
    Py_INCREF(s)
    _str_slots[h & (STR_SLOTS - 1)] = <PyObject *>s
    return s


class _Fallback(Exception):
    """Input outside the subset decoded here: let cbor2 decode it (and report errors)."""


cdef class _Reader:
    cdef const unsigned char *buf
    cdef Py_ssize_t n
    cdef Py_ssize_t pos
    # The structural limits are checked before (agent.evidence.cbor_limits); beyond
    # MAX_NEST the reader hands the input to cbor2, as it does every unusual input.

    cdef bytes data  # keeps buf alive

    def __cinit__(self, bytes data):
        self.data = data
        self.buf = <const unsigned char *>PyBytes_AS_STRING(data)
        self.n = len(data)
        self.pos = 0

    cdef uint64_t arg(self, unsigned char ai) except? 0xFFFFFFFFFFFFFFFF:
        cdef int width, k
        cdef uint64_t v
        if ai < 24:
            return ai
        if ai > 27:
            raise _Fallback
        width = 1 << (ai - 24)
        if self.pos + width > self.n:
            raise _Fallback
        v = 0
        for k in range(width):
            v = (v << 8) | self.buf[self.pos + k]
        self.pos += width
        return v

    cdef object item(self, int depth):
        cdef unsigned char ib, major, ai
        cdef uint64_t arg, i, _k
        cdef Py_ssize_t start
        cdef list lst
        cdef dict dct
        cdef object key, val
        if depth > MAX_NEST or self.pos >= self.n:
            raise _Fallback
        ib = self.buf[self.pos]
        self.pos += 1
        major = ib >> 5
        ai = ib & 0x1F
        if major == 7:
            return self.simple(ai)
        arg = self.arg(ai)
        if major == 0:
            return PyLong_FromUnsignedLongLong(arg)
        if major == 1:
            if arg < <uint64_t>0x7FFFFFFFFFFFFFFF:
                return PyLong_FromLongLong(-1 - <int64_t>arg)
            return -1 - PyLong_FromUnsignedLongLong(arg)
        if major == 2 or major == 3:
            if arg > <uint64_t>(self.n - self.pos):
                raise _Fallback
            start = self.pos
            self.pos += <Py_ssize_t>arg
            if major == 2:
                return PyBytes_FromStringAndSize(<const char *>self.buf + start, <Py_ssize_t>arg)
            if arg <= SHORT_STR:
                cached = _short_ascii(self.buf + start, <Py_ssize_t>arg)
                if cached is not None:
                    return cached
            try:
                return PyUnicode_DecodeUTF8(
                    <const char *>self.buf + start, <Py_ssize_t>arg, "strict"
                )
            except UnicodeDecodeError:
                raise _Fallback
        if major == 4:
            if arg > <uint64_t>(self.n - self.pos):  # every item needs at least one byte
                raise _Fallback
            lst = PyList_New(<Py_ssize_t>arg)
            for i in range(arg):
                val = self.item(depth + 1)
                Py_INCREF(val)
                PyList_SET_ITEM(lst, <Py_ssize_t>i, val)
            return lst
        if major == 5:
            if arg > <uint64_t>(self.n - self.pos):
                raise _Fallback
            dct = PyDict_New()
            for _k in range(arg):
                key = self.item(depth + 1)
                # cbor2 turns container keys into immutable ones; leave those to it
                if not (type(key) is int or type(key) is str or type(key) is bytes):
                    raise _Fallback
                PyDict_SetItem(dct, key, self.item(depth + 1))
            return dct
        raise _Fallback  # tags (major 6): cbor2 gives them meaning

    cdef int skip(self, int depth) except -1:
        """Check one item as :meth:`item` would decode it, without building it."""
        cdef unsigned char ib, major, ai, kb
        cdef uint64_t arg, _i
        cdef Py_ssize_t start, k
        if depth > MAX_NEST or self.pos >= self.n:
            raise _Fallback
        ib = self.buf[self.pos]
        self.pos += 1
        major = ib >> 5
        ai = ib & 0x1F
        if major == 7:
            self.simple(ai)
            return 0
        arg = self.arg(ai)
        if major == 0 or major == 1:
            return 0
        if major == 2 or major == 3:
            if arg > <uint64_t>(self.n - self.pos):
                raise _Fallback
            start = self.pos
            self.pos += <Py_ssize_t>arg
            if major == 3:
                for k in range(start, self.pos):
                    if self.buf[k] & 0x80:  # not ASCII: let the decoder judge the UTF-8
                        try:
                            PyUnicode_DecodeUTF8(<const char *>self.buf + start,
                                                 <Py_ssize_t>arg, "strict")
                        except UnicodeDecodeError:
                            raise _Fallback
                        break
            return 0
        if major == 4 or major == 5:
            if arg > <uint64_t>(self.n - self.pos):
                raise _Fallback
            for _i in range(arg):
                if major == 5:  # keys: only what item() keeps (int, bytes, text)
                    if self.pos >= self.n:
                        raise _Fallback
                    kb = self.buf[self.pos] >> 5
                    if kb > 3:
                        raise _Fallback
                    self.skip(depth + 1)
                self.skip(depth + 1)
            return 0
        raise _Fallback  # tags

    cdef object claims_map(self):
        """The top-level claims map without the values parse_claims never reads."""
        cdef unsigned char ib
        cdef uint64_t arg, _i
        cdef dict dct
        cdef object key
        ib = self.buf[0]
        self.pos = 1
        if ib >> 5 != 5:
            raise _Fallback
        arg = self.arg(ib & 0x1F)
        if arg > <uint64_t>(self.n - self.pos):
            raise _Fallback
        dct = PyDict_New()
        for _i in range(arg):
            key = self.item(1)
            if type(key) is int:
                if key == 256 or key == 273 or key == 274:
                    self.skip(1)
                    continue
                if key == 266 and self.pos < self.n and self.buf[self.pos] >> 5 == 5:
                    PyDict_SetItem(dct, key, self.submods())
                    continue
            elif not (type(key) is str or type(key) is bytes):
                raise _Fallback
            PyDict_SetItem(dct, key, self.item(1))
        return dct

    cdef dict submods(self):
        cdef uint64_t arg, _i
        cdef dict dct = PyDict_New()
        cdef object key
        cdef unsigned char ib = self.buf[self.pos]  # the caller saw major type 5
        self.pos += 1
        arg = self.arg(ib & 0x1F)
        if arg > <uint64_t>(self.n - self.pos):
            raise _Fallback
        for _i in range(arg):
            key = self.item(2)
            if not (type(key) is int or type(key) is str or type(key) is bytes):
                raise _Fallback
            if type(key) is str and <str>key == "agent":
                PyDict_SetItem(dct, key, self.item(2))
            else:
                self.skip(2)
        return dct

    cdef object simple(self, unsigned char ai):
        cdef uint16_t h
        cdef uint32_t w
        cdef uint64_t d
        cdef float f
        cdef double x
        cdef int k, e
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 25:
            if self.pos + 2 > self.n:
                raise _Fallback
            h = (self.buf[self.pos] << 8) | self.buf[self.pos + 1]
            self.pos += 2
            e = (h >> 10) & 0x1F
            if e == 0:
                x = ldexp(h & 0x3FF, -24)
            elif e != 31:
                x = ldexp((h & 0x3FF) + 1024, e - 25)
            elif h & 0x3FF:
                x = NAN
            else:
                x = INFINITY
            return -x if h & 0x8000 else x
        if ai == 26:
            if self.pos + 4 > self.n:
                raise _Fallback
            w = 0
            for k in range(4):
                w = (w << 8) | self.buf[self.pos + k]
            self.pos += 4
            memcpy(&f, &w, 4)
            return <double>f
        if ai == 27:
            if self.pos + 8 > self.n:
                raise _Fallback
            d = 0
            for k in range(8):
                d = (d << 8) | self.buf[self.pos + k]
            self.pos += 8
            memcpy(&x, &d, 8)
            return x
        raise _Fallback  # undefined and other simple values


def loads(data):
    cdef _Reader r
    if type(data) is bytes and len(<bytes>data):
        r = _Reader(data)
        try:
            value = r.item(0)
        except _Fallback:
            pass
        else:
            if r.pos == r.n:  # cbor2 ignores trailing bytes; the rare case goes to it
                return value
    return cbor2.loads(data)


cdef object _read_claims(data):
    """The claims map read here, or None to let the twin decode it."""
    cdef _Reader r
    if type(data) is bytes and len(<bytes>data):
        r = _Reader(data)
        try:
            value = r.claims_map()
        except _Fallback:
            return None
        if r.pos == r.n:
            return value
    return None


def loads_claims(data):
    value = _read_claims(data)
    return _py.trim_claims(loads(data)) if value is None else value


cdef uint64_t[4] _MIN_LEN = [24, 0x100, 0x10000, 0x100000000]


cdef Py_ssize_t _bstr(
    const unsigned char *buf, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t *start
):
    """Length of the byte string whose head is at ``pos`` (its data at ``start``), or -1."""
    cdef unsigned char ai
    cdef int width, k
    cdef uint64_t v
    if pos >= n or buf[pos] >> 5 != 2:
        return -1
    ai = buf[pos] & 0x1F
    pos += 1
    if ai < 24:
        v = ai
    elif ai <= 27:
        width = 1 << (ai - 24)
        if pos + width > n:
            return -1
        v = 0
        for k in range(width):
            v = (v << 8) | buf[pos + k]
        pos += width
        if v < _MIN_LEN[ai - 24]:  # not the shortest head
            return -1
    else:
        return -1
    if v > <uint64_t>(n - pos):
        return -1
    start[0] = pos
    return <Py_ssize_t>v


cdef Py_ssize_t _put_bstr_head(char *p, Py_ssize_t n):
    """RFC 8949 §3.1 shortest head of a byte string of length ``n``; its size."""
    cdef int width, k
    if n < 24:
        p[0] = <char>(0x40 | n)
        return 1
    width = 1 if n < 0x100 else 2 if n < 0x10000 else 4 if n < 0x100000000 else 8
    p[0] = <char>(0x58 + (0 if width == 1 else 1 if width == 2 else 2 if width == 4 else 3))
    for k in range(width):
        p[1 + k] = <char>((<uint64_t>n >> (8 * (width - 1 - k))) & 0xFF)
    return 1 + width


def sig_structure(bytes protected, bytes payload):
    cdef Py_ssize_t np = len(protected), nl = len(payload), pos
    cdef char head[9]
    cdef char tail[9]
    cdef Py_ssize_t hp = _put_bstr_head(head, np), hl = _put_bstr_head(tail, nl)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 12 + hp + np + 1 + hl + nl)
    cdef char *o = PyBytes_AS_STRING(out)
    memcpy(o, b"\x84\x6aSignature1", 12)  # array(4), tstr "Signature1"
    pos = 12
    memcpy(o + pos, head, hp)
    pos += hp
    memcpy(o + pos, PyBytes_AS_STRING(protected), np)
    pos += np
    o[pos] = 0x40  # external_aad: h''
    pos += 1
    memcpy(o + pos, tail, hl)
    pos += hl
    memcpy(o + pos, PyBytes_AS_STRING(payload), nl)
    return out


def split_sign1(raw):
    cdef const unsigned char *buf
    cdef Py_ssize_t n, ps, pn, ls, ln, ss, sn
    if type(raw) is not bytes:
        return None
    buf = <const unsigned char *>PyBytes_AS_STRING(raw)
    n = len(<bytes>raw)
    if n < 2 or buf[0] != 0xD2 or buf[1] != 0x84:
        return None
    pn = _bstr(buf, n, 2, &ps)
    if pn < 0 or ps + pn >= n or buf[ps + pn] != 0xA0:
        return None
    ln = _bstr(buf, n, ps + pn + 1, &ls)
    if ln < 0:
        return None
    sn = _bstr(buf, n, ls + ln, &ss)
    if sn < 0 or ss + sn != n:
        return None
    return (
        PyBytes_FromStringAndSize(<const char *>buf + ps, pn),
        PyBytes_FromStringAndSize(<const char *>buf + ls, ln),
        PyBytes_FromStringAndSize(<const char *>buf + ss, sn),
    )


cdef inline bint _is_hash(object h):
    return type(h) is bytes and len(<bytes>h) == 32


# Merkle nodes are hashed with libcrypto's SHA-256 (the library hashlib itself uses)
# through its plain C functions when the running Python's _hashlib exposes them:
# no Python object per node (issue 6). Nothing is linked at build time; where the
# symbols are missing, or the self-test below disagrees with hashlib, hashlib is used.
ctypedef int (*_sha_init_t)(void *ctx) noexcept nogil
ctypedef int (*_sha_update_t)(void *ctx, const void *data, size_t n) noexcept nogil
ctypedef int (*_sha_final_t)(unsigned char *md, void *ctx) noexcept nogil
cdef _sha_init_t _sha_init = NULL
cdef _sha_update_t _sha_update = NULL
cdef _sha_final_t _sha_final = NULL


cdef int _node(const unsigned char *left, const unsigned char *right,
               unsigned char *out) except -1:
    """out = SHA-256(0x01 || left || right), RFC 9162 §2.1.1 (all 32 bytes)."""
    cdef unsigned char buf[65]
    cdef uint64_t ctx[64]  # 512 bytes: room for any SHA256_CTX (OpenSSL's is 112)
    buf[0] = 1
    memcpy(buf + 1, left, 32)
    memcpy(buf + 33, right, 32)
    if _sha_init != NULL:
        if _sha_init(ctx) and _sha_update(ctx, buf, 65) and _sha_final(out, ctx):
            return 0
    digest = _sha256(PyBytes_FromStringAndSize(<const char *>buf, 65)).digest()
    memcpy(out, PyBytes_AS_STRING(digest), 32)
    return 0


def _bind_libcrypto():
    global _sha_init, _sha_update, _sha_final
    cdef unsigned char out[32]
    cdef bytes left = bytes(range(32)), right = bytes(range(32, 64))
    try:
        import ctypes

        import _hashlib
        lib = ctypes.CDLL(_hashlib.__file__)
        addr = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                for name in ("SHA256_Init", "SHA256_Update", "SHA256_Final")]
    except (ImportError, OSError, AttributeError):
        return
    if not all(addr):
        return
    _sha_init = <_sha_init_t><size_t>addr[0]
    _sha_update = <_sha_update_t><size_t>addr[1]
    _sha_final = <_sha_final_t><size_t>addr[2]
    _node(left, right, out)
    if out[:32] != _sha256(b"\x01" + left + right).digest():
        _sha_init = NULL


_bind_libcrypto()


def _node_backend():
    """Which SHA-256 hashes Merkle nodes: "libcrypto" or "hashlib" (for the tests)."""
    return "libcrypto" if _sha_init != NULL else "hashlib"


def consistency_error(size1, size2, root1, root2, proof):
    cdef int64_t fn, sn, s1, s2
    cdef Py_ssize_t i
    cdef unsigned char fr[32]
    cdef unsigned char sr[32]
    cdef const unsigned char *c
    cdef list path
    # Unusual shapes (sizes beyond int64, non-bytes hashes, bad sizes) take the
    # reference path, which words every error.
    if not (type(size1) is int and type(size2) is int and _is_hash(root1) and _is_hash(root2)):
        return _py.consistency_error(size1, size2, root1, root2, proof)
    if not (0 < size1 < size2 < 0x7FFFFFFFFFFFFFFF):
        return _py.consistency_error(size1, size2, root1, root2, proof)
    path = list(proof)
    for h in path:
        if not _is_hash(h):
            return _py.consistency_error(size1, size2, root1, root2, proof)
    s1, s2 = size1, size2
    if s1 & (s1 - 1) == 0:
        path.insert(0, root1)
    if not path:
        return "consistency proof is empty"
    fn, sn = s1 - 1, s2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    memcpy(fr, PyBytes_AS_STRING(<bytes>path[0]), 32)
    memcpy(sr, fr, 32)
    for i in range(1, len(path)):
        c = <const unsigned char *>PyBytes_AS_STRING(<bytes>path[i])
        if sn == 0:
            return "consistency proof is too long"
        if fn & 1 or fn == sn:
            _node(c, fr, fr)
            _node(c, sr, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            _node(sr, c, sr)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return "consistency proof is too short"
    if memcmp(fr, PyBytes_AS_STRING(<bytes>root1), 32):
        return "consistency proof does not reproduce the previous root"
    if memcmp(sr, PyBytes_AS_STRING(<bytes>root2), 32):
        return "consistency proof does not reproduce the new root"
    return None


# --- claims layout: the exact types loads returns; anything else goes to the twin ---

cdef const char *_HEX = b"0123456789abcdef"


cdef str _hex(bytes b):
    """``b.hex()`` without a method call."""
    cdef Py_ssize_t i, n = len(b)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(b)
    cdef str out = PyUnicode_New(2 * n, 127)
    cdef char *o = <char *>PyUnicode_DATA(out)
    for i in range(n):
        o[2 * i] = _HEX[p[i] >> 4]
        o[2 * i + 1] = _HEX[p[i] & 15]
    return out


cdef str _EAT_PROFILE = _py.EAT_PROFILE
# the pure twin's ranges (docs/attestation-profile.md, *Claims*)
cdef object _INT_MIN = _py.INT_MIN
cdef object _INT_MAX = _py.INT_MAX
cdef object _MAX_TIME_MS = _py.MAX_TIME_MS
cdef object _MAX_TIME_S = _py.MAX_TIME_S
cdef object _U32 = 2**32 - 1


cdef inline bint _is_uint(object v):
    return type(v) is int and 0 <= v <= _INT_MAX


cdef inline bint _is_int64(object v):
    return type(v) is int and _INT_MIN <= v <= _INT_MAX


cdef inline bint _is_time(object v):
    return type(v) is int and 0 <= v <= _MAX_TIME_MS


cdef inline bint _is_time_or_null(object v):
    return v is None or (type(v) is int and 0 <= v <= _MAX_TIME_MS)


cdef bint _pairs_ok(object v, bint times):
    """``gaps`` (frame seq pairs) or ``offline`` (ms pairs, start <= end)."""
    cdef list p
    if type(v) is not list:
        return False
    for x in <list>v:
        if type(x) is not list or len(<list>x) != 2:
            return False
        p = <list>x
        if times:
            if not (_is_time(p[0]) and _is_time(p[1]) and p[0] <= p[1]):
                return False
        elif not (type(p[0]) is int and type(p[1]) is int and 0 <= p[0] <= _U32
                  and 0 <= p[1] <= _U32):
            return False
    return True


cdef bint _record_ok(dict r):
    """``_py.record_problem(r) == ""`` for the exact types loads returns."""
    for k, v in r.items():
        if type(k) is not str:
            return False
        if k == "source" or k == "protocol" or k == "port":
            if type(v) is not str:
                return False
        elif k == "device":
            if not (v is None or type(v) is str):
                return False
        elif k == "gaps":
            if not _pairs_ok(v, False):
                return False
        elif k == "offline":
            if not _pairs_ok(v, True):
                return False
        elif k == "problems":
            if type(v) is not list:
                return False
            for x in <list>v:
                if type(x) is not str:
                    return False
        elif not _is_uint(v):  # a counter
            return False
    return True
cdef object _CF_SHA256 = _py.CF_SHA256
cdef tuple _EMPTY = ()
cdef object _ABSENT = object()


def claims_fields(claims):
    cdef object r = None
    if type(claims) is dict:
        r = _claims_fast(<dict>claims)
    if r is None:  # a layout problem or an unusual type: the twin decides and words it
        return _py.claims_fields(claims)
    for k in ("checkpoint", "config", "rules", "risk"):
        del (<dict>r[0])[k]
    return r


cdef object _episodes_fast(list eps):
    """Claim -70001/6 key 7, or None to let the twin decide."""
    cdef list out = []
    cdef list e
    cdef object a, b, c
    for x in eps:
        if type(x) is not list or len(<list>x) != 3:
            return None
        e = <list>x
        a, b, c = e[0], e[1], e[2]
        if not _is_time(a) or not _is_time_or_null(b):
            return None
        if c is None:
            pass
        elif type(c) is int:
            if not _is_int64(c):
                return None
            c = float(c)
        elif type(c) is not float or not isfinite(<double>c):
            return None
        out.append((a, b, c))
    return tuple(out)


cdef object _rules_fast(list raw):
    cdef list rules = []
    cdef dict r
    cdef object rule_id, evaluated, violated, errors, eps
    for x in raw:
        if type(x) is not dict:
            return None
        r = <dict>x
        rule_id, evaluated, violated, errors = r.get(1), r.get(2), r.get(3), r.get(4)
        if not (type(rule_id) is str and _is_uint(evaluated) and _is_uint(violated)
                and _is_uint(errors)):
            return None
        first, last = r.get(5), r.get(6)
        if not (_is_time_or_null(first) and _is_time_or_null(last)):
            return None
        eps = r.get(7, _EMPTY)
        if eps is _EMPTY:
            pass
        elif type(eps) is list:
            eps = _episodes_fast(<list>eps) if eps else _EMPTY
            if eps is None:
                return None
        else:
            return None
        rules.append({
            "rule_id": rule_id,
            "evaluated": evaluated,
            "violated": violated,
            "errors": errors,
            "first_violation_ms": first,
            "last_violation_ms": last,
            "episodes": eps,
        })
    return rules


cdef object _risk_fast(list raw):
    cdef list risk = []
    cdef dict r
    cdef object model_id, provider
    for x in raw:
        if type(x) is not dict:
            return None
        r = <dict>x
        model_id, score, provider = r.get(1), r.get(2), r.get(3)
        reason, ood = r.get(4, ""), r.get(5)
        if type(model_id) is not str or type(provider) is not str or type(reason) is not str:
            return None
        if not (score is None or (type(score) is float and 0.0 <= <double>score <= 1.0)):
            return None
        if ood is not None:
            if type(ood) is not list or not all(type(n) is str for n in ood):
                return None
            ood = tuple(ood)
        risk.append(
            {"model_id": model_id, "score": score, "provider": provider,
             "reason": reason, "ood": ood}
        )
    return risk


cdef bint _fleet_fast(dict cfg, dict out):
    """-70001/5 keys 6-8 into ``out``; False to let the twin decide."""
    cdef object v
    cdef dict m
    cdef list c
    out["tuf"] = out["targets"] = out["changed"] = None
    v = cfg.get(6, _ABSENT)
    if v is not _ABSENT:
        if type(v) is not dict or len(<dict>v) != 4:
            return False
        m = <dict>v
        for k, x in m.items():
            if type(k) is not int or not 1 <= <object>k <= 4 or not _is_uint(x):
                return False
        out["tuf"] = {"root": m[1], "timestamp": m[2], "snapshot": m[3], "targets": m[4]}
    v = cfg.get(7, _ABSENT)
    if v is not _ABSENT:
        if type(v) is not dict:
            return False
        m = {}
        for k, x in (<dict>v).items():
            if type(k) is not str or type(x) is not bytes or len(<bytes>x) != 32:
                return False
            m[k] = _hex(<bytes>x)
        out["targets"] = m
    v = cfg.get(8, _ABSENT)
    if v is not _ABSENT:
        if type(v) is not list or len(<list>v) != 2:
            return False
        c = <list>v
        if not _is_uint(c[0]) or not _is_time(c[1]):
            return False
        out["changed"] = (c[0], c[1])
    out["state_in"] = None
    if 9 in cfg:
        v = cfg[9]
        if type(v) is not bytes or len(<bytes>v) != 32:
            return False
        out["state_in"] = _hex(<bytes>v)
    return True


cdef object _claims_fast(dict claims):
    """parse_claims' checks for the exact types loads returns, or None."""
    cdef object v, rules, risk, prev, root, nonce, device_id, seq, readings
    cdef object origin, size, prev_size, policy_id, policy_version, digest
    cdef object iat, bootcount, degraded, recs, config_version, cti, uptime
    cdef dict p, cp, cfg, subs, agent, health, models, counters, config
    cdef list win, agent_ver, agent_meas, m
    cdef tuple proof, sources
    cdef str agent_digest
    v = claims.get(265)
    if type(v) is not str or <str>v != _EAT_PROFILE:
        return None
    v = claims.get(-70001)
    if type(v) is not dict:
        return None
    p = <dict>v
    v = p.get(3)
    if type(v) is not dict:
        return None
    cp = <dict>v
    v = p.get(4)
    if type(v) is not list or len(<list>v) != 2:
        return None
    win = <list>v
    if not _is_time(win[0]) or not _is_time(win[1]):
        return None
    v = p.get(5)
    if type(v) is not dict:
        return None
    cfg = <dict>v
    v = p.get(6)
    if type(v) is not list:
        return None
    rules = _rules_fast(<list>v)
    if rules is None:
        return None
    v = p.get(7)
    if type(v) is not list:
        return None
    risk = _risk_fast(<list>v)
    if risk is None:
        return None
    prev = p.get(2)
    if prev is not None and not (type(prev) is bytes and len(<bytes>prev) == 32):
        return None
    v = cp.get(5)
    if type(v) is not list:
        return None
    proof = tuple(<list>v)
    for h in proof:
        if type(h) is not bytes or len(<bytes>h) != 32:
            return None
    root = cp.get(3)
    if type(root) is not bytes or len(<bytes>root) != 32:
        return None
    nonce = claims.get(10)
    if nonce is not None and not (type(nonce) is bytes and 8 <= len(<bytes>nonce) <= 64):
        return None
    v = claims.get(266)
    if type(v) is not dict:
        return None
    subs = <dict>v
    v = subs.get("agent")
    if type(v) is not dict:
        return None
    agent = <dict>v
    v = agent.get(271)
    if type(v) is not list:
        return None
    agent_ver = <list>v
    v = agent.get(273)
    if type(v) is not list:
        return None
    agent_meas = <list>v
    device_id, seq, readings = p.get(9), p.get(1), p.get(10)
    if type(device_id) is not str or not _is_uint(seq) or not _is_uint(readings):
        return None
    origin, size, prev_size = cp.get(1), cp.get(2), cp.get(4)
    if type(origin) is not str or not _is_uint(size) or not _is_uint(prev_size):
        return None
    policy_id, policy_version, digest = cfg.get(1), cfg.get(2), cfg.get(3)
    if type(policy_id) is not str or not _is_uint(policy_version) or type(digest) is not bytes:
        return None
    config_version = cfg.get(5, 0)
    if not _is_uint(config_version):
        return None
    v = cfg.get(4)
    if type(v) is not dict:
        return None
    models = {}
    for k, d in (<dict>v).items():
        if type(k) is not str or type(d) is not bytes:
            return None
        models[k] = _hex(<bytes>d)
    config = {
        "policy_id": policy_id,
        "policy_version": policy_version,
        "policy_digest": _hex(<bytes>digest),
        "model_digests": models,
        "config_version": config_version,
    }
    if not _fleet_fast(cfg, config):
        return None
    v = p.get(8)
    if type(v) is not dict:
        return None
    health = <dict>v
    counters = {}
    for k, x in health.items():
        if type(k) is not str:
            return None
        if <str>k == "sources":
            continue
        if not _is_uint(x):
            return None
        counters[k] = x
    recs = health.get("sources", _EMPTY)
    if recs is _EMPTY:
        sources = _EMPTY
    elif type(recs) is list:
        for r in <list>recs:
            if type(r) is not dict or type((<dict>r).get("source")) is not str:
                return None
            if not _record_ok(<dict>r):
                return None
        sources = tuple(<list>recs)
    else:
        return None
    degraded = p.get(11, _EMPTY)
    if degraded is not _EMPTY:
        if type(degraded) is not list:
            return None
        for d in <list>degraded:
            if type(d) is not str:
                return None
        degraded = tuple(<list>degraded)
    iat, bootcount = claims.get(6), claims.get(267)
    if not (type(iat) is int and 0 <= iat <= _MAX_TIME_S) or not _is_uint(bootcount):
        return None
    cti, uptime = claims.get(7, _ABSENT), claims.get(261, 0)
    if cti is _ABSENT:
        cti = b""
    elif type(cti) is not bytes or len(<bytes>cti) != 16:
        return None
    if not _is_uint(uptime):
        return None
    agent_digest = ""
    for x in agent_meas:
        if type(x) is tuple:
            return None
        if type(x) is not list or len(<list>x) != 2:
            continue
        m = <list>x
        if m[0] == _CF_SHA256:
            if type(m[1]) is bytes:
                agent_digest = _hex(<bytes>m[1])
                break
            if isinstance(m[1], bytes):
                return None
    evidence = {
        "device_id": device_id,
        "seq": seq,
        "prev": prev,
        "window_start_ms": win[0],
        "window_end_ms": win[1],
        "readings": readings,
        "health": counters,
        "source_health": sources,
        "degraded": degraded,
        "issued_at": iat,
        "cti": cti,
        "uptime_s": uptime,
        "bootcount": bootcount,
        "nonce": nonce,
        "agent_version": str(agent_ver[0]) if agent_ver else "",
        "agent_digest": agent_digest,
        "sensors": {},
        "extra": {},
        "restart": None,  # -70001/12: agent.evidence.claims.parse_claims reads it
        "self_tests": (),  # -70001/13: agent.evidence.claims.parse_claims reads it
        # set by evidence_from_claims; here so the dict is sized for them up front
        "checkpoint": None,
        "config": None,
        "rules": None,
        "risk": None,
    }
    checkpoint = {
        "origin": origin, "size": size, "root": root, "prev_size": prev_size,
        "consistency": proof,
    }
    return evidence, checkpoint, config, rules, risk


cdef object _object_new = object.__new__


cdef inline object _instance(object cls, dict fields):
    cdef object obj = _object_new(cls)
    PyObject_GenericSetDict(obj, fields, NULL)
    return obj


def evidence_from_claims(claims, types):
    cdef object r = None
    cdef dict ev
    cdef list rules, risk
    cdef Py_ssize_t i
    cdef object rule_t, risk_t, episode_t
    if type(claims) is dict:
        r = _claims_fast(<dict>claims)
    if r is None:
        return _py.evidence_from_claims(claims, types)
    ev, cp, cfg, rules, risk = r
    rule_t, risk_t, episode_t = types.rule, types.risk, types.episode
    for i in range(len(rules)):
        d = <dict>rules[i]
        eps = d["episodes"]
        if eps:
            d["episodes"] = tuple([
                _instance(episode_t, {"start_ms": e[0], "end_ms": e[1], "peak": e[2]})
                for e in <tuple>eps
            ])
        rules[i] = _instance(rule_t, d)
    for i in range(len(risk)):
        risk[i] = _instance(risk_t, <dict>risk[i])
    ev["checkpoint"] = _instance(types.checkpoint, cp)
    ev["config"] = _instance(types.config, cfg)
    ev["rules"] = tuple(rules)
    ev["risk"] = tuple(risk)
    return _instance(types.evidence, ev)
