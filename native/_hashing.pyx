# cython: language_level=3
"""Merkle hashing in bulk with OpenSSL's SHA-256 (compiled twin of native/_hashing_py.py,
which defines the semantics)."""

from libc.stdlib cimport free, malloc
from libc.string cimport memcpy


cdef extern from "openssl/sha.h" nogil:
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t n)
    int SHA256_Final(unsigned char *md, SHA256_CTX *c)


# The low-level calls, not SHA256() or EVP: in OpenSSL 3 both fetch the algorithm on each
# call, which costs several times a 65-byte hash.
cdef inline void _sha256(const unsigned char *a, size_t na, const unsigned char *b, size_t nb,
                         unsigned char *md) noexcept nogil:
    cdef SHA256_CTX c
    SHA256_Init(&c)
    SHA256_Update(&c, a, na)
    SHA256_Update(&c, b, nb)
    SHA256_Final(md, &c)


def leaf_hashes(const unsigned char[::1] blob, Py_ssize_t stride):
    """The leaf hashes of the records in ``blob`` (``stride`` bytes each), concatenated."""
    cdef Py_ssize_t size = blob.shape[0]
    if stride <= 0 or size % stride:
        raise ValueError(f"a blob of {size} bytes is not records of {stride}")
    cdef Py_ssize_t n = size // stride, i
    out = bytearray(32 * n)
    if n == 0:
        return bytes(out)
    cdef unsigned char[::1] o = out
    cdef unsigned char zero = 0
    with nogil:
        for i in range(n):
            _sha256(&zero, 1, &blob[i * stride], stride, &o[32 * i])
    return bytes(out)


def perfect_root(const unsigned char[::1] hashes):
    """MTH of the 32-byte hashes in ``hashes``, a power of two of them."""
    cdef Py_ssize_t size = hashes.shape[0]
    cdef Py_ssize_t n = size // 32, j
    if n < 1 or size % 32 or n & (n - 1):
        raise ValueError(f"{size} bytes are not a power of two of 32-byte hashes")
    cdef unsigned char *level = <unsigned char *>malloc(size)
    cdef unsigned char one = 1
    if level == NULL:
        raise MemoryError()
    try:
        with nogil:
            memcpy(level, &hashes[0], size)
            while n > 1:  # node j of the next level overwrites what nodes 2j, 2j+1 were
                for j in range(n // 2):
                    _sha256(&one, 1, level + 64 * j, 64, level + 32 * j)
                n //= 2
        return bytes(level[:32])
    finally:
        free(level)
