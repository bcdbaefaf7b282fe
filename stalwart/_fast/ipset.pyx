# cython: language_level=3
"""CIDR set for IPv4 and IPv6 with per-entry expiry and a payload (security.md §2, IpMask rules in
spec/README.md). Same API and results as the twin ``ipset_py``; read its docstring for semantics.

Structure, and why: every entry lives in one open-addressing hash table keyed by
(128-bit masked network, prefix length), IPv4 folded into ``::ffff:0:0/96``. A lookup probes once per
prefix length in use, longest first, restricted to the lengths that can contain the address (IPv4
and native IPv6 keep separate length lists). Realistic block lists use a handful of lengths (a ban
list is mostly /32, /24, /16 and /64), so that is 1–4 probes of one 32-byte slot each, usually a
single cache line apiece, with no pointer chasing; a Patricia trie (pytricia) walks up to 32/128
dependent nodes per lookup, which is what makes it 7x slower at this size (anchors.md §3).

The table is keyed by a seeded multiply-fold hash: addresses are attacker-chosen (bans are raised for
them), and a fixed hash would let a client pick addresses that collide into long probe chains.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memchr, memcpy

import os

from stalwart._fast.ipset_py import IpEntry, parse_address, parse_mask

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    int AF_INET
    int AF_INET6

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline uint64_t ips_be64(const unsigned char *p) {
        uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v);
    }
    static inline uint64_t ips_be32(const unsigned char *p) {
        uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v);
    }
    static inline void ips_put64(unsigned char *p, uint64_t v) {
        v = __builtin_bswap64(v); memcpy(p, &v, 8);
    }
    /* wyhash-style multiply-fold with per-set seeds: two 64x64->128 products. */
    static inline uint64_t ips_mum(uint64_t a, uint64_t b) {
        __uint128_t m = (__uint128_t)a * b;
        return (uint64_t)m ^ (uint64_t)(m >> 64);
    }
    static inline uint64_t ips_hash(uint64_t hi, uint64_t lo, uint64_t plen,
                                    uint64_t s0, uint64_t s1, uint64_t s2) {
        return ips_mum(hi ^ s0 ^ (plen * 0x9E3779B97F4A7C15ULL), lo ^ s1 ^ s2);
    }
    /* One probe group: bit i of the result is set when tags[i] == tag; *empty likewise for 0.
       SSE2 is part of x86-64, so this is one compare per 16 slots there; elsewhere a plain loop. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline uint32_t ips_group(const uint8_t *t, uint8_t tag, uint32_t *empty) {
        __m128i g = _mm_loadu_si128((const __m128i *)t);
        *empty = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(g, _mm_setzero_si128()));
        return (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(g, _mm_set1_epi8((char)tag)));
    }
    #else
    static inline uint32_t ips_group(const uint8_t *t, uint8_t tag, uint32_t *empty) {
        uint32_t m = 0, e = 0;
        for (int i = 0; i < 16; i++) {
            m |= (uint32_t)(t[i] == tag) << i;
            e |= (uint32_t)(t[i] == 0) << i;
        }
        *empty = e;
        return m;
    }
    #endif
    """
    uint64_t ips_be64(const unsigned char *p) noexcept nogil
    uint64_t ips_be32(const unsigned char *p) noexcept nogil
    void ips_put64(unsigned char *p, uint64_t v) noexcept nogil
    uint64_t ips_hash(uint64_t hi, uint64_t lo, uint64_t plen, uint64_t s0, uint64_t s1, uint64_t s2) noexcept nogil
    uint32_t ips_group(const uint8_t *t, uint8_t tag, uint32_t *empty) noexcept nogil
    int __builtin_ctz(unsigned int x) noexcept nogil

DEF MIN_CAP = 16
DEF GROUP = 16  # tags compared per probe step; the tag array carries GROUP mirrored bytes
cdef uint64_t MAPPED_LO = 0xFFFF00000000ULL  # low half of ::ffff:0:0

