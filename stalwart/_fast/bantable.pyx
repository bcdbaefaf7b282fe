# cython: language_level=3
"""Shared-memory ban table: address prefix -> expiry and reason (security.md §5).

The master maps one anonymous MAP_SHARED region before it forks; every worker of every generation
inherits it, so a ban raised in one worker refuses the address's next connection in all of them at
once, and bans survive reloads and worker restarts. The master also loads the persisted bans into
it at start.

Fixed-capacity open addressing with linear probing over at most ``MAX_PROBE`` slots, lock-free with
GCC ``__atomic`` builtins:

* a slot is claimed by a compare-and-swap of its key tag (0 -> tag, or the tag of an expired entry
  -> tag); the address words are written next and the state word is published last with release
  order, so a reader that sees a state sees the address it belongs to;
* every change of a state word is a CAS loop (upsert: the later expiry wins, permanent beats any
  expiry, the newer reason wins; an expired entry is replaced), so concurrent bans of one prefix
  never lose an update;
* when the probe window holds no free or expired slot, the entry expiring soonest is evicted
  (``EVICTED`` in the result, so the caller logs it).

The key tag is SipHash-1-3 of (family, prefix, masked address) under a random key stored in the
header: an attacker cannot choose addresses that pile up in one probe run.

Layout, in uint64 cells: header ``HDR`` cells, then ``capacity`` entries of 4 cells:
  [0] tag (0: never used)  [1] address bits 127..64  [2] address bits 63..0 (IPv4: low 32)
  [3] state: expires << 20 | persisted << 17 | v6 << 16 | prefix << 8 | reason (0: unpublished)
Header: [0] magic [1] capacity [2] k0 [3] k1 [4] change epoch [5] IPv4 prefixes in use (bit n: /n)
  [6..8] IPv6 prefixes in use (bit n of the 129-bit set)
"""
from libc.stdint cimport uint64_t, uint8_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <stdint.h>
    static inline uint64_t bt_load(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void bt_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int bt_cas(uint64_t *p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t bt_add(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    static inline void bt_or(uint64_t *p, uint64_t v) { __atomic_or_fetch(p, v, __ATOMIC_ACQ_REL); }
    #define BT_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
    #define BT_ROUND do { v0 += v1; v1 = BT_ROTL(v1, 13); v1 ^= v0; v0 = BT_ROTL(v0, 32); \\
        v2 += v3; v3 = BT_ROTL(v3, 16); v3 ^= v2; v0 += v3; v3 = BT_ROTL(v3, 21); v3 ^= v0; \\
        v2 += v1; v1 = BT_ROTL(v1, 17); v1 ^= v2; v2 = BT_ROTL(v2, 32); } while (0)
    /* SipHash-1-3 of three 64-bit words (24 bytes, little-endian word order). */
    static uint64_t bt_hash3(uint64_t k0, uint64_t k1, uint64_t a, uint64_t b, uint64_t c) {
        uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
        uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
        uint64_t m[4] = {a, b, c, (uint64_t)24 << 56};
        for (int i = 0; i < 4; i++) { v3 ^= m[i]; BT_ROUND; v0 ^= m[i]; }
        v2 ^= 0xff; BT_ROUND; BT_ROUND; BT_ROUND;
        return v0 ^ v1 ^ v2 ^ v3;
    }
    """
    uint64_t bt_load(uint64_t *p) nogil
    void bt_store(uint64_t *p, uint64_t v) nogil
    int bt_cas(uint64_t *p, uint64_t expected, uint64_t desired) nogil
    uint64_t bt_add(uint64_t *p, uint64_t v) nogil
    void bt_or(uint64_t *p, uint64_t v) nogil
    uint64_t bt_hash3(uint64_t k0, uint64_t k1, uint64_t a, uint64_t b, uint64_t c) nogil

DEF HDR = 16
DEF ENTRY = 4
DEF MAX_PROBE = 32

MAGIC = 0x42414E5441424C45  # "BANTABLE"
NEVER = (1 << 44) - 1  # expires value of a permanent ban
REMOVED = 1  # expires value of a lifted ban: long past, so the slot is free again
EXPIRY_MAX = NEVER - 1

# result flags of ban()
CHANGED = 1  # the entry is new or its expiry/reason changed
EVICTED = 2  # a live ban had to make room (the table is full around this key)
FULL = 4  # nothing could be stored

cdef uint64_t _NEVER = (1ULL << 44) - 1
cdef uint64_t _PERSISTED = 1ULL << 17


def size_for(int capacity):
    """Bytes needed for a table of ``capacity`` entries (rounded up to a power of two)."""
    return 8 * (HDR + ENTRY * _pow2(capacity))


def _pow2(int capacity):
    if capacity < 1 or capacity > (1 << 26):
        raise ValueError("capacity must be between 1 and 2**26")
    cdef int n = 8
    while n < capacity:
        n <<= 1
    return n


cdef inline uint64_t _expires(uint64_t state) nogil:
    return state >> 20


cdef inline bint _live(uint64_t state, uint64_t now) nogil:
    cdef uint64_t e = state >> 20
    return state != 0 and (e == _NEVER or e > now)


cdef inline uint64_t _state(uint64_t expires, int v6, int prefix, int reason, bint persisted) nogil:
    return (expires << 20) | ((<uint64_t> persisted) << 17) | ((<uint64_t> v6) << 16) | \
        ((<uint64_t> prefix) << 8) | (<uint64_t> (reason & 0xFF))


cdef inline void _split(const uint8_t *p, int n, int prefix, uint64_t *hi, uint64_t *lo) nogil:
    """Packed address -> two big-endian words with the host bits cleared."""
    cdef uint64_t h = 0, l = 0
    cdef int i
    if n == 4:
        for i in range(4):
            l = (l << 8) | p[i]
        if prefix == 0:
            l = 0
        elif prefix < 32:
            l &= (0xFFFFFFFFULL << (32 - prefix)) & 0xFFFFFFFFULL
    else:
        for i in range(8):
            h = (h << 8) | p[i]
            l = (l << 8) | p[8 + i]
        if prefix <= 64:
            l = 0
            if prefix < 64:
                h = (h & (0xFFFFFFFFFFFFFFFFULL << (64 - prefix))) if prefix > 0 else 0
        elif prefix < 128:
            l &= 0xFFFFFFFFFFFFFFFFULL << (128 - prefix)
    hi[0] = h
    lo[0] = l


cdef class BanTable:
    cdef object _view
    cdef uint64_t *_cells
    cdef uint64_t *_entries
    cdef readonly int capacity
    cdef uint64_t _mask
    cdef uint64_t _k0, _k1
    cdef public object last_evicted

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
        self.last_evicted = None
        if bt_load(self._cells) == 0:
            if key is None or len(key) != 16:
                import os
                key = os.urandom(16)
            self._cells[1] = cap
            self._cells[2] = int.from_bytes(key[:8], "little")
            self._cells[3] = int.from_bytes(key[8:], "little")
            bt_store(self._cells, MAGIC)
        elif self._cells[0] != MAGIC or self._cells[1] != <uint64_t> cap:
            raise ValueError("buffer holds a table of another shape")
        self._k0 = self._cells[2]
        self._k1 = self._cells[3]

    cdef inline uint64_t _tag(self, int v6, int prefix, uint64_t hi, uint64_t lo) nogil:
        cdef uint64_t t = bt_hash3(self._k0, self._k1, (<uint64_t> v6 << 8) | <uint64_t> prefix, hi, lo)
        return t if t > 1 else t + 2

    cdef inline bint _same(self, uint64_t *e, uint64_t tag, int v6, int prefix, uint64_t hi, uint64_t lo,
                           uint64_t state) nogil:
        return (bt_load(e) == tag and ((state >> 16) & 1) == <uint64_t> v6 and ((state >> 8) & 0xFF) == <uint64_t> prefix
                and e[1] == hi and e[2] == lo)

    cdef int _lookup_one(self, int v6, int prefix, uint64_t hi, uint64_t lo, uint64_t now) nogil:
        """Reason of a live ban of exactly (v6, prefix, hi, lo), or -1."""
        cdef uint64_t tag = self._tag(v6, prefix, hi, lo)
        cdef uint64_t pos = tag & self._mask, t, state
        cdef uint64_t *e
        cdef int i
        for i in range(MAX_PROBE):
            e = self._entries + ((pos + i) & self._mask) * ENTRY
            t = bt_load(e)
            if t == 0:
                return -1
            if t == tag:
                state = bt_load(e + 3)
                if _live(state, now) and self._same(e, tag, v6, prefix, hi, lo, state):
                    return <int> (state & 0xFF)
        return -1

    cpdef int lookup(self, bytes packed, long long now) except -2:
        """Reason code of the ban covering address ``packed`` (4 or 16 bytes) at Unix time
        ``now``, or -1. Probes once per prefix length in use for that family, longest first."""
        cdef Py_ssize_t n = len(packed)
        cdef const uint8_t *p = <const uint8_t *> <char *> packed
        cdef uint64_t hi, lo, bits
        cdef int prefix, r, w
        if n == 4:
            bits = bt_load(self._cells + 5)
            if bits == 0:
                return -1
            for prefix in range(32, -1, -1):
                if (bits >> prefix) & 1:
                    _split(p, 4, prefix, &hi, &lo)
                    r = self._lookup_one(0, prefix, hi, lo, <uint64_t> now)
                    if r >= 0:
                        return r
            return -1
        if n != 16:
            raise ValueError("a packed address has 4 or 16 bytes")
        if (bt_load(self._cells + 6) | bt_load(self._cells + 7) | bt_load(self._cells + 8)) == 0:
            return -1
        for prefix in range(128, -1, -1):
            w = prefix >> 6
            if (bt_load(self._cells + 6 + w) >> (prefix & 63)) & 1:
                _split(p, 16, prefix, &hi, &lo)
                r = self._lookup_one(1, prefix, hi, lo, <uint64_t> now)
                if r >= 0:
                    return r
        return -1

    def contains(self, bytes packed, long long now):
        return self.lookup(packed, now) >= 0

    def ban(self, bytes packed, int prefix, long long expires, int reason, long long now, bint persisted=False):
        """Upsert the ban of ``packed`` masked to ``prefix``: ``expires`` Unix seconds (0: never),
        ``reason`` 0..255. An active ban keeps the later expiry and takes the newer reason; an
        expired one is replaced. Returns a mask of CHANGED, EVICTED, FULL."""
        cdef Py_ssize_t n = len(packed)
        cdef int v6
        if n == 4:
            v6 = 0
            if prefix < 0 or prefix > 32:
                raise ValueError("IPv4 prefix out of range")
        elif n == 16:
            v6 = 1
            if prefix < 0 or prefix > 128:
                raise ValueError("IPv6 prefix out of range")
        else:
            raise ValueError("a packed address has 4 or 16 bytes")
        if reason < 0 or reason > 255:
            raise ValueError("reason out of range")
        cdef uint64_t exp = _NEVER if expires <= 0 else <uint64_t> expires
        if exp > _NEVER:
            exp = _NEVER
        cdef uint64_t hi, lo
        _split(<const uint8_t *> <char *> packed, <int> n, prefix, &hi, &lo)
        if v6:
            bt_or(self._cells + 6 + (prefix >> 6), 1ULL << (prefix & 63))
        else:
            bt_or(self._cells + 5, 1ULL << prefix)
        cdef int rc = self._upsert(v6, prefix, hi, lo, exp, reason, <uint64_t> now, persisted)
        if rc & CHANGED:
            bt_add(self._cells + 4, 1)
        return rc

    cdef int _merge(self, uint64_t *e, int v6, int prefix, uint64_t exp, int reason, uint64_t now,
                    bint persisted) except -1:
        cdef uint64_t old, new, oe, exp_keep
        while True:
            old = bt_load(e + 3)
            oe = _expires(old)
            if _live(old, now):
                if oe == _NEVER or (exp != _NEVER and oe >= exp):
                    exp_keep = oe
                else:
                    exp_keep = exp
                new = _state(exp_keep, v6, prefix, reason, False)
                if (old & ~_PERSISTED) == new:
                    new = old | (_PERSISTED if persisted else 0)
                    if new == old:
                        return 0
                    if bt_cas(e + 3, old, new):
                        return 0
                    continue
            else:
                new = _state(exp, v6, prefix, reason, False)
            if persisted:
                new |= _PERSISTED
            if bt_cas(e + 3, old, new):
                return CHANGED

    cdef int _upsert(self, int v6, int prefix, uint64_t hi, uint64_t lo, uint64_t exp, int reason,
                     uint64_t now, bint persisted) except -1:
        cdef uint64_t tag = self._tag(v6, prefix, hi, lo)
        cdef uint64_t pos = tag & self._mask, t, state, victim_exp = 0
        cdef uint64_t *e
        cdef uint64_t *victim = NULL
        cdef int i, free_at = -1
        # 1. an entry for this key anywhere in the window (a lifted or expired one included)
        for i in range(MAX_PROBE):
            e = self._entries + ((pos + i) & self._mask) * ENTRY
            t = bt_load(e)
            if t == 0:
                break
            if t == tag:
                state = bt_load(e + 3)
                if state == 0 or self._same(e, tag, v6, prefix, hi, lo, state):
                    # state 0: another worker is writing this very key; write the same words.
                    e[1] = hi
                    e[2] = lo
                    return self._merge(e, v6, prefix, exp, reason, now, persisted)
        # 2. claim the first free or expired slot; on a lost race look at the same slot again
        i = 0
        while i < MAX_PROBE:
            e = self._entries + ((pos + i) & self._mask) * ENTRY
            t = bt_load(e)
            state = bt_load(e + 3)
            if t == tag and (state == 0 or self._same(e, tag, v6, prefix, hi, lo, state)):
                e[1] = hi
                e[2] = lo
                return self._merge(e, v6, prefix, exp, reason, now, persisted)
            if t == 0 or (state != 0 and not _live(state, now)):
                if bt_cas(e, t, tag):
                    e[1] = hi
                    e[2] = lo
                    bt_store(e + 3, _state(exp, v6, prefix, reason, persisted))
                    return CHANGED
                continue
            if state != 0 and (victim == NULL or _expires(state) < victim_exp):
                victim = e
                victim_exp = _expires(state)
            i += 1
        # 3. full around this key: evict the live ban that expires soonest
        if victim == NULL:
            return FULL
        t = bt_load(victim)
        state = bt_load(victim + 3)
        if state == 0 or not bt_cas(victim, t, tag):
            return FULL
        self.last_evicted = _entry_tuple(victim, state)
        victim[1] = hi
        victim[2] = lo
        bt_store(victim + 3, _state(exp, v6, prefix, reason, persisted))
        return CHANGED | EVICTED

    def unban(self, bytes packed, int prefix, long long now):
        """Lift every ban of exactly ``packed``/``prefix``; True when one was live."""
        cdef Py_ssize_t n = len(packed)
        if n != 4 and n != 16:
            raise ValueError("a packed address has 4 or 16 bytes")
        cdef int v6 = n == 16
        cdef uint64_t hi, lo, state
        _split(<const uint8_t *> <char *> packed, <int> n, prefix, &hi, &lo)
        cdef uint64_t tag = self._tag(v6, prefix, hi, lo)
        cdef uint64_t pos = tag & self._mask
        cdef uint64_t *e
        cdef int i
        found = False
        for i in range(MAX_PROBE):
            e = self._entries + ((pos + i) & self._mask) * ENTRY
            if bt_load(e) == 0:
                break
            while True:
                state = bt_load(e + 3)
                if state == 0 or not self._same(e, tag, v6, prefix, hi, lo, state):
                    break
                if bt_cas(e + 3, state, _state(REMOVED, v6, prefix, state & 0xFF, True)):
                    if _live(state, <uint64_t> now):
                        found = True
                    break
        if found:
            bt_add(self._cells + 4, 1)
        return found

    def epoch(self):
        """Change counter: moves on every new or changed ban and every lift."""
        return bt_load(self._cells + 4)

    def entries(self, long long now, bint pending_only=False):
        """Live bans as (index, packed, prefix, expires (0: never), reason, persisted, state);
        ``pending_only``: those not yet persisted by the master."""
        out = []
        cdef int i
        cdef uint64_t state
        cdef uint64_t *e
        for i in range(self.capacity):
            e = self._entries + <uint64_t> i * ENTRY
            if bt_load(e) == 0:
                continue
            state = bt_load(e + 3)
            if not _live(state, <uint64_t> now):
                continue
            if pending_only and state & _PERSISTED:
                continue
            out.append((i,) + _entry_tuple(e, state) + (state,))
        return out

    def mark_persisted(self, int index, uint64_t state):
        """The master wrote entry ``index`` as it was in ``state``; False if it changed since."""
        if index < 0 or index >= self.capacity:
            raise IndexError("entry index out of range")
        return bool(bt_cas(self._entries + <uint64_t> index * ENTRY + 3, state, state | _PERSISTED))


cdef tuple _entry_tuple(uint64_t *e, uint64_t state):
    cdef int v6 = (state >> 16) & 1
    cdef uint64_t hi = e[1], lo = e[2]
    cdef uint64_t exp = _expires(state)
    if v6:
        packed = hi.to_bytes(8, "big") + lo.to_bytes(8, "big")
    else:
        packed = (lo & 0xFFFFFFFF).to_bytes(4, "big")
    return (packed, <int> ((state >> 8) & 0xFF), 0 if exp == _NEVER else exp, <int> (state & 0xFF),
            bool(state & _PERSISTED))
