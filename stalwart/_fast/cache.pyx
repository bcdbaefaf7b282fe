# cython: language_level=3
"""Byte-weighted, scan-resistant cache with TTLs and negative entries (compiled kernel).

The algorithm, its reasons and the exact semantics are documented once, in the pure-Python twin
``cache_py.py``; this module is a transliteration with the same layout, so both give identical
results for one sequence of operations (tests cross-check them).

Where the time goes, and why the layout is what it is (measured on the Zipf + scan trace of
``bench/cache_trace.py``):

* A hit is one probe of the key index, which yields the entry object, whose fields hold the value
  and all the metadata ``get`` needs: the index slot, one entry and the value are touched.
* The key index is this module's own open-addressing table, not a dict: dict lookups were a fifth
  of the trace's time, three of them per miss. Its slots pack a hash tag and a pool position, so
  probing, deleting and growing touch no Python object.
* Entries are pooled and reused through a free list: a steady-state ``put`` allocates nothing.
* Rings are circular lists of pool positions linked through a C array (``Link``) that also
  holds the ``referenced`` counters: the CLOCK hand passes an entry with one store and reads no
  object.
* Ghosts are bare hashes in a set-associative table (``_Ghosts``, 8 bytes a ghost, one 64-byte
  bucket per lookup): keeping them as dict entries, as a first version did, made every miss
  delete a key evicted long ago, a cache miss in memory on each ``put``.
* ``get`` remembers the key object it just missed, so the ``put`` that usually follows neither
  hashes nor probes again, and prefetches its ghost bucket.
* The clock is read only for entries that carry an expiry; without an injected clock it is
  ``clock_gettime(CLOCK_MONOTONIC)``, the source of ``time.monotonic`` on Linux, read without a
  Python call.

Keys are compared like a dict compares them (identity, then ``==`` on equal hashes); a lookup
restarts when a key's ``__eq__`` changed the cache. Values and keys are released only once the
cache is consistent again, since their finalizers may use it. ``clock`` and ``weigher`` must not.
"""
cimport cython
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport Py_EQ, PyObject_Hash, PyObject_RichCompareBool
from libc.math cimport INFINITY, NAN, isnan
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memset
from posix.stdlib cimport posix_memalign
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from operator import index as _index

# One sentinel for both kernels, so callers compare with ``is`` whichever one is loaded.
from stalwart._fast.cache_py import COUNTERS, MAX_CAPACITY, NEGATIVE

__all__ = ["Cache", "NEGATIVE"]

cdef object _NEGATIVE = NEGATIVE

cdef enum:
    FREE = 0
    HOT = 1
    COLD = 2
    NIL = -1
    MAX_REF = 2
    WAYS = 8

cdef extern from *:
    """
    #define sw_prefetch(p) __builtin_prefetch((p), 1, 3)
    """
    void sw_prefetch(const void *p) noexcept nogil

# 2**64 / golden ratio: spreads runs of int hashes (ints hash to themselves) over the buckets
cdef uint64_t FIB = 0x9E3779B97F4A7C15ULL


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double> ts.tv_sec + <double> ts.tv_nsec * 1e-9


cdef double _expiry_arg(object value, str name) except? -1.0:
    cdef double x = float(value)
    if isnan(x):
        raise ValueError(f"{name} must not be NaN")
    return x


cdef struct Link:
    Py_ssize_t next
    Py_ssize_t prev
    uint8_t ref  # referenced counter (0..MAX_REF), here so the CLOCK hand reads no object


cdef struct GhostPair:
    uint32_t tag
    uint32_t stamp  # 0: empty


