"""The caches of one worker process, sized by the ``Cache`` object (services.md §5).

A :class:`CacheRegistry` owns one kernel cache per ``Cache`` size field, created on first use so
that a worker pays only for the caches its listeners and services touch. Capacities are per worker
(services.md §5 "We do better"): each worker runs one event loop and keeps its own caches.

Reload: a SIGHUP starts a new worker generation from the new configuration, and the old workers
retire with the caches they built, so worker caches never outlive a reload. :meth:`reconfigure`
is the resize path for a registry that does live across one (a long-running tool, or a worker
that one day keeps its caches): it resizes every built cache in place, evicting down to the new
capacity with the cache's own policy, and makes new TTL settings apply to later inserts.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from . import LoadingCache, new_cache
from .config import SIZE_FIELDS, CacheSettings

__all__ = ["CacheRegistry"]


class CacheRegistry:
    """Kernel caches by ``Cache`` field name (``"dnsMx"``, ``"accounts"``, …)."""

    def __init__(self, settings: CacheSettings | None = None, *,
                 clock: Callable[[], float] | None = None) -> None:
        self._settings = settings if settings is not None else CacheSettings()
        #: Monotonic seconds every cache of this registry measures TTLs with.
        self.clock = clock if clock is not None else time.monotonic
        self._caches: dict[str, Any] = {}
        self._loading: dict[str, LoadingCache] = {}

    @property
    def settings(self) -> CacheSettings:
        return self._settings

    def cache(self, name: str) -> Any:
        """The kernel cache of field ``name``, built at its configured capacity on first use."""
        cache = self._caches.get(name)
        if cache is None:
            if name not in SIZE_FIELDS:
                raise KeyError(f"no cache field {name!r}")
            cache = new_cache(self._settings.size(name), clock=self.clock)
            self._caches[name] = cache
        return cache

    def loading(self, name: str, *, ttl: float | None = None) -> LoadingCache:
        """A single-flight :class:`LoadingCache` over the cache ``name``; one per name, so every
        caller of one cache shares its in-flight loads. The ``*Negative`` caches default to the
        configured ``negativeTtl``."""
        lc = self._loading.get(name)
        if lc is None:
            if ttl is None and name.endswith("Negative"):
                ttl = self._settings.negative_ttl_seconds
            lc = LoadingCache(self.cache(name), ttl=ttl)
            self._loading[name] = lc
        return lc

    def reconfigure(self, settings: CacheSettings) -> dict[str, tuple[int, int]]:
        """Apply new sizes to every cache built so far; returns ``{name: (old, new)}`` for those
        whose capacity changed. Later ``*Negative`` inserts use the new ``negativeTtl``."""
        changed: dict[str, tuple[int, int]] = {}
        for name, cache in self._caches.items():
            old, new = cache.capacity, settings.size(name)
            if old != new:
                cache.resize(new)
                changed[name] = (old, new)
        self._settings = settings
        for name, lc in self._loading.items():
            if name.endswith("Negative"):
                lc._ttl = settings.negative_ttl_seconds  # the default TTL of plain loads
        return changed

    def built(self) -> Iterator[tuple[str, Any]]:
        """``(name, cache)`` for every cache built so far."""
        return iter(list(self._caches.items()))

    def caches(self) -> list[Any]:
        """The built caches, for :func:`stalwart.services.cache.sweep_expired`."""
        return list(self._caches.values())

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per built cache: hits, misses, inserts, evictions, … plus weight and capacity
        (and the single-flight counters where a loading cache wraps it)."""
        out: dict[str, dict[str, int]] = {}
        for name, cache in self._caches.items():
            lc = self._loading.get(name)
            row = dict(lc.stats() if lc is not None else cache.stats())
            row.update(entries=len(cache), weight=cache.weight, capacity=cache.capacity)
            out[name] = row
        return out
