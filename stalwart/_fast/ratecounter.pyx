# cython: language_level=3
"""Shared-memory sliding-window rate counters (security.md §3 "Sliding windows").

A counter key is ``bytes([category, namespace]) + subject`` (the caller builds it, so a login can
never collide with an address). Each key owns a ring of 61 sub-buckets of width ``period / 60``;
a count sums the current sub-bucket and the 60 before it. That can only over-count (it looks back
up to ``period + period/60``), never under-count, and there is no burst at window boundaries.

Every sub-bucket is one 64-bit word ``bucket_number << 24 | count`` updated by a compare-and-swap
loop: an increment either adds one to the word of the current bucket or replaces the word of a
bucket that left the window. Two workers counting the same key at once therefore never lose an
increment, and no lock is ever held.

Entries live in a fixed-capacity open-addressing table (linear probing over at most
``MAX_PROBE`` slots, key tag = SipHash-1-3 under a random key kept in the header, so subjects an
attacker chooses cannot pile up in one probe run). A new key takes the first never-used slot or one
whose counts have all left their window; when the window holds neither, the least recently used
entry is evicted (``evictions()`` grows, the caller logs it). The ring words of a taken-over slot
are cleared by compare-and-swap from the values seen, so a concurrent first increment of the new
key is never wiped out.

Layout, in uint64 cells: header ``HDR`` cells ([0] magic [1] capacity [2] k0 [3] k1
[4] evictions), then ``capacity`` entries of 64 cells: [0] tag [1] last use (ms) [2] sub-bucket
width (ms) [3..63] the 61 sub-buckets.
"""
from libc.stdint cimport uint64_t, uint8_t, int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline uint64_t rc_load(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void rc_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int rc_cas(uint64_t *p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t rc_add(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    #define RC_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
    #define RC_ROUND do { v0 += v1; v1 = RC_ROTL(v1, 13); v1 ^= v0; v0 = RC_ROTL(v0, 32); \\
        v2 += v3; v3 = RC_ROTL(v3, 16); v3 ^= v2; v0 += v3; v3 = RC_ROTL(v3, 21); v3 ^= v0; \\
        v2 += v1; v1 = RC_ROTL(v1, 17); v1 ^= v2; v2 = RC_ROTL(v2, 32); } while (0)
    /* SipHash-1-3 (Aumasson & Bernstein), the variant CPython uses for str and bytes. */
    static uint64_t rc_siphash13(uint64_t k0, uint64_t k1, const uint8_t *in, size_t len) {
        uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
        uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
        uint64_t m, b = ((uint64_t)len) << 56;
        size_t i, end = len - (len % 8);
        for (i = 0; i < end; i += 8) {
            memcpy(&m, in + i, 8);  /* little-endian hosts only (x86-64, aarch64) */
            v3 ^= m; RC_ROUND; v0 ^= m;
        }
        for (i = 0; i < len % 8; i++) b |= ((uint64_t)in[end + i]) << (8 * i);
        v3 ^= b; RC_ROUND; v0 ^= b;
        v2 ^= 0xff; RC_ROUND; RC_ROUND; RC_ROUND;
        return v0 ^ v1 ^ v2 ^ v3;
    }
    """
    uint64_t rc_load(uint64_t *p) nogil
    void rc_store(uint64_t *p, uint64_t v) nogil
    int rc_cas(uint64_t *p, uint64_t expected, uint64_t desired) nogil
    uint64_t rc_add(uint64_t *p, uint64_t v) nogil
    uint64_t rc_siphash13(uint64_t k0, uint64_t k1, const uint8_t *data, size_t n) nogil

DEF HDR = 8
DEF ENTRY = 64
DEF RING = 61
DEF MAX_PROBE = 16

DEF SUB = 60

MAGIC = 0x52415445434E5452  # "RATECNTR"
SUBBUCKETS = SUB

cdef uint64_t _BMASK = (1ULL << 40) - 1
cdef uint64_t _CMAX = (1ULL << 24) - 1


def size_for(int capacity):
    """Bytes needed for a table of ``capacity`` keys (rounded up to a power of two)."""
    return 8 * (HDR + ENTRY * _pow2(capacity))


def _pow2(int capacity):
    if capacity < 1 or capacity > (1 << 24):
        raise ValueError("capacity must be between 1 and 2**24")
    cdef int n = 16
    while n < capacity:
        n <<= 1
    return n


def siphash13(bytes key, bytes data):
    """SipHash-1-3 of ``data`` under a 16-byte ``key`` (shared with the twin for cross-checks)."""
    if len(key) != 16:
        raise ValueError("the key has 16 bytes")
    return rc_siphash13(int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"),
                        <const uint8_t *> <char *> data, len(data))


cdef inline uint64_t _width(int64_t period_ms) nogil:
    cdef uint64_t w = <uint64_t> period_ms // SUB
    return w if w > 0 else 1


cdef inline uint64_t _sum(uint64_t *ring, uint64_t b) nogil:
    cdef uint64_t total = 0, word
    cdef int i
    for i in range(RING):
        word = rc_load(ring + i)
        if word != 0 and ((b - (word >> 24)) & _BMASK) <= SUB:
            total += word & _CMAX
    return total


cdef class RateCounter:
    cdef object _view
    cdef uint64_t *_cells
    cdef uint64_t *_entries
    cdef readonly int capacity
    cdef uint64_t _mask
    cdef uint64_t _k0, _k1

    def __cinit__(self, buf, int capacity, bytes key=None):
        cdef unsigned char[::1] view = buf
        cdef int cap = _pow2(capacity)
        if view.shape[0] < size_for(capacity):
            raise ValueError("buffer too small for the table")
        self._view = view
        self._cells = <uint64_t *> &view[0]
        self._entries = self._cells + HDR
        self.capacity = cap
        self._mask = cap - 1
        if rc_load(self._cells) == 0:
            if key is None or len(key) != 16:
                import os
                key = os.urandom(16)
            self._cells[1] = cap
            self._cells[2] = int.from_bytes(key[:8], "little")
            self._cells[3] = int.from_bytes(key[8:], "little")
            rc_store(self._cells, MAGIC)
        elif self._cells[0] != MAGIC or self._cells[1] != <uint64_t> cap:
            raise ValueError("buffer holds a table of another shape")
        self._k0 = self._cells[2]
        self._k1 = self._cells[3]

    cdef uint64_t *_find(self, bytes key, uint64_t now, uint64_t width, bint create):
        cdef uint64_t tag = rc_siphash13(self._k0, self._k1, <const uint8_t *> <char *> key, len(key))
        if tag == 0:
            tag = 1
        cdef uint64_t pos = tag & self._mask, t, last, lru_at = 0, w
        cdef uint64_t *e
        cdef uint64_t *lru = NULL
        cdef int i
        for i in range(MAX_PROBE):
            e = self._entries + ((pos + i) & self._mask) * ENTRY
            t = rc_load(e)
            if t == tag:
                return e
            if t == 0:
                break
        if not create:
            return NULL
        i = 0
        while i < MAX_PROBE:
            e = self._entries + ((pos + i) & self._mask) * ENTRY
            t = rc_load(e)
            if t == tag:
                return e
            last = rc_load(e + 1)
            w = rc_load(e + 2)
            # Free: never used, or untouched for longer than its whole window.
            if t == 0 or last + w * (RING + 1) < now:
                if rc_cas(e, t, tag):
                    self._clear(e, now, width)
                    return e
                continue
            if lru == NULL or last < lru_at:
                lru = e
                lru_at = last
            i += 1
        t = rc_load(lru)
        if rc_cas(lru, t, tag):
            rc_add(self._cells + 4, 1)
            self._clear(lru, now, width)
            return lru
        return NULL

    cdef void _clear(self, uint64_t *e, uint64_t now, uint64_t width) nogil:
        cdef uint64_t word
        cdef int j
        rc_store(e + 1, now)
        rc_store(e + 2, width)
        for j in range(RING):
            word = rc_load(e + 3 + j)
            if word != 0:
                rc_cas(e + 3 + j, word, 0)  # a failure means the new key already counted here

    cpdef long long hit(self, bytes key, long long now_ms, long long period_ms, int n=1) except -1:
        """Count ``n`` events for ``key`` at ``now_ms`` and return the count inside the sliding
        ``period_ms`` window, these events included. 0 when the table cannot hold the key
        (fail open, as security.md §3 asks of a failing counter store)."""
        if period_ms <= 0 or n < 0:
            raise ValueError("period and count must be positive")
        cdef uint64_t width = _width(period_ms)
        cdef uint64_t now = <uint64_t> now_ms
        cdef uint64_t *e = self._find(key, now, width, True)
        if e == NULL:
            return 0
        if rc_load(e + 2) != width:
            rc_store(e + 2, width)  # the period changed (reload): old words age out on their own
        if rc_load(e + 1) < now:
            rc_store(e + 1, now)
        cdef uint64_t b = (now // width) & _BMASK
        cdef uint64_t *slot = e + 3 + (now // width) % RING
        cdef uint64_t word, new, c
        while True:
            word = rc_load(slot)
            if word != 0 and (word >> 24) == b:
                c = (word & _CMAX) + <uint64_t> n
                new = (b << 24) | (c if c < _CMAX else _CMAX)
            else:
                new = (b << 24) | (<uint64_t> n if <uint64_t> n < _CMAX else _CMAX)
            if rc_cas(slot, word, new):
                break
        return <long long> _sum(e + 3, b)

    cpdef long long count(self, bytes key, long long now_ms, long long period_ms) except -1:
        """Events of ``key`` inside the sliding window ending at ``now_ms``."""
        if period_ms <= 0:
            raise ValueError("period must be positive")
        cdef uint64_t width = _width(period_ms)
        cdef uint64_t *e = self._find(key, <uint64_t> now_ms, width, False)
        if e == NULL:
            return 0
        return <long long> _sum(e + 3, (<uint64_t> now_ms // width) & _BMASK)

    def retry_after(self, bytes key, long long now_ms, long long period_ms, long long limit):
        """Milliseconds until the window holds fewer than ``limit`` events again (0: now)."""
        if period_ms <= 0:
            raise ValueError("period must be positive")
        cdef uint64_t width = _width(period_ms)
        cdef uint64_t *e = self._find(key, <uint64_t> now_ms, width, False)
        if e == NULL:
            return 0
        cdef uint64_t b = (<uint64_t> now_ms // width) & _BMASK
        cdef long long total = _sum(e + 3, b)
        cdef uint64_t word, age
        cdef int i, k
        if total < limit:
            return 0
        # Oldest sub-buckets leave first: sub-bucket of age a (0 = current) leaves the window at
        # the start of bucket b + 61 - a.
        counts = [0] * RING
        for i in range(RING):
            word = rc_load(e + 3 + i)
            if word != 0:
                age = (b - (word >> 24)) & _BMASK
                if age <= SUB:
                    counts[age] += word & _CMAX
        for k in range(SUB, -1, -1):
            total -= counts[k]
            if total < limit:
                return <long long> (((now_ms // width) + RING - k) * width - now_ms)
        return <long long> (RING * width)

    def evictions(self):
        return rc_load(self._cells + 4)
