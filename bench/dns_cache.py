"""Cached DNS lookups per second: the typed result caches vs dnspython's own caches, one run.

A local UDP server (``tests/dns_harness.CountingServer``, loopback, ephemeral port) serves A records
for ``--names`` names. Each contender resolves every name once to fill its cache, then answers
``--lookups`` lookups cycling over the names from its cache, awaited one by one in one event loop:

* **stalwart**: ``Resolver.ipv4(name)`` — the ``dnsIpv4`` kernel cache (compiled when built)
  behind single-flight loading, typed result (a tuple of addresses);
* **dnspython Cache**: ``dns.asyncresolver.Resolver.resolve(name, "A")`` with
  ``dns.resolver.Cache`` (dict + periodic cleaning);
* **dnspython LRUCache**: the same with ``dns.resolver.LRUCache``.

Every contender must answer from its cache: the server's query count is checked after the
warm-up and after the timed loop. Reports lookups/s, ns per lookup and the ratio against each
dnspython cache. Also prints the stalwart cache's hit counters.

Usage: ``python bench/dns_cache.py [--names 1000] [--lookups 200000] [--repeat 3]``
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import dns.asyncresolver  # noqa: E402
import dns.nameserver  # noqa: E402
import dns.resolver  # noqa: E402

from dns_harness import CountingServer  # noqa: E402
from stalwart.services.cache.registry import CacheRegistry  # noqa: E402
from stalwart.services.dns.client import DnsClient  # noqa: E402
from stalwart.services.dns.config import DnsCustomResolver, DnsResolverCustom  # noqa: E402
from stalwart.services.dns.lookups import Resolver  # noqa: E402


def names_for(n: int) -> list[str]:
    return [f"host{i}.bench.test." for i in range(n)]


async def time_loop(call, names: list[str], lookups: int) -> float:
    k = len(names)
    start = time.perf_counter()
    for i in range(lookups):
        await call(names[i % k])
    return time.perf_counter() - start


async def run(args) -> dict[str, float]:
    names = names_for(args.names)
    zone = {(n, "A"): [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"] for i, n in enumerate(names)}
    server = await CountingServer(zone, ttl=86400).start()
    results: dict[str, float] = {}
    try:
        stalwart = Resolver(DnsClient(DnsResolverCustom(servers=[
            DnsCustomResolver(address="127.0.0.1", port=server.port)])), CacheRegistry())

        def dnspython(cache):
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", server.port)]
            r.cache = cache
            return r

        py_dict = dnspython(dns.resolver.Cache())
        py_lru = dnspython(dns.resolver.LRUCache(max(args.names * 2, 1000)))

        async def via_dnspython(resolver, name):
            return await resolver.resolve(name, "A")

        contenders = {
            "stalwart typed cache (dnsIpv4)": stalwart.ipv4,
            "dnspython Cache": lambda name: via_dnspython(py_dict, name),
            "dnspython LRUCache": lambda name: via_dnspython(py_lru, name),
        }
        for label, call in contenders.items():
            before = sum(server.queries.values())
            for name in names:
                await call(name)
            warmed = sum(server.queries.values())
            assert warmed - before == len(names), f"{label}: warm-up sent {warmed - before} queries"
            best = min([await time_loop(call, names, args.lookups) for _ in range(args.repeat)])
            assert sum(server.queries.values()) == warmed, f"{label}: timed loop missed its cache"
            results[label] = args.lookups / best
        stats = stalwart.caches.stats()["dnsIpv4"]
        print(f"stalwart dnsIpv4: {stats['hits']} hits, {stats['misses']} misses, "
              f"{stats['entries']} entries, {stats['weight']} / {stats['capacity']} bytes")
    finally:
        server.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    ours = results["stalwart typed cache (dnsIpv4)"]
    print(f"{'contender':34} {'lookups/s':>12} {'ns/lookup':>10} {'stalwart ×':>11}")
    for label, rate in results.items():
        print(f"{label:34} {rate:12,.0f} {1e9 / rate:10,.0f} {ours / rate:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
