"""Pure-Python twin of ``cache.pyx``: a byte-weighted, scan-resistant cache with TTLs.

Eviction is the CLOCK-Pro variant of the reference (quick_cache 0.7, services.md §5.3), chosen over
S3-FIFO because it had the better hit ratio on every trace of ``bench/cache_trace.py`` at the same
cost per operation (anchors.md §7):

* two resident FIFO rings: **hot** (target 97 % of the capacity) and **cold** (a small probation
  ring), and a **ghost** ring of keys recently evicted from cold, holding at most as many keys as
  there are resident entries;
* a new key enters hot while hot has room, else cold; a key found in the ghost ring enters hot;
* ``get`` raises an entry's ``referenced`` counter (capped at 2); the cold head is promoted to hot
  when referenced, else evicted and remembered as a ghost; hot is a 2-bit CLOCK whose victims leave
  no ghost. One-hit keys (a scan) only ever pass through cold, so they cannot flush the hot set.

Both twins keep the same slot layout (parallel per-slot arrays, rings as doubly-linked lists of slot
numbers, a LIFO free list) so that one sequence of operations gives the same results, evictions
and sweep order included, whichever kernel runs it. This module also defines :data:`NEGATIVE`,
which the compiled kernel imports, so that callers can compare with ``is`` whichever one is loaded.

Not thread-safe: a worker owns its caches and touches them from its event loop only.
"""
from __future__ import annotations

import math
import operator
import time
from typing import Any, Callable, Hashable

__all__ = ["Cache", "NEGATIVE"]


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

# Ring ids, also the state of a slot.
FREE, HOT, COLD, GHOST = 0, 1, 2, 3
NIL = -1
INF = math.inf
# Hot holds up to 97 % of the capacity: the reference's split, and the largest cacheable entry.
MAX_REF = 2
# Bounds shared with the compiled kernel, which sums weights in int64.
MAX_CAPACITY = 1 << 62


def _expiry_arg(value: Any, name: str) -> float:
    x = float(value)
    if math.isnan(x):
        raise ValueError(f"{name} must not be NaN")
    return x


