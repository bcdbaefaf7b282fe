"""Allow/block lookup cost: the compiled CIDR set against its twin and the peers, in one run.

Workload (anchors.md §3, issue 3): a realistic IPv4 block list of 50,000 prefixes (70 % /32, 25 % /24,
5 % /16), 300,000 lookups of which about 8 % hit; and an IPv6 list of 20,000 /64 bans. Target: at
most 50 ns per lookup in the compiled path and at least 5x pytricia. Peers measured in the same run:

* pytricia (``pip install pytricia``) with string and packed input, when importable;
* one Python ``set`` per prefix length (integer input, and string -> ``inet_aton`` -> integer), the
  best plain-Python design;
* a stdlib ``ipaddress`` linear scan (the reference server's design) over 1,000 networks, on a
  smaller sample because it is four orders of magnitude slower.

Every method is first checked to give the same answers as the compiled set. Times are per lookup
including the Python call, best of five runs. Bounded loops; no network.

Usage: ``python bench/ipset_lookup.py [--scale 1.0]``
"""
from __future__ import annotations

import argparse
import ipaddress
import random
import socket
import time

from stalwart._fast import load

C = load("ipset", compiled=True)
PY = load("ipset", compiled=False)

try:
    import pytricia
except ImportError:  # optional peer: reported, not fatal
    pytricia = None


def blocklist(rng: random.Random, n: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        r = rng.random()
        plen = 32 if r < 0.70 else 24 if r < 0.95 else 16
        out.append((rng.getrandbits(32) & (0xFFFFFFFF ^ ((1 << (32 - plen)) - 1)), plen))
    return out


def probes(rng: random.Random, nets: list[tuple[int, int]], n: int, hit: float, bits: int) -> list[int]:
    out = []
    for _ in range(n):
        if rng.random() < hit:
            net, plen = rng.choice(nets)
            out.append(net | (rng.getrandbits(bits - plen) if plen < bits else 0))
        else:
            out.append(rng.getrandbits(bits))
    return out


def per_lookup_ns(fn, items, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t0)
    return best / len(items) * 1e9


class SetPerPrefix:
    """One Python set of integers per prefix length, probed longest first."""

    def __init__(self, nets, bits=32):
        by_len: dict[int, set[int]] = {}
        for net, plen in nets:
            by_len.setdefault(plen, set()).add(net)
        full = (1 << bits) - 1
        self.plan = [(full ^ ((1 << (bits - p)) - 1), by_len[p]) for p in sorted(by_len, reverse=True)]

    def contains(self, addr: int) -> bool:
        for mask, s in self.plan:
            if addr & mask in s:
                return True
        return False

    def contains_text(self, text: str) -> bool:
        return self.contains(int.from_bytes(socket.inet_aton(text), "big"))


def report(results: dict[str, float]) -> None:
    base = results["compiled contains(packed)"]
    print(f"  {'method':38} {'per lookup':>12} {'rate':>12}   time / compiled contains")
    for name, ns in results.items():
        print(f"  {name:38} {ns:9.1f} ns {1e3 / ns:8.2f} M/s   {ns / base:8.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every loop count")
    args = ap.parse_args()
    rng = random.Random(20240601)

    # -- IPv4 block list ---------------------------------------------------------------------------
    nets = blocklist(rng, int(50_000 * args.scale))
    ints = probes(rng, nets, int(300_000 * args.scale), 0.08, 32)
    packed = [a.to_bytes(4, "big") for a in ints]
    texts = [socket.inet_ntoa(p) for p in packed]
    cset, pset = C.IpSet(), PY.IpSet()
    for net, plen in nets:
        cset.add(net.to_bytes(4, "big"), plen)
        pset.add(net.to_bytes(4, "big"), plen)
    spp = SetPerPrefix(nets)
    want = [cset.contains(p) for p in packed]
    assert want == [spp.contains(a) for a in ints]
    assert want[:20000] == [pset.contains(p) for p in packed[:20000]]
    print(f"IPv4: {len(cset)} prefixes, lengths {sorted({p for _, p in nets})}, {len(packed)} lookups, "
          f"{sum(want) / len(want):.1%} hits")
    results = {}
    results["compiled contains(packed)"] = per_lookup_ns(cset.contains, packed)
    results["compiled match(packed)"] = per_lookup_ns(cset.match, packed)
    results["compiled match_sockaddr(str)"] = per_lookup_ns(cset.match_sockaddr, texts)
    results["twin contains(packed)"] = per_lookup_ns(pset.contains, packed[:50_000], 3)
    if pytricia is not None:
        tri = pytricia.PyTricia(32)
        for net, plen in nets:
            tri[f"{socket.inet_ntoa(net.to_bytes(4, 'big'))}/{plen}"] = True
        assert want[:20000] == [tri.get(p) is not None for p in packed[:20000]]
        results["pytricia get(str)"] = per_lookup_ns(tri.get, texts)
        results["pytricia get(packed)"] = per_lookup_ns(tri.get, packed)
    results["set per prefix length (int)"] = per_lookup_ns(spp.contains, ints)
    results["set per prefix length (str)"] = per_lookup_ns(spp.contains_text, texts)
    scan = [ipaddress.ip_network((n, p)) for n, p in nets[:1000]]
    sample = [ipaddress.ip_address(t) for t in texts[: max(200, int(2000 * args.scale))]]
    results["ipaddress scan, 1000 networks"] = per_lookup_ns(lambda a: any(a in n for n in scan), sample, 1)
    report(results)

    # -- IPv6 /64 bans ------------------------------------------------------------------------------
    nets6 = [(rng.getrandbits(64) << 64, 64) for _ in range(int(20_000 * args.scale))]
    ints6 = probes(rng, nets6, int(300_000 * args.scale), 0.08, 128)
    packed6 = [a.to_bytes(16, "big") for a in ints6]
    cset6 = C.IpSet()
    for net, plen in nets6:
        cset6.add(net.to_bytes(16, "big"), plen)
    want6 = [cset6.contains(p) for p in packed6]
    print(f"IPv6: {len(cset6)} /64 bans, {len(packed6)} lookups, {sum(want6) / len(want6):.1%} hits")
    res6 = {"compiled contains(packed)": per_lookup_ns(cset6.contains, packed6)}
    if pytricia is not None:
        tri6 = pytricia.PyTricia(128)
        for net, plen in nets6:
            tri6[f"{socket.inet_ntop(socket.AF_INET6, net.to_bytes(16, 'big'))}/{plen}"] = True
        assert want6[:20000] == [tri6.get(p) is not None for p in packed6[:20000]]
        res6["pytricia get(packed)"] = per_lookup_ns(tri6.get, packed6)
    spp6 = SetPerPrefix(nets6, 128)
    res6["set per prefix length (int)"] = per_lookup_ns(spp6.contains, ints6)
    report(res6)
    if pytricia is None:
        print("pytricia is not installed (pip install pytricia): its rows are skipped")


if __name__ == "__main__":
    main()
