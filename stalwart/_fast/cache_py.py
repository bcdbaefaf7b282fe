"""Pure-Python twin of ``cache.pyx``: a byte-weighted, scan-resistant cache with TTLs.

Eviction is the CLOCK-Pro variant of the reference (quick_cache 0.7, services.md §5.3), chosen over
S3-FIFO because it had the better hit ratio on every trace of ``bench/cache_trace.py`` at the same
cost per operation (anchors.md §7):

* two resident FIFO rings: **hot** (target 97 % of the capacity) and **cold** (a small probation
  ring), and **ghosts**: the hashes of keys evicted from cold during the last N evictions, N
  being the number of resident entries (hashes, not keys: a ghost costs 8 bytes and touches no
  Python object; a collision only admits a new key to hot);
* a new key enters hot while hot has room, else cold; a key whose hash is a ghost enters hot;
* ``get`` raises an entry's ``referenced`` counter (capped at 2); the cold head is promoted to hot
  when referenced, else evicted and remembered as a ghost; hot is a 2-bit CLOCK whose victims leave
  no ghost. One-hit keys (a scan) only ever pass through cold, so they cannot flush the hot set.

Both twins keep the same layout so that one sequence of operations gives the same results,
evictions and sweep order included, whichever kernel runs it: a key maps to its entry object
(value and metadata together, so a hit touches one object; a dict here, the compiled kernel's own
hash table there); entries live in a pool and are reused through a LIFO free list, never freed one
by one; rings are lists of pool positions linked through integer arrays beside the pool. Ghosts
live in :class:`_Ghosts`, a set-associative table that both kernels implement identically. This
module also defines :data:`NEGATIVE`, which the compiled kernel imports, so that callers can
compare with ``is`` whichever one is loaded.

Not thread-safe: a worker owns its caches and touches them from its event loop only.
"""
from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["NEGATIVE", "Cache"]