# Masks of each prefix length in the 128-bit space, split into halves.
cdef uint64_t HM[129]
cdef uint64_t LM[129]
cdef int _i
for _i in range(129):
    HM[_i] = 0 if _i == 0 else (0xFFFFFFFFFFFFFFFFULL if _i >= 64 else (0xFFFFFFFFFFFFFFFFULL << (64 - _i)))
    LM[_i] = 0 if _i <= 64 else (0xFFFFFFFFFFFFFFFFULL if _i == 128 else (0xFFFFFFFFFFFFFFFFULL << (128 - _i)))


cdef inline bint _is_mapped(uint64_t hi, uint64_t lo) noexcept nogil:
    return hi == 0 and (lo >> 32) == 0xFFFF


cdef inline bint _overlaps_mapped(uint64_t hi, uint64_t lo, int plen) noexcept nogil:
    if plen <= 96:
        return (0 & HM[plen]) == hi and (MAPPED_LO & LM[plen]) == lo
    return _is_mapped(hi, lo)


cdef inline bint _overlaps_native(uint64_t hi, uint64_t lo, int plen) noexcept nogil:
    return plen < 96 or not _is_mapped(hi, lo)


cdef inline int _decode(const unsigned char *p, Py_ssize_t n, uint64_t *hi, uint64_t *lo) noexcept nogil:
    if n == 4:
        hi[0] = 0
        lo[0] = MAPPED_LO | ips_be32(p)
        return 32
    if n == 16:
        hi[0] = ips_be64(p)
        lo[0] = ips_be64(p + 8)
        return 128
    return -1


cdef object _as_entry(uint64_t hi, uint64_t lo, int plen, int64_t expires, object value):
    cdef unsigned char buf[16]
    if plen >= 96 and _is_mapped(hi, lo):
        ips_put64(buf, lo)
        return IpEntry(PyBytes_FromStringAndSize(<char *> buf + 4, 4), plen - 96, expires, value)
    ips_put64(buf, hi)
    ips_put64(buf + 8, lo)
    return IpEntry(PyBytes_FromStringAndSize(<char *> buf, 16), plen, expires, value)


