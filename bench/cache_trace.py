"""Cache hit ratio and cost per operation: the compiled kernel, its twin and the peers, in one run.

Workloads (anchors.md §7, issue 8), generated from a fixed seed:

* ``anchor``: the anchors' trace. Capacity 10,000; 350,000 operations: Zipf(alpha = 1.0) over
  100,000 keys, with a one-time scan of 50,000 one-hit keys in the middle.
* ``periodic``: capacity 10,000; 1,500,000 operations: Zipf(alpha = 0.9) over 100,000 keys,
  with a scan of 25,000 one-hit keys after every 100,000 Zipf accesses.

Each operation is ``get``, then ``put`` on a miss, through the same loop for every cache, so the
times compare like with like (they include the Python call, as a caller pays it). Contenders:
the compiled kernel and its twin (weight 1 per entry, so the capacity counts entries, as in the
peers); an ``OrderedDict`` LRU and a 40-line S3-FIFO (the anchors' baseline) written here; and,
when importable, ``cachebox`` (LRU, LFU: Rust) and ``cachetools`` (LRU, LFU). Hit ratios are
deterministic; times are the best of ``--repeat`` runs, and they move with machine load, so read
them as ratios between rows measured in the same run.

Usage: ``python bench/cache_trace.py [--repeat 3] [--trace anchor|periodic|both] [--str-keys]``
"""
from __future__ import annotations

import argparse
import gc
import itertools
import platform
import random
import sys
import time
from collections import OrderedDict, deque

from stalwart._fast import load

C = load("cache", compiled=True)
PY = load("cache", compiled=False)

try:
    import cachebox
except ImportError:  # optional peer: reported, not fatal
    cachebox = None
try:
    import cachetools
except ImportError:
    cachetools = None

SEED = 20231023  # S3-FIFO's SOSP '23 date: any fixed value makes runs comparable


# ---------------------------------------------------------------- traces


def zipf_keys(rng: random.Random, n_keys: int, alpha: float, count: int) -> list[int]:
    """``count`` draws of Zipf(alpha) over ``n_keys`` keys, ranks shuffled over key ids."""
    cum = list(itertools.accumulate(1.0 / (rank ** alpha) for rank in range(1, n_keys + 1)))
    ids = list(range(n_keys))
    rng.shuffle(ids)
    return [ids[i] for i in rng.choices(range(n_keys), cum_weights=cum, k=count)]


def anchor_trace(rng: random.Random) -> list[int]:
    zipf = zipf_keys(rng, 100_000, 1.0, 300_000)
    scan = list(range(10**9, 10**9 + 50_000))
    return zipf[:150_000] + scan + zipf[150_000:]


def periodic_trace(rng: random.Random) -> list[int]:
    zipf = zipf_keys(rng, 100_000, 0.9, 1_200_000)
    out: list[int] = []
    for i in range(12):
        out += zipf[i * 100_000:(i + 1) * 100_000]
        out += range(10**9 + i * 25_000, 10**9 + (i + 1) * 25_000)
    return out


TRACES = {
    "anchor": ("Zipf 1.0 over 100k keys, one 50k scan, 350k ops", anchor_trace, 10_000),
    "periodic": ("Zipf 0.9 over 100k keys, a 25k scan every 100k, 1.5M ops", periodic_trace, 10_000),
}


# ---------------------------------------------------------------- contenders written here