class _Negative:
    """Type of :data:`NEGATIVE`; a singleton that survives copy and pickle by name."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEGATIVE"

    def __reduce__(self) -> str:
        return "NEGATIVE"

    def __bool__(self) -> bool:
        return False


#: Returned by ``get`` for a key cached as known not to exist (``put_negative``).
NEGATIVE = _Negative()

# Ring ids, also the state of an entry.
FREE, HOT, COLD = 0, 1, 2
NIL = -1
INF = math.inf
MAX_REF = 2
# Bounds shared with the compiled kernel, which sums weights in int64.
MAX_CAPACITY = 1 << 62
#: The cumulative counters both kernels keep, in the order ``stats()`` lists them.
COUNTERS = ("hits", "negative_hits", "misses", "inserts", "evictions", "expired", "rejected")


def _expiry_arg(value: Any, name: str) -> float:
    x = float(value)
    if math.isnan(x):
        raise ValueError(f"{name} must not be NaN")
    return x


_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_FIB = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads runs of int hashes over buckets
WAYS = 8


class _Ghosts:
    """Hashes of keys evicted from cold, each stamped with the eviction number that recorded it.

    A hash is a ghost while fewer than ``window`` evictions have been recorded since its stamp,
    ``window`` being the number of resident entries when asked: the effect of a FIFO of ghosts as
    long as the cache, without the FIFO. The table is set-associative: a hash lives in one bucket
    of ``WAYS`` pairs of 32-bit (tag, stamp), one 64-byte cache line in the compiled kernel, so
    recording and looking up each touch one line, and the whole table stays small (8 bytes per
    resident entry) enough to live in the CPU cache. A new hash replaces the bucket's oldest pair.

    The tag is the top 32 bits of the hash times ``_FIB``; its top bits are the bucket number, so
    the table can double without the full hashes. Stamps count evictions modulo 2**32 and 0 marks
    an empty pair; a pair older than 2**32 evictions may pass for young, which at worst admits
    one key to hot.

    Here each bucket is a dict ``tag -> stamp`` kept in recording order (a re-recorded tag
    moves to the end), so the oldest pair is the first key; the compiled kernel scans its eight
    pairs for the largest age instead. Both hold the same pairs after any sequence of calls.
    """

    __slots__ = ("buckets", "seq", "slots", "tag_shift")

    def __init__(self) -> None:
        self.buckets: list[dict[int, int]] = []
        self.slots = 0  # pairs the compiled table would have: WAYS per bucket
        self.tag_shift = 32
        self.seq = 0

    def _grow(self, window: int) -> None:
        slots = max(64, self.slots)
        while slots < window:
            slots *= 2
        shift = 32 - ((slots // WAYS).bit_length() - 1)
        buckets: list[dict[int, int]] = [{} for _ in range(slots // WAYS)]
        # each new bucket takes pairs from a single old bucket, in their order: none is pushed out
        for old in self.buckets:
            for tag, stamp in old.items():
                buckets[tag >> shift][tag] = stamp
        self.buckets, self.slots, self.tag_shift = buckets, slots, shift

    def record(self, h: int, window: int) -> None:
        """Remember ``h`` as evicted now; the table grows to at least ``window`` pairs."""
        if not self.slots or window > self.slots:
            self._grow(window)
        self.seq = (self.seq + 1) & _MASK32 or 1
        tag = (((h & _MASK64) * _FIB) & _MASK64) >> 32
        bucket = self.buckets[tag >> self.tag_shift]
        if tag in bucket:
            del bucket[tag]
        elif len(bucket) >= WAYS:
            del bucket[next(iter(bucket))]  # the oldest pair
        bucket[tag] = self.seq

    def _pop(self, h: int) -> int | None:
        if not self.slots:
            return None
        tag = (((h & _MASK64) * _FIB) & _MASK64) >> 32
        return self.buckets[tag >> self.tag_shift].pop(tag, None)

    def take(self, h: int, window: int) -> bool:
        """Whether ``h`` is a live ghost; its pair is emptied either way."""
        stamp = self._pop(h)
        return stamp is not None and (self.seq - stamp) & _MASK32 < window

    def discard(self, h: int) -> None:
        self._pop(h)


class _Entry:
    """One pool position: a resident entry or a free slot."""

    __slots__ = ("expires", "index", "key", "negative", "queue", "ref", "value", "weight")

    def __init__(self, index: int):
        self.key: Any = None
        self.value: Any = None
        self.expires = INF
        self.weight = 0
        self.index = index
        self.queue = FREE
        self.ref = 0
        self.negative = False


class Cache:
    """A cache bounded by the total weight (bytes) of its entries.

    ``capacity``: the weight bound, an integer >= 1. ``weigher(key, value) -> int`` gives the
    weight of an entry put without an explicit ``weight`` (a negative entry is weighed with
    ``NEGATIVE`` as its value); without a weigher such entries weigh 1, so the capacity counts
    entries. ``clock() -> float`` gives monotonic seconds for TTLs; the default is
    ``time.monotonic`` (tests inject their own). Entries heavier than :attr:`max_entry_weight`
    (97 % of the capacity) are never cached. ``clock`` and ``weigher`` must not use the cache.
    """

    def __init__(self, capacity: int, weigher: Callable[[Any, Any], int] | None = None,
                 clock: Callable[[], float] | None = None):
        self._capacity = 0
        self._hot_target = 0
        self._set_capacity(capacity)
        self._weigher = weigher
        self._clock = clock if clock is not None else time.monotonic
        self.hits = 0
        self.negative_hits = 0
        self.misses = 0
        self.inserts = 0
        self.evictions = 0
        self.expired = 0
        self.rejected = 0
        self._reset()

    # ---------------------------------------------------------------- storage

    def _set_capacity(self, capacity: int) -> None:
        capacity = operator.index(capacity)
        if capacity < 1 or capacity > MAX_CAPACITY:
            raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY}")
        self._capacity = capacity
        # Hot holds up to 97 % of the capacity: the reference's split, and the largest entry.
        self._hot_target = max(capacity * 97 // 100, 1)

    def _reset(self) -> None:
        self._index: dict[Hashable, _Entry] = {}
        self._pool: list[_Entry] = []
        self._next: list[int] = []
        self._prev: list[int] = []
        self._free = NIL
        # head, tail, length and weight of each ring, indexed by ring id (FREE unused)
        self._head = [NIL, NIL, NIL]
        self._tail = [NIL, NIL, NIL]
        self._count = [0, 0, 0]
        self._weight = [0, 0, 0]
        self._ghosts = _Ghosts()
        self._cursor = 0

    def _grow(self) -> None:
        n = len(self._pool)
        new = max(16, 2 * n)
        self._pool.extend(_Entry(i) for i in range(n, new))
        self._next.extend([NIL] * (new - n))
        self._prev.extend([NIL] * (new - n))
        # pushed in reverse so the lowest new position is taken first
        for i in range(new - 1, n - 1, -1):
            self._next[i] = self._free
            self._free = i

    def _alloc(self) -> _Entry:
        if self._free == NIL:
            self._grow()
        i = self._free
        self._free = self._next[i]
        return self._pool[i]

    def _release(self, e: _Entry) -> None:
        # hold key and value until the entry is free again: dropping them may run finalizers
        held = (e.key, e.value)  # noqa: F841
        e.key = None
        e.value = None
        e.queue = FREE
        self._next[e.index] = self._free
        self._free = e.index

    def _link(self, e: _Entry, q: int) -> None:
        """Append ``e`` at the tail of ring ``q``."""
        i = e.index
        t = self._tail[q]
        e.queue = q
        self._prev[i] = t
        self._next[i] = NIL
        if t == NIL:
            self._head[q] = i
        else:
            self._next[t] = i
        self._tail[q] = i
        self._count[q] += 1
        self._weight[q] += e.weight

    def _unlink(self, e: _Entry) -> None:
        i = e.index
        q = e.queue
        p, n = self._prev[i], self._next[i]
        if p == NIL:
            self._head[q] = n
        else:
            self._next[p] = n
        if n == NIL:
            self._tail[q] = p
        else:
            self._prev[n] = p
        self._count[q] -= 1
        self._weight[q] -= e.weight

    def _drop(self, e: _Entry) -> None:
        """Forget resident entry ``e``; no ghost is left behind."""
        self._unlink(e)
        del self._index[e.key]
        self._release(e)

    # ---------------------------------------------------------------- eviction

    def _advance_hot(self) -> bool:
        """Second-chance sweep of hot: evict the first unreferenced entry (no ghost)."""
        while True:
            i = self._head[HOT]
            if i == NIL:
                return False
            e = self._pool[i]
            if e.ref > 0:
                e.ref -= 1
                self._unlink(e)
                self._link(e, HOT)
            else:
                self._drop(e)
                self.evictions += 1
                return True

    def _advance_cold(self) -> bool:
        """Promote the cold head if it was referenced, else evict it and remember its hash."""
        i = self._head[COLD]
        if i == NIL:
            return self._advance_hot()
        e = self._pool[i]
        self._unlink(e)
        if e.ref > 0:
            e.ref -= 1
            self._link(e, HOT)
            while self._weight[HOT] > self._hot_target:
                if not self._advance_hot():
                    break
            return True
        h = hash(e.key)
        del self._index[e.key]
        self._release(e)
        self.evictions += 1
        self._ghosts.record(h, self._count[HOT] + self._count[COLD])
        return True

    def _shrink_to_capacity(self) -> None:
        while self._weight[HOT] + self._weight[COLD] > self._capacity:
            if not self._advance_cold():
                break

    # ---------------------------------------------------------------- arguments

    def _weigh(self, key: Any, value: Any, weight: Any) -> int:
        if weight is None:
            if self._weigher is None:
                return 1
            weight = self._weigher(key, value)
        w = operator.index(weight)
        if w < 1 or w > MAX_CAPACITY:
            raise ValueError(f"an entry's weight must be between 1 and {MAX_CAPACITY}")
        return w

    def _expiry(self, ttl: Any, expires_at: Any) -> float:
        """Absolute expiry for a put: INF for none, NaN when it is already past."""
        if ttl is None:
            if expires_at is None:
                return INF
            exp = _expiry_arg(expires_at, "expires_at")
            return exp if exp > self._clock() else math.nan
        if expires_at is not None:
            raise ValueError("give ttl or expires_at, not both")
        t = _expiry_arg(ttl, "ttl")
        if t < 0:
            raise ValueError("ttl must not be negative")
        if t == INF:
            return INF
        # a zero ttl is past at once: ``get`` treats ``expires <= now`` as expired
        return self._clock() + t if t > 0 else math.nan

    # ---------------------------------------------------------------- API

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value cached for ``key``, :data:`NEGATIVE` for a negative entry, else ``default``.

        An entry whose expiry is at or before ``clock()`` is removed and reported as a miss.
        """
        e = self._index.get(key)
        if e is None:
            self.misses += 1
            return default
        if e.expires != INF and self._clock() >= e.expires:
            self._drop(e)
            self.expired += 1
            self.misses += 1
            return default
        if e.ref < MAX_REF:
            e.ref += 1
        if e.negative:
            self.negative_hits += 1
            return NEGATIVE
        self.hits += 1
        return e.value

    def put(self, key: Hashable, value: Any, weight: int | None = None, ttl: float | None = None,
            expires_at: float | None = None) -> bool:
        """Cache ``value`` under ``key``; returns whether it is resident afterwards.

        ``weight`` defaults to the weigher's answer; ``ttl`` (seconds from now) or ``expires_at``
        (monotonic seconds, same clock) bounds its life, neither means no expiry. An entry
        heavier than :attr:`max_entry_weight`, or already expired, is not cached and any older
        entry for the key is removed. Replacing a resident entry counts as a reference to it.
        """
        if weight is None and ttl is None and expires_at is None and self._weigher is None:
            return self._store(key, value, 1, INF, False)  # the common call, kept short
        w = self._weigh(key, value, weight)
        return self._store(key, value, w, self._expiry(ttl, expires_at), False)

    def put_negative(self, key: Hashable, ttl: float | None = None, weight: int | None = None,
                     expires_at: float | None = None) -> bool:
        """Remember that ``key`` does not exist until ``ttl`` seconds from now (or ``expires_at``).

        ``get`` then returns :data:`NEGATIVE`. Returns whether the entry is resident afterwards.
        """
        if ttl is None and expires_at is None:
            raise ValueError("a negative entry needs a ttl or expires_at")
        w = self._weigh(key, NEGATIVE, weight)
        return self._store(key, None, w, self._expiry(ttl, expires_at), True)

    def _store(self, key: Hashable, value: Any, w: int, exp: float, negative: bool) -> bool:
        """Insert or replace; evictions happen before a new entry is linked, so a new entry is
        never its own victim."""
        if w > self._hot_target:
            self._discard(key)
            self.rejected += 1
            return False
        if math.isnan(exp):  # already expired, so a stale older entry must not survive either
            self._discard(key)
            return False
        e = self._index.get(key)
        if e is not None:
            self._weight[e.queue] += w - e.weight
            e.weight = w
            if e.ref < MAX_REF:
                e.ref += 1
            e.expires = exp
            e.negative = negative
            old = e.value  # noqa: F841 -- released on return, not mid-update
            e.value = value
            self.inserts += 1
            self._shrink_to_capacity()
        else:
            if self._ghosts.take(hash(key), self._count[HOT] + self._count[COLD]):
                # a recently evicted key came back: it has proved reuse, so it goes hot
                ring = HOT
            else:
                ring = HOT if self._weight[HOT] + w <= self._hot_target else COLD
            while self._weight[HOT] + self._weight[COLD] + w > self._capacity:
                if not self._advance_cold():
                    break
            e = self._alloc()
            e.key = key
            e.value = value
            e.weight = w
            e.expires = exp
            e.ref = 0
            e.negative = negative
            self._index[key] = e
            self._link(e, ring)
            self.inserts += 1
        # nothing is allocated while evicting, so an entry still resident is still this one
        return e.queue == HOT or e.queue == COLD

    def _discard(self, key: Hashable) -> None:
        e = self._index.get(key)
        if e is not None:
            self._drop(e)

    def remove(self, key: Hashable) -> bool:
        """Forget ``key``, and the ghost of its hash; returns whether an entry was removed."""
        self._ghosts.discard(hash(key))
        e = self._index.get(key)
        if e is None:
            return False
        self._drop(e)
        return True

    def _live(self, key: Hashable) -> _Entry | None:
        """The resident, unexpired entry for ``key``; changes nothing."""
        e = self._index.get(key)
        if e is None:
            return None
        if e.expires != INF and self._clock() >= e.expires:
            return None
        return e

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """Like :meth:`get` without counting, referencing or removing anything."""
        e = self._live(key)
        if e is None:
            return default
        return NEGATIVE if e.negative else e.value

    def peek_entry(self, key: Hashable) -> tuple[Any, int, float | None] | None:
        """``(value or NEGATIVE, weight, expires_at or None)`` of a live entry, else None."""
        e = self._live(key)
        if e is None:
            return None
        return (NEGATIVE if e.negative else e.value, e.weight, None if e.expires == INF else e.expires)

    def __contains__(self, key: Hashable) -> bool:
        return self._live(key) is not None

    def __len__(self) -> int:
        """Resident entries, negative ones and expired ones not yet removed included."""
        return self._count[HOT] + self._count[COLD]

    @property
    def weight(self) -> int:
        """Total weight of the resident entries; never above :attr:`capacity`."""
        return self._weight[HOT] + self._weight[COLD]

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_entry_weight(self) -> int:
        """The heaviest entry that can be cached: 97 % of the capacity."""
        return self._hot_target

    def resize(self, capacity: int) -> None:
        """Change the capacity; a smaller one evicts (counted as evictions) until it fits."""
        self._set_capacity(capacity)
        self._shrink_to_capacity()

    def clear(self) -> None:
        """Drop every entry and ghost; counters are kept (they are cumulative metrics)."""
        held = (self._index, self._pool)  # noqa: F841 -- released once the state is reset
        self._reset()

    def sweep(self, limit: int) -> tuple[int, bool]:
        """Examine up to ``limit`` pool positions from where the last call stopped; remove
        expired entries.

        Returns ``(removed, finished)``, ``finished`` being true when this call reached the end
        of the pool (the next call starts a new pass). Lets the owner spread expiry over many
        event-loop ticks instead of stalling one.
        """
        limit = operator.index(limit)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        n = len(self._pool)
        if self._cursor >= n:
            self._cursor = 0
            return 0, True
        now = self._clock()
        removed = 0
        end = min(n, self._cursor + limit)
        for i in range(self._cursor, end):
            if i >= len(self._pool):  # a finalizer run by a removal cleared the cache
                break
            e = self._pool[i]
            if (e.queue == HOT or e.queue == COLD) and e.expires <= now:
                self._drop(e)
                self.expired += 1
                removed += 1
        self._cursor = end
        if end >= n:
            self._cursor = 0
            return removed, True
        return removed, False

    def retain(self, predicate: Callable[[Any, Any], Any]) -> int:
        """Keep only entries for which ``predicate(key, value or NEGATIVE)`` is true.

        Returns the number removed. The predicate may itself change the cache.
        """
        snapshot = [(e, e.key) for e in self._pool if e.queue == HOT or e.queue == COLD]
        removed = 0
        for e, key in snapshot:
            if not self._holds(e, key):
                continue
            value = NEGATIVE if e.negative else e.value
            # the predicate may change the cache, even clear it: re-check before dropping
            if not predicate(key, value) and self._holds(e, key):
                self._drop(e)
                removed += 1
        return removed

    def _holds(self, e: _Entry, key: Any) -> bool:
        i = e.index
        return i < len(self._pool) and self._pool[i] is e and e.key is key and e.queue in (HOT, COLD)

    def stats(self) -> dict[str, int]:
        """Counters and occupancy, for metrics."""
        out = {name: getattr(self, name) for name in COUNTERS}
        out.update(entries=len(self), weight=self.weight, capacity=self._capacity)
        return out

    def __repr__(self) -> str:
        return f"<Cache {len(self)} entries, weight {self.weight}/{self._capacity}>"