@cython.final
cdef class _Ghosts:
    """Hashes of keys evicted from cold, stamped with the eviction that recorded them; see
    ``cache_py._Ghosts``. A bucket of eight pairs is 64 bytes, allocated on a 64-byte boundary,
    so recording or looking up a hash touches one cache line."""

    cdef GhostPair *pairs
    cdef Py_ssize_t nslots
    cdef int tag_shift
    cdef uint32_t seq

    def __cinit__(self):
        self.pairs = NULL
        self.clear()

    def __dealloc__(self):
        free(self.pairs)

    cdef void clear(self) noexcept:
        free(self.pairs)
        self.pairs = NULL
        self.nslots = 0
        self.tag_shift = 32
        self.seq = 0

    cdef inline GhostPair *_bucket(self, uint32_t tag) noexcept:
        return self.pairs + WAYS * <Py_ssize_t> (tag >> self.tag_shift)

    cdef inline void prefetch(self, Py_hash_t h) noexcept:
        """Start loading the bucket of ``h``: a miss is usually followed by a put of the same key,
        whose ghost lookup is then the one access of ``put`` likely to miss the CPU cache."""
        if self.nslots:
            sw_prefetch(self._bucket(_tag_of(h)))

    cdef GhostPair *_find(self, uint32_t tag) noexcept:
        if self.nslots == 0:
            return NULL
        cdef GhostPair *b = self._bucket(tag)
        cdef int i
        for i in range(WAYS):
            if b[i].stamp and b[i].tag == tag:
                return &b[i]
        return NULL

    cdef void _place(self, uint32_t tag, uint32_t stamp) noexcept:
        cdef GhostPair *b = self._bucket(tag)
        cdef GhostPair *victim = b
        cdef uint64_t age, oldest = 0
        cdef bint first = True
        cdef int i
        for i in range(WAYS):
            if b[i].stamp and b[i].tag == tag:
                victim = &b[i]
                break
            age = <uint32_t> (self.seq - b[i].stamp) if b[i].stamp else (<uint64_t> 1 << 32)
            if first or age > oldest:
                victim = &b[i]
                oldest = age
                first = False
        victim.tag = tag
        victim.stamp = stamp

    cdef int _grow(self, Py_ssize_t window) except -1:
        cdef Py_ssize_t slots = max(64, self.nslots)
        cdef GhostPair *old = self.pairs
        cdef Py_ssize_t n = self.nslots
        cdef Py_ssize_t i
        cdef void *mem = NULL
        while slots < window:
            slots *= 2
        if posix_memalign(&mem, 64, slots * sizeof(GhostPair)) != 0:
            raise MemoryError()
        memset(mem, 0, slots * sizeof(GhostPair))
        self.pairs = <GhostPair *> mem
        self.nslots = slots
        self.tag_shift = 32
        i = slots // WAYS
        while i > 1:
            i >>= 1
            self.tag_shift -= 1
        # each new bucket takes pairs from a single old bucket, so nothing is pushed out
        for i in range(n):
            if old[i].stamp:
                self._place(old[i].tag, old[i].stamp)
        free(old)
        return 0

    cdef int record(self, Py_hash_t h, Py_ssize_t window) except -1:
        if self.nslots == 0 or window > self.nslots:
            self._grow(window)
        self.seq += 1
        if self.seq == 0:
            self.seq = 1
        self._place(_tag_of(h), self.seq)
        return 0

    cdef bint take(self, Py_hash_t h, Py_ssize_t window) noexcept:
        cdef GhostPair *p = self._find(_tag_of(h))
        if p == NULL:
            return False
        cdef bint alive = <uint32_t> (self.seq - p.stamp) < <uint64_t> window
        p.stamp = 0
        return alive

    cdef void discard(self, Py_hash_t h) noexcept:
        cdef GhostPair *p = self._find(_tag_of(h))
        if p != NULL:
            p.stamp = 0


cdef inline uint32_t _tag_of(Py_hash_t h) noexcept:
    return <uint32_t> ((<uint64_t> h * FIB) >> 32)


@cython.final
cdef class _Entry:
    """One pool position: a resident entry or a free slot."""

    cdef object key
    cdef object value
    cdef double expires
    cdef int64_t weight
    cdef Py_hash_t hash  # of key, kept so an eviction need not hash the key again
    cdef Py_ssize_t index
    cdef uint8_t queue
    cdef bint negative

    def __cinit__(self, Py_ssize_t index):
        self.index = index
        self.expires = INFINITY