class Cache:
    """A cache bounded by the total weight (bytes) of its entries.

    ``capacity``: the weight bound, an integer >= 1. ``weigher(key, value) -> int`` gives the
    weight of an entry put without an explicit ``weight`` (a negative entry is weighed with
    ``NEGATIVE`` as its value); without a weigher such entries weigh 1, so the capacity counts
    entries. ``clock() -> float`` gives monotonic seconds for TTLs; the default is
    ``time.monotonic`` (tests inject their own). Entries heavier than :attr:`max_entry_weight`
    (97 % of the capacity) are never cached.
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
        self._index: dict[Hashable, int] = {}
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._weight: list[int] = []
        self._expires: list[float] = []
        self._next: list[int] = []
        self._prev: list[int] = []
        self._queue: list[int] = []
        self._ref: list[int] = []
        self._neg: list[bool] = []
        self._free = NIL
        # head, tail and length of each ring, indexed by ring id (slot 0 unused: FREE)
        self._head = [NIL, NIL, NIL, NIL]
        self._tail = [NIL, NIL, NIL, NIL]
        self._count = [0, 0, 0, 0]
        self._hot_weight = 0
        self._cold_weight = 0
        self._cursor = 0

    def _grow(self) -> None:
        n = len(self._keys)
        new = max(16, 2 * n)
        extra = new - n
        self._keys.extend([None] * extra)
        self._values.extend([None] * extra)
        self._weight.extend([0] * extra)
        self._expires.extend([INF] * extra)
        self._next.extend([NIL] * extra)
        self._prev.extend([NIL] * extra)
        self._queue.extend([FREE] * extra)
        self._ref.extend([0] * extra)
        self._neg.extend([False] * extra)
        # pushed in reverse so the lowest new slot is taken first, as in the compiled kernel
        for i in range(new - 1, n - 1, -1):
            self._next[i] = self._free
            self._free = i

    def _alloc(self) -> int:
        if self._free == NIL:
            self._grow()
        i = self._free
        self._free = self._next[i]
        return i

    def _release(self, i: int) -> None:
        # hold key and value until the slot is free again: dropping them may run finalizers,
        # and a finalizer may use this cache
        held = (self._keys[i], self._values[i])  # noqa: F841
        self._keys[i] = None
        self._values[i] = None
        self._queue[i] = FREE
        self._next[i] = self._free
        self._free = i

    def _link(self, i: int, q: int) -> None:
        """Append slot ``i`` at the tail of ring ``q``."""
        t = self._tail[q]
        self._queue[i] = q
        self._prev[i] = t
        self._next[i] = NIL
        if t == NIL:
            self._head[q] = i
        else:
            self._next[t] = i
        self._tail[q] = i
        self._count[q] += 1
        if q == HOT:
            self._hot_weight += self._weight[i]
        elif q == COLD:
            self._cold_weight += self._weight[i]

    def _unlink(self, i: int) -> None:
        q = self._queue[i]
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
        if q == HOT:
            self._hot_weight -= self._weight[i]
        elif q == COLD:
            self._cold_weight -= self._weight[i]

    def _drop(self, i: int) -> None:
        """Forget slot ``i`` entirely (resident or ghost): no ghost is left behind."""
        self._unlink(i)
        del self._index[self._keys[i]]
        self._release(i)

    # ---------------------------------------------------------------- eviction

    def _advance_hot(self) -> bool:
        """Second-chance sweep of hot: evict the first unreferenced entry (no ghost)."""
        while True:
            i = self._head[HOT]
            if i == NIL:
                return False
            r = self._ref[i]
            if r > 0:
                self._ref[i] = r - 1
                self._unlink(i)
                self._link(i, HOT)
            else:
                self._drop(i)
                self.evictions += 1
                return True

    def _advance_cold(self) -> bool:
        """Promote the cold head if it was referenced, else evict it to the ghost ring."""
        i = self._head[COLD]
        if i == NIL:
            return self._advance_hot()
        self._unlink(i)
        if self._ref[i] > 0:
            self._ref[i] -= 1
            self._link(i, HOT)
            while self._hot_weight > self._hot_target:
                if not self._advance_hot():
                    break
            return True
        held = self._values[i]  # noqa: F841 -- released on return, once the ring is consistent
        self._values[i] = None
        self._link(i, GHOST)
        self.evictions += 1
        # ghosts remember at most as many keys as are resident
        resident = self._count[HOT] + self._count[COLD]
        while self._count[GHOST] > resident:
            self._drop(self._head[GHOST])
        return True

    def _shrink_to_capacity(self) -> None:
        while self._hot_weight + self._cold_weight > self._capacity:
            if not self._advance_cold():
                break

    # ---------------------------------------------------------------- arguments

    def _weigh(self, key: Any, value: Any, weight: Any) -> int:
        if weight is None:
            weight = 1 if self._weigher is None else self._weigher(key, value)
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
        i = self._index.get(key)
        if i is None or self._queue[i] == GHOST:
            self.misses += 1
            return default
        exp = self._expires[i]
        if exp != INF and self._clock() >= exp:
            self._drop(i)
            self.expired += 1
            self.misses += 1
            return default
        if self._ref[i] < MAX_REF:
            self._ref[i] += 1
        if self._neg[i]:
            self.negative_hits += 1
            return NEGATIVE
        self.hits += 1
        return self._values[i]

    def put(self, key: Hashable, value: Any, weight: int | None = None, ttl: float | None = None,
            expires_at: float | None = None) -> bool:
        """Cache ``value`` under ``key``; returns whether it is resident afterwards.

        ``weight`` defaults to the weigher's answer; ``ttl`` (seconds from now) or ``expires_at``
        (monotonic seconds, same clock) bounds its life, neither means no expiry. An entry
        heavier than :attr:`max_entry_weight`, or already expired, is not cached and any older
        entry for the key is removed.
        """
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
        if w > self._hot_target:
            self._discard(key)
            self.rejected += 1
            return False
        if exp != exp:  # NaN: already expired, so a stale older entry must not survive either
            self._discard(key)
            return False
        i = self._index.get(key)
        if i is not None:
            if self._queue[i] == GHOST:
                # a recently evicted key came back: it has proved reuse, so it goes hot
                self._unlink(i)
                self._ref[i] = 0
                self._weight[i] = w
                self._link(i, HOT)
            else:
                delta = w - self._weight[i]
                self._weight[i] = w
                if self._queue[i] == HOT:
                    self._hot_weight += delta
                else:
                    self._cold_weight += delta
                if self._ref[i] < MAX_REF:
                    self._ref[i] += 1
            self._expires[i] = exp
            self._neg[i] = negative
            old = self._values[i]  # noqa: F841 -- released on return, not mid-update
            self._values[i] = value
            self.inserts += 1
            self._shrink_to_capacity()
        else:
            enter_hot = self._hot_weight + w <= self._hot_target
            while self._hot_weight + self._cold_weight + w > self._capacity:
                if not self._advance_cold():
                    break
            i = self._alloc()
            self._keys[i] = key
            self._values[i] = value
            self._weight[i] = w
            self._expires[i] = exp
            self._ref[i] = 0
            self._neg[i] = negative
            self._index[key] = i
            self._link(i, HOT if enter_hot else COLD)
            self.inserts += 1
        # nothing is allocated while evicting, so a slot still resident still holds this entry
        q = self._queue[i]
        return q == HOT or q == COLD

    def _discard(self, key: Hashable) -> None:
        i = self._index.get(key)
        if i is not None and self._queue[i] != GHOST:
            self._drop(i)

    def remove(self, key: Hashable) -> bool:
        """Forget ``key`` (its ghost too); returns whether a resident entry was removed."""
        i = self._index.get(key)
        if i is None:
            return False
        resident = self._queue[i] != GHOST
        self._drop(i)
        return resident

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """Like :meth:`get` without counting, referencing or removing anything."""
        i = self._index.get(key)
        if i is None or self._queue[i] == GHOST:
            return default
        exp = self._expires[i]
        if exp != INF and self._clock() >= exp:
            return default
        return NEGATIVE if self._neg[i] else self._values[i]

    def peek_entry(self, key: Hashable) -> tuple[Any, int, float | None] | None:
        """``(value or NEGATIVE, weight, expires_at or None)`` of a live entry, else None."""
        i = self._index.get(key)
        if i is None or self._queue[i] == GHOST:
            return None
        exp = self._expires[i]
        if exp != INF and self._clock() >= exp:
            return None
        value = NEGATIVE if self._neg[i] else self._values[i]
        return (value, self._weight[i], None if exp == INF else exp)

    def __contains__(self, key: Hashable) -> bool:
        return self.peek_entry(key) is not None

    def __len__(self) -> int:
        """Resident entries, negative ones and expired ones not yet removed included."""
        return self._count[HOT] + self._count[COLD]

    @property
    def weight(self) -> int:
        """Total weight of the resident entries; never above :attr:`capacity`."""
        return self._hot_weight + self._cold_weight

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_entry_weight(self) -> int:
        return self._hot_target

    def resize(self, capacity: int) -> None:
        """Change the capacity; a smaller one evicts (counted as evictions) until it fits."""
        self._set_capacity(capacity)
        self._shrink_to_capacity()

    def clear(self) -> None:
        """Drop every entry and ghost; counters are kept (they are cumulative metrics)."""
        held = (self._index, self._keys, self._values)  # noqa: F841 -- released once reset
        self._reset()

    def sweep(self, limit: int) -> tuple[int, bool]:
        """Examine up to ``limit`` slots from where the last call stopped; remove expired entries.

        Returns ``(removed, finished)``, ``finished`` being true when this call reached the end
        of the slot table (the next call starts a new pass). Lets the owner spread expiry over
        many event-loop ticks instead of stalling one.
        """
        limit = operator.index(limit)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        n = len(self._keys)
        if self._cursor >= n:
            self._cursor = 0
            return 0, True
        now = self._clock()
        removed = 0
        end = min(n, self._cursor + limit)
        for i in range(self._cursor, end):
            if i >= len(self._keys):  # a finalizer run by a removal cleared the cache
                break
            q = self._queue[i]
            if (q == HOT or q == COLD) and self._expires[i] <= now:
                self._drop(i)
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
        snapshot = [(i, self._keys[i]) for i in range(len(self._keys))
                    if self._queue[i] == HOT or self._queue[i] == COLD]
        removed = 0
        for i, key in snapshot:
            if not self._holds(i, key):
                continue
            value = NEGATIVE if self._neg[i] else self._values[i]
            # the predicate may change the cache, even clear it: re-check before dropping
            if not predicate(key, value) and self._holds(i, key):
                self._drop(i)
                removed += 1
        return removed

    def _holds(self, i: int, key: Any) -> bool:
        return i < len(self._keys) and self._keys[i] is key and self._queue[i] in (HOT, COLD)

    def stats(self) -> dict[str, int]:
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

    def __repr__(self) -> str:
        return f"<Cache {len(self)} entries, weight {self.weight}/{self._capacity}>"