class OrderedDictLRU:
    """The plain LRU: what ``functools.lru_cache`` does, as a get/put object."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.data: OrderedDict = OrderedDict()

    def get(self, key):
        data = self.data
        if key in data:
            data.move_to_end(key)
            return data[key]
        return None

    def put(self, key, value):
        data = self.data
        data[key] = value
        data.move_to_end(key)
        if len(data) > self.capacity:
            data.popitem(last=False)


class S3FIFO:
    """S3-FIFO (Yang et al., SOSP '23): small FIFO 10 %, main FIFO 90 %, ghost FIFO as long as
    main, 2-bit frequency capped at 3, one access in small promotes to main."""

    def __init__(self, capacity: int):
        self.small_cap = max(1, capacity // 10)
        self.capacity = capacity
        self.small: deque = deque()
        self.main: deque = deque()
        self.ghost: OrderedDict = OrderedDict()
        self.freq: dict = {}
        self.values: dict = {}

    def get(self, key):
        if key in self.values:
            f = self.freq[key]
            if f < 3:
                self.freq[key] = f + 1
            return self.values[key]
        return None

    def _evict_main(self) -> None:
        while self.main:
            k = self.main.popleft()
            if self.freq[k] > 0:
                self.freq[k] -= 1
                self.main.append(k)
            else:
                del self.values[k], self.freq[k]
                return

    def _evict_small(self) -> None:
        while self.small:
            k = self.small.popleft()
            if self.freq[k] > 0:
                self.freq[k] = 0
                self.main.append(k)
            else:
                del self.values[k], self.freq[k]
                self.ghost[k] = None
                while len(self.ghost) > max(1, len(self.main)):
                    self.ghost.popitem(last=False)
                return

    def put(self, key, value):
        if key in self.values:
            self.values[key] = value
            return
        while len(self.values) >= self.capacity:
            if len(self.small) >= self.small_cap or not self.main:
                self._evict_small()
            else:
                self._evict_main()
        self.values[key] = value
        self.freq[key] = 0
        if self.ghost.pop(key, 0) is None:
            self.main.append(key)
        else:
            self.small.append(key)


def contenders(capacity: int) -> list[tuple[str, object]]:
    """(name, factory returning (get, put)) for everything importable."""
    out = [
        ("stalwart cache (compiled)", lambda: _bound(C.Cache(capacity), "put")),
        ("stalwart cache (twin)", lambda: _bound(PY.Cache(capacity), "put")),
        ("OrderedDict LRU", lambda: _bound(OrderedDictLRU(capacity), "put")),
        ("S3-FIFO, pure Python", lambda: _bound(S3FIFO(capacity), "put")),
    ]
    if cachebox is not None:
        out.append(("cachebox.LRUCache", lambda: _bound(cachebox.LRUCache(capacity), "insert")))
        out.append(("cachebox.LFUCache", lambda: _bound(cachebox.LFUCache(capacity), "insert")))
    if cachetools is not None:
        out.append(("cachetools.LRUCache", lambda: _bound(cachetools.LRUCache(capacity), "__setitem__")))
        out.append(("cachetools.LFUCache", lambda: _bound(cachetools.LFUCache(capacity), "__setitem__")))
    return out


def _bound(cache, put_name: str):
    return cache.get, getattr(cache, put_name)


# ---------------------------------------------------------------- measuring


def run_once(factory, trace: list) -> tuple[int, float]:
    get, put = factory()
    hits = 0
    gc.collect()
    t0 = time.perf_counter()
    for key in trace:
        if get(key) is None:
            put(key, key)
        else:
            hits += 1
    return hits, time.perf_counter() - t0


def measure(caches: list[tuple[str, object]], trace: list, repeat: int) -> list[dict]:
    """Best time of ``repeat`` runs per cache. Runs go round-robin over the caches, so a burst
    of load on the machine slows one round of everyone rather than every run of one cache."""
    hits: dict[str, int] = {}
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, factory in caches:
            h, t = run_once(factory, trace)
            assert hits.setdefault(name, h) == h, f"{name}: hit count changed between runs"
            best[name] = min(best.get(name, t), t)
    return [{"name": name, "hit_ratio": hits[name] / len(trace),
             "ns_per_op": best[name] / len(trace) * 1e9} for name, _ in caches]


def report(title: str, rows: list[dict]) -> None:
    lru = next(r for r in rows if r["name"] == "OrderedDict LRU")
    speed_ref = next((r for r in rows if r["name"] == "cachebox.LRUCache"), None)
    print(f"\n{title}")
    head = f"{'cache':28s} {'hit ratio':>9s} {'misses vs LRU':>13s} {'ns/op':>7s} {'Mops/s':>7s}"
    if speed_ref:
        head += f" {'time vs cachebox LRU':>21s}"
    print(head)
    lru_miss = 1 - lru["hit_ratio"]
    for r in rows:
        miss = 1 - r["hit_ratio"]
        line = (f"{r['name']:28s} {r['hit_ratio']:9.4f} {(miss / lru_miss - 1) * 100:+12.1f}% "
                f"{r['ns_per_op']:7.1f} {1e3 / r['ns_per_op']:7.2f}")
        if speed_ref:
            line += f" {r['ns_per_op'] / speed_ref['ns_per_op']:20.2f}x"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", choices=["anchor", "periodic", "both"], default="both")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per cache (best is kept)")
    ap.add_argument("--str-keys", action="store_true",
                    help="use str keys (names, as DNS and account caches see) instead of ints")
    args = ap.parse_args()

    print(f"Python {platform.python_version()} on {platform.machine()}, "
          f"cachebox {getattr(cachebox, '__version__', 'absent')}, "
          f"cachetools {getattr(cachetools, '__version__', 'absent')}; seed {SEED}")
    names = ["anchor", "periodic"] if args.trace == "both" else [args.trace]
    for name in names:
        label, make, capacity = TRACES[name]
        trace = make(random.Random(SEED))
        if args.str_keys:
            memo: dict = {}
            trace = [memo.setdefault(k, f"host{k}.example.org.") for k in trace]
        rows = measure(contenders(capacity), trace, args.repeat)
        report(f"{name}: {label}, capacity {capacity:,}"
               f"{', str keys' if args.str_keys else ''}", rows)
    if cachebox is None or cachetools is None:
        print("\n(pip install cachebox cachetools to measure the peers too)", file=sys.stderr)


if __name__ == "__main__":
    main()
