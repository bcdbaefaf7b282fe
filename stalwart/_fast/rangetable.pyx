# cython: language_level=3
"""Range table kernel: compiled twin of ``rangetable_py`` (read its docstring for the file layout).

The table lives in a buffer the caller owns (an mmap of the file the master wrote); this class only
keeps pointers into it, so every worker shares one copy through the page cache. A lookup reads the
bucket bounds for the top 16 bits, then binary-searches the 32-bit (IPv4) or 128-bit (IPv6, as
two 64-bit words) starts in that bucket: with 500,000 IPv4 ranges a bucket holds a handful of
entries, so a lookup touches about three cache lines.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from stalwart._fast.rangetable_py import (BUCKETS, HEADER_SIZE, INDEX_BYTES, RangeTableError, _layout,
                                          encode, read_header, write)

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline uint32_t rt_be32(const unsigned char *p) {
        uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v);
    }
    static inline uint64_t rt_be64(const unsigned char *p) {
        uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v);
    }
    """
    uint32_t rt_be32(const unsigned char *p) nogil
    uint64_t rt_be64(const unsigned char *p) nogil

DEF BUCKETS_C = 65536

__all__ = ["RangeTable", "find_pair", "RangeTableError", "encode", "write", "read_header", "BUCKETS", "HEADER_SIZE"]

cdef class RangeTable:
    """Read-only view of a range table buffer; same API and errors as ``rangetable_py.RangeTable``."""

    cdef object _view
    cdef const uint8_t *_base
    cdef readonly Py_ssize_t n4, n6, nvals, size
    cdef readonly object built_at, fingerprint
    cdef const uint32_t *_idx4
    cdef const uint32_t *_s4
    cdef const uint32_t *_ev4   # (end, value) pairs
    cdef const uint32_t *_idx6
    cdef const uint64_t *_s6    # start high halves
    cdef const uint64_t *_r6    # (start lo, end hi, end lo, value | pad << 32) quads
    cdef const uint32_t *_offsets
    cdef const uint8_t *_records

    def __cinit__(self, buf):
        hdr = read_header(buf)
        cdef const uint8_t[::1] view = memoryview(buf).cast("B")
        self._view = view
        self._base = &view[0]
        self.n4, self.n6, self.nvals = hdr["n4"], hdr["n6"], hdr["nvals"]
        self.built_at, self.fingerprint, self.size = hdr["built_at"], hdr["fingerprint"], hdr["size"]
        off4, off6, offv = _layout(self.n4, self.n6, self.nvals)
        cdef Py_ssize_t p = off4
        self._idx4 = <const uint32_t *> (self._base + p)
        p += INDEX_BYTES
        self._s4 = <const uint32_t *> (self._base + p)
        self._ev4 = self._s4 + self.n4
        p = off6
        self._idx6 = <const uint32_t *> (self._base + p)
        p += INDEX_BYTES
        self._s6 = <const uint64_t *> (self._base + p)
        self._r6 = self._s6 + self.n6
        p = offv
        self._offsets = <const uint32_t *> (self._base + p)
        self._records = self._base + p + 4 * (self.nvals + 1)
        if not self._valid():
            raise RangeTableError("range table is damaged (index, values or offsets out of range)")

    cdef bint _valid(self) noexcept nogil:
        """Check every index a lookup will trust, so a damaged file can never make us read
        outside the buffer (read_header already checked the total size)."""
        cdef Py_ssize_t i
        if self._idx4[BUCKETS_C] != self.n4 or self._idx6[BUCKETS_C] != self.n6:
            return False
        for i in range(BUCKETS_C):
            if self._idx4[i] > self._idx4[i + 1] or self._idx6[i] > self._idx6[i + 1]:
                return False
        for i in range(self.n4):
            if self._ev4[2 * i + 1] >= self.nvals:
                return False
        for i in range(self.n6):
            if self._r6[4 * i + 3] >= <uint64_t> self.nvals:
                return False
        if self._offsets[0] != 0:
            return False
        for i in range(self.nvals):
            if self._offsets[i] + 4 > self._offsets[i + 1]:
                return False
        return True

    def __len__(self):
        return self.n4 + self.n6

    cdef inline Py_ssize_t _find4(self, uint32_t ip) noexcept nogil:
        cdef uint32_t b = ip >> 16
        cdef Py_ssize_t lo = self._idx4[b], hi = self._idx4[b + 1], mid
        cdef const uint32_t *s = self._s4
        while lo < hi:  # first position whose start is > ip
            mid = (lo + hi) >> 1
            if s[mid] > ip:
                hi = mid
            else:
                lo = mid + 1
        lo -= 1
        if lo < 0 or self._ev4[2 * lo] < ip:
            return -1
        return self._ev4[2 * lo + 1]

    cdef inline Py_ssize_t _find6(self, uint64_t h, uint64_t l) noexcept nogil:
        cdef uint32_t b = <uint32_t> (h >> 48)
        cdef Py_ssize_t lo = self._idx6[b], hi = self._idx6[b + 1], mid
        cdef const uint64_t *s = self._s6
        cdef const uint64_t *r = self._r6
        cdef uint64_t sh
        while lo < hi:
            mid = (lo + hi) >> 1
            sh = s[mid]
            # The low half is read only on a tie of the high halves.
            if sh > h or (sh == h and r[4 * mid] > l):
                hi = mid
            else:
                lo = mid + 1
        lo -= 1
        if lo < 0:
            return -1
        r += 4 * lo
        if r[1] < h or (r[1] == h and r[2] < l):
            return -1
        return <Py_ssize_t> r[3]

    def find(self, packed):
        """Value index of the range holding ``packed`` (4 or 16 bytes), or -1."""
        if not PyBytes_CheckExact(packed):
            raise TypeError("packed address must be bytes")
        cdef Py_ssize_t n = PyBytes_GET_SIZE(packed)
        cdef const unsigned char *p = <const unsigned char *> PyBytes_AS_STRING(packed)
        if n == 4:
            return self._find4(rt_be32(p))
        if n != 16:
            raise ValueError("packed address must be 4 or 16 bytes")
        if rt_be64(p) == 0 and rt_be32(p + 8) == 0xFFFF:
            return self._find4(rt_be32(p + 12))
        return self._find6(rt_be64(p), rt_be64(p + 8))

    def find_int(self, ip, bint v6):
        """Look an integer address up (IPv6 when ``v6``)."""
        if v6:
            return self._find6(<uint64_t> (ip >> 64), <uint64_t> (ip & 0xFFFFFFFFFFFFFFFF))
        return self._find4(<uint32_t> ip)

    def value(self, Py_ssize_t i):
        """``(number, label)`` of value ``i``."""
        if i < 0 or i >= self.nvals:
            raise IndexError("value index out of range")
        cdef uint32_t a = self._offsets[i], b = self._offsets[i + 1]
        cdef uint32_t num
        memcpy(&num, self._records + a, 4)
        return num, (<const char *> (self._records + a + 4))[:b - a - 4].decode("utf-8")

    def get(self, packed):
        cdef Py_ssize_t i = self.find(packed)
        return None if i < 0 else self.value(i)

    def release(self):
        """Drop the buffer view, so an mmap behind it can be closed."""
        self._view = None
        self._base = NULL
        self.n4 = self.n6 = self.nvals = 0
        self._idx4 = self._idx6 = self._empty_index()

    cdef const uint32_t *_empty_index(self):
        return _EMPTY_INDEX


