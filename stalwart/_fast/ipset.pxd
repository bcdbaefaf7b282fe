# cython: language_level=3
"""C-level interface of the CIDR set, for other kernels that cimport it (security.md §2)."""
cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

ctypedef struct ips_slot:
    uint64_t hi
    uint64_t lo
    int64_t expires
    int32_t vidx      # index into IpSet._values
    uint8_t plen      # prefix length in the 128-bit space (IPv4 prefixes are 96 + p)


@cython.final
cdef class IpSet:
    cdef ips_slot *_slots
    cdef uint8_t *_tags           # per slot: 0 empty, else 0x80 | top 7 hash bits; +16 mirrored
    cdef Py_ssize_t _cap          # power of two
    cdef Py_ssize_t _count
    cdef uint64_t _seed0, _seed1, _seed2
    cdef list _values
    cdef list _free
    cdef int32_t _n_mapped[129]
    cdef int32_t _n_native[129]
    cdef int32_t _n_all[129]
    cdef uint8_t _lens_mapped[129]
    cdef uint8_t _lens_native[129]
    cdef int _k_mapped, _k_native

    cdef void _reset(self, Py_ssize_t cap) except *
    cdef uint64_t _hash(self, uint64_t hi, uint64_t lo, int plen) noexcept nogil
    cdef void _set_tag(self, Py_ssize_t h, uint8_t tag) noexcept nogil
    cdef void _put(self, Py_ssize_t h, ips_slot *slot) noexcept nogil
    cdef Py_ssize_t _find(self, uint64_t hi, uint64_t lo, int plen) noexcept nogil
    cdef void _grow(self) except *
    cdef void _delete_slot(self, Py_ssize_t h) noexcept nogil
    cdef void _account(self, uint64_t hi, uint64_t lo, int plen, int delta) noexcept
    cdef int _key(self, object packed, object prefix, uint64_t *hi, uint64_t *lo) except -1
    cdef void _drop(self, Py_ssize_t h) except *

    # Index of the payload of the longest unexpired entry containing the packed address, -1 when
    # none does, -2 when ``n`` is neither 4 nor 16. Never raises, never touches Python objects.
    cdef int32_t lookup_packed(self, const unsigned char *p, Py_ssize_t n, int64_t now) noexcept nogil
