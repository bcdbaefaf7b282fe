# cython: language_level=3
"""Byte-weighted, scan-resistant cache with TTLs and negative entries (compiled kernel).

The algorithm, its reasons and the exact semantics are documented once, in the pure-Python twin
``cache_py.py``; this module is a transliteration that keeps the same slot layout, so both give
identical results for one sequence of operations (tests cross-check them).

Speed comes from doing nothing per operation that allocates: entry metadata lives in one C array
of ``Slot`` structs, keys and values in two Python lists indexed by slot number (so the garbage
collector still sees them), and the index dict maps a key to a preallocated ``int`` object of its
slot. Rings are doubly-linked lists of slot numbers. ``get`` is one dict lookup and a few loads;
the clock is read only for entries that carry an expiry. With no clock injected, the clock is
``clock_gettime(CLOCK_MONOTONIC)``, the source of ``time.monotonic`` on Linux, read without a
Python call.
"""
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem, PyDict_DelItem
from cpython.ref cimport PyObject
from libc.math cimport INFINITY, NAN, isnan
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, realloc
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from operator import index as _index

# One sentinel for both kernels, so callers compare with ``is`` whichever one is loaded.
from stalwart._fast.cache_py import NEGATIVE

__all__ = ["Cache", "NEGATIVE"]

cdef object _NEGATIVE = NEGATIVE

cdef enum:
    FREE = 0
    HOT = 1
    COLD = 2
    GHOST = 3
    NIL = -1
    MAX_REF = 2

# Bounds shared with the twin: weights are summed in int64, so capacity stays below 2**62.
MAX_CAPACITY = 1 << 62


cdef struct Slot:
    int64_t weight
    double expires
    Py_ssize_t next
    Py_ssize_t prev
    uint8_t queue
    uint8_t ref
    uint8_t negative


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double> ts.tv_sec + <double> ts.tv_nsec * 1e-9


cdef double _expiry_arg(object value, str name) except? -1.0:
    cdef double x = float(value)
    if isnan(x):
        raise ValueError(f"{name} must not be NaN")
    return x