@cython.final
cdef class Cache:
    """A cache bounded by the total weight (bytes) of its entries; see ``cache_py.Cache``."""

    # The key index: open addressing, linear probing, backward-shift deletion, load <= 1/2.
    # A slot packs the entry's 32-bit tag (see _tag_of; its top bits are the home slot) and its
    # pool position + 1 (0: empty), so probing, deleting and growing never touch a Python
    # object; keys are compared only when tags match. It replaces a dict because the dict's
    # lookups were a fifth of the time of a Zipf trace, three of them per miss.
    cdef uint64_t *_slots
    cdef Py_ssize_t _slot_mask
    cdef int _slot_shift
    cdef Py_ssize_t _slot_used
    cdef uint64_t _version  # changes with every index change: a key's __eq__ may use the cache
    cdef uint64_t _adds
    cdef list _pool
    cdef Link *_links  # per pool position: ring links and the referenced counter
    cdef Py_ssize_t _nslots
    cdef Py_ssize_t _free
    cdef Py_ssize_t _head[3]
    cdef Py_ssize_t _count[3]
    cdef int64_t _weight[3]
    cdef _Ghosts _ghosts
    cdef int64_t _capacity
    cdef int64_t _hot_target
    cdef Py_ssize_t _cursor
    cdef object _weigher
    cdef object _clock
    # The key object of the last miss of ``get``, and its hash, while nothing was stored since:
    # the usual get-miss-then-put skips a second lookup. A strong reference, so that the
    # identity test cannot be fooled by a new object at a freed address.
    cdef object _missed
    cdef Py_hash_t _missed_hash
    cdef readonly int64_t hits
    cdef readonly int64_t negative_hits
    cdef readonly int64_t misses
    cdef readonly int64_t inserts
    cdef readonly int64_t evictions
    cdef readonly int64_t expired
    cdef readonly int64_t rejected

    def __init__(self, capacity, weigher=None, clock=None):
        self._set_capacity(capacity)
        self._weigher = weigher
        self._clock = clock
        self._reset()

    def __dealloc__(self):
        free(self._links)
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
        cdef int q
        free(self._links)
        free(self._slots)
        self._links = NULL
        self._slots = NULL
        self._slot_mask = -1
        self._slot_shift = 32
        self._slot_used = 0
        self._version += 1
        self._nslots = 0
        self._free = NIL
        for q in range(3):
            self._head[q] = NIL
            self._count[q] = 0
            self._weight[q] = 0
        self._cursor = 0
        if self._ghosts is None:
            self._ghosts = _Ghosts()
        else:
            self._ghosts.clear()
        # The old pool is released last, when the state is consistent again: that may run
        # finalizers of keys and values, and a finalizer may use this cache.
        self._pool, old_pool = [], self._pool
        return 0

    cdef inline double _now(self) except? -1.0:
        if self._clock is None:
            return _monotonic()
        return float(self._clock())

    cdef int _grow(self) except -1:
        cdef Py_ssize_t n = self._nslots
        cdef Py_ssize_t new = 16 if n < 8 else 2 * n
        cdef Py_ssize_t i
        cdef Link *links = <Link *> realloc(self._links, new * sizeof(Link))
        if links == NULL:
            raise MemoryError()
        self._links = links
        self._pool.extend([_Entry(i) for i in range(n, new)])
        self._nslots = new
        # pushed in reverse so the lowest new position is taken first, as in the twin
        for i in range(new - 1, n - 1, -1):
            links[i].prev = NIL
            links[i].ref = 0
            links[i].next = self._free
            self._free = i
        return 0

    cdef inline _Entry _alloc(self):
        if self._free == NIL:
            self._grow()
        cdef Py_ssize_t i = self._free
        self._free = self._links[i].next
        return <_Entry> self._pool[i]

    cdef inline int _release(self, _Entry e) except -1:
        # hold key and value until the entry is free again (see _reset on finalizers)
        key = e.key
        value = e.value
        e.key = None
        e.value = None
        e.queue = FREE
        self._links[e.index].next = self._free
        self._free = e.index
        return 0

    cdef inline void _link(self, _Entry e, uint8_t q) noexcept:
        """Append ``e`` at the tail of ring ``q``: rings are circular, the tail is before the
        head, so passing the head to the tail (the CLOCK hand's move) is one store."""
        cdef Py_ssize_t i = e.index
        cdef Py_ssize_t h = self._head[q]
        cdef Py_ssize_t t
        e.queue = q
        if h == NIL:
            self._links[i].next = i
            self._links[i].prev = i
            self._head[q] = i
        else:
            t = self._links[h].prev
            self._links[t].next = i
            self._links[i].prev = t
            self._links[i].next = h
            self._links[h].prev = i
        self._count[q] += 1
        self._weight[q] += e.weight

    cdef inline void _unlink(self, _Entry e) noexcept:
        cdef Py_ssize_t i = e.index
        cdef uint8_t q = e.queue
        cdef Py_ssize_t n = self._links[i].next
        cdef Py_ssize_t p
        if n == i:
            self._head[q] = NIL
        else:
            p = self._links[i].prev
            self._links[p].next = n
            self._links[n].prev = p
            if self._head[q] == i:
                self._head[q] = n
        self._count[q] -= 1
        self._weight[q] -= e.weight

    cdef int _drop(self, _Entry e) except -1:
        self._unlink(e)
        self._index_remove(e)
        self._release(e)
        return 0

    cdef inline _Entry _at(self, Py_ssize_t i):
        return <_Entry> PyList_GET_ITEM(self._pool, i)

    # ------------------------------------------------------------ key index

    cdef _Entry _find(self, object key, Py_hash_t h):
        """The entry of ``key`` (whose hash is ``h``), or None."""
        cdef uint32_t tag = _tag_of(h)
        cdef uint64_t v, version
        cdef Py_ssize_t i
        cdef _Entry e
        cdef bint equal
        while True:
            if self._slot_mask < 0:
                return None
            i = tag >> self._slot_shift
            while True:
                v = self._slots[i]
                if v == 0:
                    return None
                if <uint32_t> (v >> 32) == tag:
                    e = self._at(<Py_ssize_t> (v & 0xFFFFFFFFULL) - 1)
                    if e.key is key:
                        return e
                    if e.hash == h:
                        version = self._version
                        equal = PyObject_RichCompareBool(e.key, key, Py_EQ)
                        if self._version != version:
                            break  # __eq__ changed the index: probe again from the start
                        if equal:
                            return e
                i = (i + 1) & self._slot_mask

    cdef inline int _index_reserve(self) except -1:
        """Make room for one more key, so that adding it cannot fail."""
        if 2 * (self._slot_used + 1) > self._slot_mask + 1:
            self._index_grow()
        return 0

    cdef void _index_add(self, _Entry e) noexcept:
        cdef uint32_t tag = _tag_of(e.hash)
        cdef Py_ssize_t i = tag >> self._slot_shift
        while self._slots[i] != 0:
            i = (i + 1) & self._slot_mask
        self._slots[i] = (<uint64_t> tag << 32) | <uint64_t> (e.index + 1)
        self._slot_used += 1
        self._version += 1
        self._adds += 1

    cdef void _index_remove(self, _Entry e) noexcept:
        cdef uint32_t tag = _tag_of(e.hash)
        cdef uint64_t want = (<uint64_t> tag << 32) | <uint64_t> (e.index + 1)
        cdef Py_ssize_t i = tag >> self._slot_shift
        cdef Py_ssize_t j, k
        cdef uint64_t v
        while self._slots[i] != want:
            i = (i + 1) & self._slot_mask
        # backward shift: pull later members of the probe run into the gap
        j = i
        while True:
            j = (j + 1) & self._slot_mask
            v = self._slots[j]
            if v == 0:
                break
            k = <uint32_t> (v >> 32) >> self._slot_shift
            # leave slot j alone when its home lies cyclically in (i, j]
            if (i < k <= j) if i <= j else (i < k or k <= j):
                continue
            self._slots[i] = v
            i = j
        self._slots[i] = 0
        self._slot_used -= 1
        self._version += 1

    cdef int _index_grow(self) except -1:
        cdef Py_ssize_t size = 16 if self._slot_mask < 0 else 2 * (self._slot_mask + 1)
        cdef Py_ssize_t old_size = self._slot_mask + 1
        cdef uint64_t *old = self._slots
        cdef uint64_t *slots = <uint64_t *> calloc(size, sizeof(uint64_t))
        cdef Py_ssize_t i, j
        cdef int shift = 32
        if slots == NULL:
            raise MemoryError()
        i = size
        while i > 1:
            i >>= 1
            shift -= 1
        for i in range(old_size):
            if old[i] != 0:
                j = <uint32_t> (old[i] >> 32) >> shift
                while slots[j] != 0:
                    j = (j + 1) & (size - 1)
                slots[j] = old[i]
        free(old)
        self._slots = slots
        self._slot_mask = size - 1
        self._slot_shift = shift
        self._version += 1
        return 0

    # ------------------------------------------------------------ eviction

    cdef bint _advance_hot(self) except -1:
        cdef Py_ssize_t i
        while True:
            i = self._head[HOT]
            if i == NIL:
                return False
            if self._links[i].ref > 0:
                self._links[i].ref -= 1
                self._head[HOT] = self._links[i].next  # the head passes to the tail
            else:
                self._drop(self._at(i))
                self.evictions += 1
                return True

    cdef bint _advance_cold(self) except -1:
        cdef Py_ssize_t i = self._head[COLD]
        if i == NIL:
            return self._advance_hot()
        cdef _Entry e = self._at(i)
        self._unlink(e)
        if self._links[i].ref > 0:
            self._links[i].ref -= 1
            self._link(e, HOT)
            while self._weight[HOT] > self._hot_target:
                if not self._advance_hot():
                    break
            return True
        cdef Py_hash_t h = e.hash  # read first: a finalizer run by the release may reuse e
        self._index_remove(e)
        self._release(e)
        self.evictions += 1
        self._ghosts.record(h, self._count[HOT] + self._count[COLD])
        return True

    cdef int _shrink_to_capacity(self) except -1:
        while self._weight[HOT] + self._weight[COLD] > self._capacity:
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

    cdef inline _Entry _lookup(self, object key):
        """The entry of ``key``, or None."""
        return self._find(key, PyObject_Hash(key))

    # ------------------------------------------------------------ API

    def get(self, key, default=None):
        """The value cached for ``key``, ``NEGATIVE`` for a negative entry, else ``default``."""
        cdef Py_hash_t h = PyObject_Hash(key)
        cdef _Entry e = self._find(key, h)
        if e is None:
            self.misses += 1
            self._missed_hash = h
            self._missed = key
            self._ghosts.prefetch(h)
            return default
        if e.expires != INFINITY and self._now() >= e.expires:
            self._drop(e)
            self.expired += 1
            self.misses += 1
            return default
        if self._links[e.index].ref < MAX_REF:
            self._links[e.index].ref += 1
        if e.negative:
            self.negative_hits += 1
            return _NEGATIVE
        self.hits += 1
        return e.value

    def put(self, key, value, weight=None, ttl=None, expires_at=None):
        """Cache ``value`` under ``key``; returns whether it is resident afterwards."""
        if weight is None and ttl is None and expires_at is None and self._weigher is None:
            return self._store(key, value, 1, INFINITY, False)  # the common call, kept short
        cdef int64_t w = self._weigh(key, value, weight)
        cdef double exp = self._expiry(ttl, expires_at)
        return self._store(key, value, w, exp, False)

    def put_negative(self, key, ttl=None, weight=None, expires_at=None):
        """Remember that ``key`` does not exist until ``ttl`` seconds from now (or ``expires_at``)."""
        if ttl is None and expires_at is None:
            raise ValueError("a negative entry needs a ttl or expires_at")
        cdef int64_t w = self._weigh(key, _NEGATIVE, weight)
        cdef double exp = self._expiry(ttl, expires_at)
        return self._store(key, None, w, exp, True)

    cdef bint _store(self, object key, object value, int64_t w, double exp, bint negative) except -1:
        cdef _Entry e
        cdef uint8_t ring = COLD
        if w > self._hot_target:
            self._discard(key)
            self.rejected += 1
            return False
        if isnan(exp):
            self._discard(key)
            return False
        cdef Py_hash_t h
        cdef _Entry fresh
        cdef uint64_t adds
        if key is self._missed:
            # ``get`` just missed this very object and nothing was stored since: it is absent
            e = None
            h = self._missed_hash
        else:
            h = PyObject_Hash(key)
            e = self._find(key, h)
        self._missed = None
        if e is None:
            if self._ghosts.nslots and self._ghosts.take(h, self._count[HOT] + self._count[COLD]):
                ring = HOT  # a recently evicted key came back: it proved reuse
            elif self._weight[HOT] + w <= self._hot_target:
                ring = HOT
            else:
                ring = COLD
            adds = self._adds
            while self._weight[HOT] + self._weight[COLD] + w > self._capacity:
                if not self._advance_cold():
                    break
            if self._adds != adds:
                # a finalizer run by an eviction stored something: maybe this very key
                e = self._find(key, h)
        if e is None:
            self._index_reserve()
            fresh = self._alloc()
            fresh.key = key
            fresh.value = value
            fresh.weight = w
            fresh.hash = h
            fresh.expires = exp
            self._links[fresh.index].ref = 0
            fresh.negative = negative
            self._index_add(fresh)
            self._link(fresh, ring)
            self.inserts += 1
            return True
        self._weight[e.queue] += w - e.weight
        e.weight = w
        if self._links[e.index].ref < MAX_REF:
            self._links[e.index].ref += 1
        e.expires = exp
        e.negative = negative
        old = e.value  # released on return: its finalizer must not see a half update
        e.value = value
        self.inserts += 1
        self._shrink_to_capacity()
        # nothing is allocated while evicting, so an entry still resident is still this one
        return e.queue == HOT or e.queue == COLD

    cdef int _discard(self, object key) except -1:
        cdef _Entry e = self._lookup(key)
        if e is not None:
            self._drop(e)
        return 0

    def remove(self, key):
        """Forget ``key``, and the ghost of its hash; returns whether an entry was removed."""
        self._ghosts.discard(PyObject_Hash(key))
        cdef _Entry e = self._lookup(key)
        if e is None:
            return False
        self._drop(e)
        return True

    cdef _Entry _live(self, object key):
        """The resident, unexpired entry for ``key``, or None; changes nothing."""
        cdef _Entry e = self._lookup(key)
        if e is None:
            return None
        if e.expires != INFINITY and self._now() >= e.expires:
            return None
        return e

    def peek(self, key, default=None):
        """Like ``get`` without counting, referencing or removing anything."""
        cdef _Entry e = self._live(key)
        if e is None:
            return default
        return _NEGATIVE if e.negative else e.value

    def peek_entry(self, key):
        """``(value or NEGATIVE, weight, expires_at or None)`` of a live entry, else None."""
        cdef _Entry e = self._live(key)
        if e is None:
            return None
        return (_NEGATIVE if e.negative else e.value, e.weight,
                None if e.expires == INFINITY else e.expires)

    def __contains__(self, key):
        return self._live(key) is not None

    def __len__(self):
        return self._count[HOT] + self._count[COLD]

    @property
    def weight(self):
        """Total weight of the resident entries; never above ``capacity``."""
        return self._weight[HOT] + self._weight[COLD]

    @property
    def capacity(self):
        return self._capacity

    @property
    def max_entry_weight(self):
        """The heaviest entry that can be cached: 97 % of the capacity."""
        return self._hot_target

    def resize(self, capacity):
        """Change the capacity; a smaller one evicts (counted as evictions) until it fits."""
        self._set_capacity(capacity)
        self._shrink_to_capacity()

    def clear(self):
        """Drop every entry and ghost; counters are kept (they are cumulative metrics)."""
        self._reset()

    def sweep(self, limit):
        """Examine up to ``limit`` pool positions from where the last call stopped; remove
        expired entries. Returns ``(removed, finished)``; see ``cache_py.Cache.sweep``.
        """
        limit = _index(limit)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cdef Py_ssize_t lim = min(limit, self._nslots + 1)
        cdef Py_ssize_t i, end
        cdef Py_ssize_t removed = 0
        cdef double now
        cdef _Entry e
        if self._cursor >= self._nslots:
            self._cursor = 0
            return 0, True
        now = self._now()
        end = min(self._nslots, self._cursor + lim)
        for i in range(self._cursor, end):
            if i >= self._nslots:  # a finalizer run by a removal cleared the cache
                break
            e = self._at(i)
            if (e.queue == HOT or e.queue == COLD) and e.expires <= now:
                self._drop(e)
                self.expired += 1
                removed += 1
        self._cursor = end
        if end >= self._nslots:
            self._cursor = 0
            return removed, True
        return removed, False

    def retain(self, predicate):
        """Keep only entries for which ``predicate(key, value or NEGATIVE)`` is true.

        Returns the number removed. The predicate may itself change the cache.
        """
        cdef _Entry e
        cdef Py_ssize_t removed = 0
        snapshot = [(e, e.key) for e in self._pool if e.queue == HOT or e.queue == COLD]
        for e, key in snapshot:
            if not self._holds(e, key):
                continue
            value = _NEGATIVE if e.negative else e.value
            # the predicate may change the cache, even clear it: re-check before dropping
            if not predicate(key, value) and self._holds(e, key):
                self._drop(e)
                removed += 1
        return removed

    cdef bint _holds(self, _Entry e, object key):
        cdef Py_ssize_t i = e.index
        return (i < self._nslots and self._pool[i] is e and e.key is key
                and (e.queue == HOT or e.queue == COLD))

    def stats(self):
        """Counters and occupancy, for metrics."""
        out = {name: getattr(self, name) for name in COUNTERS}
        out.update(entries=len(self), weight=self.weight, capacity=self._capacity)
        return out

    def __repr__(self):
        return f"<Cache {len(self)} entries, weight {self.weight}/{self._capacity}>"
