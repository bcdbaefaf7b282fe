# cython: language_level=3
"""Shared-memory connection table: connection caps, per-worker held slots and heartbeats.

The master maps one anonymous MAP_SHARED region before it forks; every worker of every generation
inherits it, so counts survive reloads and worker restarts. All updates are lock-free atomics
(GCC ``__atomic`` builtins), and acquiring a slot is a compare-and-swap loop, so concurrent accepts
in different workers never overshoot a cap (network.md §7).

Layout, in int64 cells:
  [0] magic  [1] max_listeners  [2] max_workers  [3] server count  [4..7] change epochs
  [HDR .. HDR+L)                  per-listener counts
  [HDR+L .. HDR+L+W)              per-worker heartbeat counters
  [HDR+L+W .. HDR+L+W+W*L)        held[worker][listener]: slots a worker holds now
"""
from libc.stdint cimport int64_t

cdef extern from *:
    """
    #include <stdint.h>
    static inline int64_t sw_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void sw_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int sw_cas(int64_t *p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline int64_t sw_add(int64_t *p, int64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    """
    int64_t sw_load(int64_t *p) nogil
    void sw_store(int64_t *p, int64_t v) nogil
    int sw_cas(int64_t *p, int64_t expected, int64_t desired) nogil
    int64_t sw_add(int64_t *p, int64_t v) nogil

DEF HDR = 8
DEF EPOCHS = 4
MAGIC = 0x5354414C57415254  # "STALWART"

OK = 0
LISTENER_FULL = 1
SERVER_FULL = 2


def size_for(int max_listeners, int max_workers):
    """Bytes needed for a table of this capacity."""
    return 8 * (HDR + max_listeners + max_workers + max_workers * max_listeners)


cdef inline bint _take(int64_t *cell, int64_t limit) nogil:
    cdef int64_t cur
    while True:
        cur = sw_load(cell)
        if cur >= limit:
            return False
        if sw_cas(cell, cur, cur + 1):
            return True


cdef class ConnectionTable:
    cdef object _view
    cdef int64_t *_cells
    cdef readonly int max_listeners
    cdef readonly int max_workers
    cdef int64_t *_listeners
    cdef int64_t *_beats
    cdef int64_t *_held

    def __cinit__(self, buf, int max_listeners, int max_workers):
        cdef unsigned char[::1] view = buf
        if view.shape[0] < size_for(max_listeners, max_workers):
            raise ValueError("buffer too small for the table")
        if max_listeners < 1 or max_workers < 1:
            raise ValueError("capacity must be positive")
        self._view = view
        self._cells = <int64_t *> &view[0]
        self.max_listeners = max_listeners
        self.max_workers = max_workers
        self._listeners = self._cells + HDR
        self._beats = self._listeners + max_listeners
        self._held = self._beats + max_workers
        if sw_load(self._cells) == 0:
            self._cells[1] = max_listeners
            self._cells[2] = max_workers
            sw_store(self._cells, MAGIC)
        elif self._cells[0] != MAGIC or self._cells[1] != max_listeners or self._cells[2] != max_workers:
            raise ValueError("buffer holds a table of another shape")

    cdef inline void _check(self, int listener, int worker) except *:
        if listener < 0 or listener >= self.max_listeners:
            raise IndexError("listener index out of range")
        if worker < 0 or worker >= self.max_workers:
            raise IndexError("worker index out of range")

    cpdef int acquire(self, int listener, int worker, int64_t listener_limit, int64_t server_limit) except -1:
        """Take one slot: listener first, then server-wide. ``listener_limit`` <= 0 means no
        listener cap. Returns OK, LISTENER_FULL or SERVER_FULL; a refusal changes nothing."""
        self._check(listener, worker)
        cdef int64_t *lc = self._listeners + listener
        if listener_limit > 0:
            if not _take(lc, listener_limit):
                return LISTENER_FULL
        else:
            sw_add(lc, 1)
        if not _take(self._cells + 3, server_limit):
            sw_add(lc, -1)
            return SERVER_FULL
        sw_add(self._held + <int64_t> worker * self.max_listeners + listener, 1)
        return OK

    cpdef void release(self, int listener, int worker) except *:
        """Give back one slot taken by :meth:`acquire` in this worker."""
        self._check(listener, worker)
        sw_add(self._held + <int64_t> worker * self.max_listeners + listener, -1)
        sw_add(self._listeners + listener, -1)
        sw_add(self._cells + 3, -1)

    def reclaim(self, int worker):
        """Subtract every slot still held by a dead worker; returns how many were reclaimed."""
        self._check(0, worker)
        cdef int64_t total = 0, n
        cdef int l
        cdef int64_t *row = self._held + <int64_t> worker * self.max_listeners
        for l in range(self.max_listeners):
            n = sw_load(row + l)
            if n:
                sw_add(row + l, -n)
                sw_add(self._listeners + l, -n)
                sw_add(self._cells + 3, -n)
                total += n
        return total

    cpdef void beat(self, int worker) except *:
        self._check(0, worker)
        sw_add(self._beats + worker, 1)

    def heartbeat(self, int worker):
        self._check(0, worker)
        return sw_load(self._beats + worker)

    def reset_worker(self, int worker):
        """Prepare a slot for a new worker: heartbeat to zero (held slots must be reclaimed first)."""
        self._check(0, worker)
        sw_store(self._beats + worker, 0)

    def server_count(self):
        return sw_load(self._cells + 3)

    def epoch(self, int which):
        """Change epoch ``which`` (0..3): a counter the master bumps when shared data changed
        (0: allow/block lists), so workers reload only when needed."""
        if which < 0 or which >= EPOCHS:
            raise IndexError("epoch index out of range")
        return sw_load(self._cells + 4 + which)

    def bump_epoch(self, int which):
        if which < 0 or which >= EPOCHS:
            raise IndexError("epoch index out of range")
        return sw_add(self._cells + 4 + which, 1)

    def listener_count(self, int listener):
        self._check(listener, 0)
        return sw_load(self._listeners + listener)

    def held(self, int worker, int listener):
        self._check(listener, worker)
        return sw_load(self._held + <int64_t> worker * self.max_listeners + listener)