cdef class Cache:
    """A cache bounded by the total weight (bytes) of its entries; see ``cache_py.Cache``."""

    cdef Slot *_slots
    cdef Py_ssize_t _nslots
    cdef dict _index
    cdef list _keys
    cdef list _values
    cdef list _slot_ids
    cdef Py_ssize_t _free
    cdef Py_ssize_t _head[4]
    cdef Py_ssize_t _tail[4]
    cdef Py_ssize_t _count[4]
    cdef int64_t _hot_weight
    cdef int64_t _cold_weight
    cdef int64_t _capacity
    cdef int64_t _hot_target
    cdef Py_ssize_t _cursor
    cdef object _weigher
    cdef object _clock
    cdef readonly int64_t hits
    cdef readonly int64_t negative_hits
    cdef readonly int64_t misses
    cdef readonly int64_t inserts
    cdef readonly int64_t evictions
    cdef readonly int64_t expired
    cdef readonly int64_t rejected

    def __cinit__(self):
        self._slots = NULL
        self._nslots = 0

    def __init__(self, capacity, weigher=None, clock=None):
        self._set_capacity(capacity)
        self._weigher = weigher
        self._clock = clock
        self._reset()

    def __dealloc__(self):
        free(self._slots)

    # ------------------------------------------------------------ storage

    cdef int _set_capacity(self, object capacity) except -1:
        capacity = _index(capacity)
        if capacity < 1 or capacity > MAX_CAPACITY:
            raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY}")
        cdef int64_t c = capacity
        self._capacity = c
        # floor(0.97 * c) without overflowing int64
        self._hot_target = max((c // 100) * 97 + (c % 100) * 97 // 100, 1)
        return 0

    cdef int _reset(self) except -1:
        # Old containers are released only when the state is consistent again: freeing them
        # may run finalizers of keys and values, and a finalizer may use this cache.
        old = (self._index, self._keys, self._values)
        cdef int q
        free(self._slots)
        self._slots = NULL
        self._nslots = 0
        self._free = NIL
        for q in range(4):
            self._head[q] = NIL
            self._tail[q] = NIL
            self._count[q] = 0
        self._hot_weight = 0
        self._cold_weight = 0
        self._cursor = 0
        self._index = {}
        self._keys = []
        self._values = []
        self._slot_ids = []
        return 0

    cdef inline double _now(self) except? -1.0:
        if self._clock is None:
            return _monotonic()
        return float(self._clock())

    cdef int _grow(self) except -1:
        cdef Py_ssize_t n = self._nslots
        cdef Py_ssize_t new = 16 if n < 8 else 2 * n
        cdef Py_ssize_t i
        cdef Slot *s = <Slot *> realloc(self._slots, new * sizeof(Slot))
        if s == NULL:
            raise MemoryError()
        self._slots = s
        self._keys.extend([None] * (new - n))
        self._values.extend([None] * (new - n))
        self._slot_ids.extend(range(n, new))
        self._nslots = new
        # pushed in reverse so the lowest new slot is taken first, as in the twin
        for i in range(new - 1, n - 1, -1):
            s[i].weight = 0
            s[i].expires = INFINITY
            s[i].prev = NIL
            s[i].queue = FREE
            s[i].ref = 0
            s[i].negative = 0
            s[i].next = self._free
            self._free = i
        return 0

    cdef inline Py_ssize_t _alloc(self) except -1:
        if self._free == NIL:
            self._grow()
        cdef Py_ssize_t i = self._free
        self._free = self._slots[i].next
        return i

    cdef inline int _release(self, Py_ssize_t i) except -1:
        # hold key and value until the slot is free again (see _reset on finalizers)
        key = self._keys[i]
        value = self._values[i]
        self._keys[i] = None
        self._values[i] = None
        self._slots[i].queue = FREE
        self._slots[i].next = self._free
        self._free = i
        return 0

    cdef inline void _link(self, Py_ssize_t i, uint8_t q) noexcept:
        cdef Slot *s = &self._slots[i]
        cdef Py_ssize_t t = self._tail[q]
        s.queue = q
        s.prev = t
        s.next = NIL
        if t == NIL:
            self._head[q] = i
        else:
            self._slots[t].next = i
        self._tail[q] = i
        self._count[q] += 1
        if q == HOT:
            self._hot_weight += s.weight
        elif q == COLD:
            self._cold_weight += s.weight

    cdef inline void _unlink(self, Py_ssize_t i) noexcept:
        cdef Slot *s = &self._slots[i]
        cdef uint8_t q = s.queue
        if s.prev == NIL:
            self._head[q] = s.next
        else:
            self._slots[s.prev].next = s.next
        if s.next == NIL:
            self._tail[q] = s.prev
        else:
            self._slots[s.next].prev = s.prev
        self._count[q] -= 1
        if q == HOT:
            self._hot_weight -= s.weight
        elif q == COLD:
            self._cold_weight -= s.weight

    cdef int _drop(self, Py_ssize_t i) except -1:
        self._unlink(i)
        PyDict_DelItem(self._index, self._keys[i])
        self._release(i)
        return 0

    # ------------------------------------------------------------ eviction

    cdef bint _advance_hot(self) except -1:
        cdef Py_ssize_t i
        cdef Slot *s
        while True:
            i = self._head[HOT]
            if i == NIL:
                return False
            s = &self._slots[i]
            if s.ref > 0:
                s.ref -= 1
                self._unlink(i)
                self._link(i, HOT)
            else:
                self._drop(i)
                self.evictions += 1
                return True

    cdef bint _advance_cold(self) except -1:
        cdef Py_ssize_t i = self._head[COLD]
        cdef Py_ssize_t resident
        if i == NIL:
            return self._advance_hot()
        self._unlink(i)
        cdef Slot *s = &self._slots[i]
        if s.ref > 0:
            s.ref -= 1
            self._link(i, HOT)
            while self._hot_weight > self._hot_target:
                if not self._advance_hot():
                    break
            return True
        value = self._values[i]  # released on return, once the ring is consistent
        self._values[i] = None
        self._link(i, GHOST)
        self.evictions += 1
        resident = self._count[HOT] + self._count[COLD]
        while self._count[GHOST] > resident:
            self._drop(self._head[GHOST])
        return True

    cdef int _shrink_to_capacity(self) except -1:
        while self._hot_weight + self._cold_weight > self._capacity:
            if not self._advance_cold():
                break
        return 0

    # ------------------------------------------------------------ arguments

    cdef int64_t _weigh(self, object key, object value, object weight) except -1:
        if weight is None:
            if self._weigher is None:
                return 1
            weight = self._weigher(key, value)
        weight = _index(weight)
        if weight < 1 or weight > MAX_CAPACITY:
            raise ValueError(f"an entry's weight must be between 1 and {MAX_CAPACITY}")
        return weight

    cdef double _expiry(self, object ttl, object expires_at) except? -1.0:
        cdef double t, exp
        if ttl is None:
            if expires_at is None:
                return INFINITY
            exp = _expiry_arg(expires_at, "expires_at")
            return exp if exp > self._now() else NAN
        if expires_at is not None:
            raise ValueError("give ttl or expires_at, not both")
        t = _expiry_arg(ttl, "ttl")
        if t < 0:
            raise ValueError("ttl must not be negative")
        if t == INFINITY:
            return INFINITY
        return self._now() + t if t > 0 else NAN

    cdef inline Py_ssize_t _lookup(self, object key) except -2:
        """Slot of ``key`` (resident or ghost), or NIL."""
        cdef PyObject *p = PyDict_GetItemWithError(self._index, key)
        if p == NULL:
            return NIL
        return <Py_ssize_t> (<object> p)

    # ------------------------------------------------------------ API

    def get(self, key, default=None):
        """The value cached for ``key``, ``NEGATIVE`` for a negative entry, else ``default``."""
        cdef Py_ssize_t i = self._lookup(key)
        cdef Slot *s
        if i == NIL:
            self.misses += 1
            return default
        s = &self._slots[i]
        if s.queue == GHOST:
            self.misses += 1
            return default
        if s.expires != INFINITY and self._now() >= s.expires:
            self._drop(i)
            self.expired += 1
            self.misses += 1
            return default
        if s.ref < MAX_REF:
            s.ref += 1
        if s.negative:
            self.negative_hits += 1
            return _NEGATIVE
        self.hits += 1
        return self._values[i]

    def put(self, key, value, weight=None, ttl=None, expires_at=None):
        """Cache ``value`` under ``key``; returns whether it is resident afterwards."""
        cdef int64_t w = self._weigh(key, value, weight)
        cdef double exp = self._expiry(ttl, expires_at)
        return self._store(key, value, w, exp, 0)

    def put_negative(self, key, ttl=None, weight=None, expires_at=None):
        """Remember that ``key`` does not exist until ``ttl`` seconds from now (or ``expires_at``)."""
        if ttl is None and expires_at is None:
            raise ValueError("a negative entry needs a ttl or expires_at")
        cdef int64_t w = self._weigh(key, _NEGATIVE, weight)
        cdef double exp = self._expiry(ttl, expires_at)
        return self._store(key, None, w, exp, 1)

    cdef bint _store(self, object key, object value, int64_t w, double exp, uint8_t negative) except -1:
        cdef Py_ssize_t i
        cdef Slot *s
        cdef bint enter_hot
        if w > self._hot_target:
            self._discard(key)
            self.rejected += 1
            return False
        if isnan(exp):
            self._discard(key)
            return False
        i = self._lookup(key)
        if i != NIL:
            s = &self._slots[i]
            if s.queue == GHOST:
                self._unlink(i)
                s.ref = 0
                s.weight = w
                self._link(i, HOT)
            else:
                if s.queue == HOT:
                    self._hot_weight += w - s.weight
                else:
                    self._cold_weight += w - s.weight
                s.weight = w
                if s.ref < MAX_REF:
                    s.ref += 1
            s.expires = exp
            s.negative = negative
            old = self._values[i]  # released on return: its finalizer must not see a half update
            self._values[i] = value
            self.inserts += 1
            self._shrink_to_capacity()
        else:
            enter_hot = self._hot_weight + w <= self._hot_target
            while self._hot_weight + self._cold_weight + w > self._capacity:
                if not self._advance_cold():
                    break
            i = self._alloc()
            s = &self._slots[i]
            self._keys[i] = key
            self._values[i] = value
            s.weight = w
            s.expires = exp
            s.ref = 0
            s.negative = negative
            PyDict_SetItem(self._index, key, self._slot_ids[i])
            self._link(i, HOT if enter_hot else COLD)
            self.inserts += 1
        # nothing is allocated while evicting, so a slot still resident still holds this entry
        return self._slots[i].queue == HOT or self._slots[i].queue == COLD

    cdef int _discard(self, object key) except -1:
        cdef Py_ssize_t i = self._lookup(key)
        if i != NIL and self._slots[i].queue != GHOST:
            self._drop(i)
        return 0

    def remove(self, key):
        """Forget ``key`` (its ghost too); returns whether a resident entry was removed."""
        cdef Py_ssize_t i = self._lookup(key)
        if i == NIL:
            return False
        cdef bint resident = self._slots[i].queue != GHOST
        self._drop(i)
        return resident

    cdef Py_ssize_t _live(self, object key) except -2:
        """Slot of a resident, unexpired entry for ``key``, or NIL; changes nothing."""
        cdef Py_ssize_t i = self._lookup(key)
        if i == NIL or self._slots[i].queue == GHOST:
            return NIL
        if self._slots[i].expires != INFINITY and self._now() >= self._slots[i].expires:
            return NIL
        return i

    def peek(self, key, default=None):
        """Like ``get`` without counting, referencing or removing anything."""
        cdef Py_ssize_t i = self._live(key)
        if i == NIL:
            return default
        return _NEGATIVE if self._slots[i].negative else self._values[i]

    def peek_entry(self, key):
        """``(value or NEGATIVE, weight, expires_at or None)`` of a live entry, else None."""
        cdef Py_ssize_t i = self._live(key)
        if i == NIL:
            return None
        cdef Slot *s = &self._slots[i]
        return (_NEGATIVE if s.negative else self._values[i], s.weight,
                None if s.expires == INFINITY else s.expires)

    def __contains__(self, key):
        return self._live(key) != NIL

    def __len__(self):
        return self._count[HOT] + self._count[COLD]

    @property
    def weight(self):
        """Total weight of the resident entries; never above ``capacity``."""
        return self._hot_weight + self._cold_weight

    @property
    def capacity(self):
        return self._capacity

    @property
    def max_entry_weight(self):
        return self._hot_target

    def resize(self, capacity):
        """Change the capacity; a smaller one evicts (counted as evictions) until it fits."""
        self._set_capacity(capacity)
        self._shrink_to_capacity()

    def clear(self):
        """Drop every entry and ghost; counters are kept (they are cumulative metrics)."""
        self._reset()

    def sweep(self, limit):
        """Examine up to ``limit`` slots from where the last call stopped; remove expired entries.

        Returns ``(removed, finished)``; see ``cache_py.Cache.sweep``.
        """
        limit = _index(limit)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cdef Py_ssize_t lim = min(limit, self._nslots + 1)
        cdef Py_ssize_t i, end
        cdef Py_ssize_t removed = 0
        cdef double now
        cdef Slot *s
        if self._cursor >= self._nslots:
            self._cursor = 0
            return 0, True
        now = self._now()
        end = min(self._nslots, self._cursor + lim)
        for i in range(self._cursor, end):
            if i >= self._nslots:  # a finalizer run by a removal cleared the cache
                break
            s = &self._slots[i]
            if (s.queue == HOT or s.queue == COLD) and s.expires <= now:
                self._drop(i)
                self.expired += 1
                removed += 1
        self._cursor = end
        if end >= self._nslots:
            self._cursor = 0
            return removed, True
        return removed, False

    def retain(self, predicate):
        """Keep only entries for which ``predicate(key, value or NEGATIVE)`` is true."""
        cdef Py_ssize_t i
        cdef Py_ssize_t removed = 0
        snapshot = [(i, self._keys[i]) for i in range(self._nslots)
                    if self._slots[i].queue == HOT or self._slots[i].queue == COLD]
        for i, key in snapshot:
            if not self._holds(i, key):
                continue
            value = _NEGATIVE if self._slots[i].negative else self._values[i]
            # the predicate may change the cache, even clear it: re-check before dropping
            if not predicate(key, value) and self._holds(i, key):
                self._drop(i)
                removed += 1
        return removed

    cdef inline bint _holds(self, Py_ssize_t i, object key):
        return (i < self._nslots and self._keys[i] is key
                and (self._slots[i].queue == HOT or self._slots[i].queue == COLD))

    def stats(self):
        """Counters and occupancy, for metrics."""
        return {
            "hits": self.hits,
            "negative_hits": self.negative_hits,
            "misses": self.misses,
            "inserts": self.inserts,
            "evictions": self.evictions,
            "expired": self.expired,
            "rejected": self.rejected,
            "entries": len(self),
            "weight": self.weight,
            "capacity": self._capacity,
        }

    def __repr__(self):
        return f"<Cache {len(self)} entries, weight {self.weight}/{self._capacity}>"