cdef uint32_t _EMPTY_INDEX[65537]


def find_pair(RangeTable first, RangeTable second, packed):
    """Both tables' value indexes for ``packed`` in one call, as ``(i1 + 1) << 32 | (i2 + 1)``
    (0 when neither holds it); either table may be None. One call instead of two keeps the
    per-lookup Python overhead of the ASN + country lookup a session makes down."""
    if not PyBytes_CheckExact(packed):
        raise TypeError("packed address must be bytes")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(packed), a = -1, c = -1
    cdef const unsigned char *p = <const unsigned char *> PyBytes_AS_STRING(packed)
    cdef uint32_t ip4
    cdef bint v4 = n == 4
    if n == 16 and rt_be64(p) == 0 and rt_be32(p + 8) == 0xFFFF:
        v4 = True
        p += 12
    elif n != 4 and n != 16:
        raise ValueError("packed address must be 4 or 16 bytes")
    if v4:
        ip4 = rt_be32(p)
        if first is not None:
            a = first._find4(ip4)
        if second is not None:
            c = second._find4(ip4)
    else:
        if first is not None:
            a = first._find6(rt_be64(p), rt_be64(p + 8))
        if second is not None:
            c = second._find6(rt_be64(p), rt_be64(p + 8))
    return ((<uint64_t> (a + 1)) << 32) | <uint64_t> (c + 1)
