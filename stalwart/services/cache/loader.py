"""Single-flight loading for asyncio callers on top of a cache kernel (services.md §5.2).

``await loading.get_or_load(key, loader)`` answers from the cache when it can; on a miss it runs
``loader(key)`` once, however many tasks miss the same key meanwhile, and hands every waiter the
same outcome:

* a plain value is cached (with the default TTL, if any) and returned;
* :class:`Loaded` carries a value with its own TTL and weight (a DNS answer's minimum TTL);
* :class:`Negative` caches "does not exist" for its TTL (RFC 2308 negative caching) and every
  waiter gets ``NEGATIVE``, as later callers will from the cache;
* an exception is raised in every waiter and not cached, unless ``negative_for(exc)`` maps it to
  a negative TTL, which then counts as :class:`Negative`.

The load runs in its own task, so cancelling a waiter (a client that went away, a timeout around
one caller) never cancels it for the others; if every waiter goes, the load still completes and
fills the cache for the next caller. Only a cancellation of the load itself (the event loop
shutting down) fails the waiters, with :class:`LoadCancelledError`, never with a CancelledError
that would look like their own.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..._fast.cache_py import NEGATIVE
from ...errors import StalwartError

__all__ = ["LoadCancelledError", "Loaded", "LoadingCache", "Negative"]

_MISSING = object()
_DEFAULT: Any = object()

Loader = Callable[[Any], Awaitable[Any]]
NegativeFor = Callable[[Exception], "float | None"]


class LoadCancelledError(StalwartError):
    """The shared load was cancelled (its task, not the waiter), so it has no outcome."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A loaded value with its own cache lifetime (seconds) and weight (bytes)."""

    value: Any
    ttl: float | None = None
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class Negative:
    """The key is known not to exist for ``ttl`` seconds."""

    ttl: float
    weight: int | None = None


class _Flight:
    __slots__ = ("future", "task")

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future
        self.task: asyncio.Task | None = None


def _retrieve(future: asyncio.Future) -> None:
    # An outcome nobody awaited any more (every waiter cancelled) is not an error to log.
    if not future.cancelled():
        future.exception()


class LoadingCache:
    """Get-or-load with single flight over a cache kernel (``stalwart._fast.cache.Cache``).

    ``ttl``: default lifetime in seconds of values a loader returns plainly (None: no expiry).
    ``negative_for``: default mapping of a loader's exception to a negative TTL, or None.
    One instance belongs to one event loop; like the kernel it is not thread-safe.
    """

    def __init__(self, cache: Any, *, ttl: float | None = None,
                 negative_for: NegativeFor | None = None) -> None:
        self._cache = cache
        self._ttl = ttl
        self._negative_for = negative_for
        self._flights: dict[Hashable, _Flight] = {}
        # asyncio keeps only weak references to tasks: a load nobody waits for must not vanish
        self._tasks: set[asyncio.Task] = set()
        self.loads = 0
        self.load_errors = 0
        self.coalesced = 0

    @property
    def cache(self) -> Any:
        """The kernel underneath, for sizing, sweeping and counters."""
        return self._cache

    def in_flight(self) -> int:
        """Loads running now."""
        return len(self._flights)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The cached answer (a value or ``NEGATIVE``) without loading, else ``default``."""
        return self._cache.get(key, default)

    def invalidate(self, key: Hashable) -> None:
        """Drop ``key`` from the cache; a load running for it still answers its waiters but its
        outcome is not cached (it may predate whatever made the caller invalidate)."""
        self._cache.remove(key)
        self._flights.pop(key, None)

    def stats(self) -> dict[str, int]:
        """The kernel's counters plus loads, load errors and coalesced waits."""
        out = dict(self._cache.stats())
        out.update(loads=self.loads, load_errors=self.load_errors, coalesced=self.coalesced,
                   in_flight=len(self._flights))
        return out

    async def get_or_load(self, key: Hashable, loader: Loader, *, ttl: Any = _DEFAULT,
                          negative_for: Any = _DEFAULT) -> Any:
        """The value for ``key`` (or ``NEGATIVE``), loading it with ``await loader(key)`` once
        for all concurrent callers on a miss. ``ttl`` and ``negative_for`` override the
        defaults for this load; a caller joining a running load gets its outcome as it is."""
        value = self._cache.get(key, _MISSING)
        if value is not _MISSING:
            return value
        flight = self._flights.get(key)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = _Flight(loop.create_future())
            flight.future.add_done_callback(_retrieve)
            self._flights[key] = flight
            task = loop.create_task(
                self._load(key, flight, loader,
                           self._ttl if ttl is _DEFAULT else ttl,
                           self._negative_for if negative_for is _DEFAULT else negative_for))
            flight.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.coalesced += 1
        # shield: cancelling this waiter must not cancel the shared outcome
        return await asyncio.shield(flight.future)

    async def _load(self, key: Hashable, flight: _Flight, loader: Loader, ttl: float | None,
                    negative_for: NegativeFor | None) -> None:
        future = flight.future
        try:
            try:
                result = await loader(key)
            except asyncio.CancelledError:
                future.set_exception(LoadCancelledError(f"the load of {key!r} was cancelled"))
                raise
            except Exception as exc:  # noqa: BLE001 -- any loader failure goes to the waiters
                self.load_errors += 1
                neg_ttl = negative_for(exc) if negative_for is not None else None
                if neg_ttl is None:
                    future.set_exception(exc)
                    return
                result = Negative(neg_ttl)
            except BaseException as exc:  # SystemExit, KeyboardInterrupt: fail waiters, go on
                future.set_exception(exc)
                raise
            self.loads += 1
            # only a load still registered may fill the cache: an invalidated one is stale
            current = self._flights.get(key) is flight
            if isinstance(result, Negative):
                if current:
                    self._cache.put_negative(key, ttl=result.ttl, weight=result.weight)
                future.set_result(NEGATIVE)
            elif isinstance(result, Loaded):
                if current:
                    self._cache.put(key, result.value, weight=result.weight, ttl=result.ttl)
                future.set_result(result.value)
            else:
                if current:
                    self._cache.put(key, result, ttl=ttl)
                future.set_result(result)
        except Exception as exc:  # noqa: BLE001 -- handed to the waiters, not swallowed
            # storing failed (a weigher raised, a bad TTL): the waiters learn why
            if not future.done():
                future.set_exception(exc)
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
