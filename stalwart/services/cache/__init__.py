"""Caches (services.md §5): the kernel, single-flight loading, sizes and weights.

* :func:`new_cache` builds a kernel cache (``stalwart._fast.cache``, compiled when built) that
  weighs entries in approximate bytes by default (:func:`entry_weight`).
* :class:`LoadingCache` adds single-flight ``get_or_load`` for asyncio callers (``loader.py``).
* :func:`parse_cache_size` and :func:`cache_sizes` validate the ``Cache`` object's size fields:
  integers or suffix strings (``"50mb"``, case-insensitive, powers of 1024), at least 2048 bytes
  after conversion, errors naming the field's JSON path.
* :func:`sweep_expired` removes expired entries every 60 s, a bounded batch per event-loop tick,
  so that TTL caches do not hold dead entries until they happen to be read.

Capacities are per worker process: each worker owns its caches (services.md §5, "We do better").
"""
from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from ..._fast import load
from ..._fast.cache_py import NEGATIVE
from ...config.types import parse_size
from ...errors import ConfigError
from .loader import LoadCancelledError, Loaded, LoadingCache, Negative

__all__ = [
    "CACHE_SIZE_DEFAULTS", "MIN_CACHE_SIZE", "NEGATIVE", "NEGATIVE_TTL_DEFAULT_MS",
    "LoadCancelledError", "Loaded", "LoadingCache", "Negative", "approximate_size",
    "cache_sizes", "entry_weight", "new_cache", "parse_cache_size", "sweep_expired",
]

#: Smallest accepted size of any cache, in bytes (services.md §5.1).
MIN_CACHE_SIZE = 2048

#: Every size field of the ``Cache`` object with its reference default in bytes (§5.1).
CACHE_SIZE_DEFAULTS: Mapping[str, int] = MappingProxyType({
    "accessTokens": 10485760,
    "contacts": 10485760,
    "events": 10485760,
    "scheduling": 1048576,
    "files": 10485760,
    "messages": 52428800,
    "httpAuth": 1048576,
    "domains": 5242880,
    "domainNames": 10485760,
    "domainNamesNegative": 1048576,
    "emailAddresses": 10485760,
    "emailAddressesNegative": 2097152,
    "accounts": 20971520,
    "roles": 5242880,
    "tenants": 5242880,
    "mailingLists": 2097152,
    "dkimSignatures": 10485760,
    "dnsTxt": 5242880,
    "dnsMx": 5242880,
    "dnsPtr": 1048576,
    "dnsIpv4": 5242880,
    "dnsIpv6": 5242880,
    "dnsTlsa": 1048576,
    "dnsMtaSts": 1048576,
    "dnsRbl": 5242880,
})

#: Default of ``Cache.negativeTtl`` (a Duration in ms): TTL of the ``*Negative`` caches' entries.
NEGATIVE_TTL_DEFAULT_MS = 3_600_000


def parse_cache_size(value: Any, path: str) -> int:
    """Bytes from an integer or a suffix string, at least :data:`MIN_CACHE_SIZE`.

    Raises :class:`ConfigError` carrying ``path`` (e.g. ``$.Cache.dnsTxt``).
    """
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None
    if size < MIN_CACHE_SIZE:
        raise ConfigError(path, f"a cache size must be at least {MIN_CACHE_SIZE} bytes, got {size}")
    return size


def cache_sizes(raw: Mapping[str, Any] | None, path: str = "$.Cache") -> dict[str, int]:
    """All size fields of a ``Cache`` object as bytes, defaults filled in.

    ``negativeTtl`` is not a size and is left to the caller; any other unknown field is an error.
    """
    sizes = dict(CACHE_SIZE_DEFAULTS)
    for name, value in (raw or {}).items():
        if name == "negativeTtl":
            continue
        if name not in CACHE_SIZE_DEFAULTS:
            raise ConfigError(f"{path}.{name}", f"unknown cache field {name!r}")
        sizes[name] = parse_cache_size(value, f"{path}.{name}")
    return sizes


# Byte costs after the reference's accounting (§5.3, 64-bit): a String is its length + 24, a
# boxed slice 16 + its items, an integer 8, an IPv4/IPv6 address 4/16, nothing (None) 8.
_SCALAR = {int: 8, float: 8, bool: 1, type(None): 8,
           ipaddress.IPv4Address: 4, ipaddress.IPv6Address: 16}
_MAX_DEPTH = 8


def approximate_size(obj: Any, _depth: int = 0) -> int:
    """Approximate bytes an object's content costs, counting what it holds (a TXT result
    weighs its strings). Objects of other types, and anything nested deeper than 8 levels,
    count as ``sys.getsizeof``."""
    t = type(obj)
    if t is str:
        return len(obj) + 24
    if t is bytes or t is bytearray or t is memoryview:
        return len(obj) + 16
    cost = _SCALAR.get(t)
    if cost is not None:
        return cost
    if _depth < _MAX_DEPTH:
        if isinstance(obj, (tuple, list, set, frozenset)):
            return 16 + sum(approximate_size(x, _depth + 1) for x in obj)
        if isinstance(obj, dict):
            return 16 + sum(approximate_size(k, _depth + 1) + approximate_size(v, _depth + 1)
                            for k, v in obj.items())
        if isinstance(obj, str):  # str subclasses, such as HostName
            return len(obj) + 24
        slots = getattr(t, "__slots__", None)
        if isinstance(slots, tuple) and not hasattr(obj, "__dict__"):
            # slotted records (msgspec structs, dataclasses with slots): their fields
            return 16 + sum(approximate_size(getattr(obj, s, None), _depth + 1) for s in slots)
    return sys.getsizeof(obj)


def entry_weight(key: Any, value: Any) -> int:
    """The default weigher: approximate bytes of key and value; a negative entry costs 8 for
    its value."""
    return approximate_size(key) + (8 if value is NEGATIVE else approximate_size(value))


def new_cache(capacity: int, *, weigher: Callable[[Any, Any], int] | None = entry_weight,
              clock: Callable[[], float] | None = None) -> Any:
    """A kernel cache of ``capacity`` bytes, compiled unless ``STALWART_NO_EXTENSIONS=1``.

    ``weigher=None`` makes every entry weigh 1 (the capacity then counts entries).
    """
    return load("cache").Cache(capacity, weigher=weigher, clock=clock)


async def sweep_expired(caches: Callable[[], Iterable[Any]], *, interval: float = 60.0,
                        batch: int = 512) -> None:
    """Every ``interval`` seconds, remove expired entries from every cache ``caches()`` lists.

    Each step examines at most ``batch`` entries of one cache and then yields to the event loop,
    so a large cache never stalls connections. Runs until cancelled; ``caches`` is called anew
    each round, so caches replaced on reload are followed.
    """
    while True:
        await asyncio.sleep(interval)
        for cache in list(caches()):
            finished = False
            while not finished:
                _, finished = cache.sweep(batch)
                await asyncio.sleep(0)