cdef class IpSet:
    """CIDR set with per-entry expiry and payload (security.md §2); see ``ipset_py`` for semantics."""

    def __cinit__(self):
        seed = os.urandom(24)
        cdef const unsigned char *s = seed
        self._seed0 = ips_be64(s)
        self._seed1 = ips_be64(s + 8)
        self._seed2 = ips_be64(s + 16) | 1
        self._values = []
        self._free = []
        self._slots = NULL
        self._tags = NULL
        self._reset(MIN_CAP)

    def __dealloc__(self):
        free(self._slots)
        free(self._tags)

    cdef void _reset(self, Py_ssize_t cap) except *:
        cdef ips_slot *slots = <ips_slot *> calloc(cap, sizeof(ips_slot))
        cdef uint8_t *tags = <uint8_t *> calloc(cap + GROUP, 1)
        if slots == NULL or tags == NULL:
            free(slots)
            free(tags)
            raise MemoryError()
        cdef Py_ssize_t i
        free(self._slots)
        free(self._tags)
        self._slots = slots
        self._tags = tags
        self._cap = cap
        self._count = 0
        self._values = []
        self._free = []
        for i in range(129):
            self._n_mapped[i] = 0
            self._n_native[i] = 0
            self._n_all[i] = 0
        self._k_mapped = 0
        self._k_native = 0

    # -- hash table -------------------------------------------------------------------------------

    cdef inline uint64_t _hash(self, uint64_t hi, uint64_t lo, int plen) noexcept nogil:
        return ips_hash(hi, lo, plen, self._seed0, self._seed1, self._seed2)

    cdef Py_ssize_t _find(self, uint64_t hi, uint64_t lo, int plen) noexcept nogil:
        # Swiss-table style linear probing: a one-byte tag per slot (high bit = occupied, 7 hash
        # bits) sits in a dense array that stays in L2 even for 100k entries, and is compared 16 at
        # a time. The 32-byte slot is read only when its tag agrees, so a miss -- the common case
        # for a block list -- is one group compare with no data-dependent branch per slot.
        cdef Py_ssize_t mask = self._cap - 1
        cdef uint64_t hv = self._hash(hi, lo, plen)
        cdef Py_ssize_t h = <Py_ssize_t> (hv & mask), j
        cdef uint8_t tag = <uint8_t> (0x80 | (hv >> 57))
        cdef uint32_t m, e
        cdef ips_slot *s
        while True:
            m = ips_group(self._tags + h, tag, &e)
            if e:
                m &= (e & (0 - e)) - 1  # only candidates before the first empty slot
            while m:
                j = (h + __builtin_ctz(m)) & mask
                s = self._slots + j
                if s.lo == lo and s.hi == hi and s.plen == plen:
                    return j
                m &= m - 1
            if e:
                return -1 - ((h + __builtin_ctz(e)) & mask)  # not found; where it would go
            h = (h + GROUP) & mask

    cdef inline void _set_tag(self, Py_ssize_t h, uint8_t tag) noexcept nogil:
        self._tags[h] = tag
        if h < GROUP:
            self._tags[self._cap + h] = tag  # mirror, so a group read at the end wraps for free

    cdef void _put(self, Py_ssize_t h, ips_slot *slot) noexcept nogil:
        self._slots[h] = slot[0]
        self._set_tag(h, <uint8_t> (0x80 | (self._hash(slot.hi, slot.lo, slot.plen) >> 57)))

    cdef void _grow(self) except *:
        cdef ips_slot *old = self._slots
        cdef uint8_t *oldtags = self._tags
        cdef Py_ssize_t oldcap = self._cap, i, j
        cdef ips_slot *slots = <ips_slot *> calloc(oldcap * 2, sizeof(ips_slot))
        cdef uint8_t *tags = <uint8_t *> calloc(oldcap * 2 + GROUP, 1)
        if slots == NULL or tags == NULL:
            free(slots)
            free(tags)
            raise MemoryError()
        self._slots = slots
        self._tags = tags
        self._cap = oldcap * 2
        for i in range(oldcap):
            if oldtags[i]:
                j = -1 - self._find(old[i].hi, old[i].lo, old[i].plen)
                self._put(j, old + i)
        free(old)
        free(oldtags)

    cdef void _delete_slot(self, Py_ssize_t h) noexcept nogil:
        # Backward-shift deletion keeps linear-probe chains intact without tombstones, so lookups
        # never slow down after many bans expire.
        cdef Py_ssize_t mask = self._cap - 1, j = h, home
        cdef ips_slot *s = self._slots
        cdef uint8_t *tags = self._tags
        while True:
            j = (j + 1) & mask
            if tags[j] == 0:
                break
            home = <Py_ssize_t> (self._hash(s[j].hi, s[j].lo, s[j].plen) & mask)
            # move s[j] into the hole at h unless its home lies cyclically in (h, j]
            if (j > h and (home <= h or home > j)) or (j < h and (home <= h and home > j)):
                s[h] = s[j]
                self._set_tag(h, tags[j])
                h = j
        self._set_tag(h, 0)

    cdef void _account(self, uint64_t hi, uint64_t lo, int plen, int delta) noexcept:
        cdef bint changed = False
        cdef int n, k
        self._n_all[plen] += delta
        if _overlaps_mapped(hi, lo, plen):
            self._n_mapped[plen] += delta
            changed |= self._n_mapped[plen] == (1 if delta > 0 else 0)
        if _overlaps_native(hi, lo, plen):
            self._n_native[plen] += delta
            changed |= self._n_native[plen] == (1 if delta > 0 else 0)
        if changed:
            k = 0
            for n in range(128, -1, -1):
                if self._n_mapped[n]:
                    self._lens_mapped[k] = n
                    k += 1
            self._k_mapped = k
            k = 0
            for n in range(128, -1, -1):
                if self._n_native[n]:
                    self._lens_native[k] = n
                    k += 1
            self._k_native = k

    cdef int32_t lookup_packed(self, const unsigned char *p, Py_ssize_t n, int64_t now) noexcept nogil:
        cdef uint64_t hi, lo
        cdef uint8_t *lens
        cdef int k, i, plen
        cdef Py_ssize_t h
        cdef ips_slot *s
        if _decode(p, n, &hi, &lo) < 0:
            return -2
        if _is_mapped(hi, lo):
            lens = self._lens_mapped
            k = self._k_mapped
        else:
            lens = self._lens_native
            k = self._k_native
        for i in range(k):
            plen = lens[i]
            h = self._find(hi & HM[plen], lo & LM[plen], plen)
            if h >= 0:
                s = self._slots + h
                if s.expires == 0 or s.expires > now:
                    return s.vidx
        return -1

    # -- key helpers (Python objects allowed: not the lookup path) ---------------------------------

    cdef int _key(self, object packed, object prefix, uint64_t *hi, uint64_t *lo) except -1:
        cdef const unsigned char[::1] view = bytes(packed) if not PyBytes_CheckExact(packed) else packed
        cdef int bits = _decode(&view[0] if view.shape[0] else NULL, view.shape[0], hi, lo)
        if bits < 0:
            raise ValueError("a packed address is 4 or 16 bytes")
        cdef int plen = prefix
        if plen < 0 or plen > bits:
            raise ValueError(f"IPv{4 if bits == 32 else 6} prefix must be 0..{bits}")
        plen += 128 - bits
        hi[0] &= HM[plen]
        lo[0] &= LM[plen]
        return plen

    # -- public API -------------------------------------------------------------------------------

    def add(self, packed, int prefix, int64_t expires=0, value=True):
        """Insert or replace the entry for ``packed/prefix`` (host bits cleared). ``expires`` is unix
        seconds, 0 for never; ``value`` (not None) is what :meth:`match` returns. True if new."""
        cdef uint64_t hi, lo
        if value is None:
            raise ValueError("the payload may not be None")
        if expires < 0:
            raise ValueError("expires must be >= 0")
        cdef int plen = self._key(packed, prefix, &hi, &lo)
        cdef Py_ssize_t h = self._find(hi, lo, plen)
        cdef int32_t vidx
        if h >= 0:
            self._slots[h].expires = expires
            self._values[self._slots[h].vidx] = value
            return False
        if (self._count + 1) * 2 > self._cap:
            self._grow()
            h = self._find(hi, lo, plen)
        h = -1 - h
        if self._free:
            vidx = self._free.pop()
            self._values[vidx] = value
        else:
            if len(self._values) >= 0x7FFFFFFF:
                raise OverflowError("IpSet is full")
            vidx = len(self._values)
            self._values.append(value)
        cdef ips_slot slot
        slot.hi = hi
        slot.lo = lo
        slot.plen = plen
        slot.expires = expires
        slot.vidx = vidx
        self._put(h, &slot)
        self._count += 1
        self._account(hi, lo, plen, 1)
        return True

    cdef void _drop(self, Py_ssize_t h) except *:
        cdef ips_slot s = self._slots[h]
        self._values[s.vidx] = None
        self._free.append(s.vidx)
        self._delete_slot(h)
        self._count -= 1
        self._account(s.hi, s.lo, s.plen, -1)

    def remove(self, packed, int prefix):
        """Remove the entry for ``packed/prefix``; returns whether there was one."""
        cdef uint64_t hi, lo
        cdef int plen = self._key(packed, prefix, &hi, &lo)
        cdef Py_ssize_t h = self._find(hi, lo, plen)
        if h < 0:
            return False
        self._drop(h)
        return True

    def get(self, packed, int prefix):
        """The entry stored for exactly ``packed/prefix`` (expired or not), or None."""
        cdef uint64_t hi, lo
        cdef int plen = self._key(packed, prefix, &hi, &lo)
        cdef Py_ssize_t h = self._find(hi, lo, plen)
        if h < 0:
            return None
        return _as_entry(hi, lo, plen, self._slots[h].expires, self._values[self._slots[h].vidx])

    def match(self, packed, int64_t now=0):
        """Payload of the longest unexpired entry containing ``packed`` (4 or 16 bytes), or None."""
        cdef int32_t v
        cdef const unsigned char[::1] view
        if PyBytes_CheckExact(packed):
            v = self.lookup_packed(<const unsigned char *> PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed), now)
        else:
            view = packed
            v = self.lookup_packed(&view[0] if view.shape[0] else NULL, view.shape[0], now)
        if v >= 0:
            return <object> PyList_GET_ITEM(self._values, v)
        if v == -2:
            raise ValueError("a packed address is 4 or 16 bytes")
        return None

    def contains(self, packed, int64_t now=0):
        """Whether an unexpired entry contains ``packed``."""
        cdef int32_t v
        cdef const unsigned char[::1] view
        if PyBytes_CheckExact(packed):
            v = self.lookup_packed(<const unsigned char *> PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed), now)
        else:
            view = packed
            v = self.lookup_packed(&view[0] if view.shape[0] else NULL, view.shape[0], now)
        if v == -2:
            raise ValueError("a packed address is 4 or 16 bytes")
        return v >= 0

    def match_sockaddr(self, host, int64_t now=0):
        """:meth:`match` on the host part of a ``getpeername()`` result (zone id ignored)."""
        cdef Py_ssize_t n
        cdef const char *s
        cdef const char *pct
        cdef char buf[64]
        cdef unsigned char packed[16]
        cdef int32_t v
        if not PyUnicode_Check(host):
            raise TypeError("address text must be str")
        s = PyUnicode_AsUTF8AndSize(host, &n)
        pct = <const char *> memchr(s, b'%', n)
        if pct != NULL:
            n = pct - s
        if n >= 64 or memchr(s, 0, n) != NULL:
            raise ValueError(f"{host!r} is not an IP address")
        memcpy(buf, s, n)
        buf[n] = 0
        if memchr(buf, b':', n) != NULL:
            if inet_pton(AF_INET6, buf, packed) != 1:
                raise ValueError(f"{host!r} is not an IP address")
            v = self.lookup_packed(packed, 16, now)
        else:
            if inet_pton(AF_INET, buf, packed) != 1:
                raise ValueError(f"{host!r} is not an IP address")
            v = self.lookup_packed(packed, 4, now)
        if v >= 0:
            return <object> PyList_GET_ITEM(self._values, v)
        return None

    def add_text(self, text, int64_t expires=0, value=True):
        """:meth:`add` for an IpMask written as text (``10.0.0.0/8``, ``2001:db8::7``)."""
        packed, prefix = parse_mask(text)
        return self.add(packed, prefix, expires, value)

    def remove_text(self, text):
        packed, prefix = parse_mask(text)
        return self.remove(packed, prefix)

    def match_text(self, text, int64_t now=0):
        """:meth:`match` for an address written as text."""
        return self.match(parse_address(text), now)

    def purge(self, int64_t now):
        """Remove every entry with ``0 < expires <= now``; returns the removed entries."""
        cdef list gone = []
        cdef Py_ssize_t i, h
        cdef ips_slot s
        cdef list keys = []
        for i in range(self._cap):
            s = self._slots[i]
            if self._tags[i] and 0 < s.expires <= now:
                gone.append(_as_entry(s.hi, s.lo, s.plen, s.expires, self._values[s.vidx]))
                keys.append((s.hi, s.lo, s.plen))
        # Deleting shifts slots backwards, so find each victim again instead of reusing indices.
        for hi, lo, plen in keys:
            h = self._find(hi, lo, plen)
            self._drop(h)
        return gone

    def clear(self):
        self._reset(MIN_CAP)

    def prefix_lengths(self):
        """Distinct prefix lengths in use, in the 128-bit space, longest first (probe order)."""
        return tuple(n for n in range(128, -1, -1) if self._n_all[n])

    def __len__(self):
        return self._count

    def __iter__(self):
        """Every entry, expired ones included; order unspecified. Iterates over a snapshot."""
        cdef list out = []
        cdef Py_ssize_t i
        for i in range(self._cap):
            if self._tags[i]:
                out.append(_as_entry(self._slots[i].hi, self._slots[i].lo, self._slots[i].plen,
                                     self._slots[i].expires, self._values[self._slots[i].vidx]))
        return iter(out)
