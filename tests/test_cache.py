"""The cache kernel (services.md §5), run against the compiled kernel and its twin.

Property tests check the invariants against a reference model (weight bound, TTL expiry, negative
entries, consistent counters), and the twins against each other on random operation sequences
driven by the same fake clock.
"""
import gc
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from kernels import kernel_fixture

from stalwart._fast import load
from stalwart.errors import ConfigError
from stalwart.services.cache import (
    CACHE_SIZE_DEFAULTS,
    MIN_CACHE_SIZE,
    NEGATIVE,
    approximate_size,
    cache_sizes,
    entry_weight,
    new_cache,
    parse_cache_size,
)

cache = kernel_fixture("cache")


class Clock:
    """Monotonic seconds under the test's control."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(mod, capacity=100, **kw):
    clock = Clock()
    return mod.Cache(capacity, clock=clock, **kw), clock


def test_compiled_kernel_is_really_compiled():
    mod = load("cache", compiled=True)
    assert mod.__file__.endswith(".so")
    assert type(mod.Cache(10)).__module__ == "stalwart._fast.cache"


def test_one_negative_sentinel_for_both_kernels():
    assert load("cache", compiled=True).NEGATIVE is load("cache", compiled=False).NEGATIVE
    assert not load("cache", compiled=False).NEGATIVE


# ---------------------------------------------------------------- basics


def test_get_put_remove(cache):
    c, _ = make(cache)
    marker = object()
    assert c.get("a") is None and c.get("a", marker) is marker
    assert c.put("a", 1) is True
    assert c.get("a") == 1 and "a" in c and len(c) == 1 and c.weight == 1
    assert c.put("a", 2) is True
    assert c.get("a") == 2 and len(c) == 1
    assert c.remove("a") is True and c.remove("a") is False
    assert c.get("a") is None and "a" not in c and len(c) == 0 and c.weight == 0
    assert c.stats() == {
        "hits": 2, "negative_hits": 0, "misses": 3, "inserts": 2, "evictions": 0,
        "expired": 0, "rejected": 0, "entries": 0, "weight": 0, "capacity": 100,
    }


def test_none_is_a_value(cache):
    c, _ = make(cache)
    missing = object()
    c.put("k", None)
    assert c.get("k", missing) is None
    assert c.hits == 1


def test_keys_compare_like_dict_keys(cache):
    c, _ = make(cache)
    c.put(1, "int")
    assert c.get(1.0) == "int" and c.get(True) == "int"  # equal and equally hashed
    c.put(("mx", "example.org."), "t")
    assert c.get(("mx", "example.org.")) == "t"
    c.put(b"raw", "b")
    assert c.get(b"raw") == "b" and c.get("raw") is None
    nan = float("nan")
    c.put(nan, "nan")
    assert c.get(nan) == "nan" and c.get(float("nan")) is None  # identity, as in a dict
    with pytest.raises(TypeError):
        c.get(["unhashable"])
    with pytest.raises(TypeError):
        c.put({}, 1)


class Colliding:
    """Every instance hashes alike, so lookups have to compare keys."""

    def __init__(self, v):
        self.v = v

    def __hash__(self):
        return 42

    def __eq__(self, other):
        return isinstance(other, Colliding) and other.v == self.v


def test_colliding_hashes(cache):
    c, _ = make(cache, 1000)
    keys = [Colliding(i) for i in range(50)]
    for i, k in enumerate(keys):
        c.put(k, i)
    assert [c.get(Colliding(i)) for i in range(50)] == list(range(50))
    for k in keys[::2]:
        assert c.remove(Colliding(k.v))
    assert [c.get(Colliding(i)) for i in range(50)] == [None if i % 2 == 0 else i for i in range(50)]


def test_key_eq_that_clears_the_cache_is_survived(cache):
    c, _ = make(cache)

    class Evil:
        def __hash__(self):
            return 7

        def __eq__(self, other):
            c.clear()
            return False

    a, b = Evil(), Evil()
    c.put(a, 1)
    assert c.get(b) is None and len(c) == 0
    c.put(a, 1)
    c.put(b, 2)
    assert len(c) == 1


def test_finalizers_that_use_the_cache_are_survived(cache):
    c, _ = make(cache, 20)
    seen = []

    class Value:
        def __init__(self, i):
            self.i = i

        def __del__(self):
            # runs while the cache evicts or replaces; must find it consistent
            seen.append(c.get(("finalized", self.i % 3)))
            if self.i % 5 == 0:
                c.put(("finalized", self.i % 3), self.i)

    for i in range(300):
        c.put(i % 40, Value(i))
        assert c.weight <= c.capacity
    c.clear()
    gc.collect()
    assert seen and c.weight <= c.capacity


# ---------------------------------------------------------------- weights


def test_weight_never_exceeds_capacity(cache):
    c, _ = make(cache, 100)
    for i in range(1000):
        c.put(i, i, weight=1 + i % 17)
        assert c.weight <= 100
    assert c.evictions > 0 and len(c) < 100


def test_weigher_and_explicit_weight(cache):
    seen = []

    def weigher(key, value):
        seen.append((key, value))
        return len(key) + (0 if value is cache.NEGATIVE else len(value))

    c, _ = make(cache, 1000, weigher=weigher)
    c.put("abc", "defg")
    assert c.weight == 7 and c.peek_entry("abc")[1] == 7
    c.put("abc", "x", weight=100)
    assert c.weight == 100 and seen == [("abc", "defg")]
    c.put_negative("nope", ttl=5)
    assert seen[-1] == ("nope", cache.NEGATIVE) and c.weight == 104


@pytest.mark.parametrize("weight, exc", [(0, ValueError), (-3, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_bad_weight(cache, weight, exc):
    c, _ = make(cache)
    c.put("k", 1)
    with pytest.raises(exc):
        c.put("k", 2, weight=weight)
    assert c.get("k") == 1  # a refused call changes nothing


def test_too_heavy_entry_is_not_cached_and_drops_the_old_one(cache):
    c, _ = make(cache, 100)
    assert c.max_entry_weight == 97
    c.put("big", 1, weight=97)
    assert c.get("big") == 1
    c.put("big", 2, weight=98)
    assert c.get("big") is None and c.rejected == 1 and c.weight == 0


@pytest.mark.parametrize("capacity", [0, -1, 2**62 + 1])
def test_bad_capacity(cache, capacity):
    with pytest.raises(ValueError):
        cache.Cache(capacity)
    c = cache.Cache(10)
    with pytest.raises(ValueError):
        c.resize(capacity)
    assert c.capacity == 10


def test_resize_evicts_down_to_the_new_capacity(cache):
    c, _ = make(cache, 1000)
    for i in range(500):
        c.put(i, i, weight=2)
    assert c.weight == 1000
    c.resize(101)
    assert c.weight <= 101 and c.capacity == 101 and c.evictions >= 450
    c.resize(5000)
    for i in range(2000):
        c.put(("n", i), i)
    assert c.weight <= 5000 and len(c) > 2000


def test_clear_keeps_counters(cache):
    c, _ = make(cache)
    for i in range(10):
        c.put(i, i)
        c.get(i)
    c.clear()
    assert len(c) == 0 and c.weight == 0 and c.get(3) is None
    assert c.hits == 10 and c.inserts == 10 and c.misses == 1
    c.put(3, 3)
    assert c.get(3) == 3


# ---------------------------------------------------------------- expiry


def test_ttl_expiry(cache):
    c, clock = make(cache)
    c.put("a", 1, ttl=10)
    c.put("b", 2)
    clock.now += 9.999
    assert c.get("a") == 1
    clock.now += 0.001  # expires <= now is expired (services.md §5.2)
    assert c.get("a") is None and c.expired == 1 and c.misses == 1
    assert len(c) == 1 and c.get("b") == 2


def test_expires_at_is_absolute(cache):
    c, clock = make(cache)
    c.put("a", 1, expires_at=clock.now + 5)
    assert c.peek_entry("a") == (1, 1, clock.now + 5)
    clock.now += 5
    assert c.peek("a") is None and "a" not in c and c.peek_entry("a") is None
    assert len(c) == 1  # peeking removes nothing
    assert c.get("a") is None and len(c) == 0


def test_already_expired_put_stores_nothing_and_drops_the_old_value(cache):
    c, clock = make(cache)
    c.put("a", 1)
    assert c.put("a", 2, ttl=0) is False
    assert c.get("a") is None
    c.put("a", 1)
    assert c.put("a", 3, expires_at=clock.now - 1) is False
    assert c.get("a") is None and c.inserts == 2


def test_infinite_ttl_never_expires(cache):
    c, clock = make(cache)
    c.put("a", 1, ttl=math.inf)
    clock.now += 1e12
    assert c.get("a") == 1 and c.peek_entry("a")[2] is None


@pytest.mark.parametrize("kw", [{"ttl": -1}, {"ttl": math.nan}, {"expires_at": math.nan},
                                {"ttl": 1, "expires_at": 5}])
def test_bad_expiry(cache, kw):
    c, _ = make(cache)
    with pytest.raises(ValueError):
        c.put("a", 1, **kw)
    with pytest.raises(TypeError):
        c.put("a", 1, ttl=[1])
    assert len(c) == 0 and c.inserts == 0


def test_default_clock_is_monotonic(cache):
    c = cache.Cache(10)
    c.put("a", 1, ttl=3600)
    _, _, expires = c.peek_entry("a")
    import time

    assert abs(expires - (time.monotonic() + 3600)) < 5
    c.put("b", 1, ttl=1e-9)
    time.sleep(0.001)
    assert c.get("b") is None


def test_sweep_removes_expired_in_bounded_steps(cache):
    c, clock = make(cache, 1000)
    for i in range(100):
        c.put(i, i, ttl=10 if i % 2 else 1000)
    clock.now += 10
    total, calls, finished = 0, 0, False
    while not finished:
        removed, finished = c.sweep(7)
        total += removed
        calls += 1
    assert total == 50 and c.expired == 50 and len(c) == 50 and calls >= 100 // 7
    assert all(c.get(i) == i for i in range(0, 100, 2))
    assert c.sweep(10_000) == (0, True)
    with pytest.raises(ValueError):
        c.sweep(0)


def test_retain(cache):
    c, _ = make(cache)
    for i in range(20):
        c.put(i, i)
    c.put_negative("n", ttl=10)
    assert c.retain(lambda k, v: v is not cache.NEGATIVE and v % 3 == 0) == 14
    assert sorted(k for k in range(20) if k in c) == [0, 3, 6, 9, 12, 15, 18]
    # a predicate that changes the cache itself
    assert c.retain(lambda k, v: c.remove(k + 3) or True) == 0
    assert len(c) <= 7


# ---------------------------------------------------------------- negative entries


def test_negative_entries(cache):
    c, clock = make(cache)
    missing = object()
    assert c.put_negative("nx.example.", ttl=30) is True
    assert c.get("nx.example.", missing) is cache.NEGATIVE
    assert c.peek("nx.example.") is cache.NEGATIVE
    assert c.negative_hits == 1 and c.hits == 0 and c.misses == 0
    clock.now += 30
    assert c.get("nx.example.", missing) is missing and c.expired == 1
    c.put_negative("k", ttl=30)
    c.put("k", "now exists")
    assert c.get("k") == "now exists"
    c.put_negative("k", expires_at=clock.now + 1)
    assert c.get("k") is cache.NEGATIVE
    with pytest.raises(ValueError):
        c.put_negative("k")


# ---------------------------------------------------------------- scan resistance


def test_a_scan_does_not_flush_the_hot_set(cache):
    c, _ = make(cache, 1000)
    hot = [("hot", i) for i in range(600)]
    for _ in range(3):
        for k in hot:
            if c.get(k) is None:
                c.put(k, k)
    for i in range(20_000):  # one-hit keys
        if c.get(("scan", i)) is None:
            c.put(("scan", i), i)
    assert sum(c.get(k) is not None for k in hot) >= 590


def test_hit_ratio_beats_lru_on_a_zipf_scan_trace(cache):
    import random
    from collections import OrderedDict

    rnd = random.Random(5)
    weights = [1 / i for i in range(1, 5001)]
    trace = rnd.choices(range(5000), weights=weights, k=20_000)
    trace = trace[:10_000] + [("scan", i) for i in range(3000)] + trace[10_000:]
    c = cache.Cache(500)
    hits = 0
    for k in trace:
        if c.get(k) is None:
            c.put(k, k)
        else:
            hits += 1
    lru, lru_hits = OrderedDict(), 0
    for k in trace:
        if k in lru:
            lru.move_to_end(k)
            lru_hits += 1
        else:
            lru[k] = k
            if len(lru) > 500:
                lru.popitem(last=False)
    assert hits > lru_hits * 1.03


# ---------------------------------------------------------------- model-based


KEYS = st.integers(0, 11)


class CacheModel(RuleBasedStateMachine):
    """Drive one kernel; a plain dict of the latest puts says what any answer may be."""

    mod = None

    @initialize(capacity=st.integers(1, 60))
    def setup(self, capacity):
        self.clock = Clock()
        self.cache = self.mod.Cache(capacity, clock=self.clock)
        self.latest = {}  # key -> (value or NEGATIVE, weight, expires or None)
        self.gets = self.puts = self.rejected = self.stored = 0

    def _alive(self, key):
        entry = self.latest.get(key)
        if entry is None or (entry[2] is not None and entry[2] <= self.clock.now):
            return None
        return entry

    @rule(key=KEYS, value=st.integers(), weight=st.integers(1, 30),
          ttl=st.one_of(st.none(), st.sampled_from([0, 0.5, 1, 3, 10])))
    def put(self, key, value, weight, ttl):
        self.puts += 1
        resident = self.cache.put(key, value, weight=weight, ttl=ttl)
        if weight > self.cache.max_entry_weight:
            self.rejected += 1
            assert not resident
            self.latest.pop(key, None)
        elif ttl == 0:
            assert not resident
            self.latest.pop(key, None)
        else:
            self.stored += 1
            self.latest[key] = (value, weight, None if ttl is None else self.clock.now + ttl)
        if resident:
            assert self.cache.peek_entry(key) == self.latest[key]

    @rule(key=KEYS, ttl=st.sampled_from([0.5, 2, 30]))
    def put_negative(self, key, ttl):
        self.puts += 1
        self.stored += 1
        resident = self.cache.put_negative(key, ttl=ttl)
        self.latest[key] = (self.mod.NEGATIVE, 1, self.clock.now + ttl)
        if resident:
            assert self.cache.get(key) is self.mod.NEGATIVE
            self.gets += 1

    @rule(key=KEYS)
    def get(self, key):
        self.gets += 1
        missing = object()
        got = self.cache.get(key, missing)
        expected = self._alive(key)
        if expected is None:
            assert got is missing
        elif got is not missing:
            assert got is expected[0] if expected[0] is self.mod.NEGATIVE else got == expected[0]

    @rule(key=KEYS)
    def remove(self, key):
        self.cache.remove(key)
        self.latest.pop(key, None)
        assert key not in self.cache

    @rule(dt=st.sampled_from([0.25, 1, 5]))
    def tick(self, dt):
        self.clock.now += dt

    @rule(capacity=st.integers(1, 60))
    def resize(self, capacity):
        self.cache.resize(capacity)

    @rule()
    def sweep_all(self):
        finished = False
        while not finished:
            _, finished = self.cache.sweep(5)
        live = {k: self.cache.peek_entry(k) for k in KEYS_ALL}
        live = {k: v for k, v in live.items() if v is not None}
        assert len(self.cache) == len(live)
        assert self.cache.weight == sum(v[1] for v in live.values())

    @invariant()
    def weight_within_capacity(self):
        if hasattr(self, "cache"):
            assert 0 <= self.cache.weight <= self.cache.capacity
            assert len(self.cache) <= self.cache.weight

    @invariant()
    def answers_match_the_latest_put(self):
        if hasattr(self, "cache"):
            for k in KEYS_ALL:
                e = self.cache.peek_entry(k)
                if e is not None:
                    assert e == self._alive(k)

    @invariant()
    def counters_are_consistent(self):
        if hasattr(self, "cache"):
            c = self.cache
            assert c.hits + c.negative_hits + c.misses == self.gets
            assert c.rejected == self.rejected
            assert c.inserts == self.stored


KEYS_ALL = range(12)


@pytest.mark.parametrize("compiled", [False, True], ids=["py", "c"])
def test_model(compiled):
    from hypothesis.stateful import run_state_machine_as_test

    machine = type("CacheModelRun", (CacheModel,), {"mod": load("cache", compiled=compiled)})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=150, stateful_step_count=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )


# ---------------------------------------------------------------- twins agree

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.integers(0, 40)),
        st.tuples(st.just("put"), st.integers(0, 40), st.integers(1, 12),
                  st.sampled_from([None, None, 0, 1, 4, 30])),
        st.tuples(st.just("neg"), st.integers(0, 40), st.sampled_from([1, 4])),
        st.tuples(st.just("remove"), st.integers(0, 40)),
        st.tuples(st.just("tick"), st.sampled_from([0.5, 2])),
        st.tuples(st.just("sweep"), st.integers(1, 20)),
        st.tuples(st.just("resize"), st.integers(1, 80)),
        st.tuples(st.just("clear")),
    ),
    max_size=400,
)


def _apply(c, clock, op):
    name = op[0]
    if name == "get":
        return c.get(op[1])
    if name == "put":
        return c.put(op[1], ("v", op[1]), weight=op[2], ttl=op[3])
    if name == "neg":
        return c.put_negative(op[1], ttl=op[2])
    if name == "remove":
        return c.remove(op[1])
    if name == "tick":
        clock.now += op[1]
        return None
    if name == "sweep":
        return c.sweep(op[1])
    if name == "resize":
        return c.resize(op[1])
    return c.clear()


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 80), ops=OPS)
def test_twins_agree(capacity, ops):
    py, c = load("cache", compiled=False), load("cache", compiled=True)
    ca, clock_a = make(py, capacity)
    cb, clock_b = make(c, capacity)
    for op in ops:
        a, b = _apply(ca, clock_a, op), _apply(cb, clock_b, op)
        assert a == b, op
        assert ca.stats() == cb.stats(), op
    for k in range(41):
        assert ca.peek_entry(k) == cb.peek_entry(k)


def test_twins_agree_on_a_long_zipf_trace():
    import random

    py, c = load("cache", compiled=False), load("cache", compiled=True)
    rnd = random.Random(11)
    trace = rnd.choices(range(3000), weights=[1 / i for i in range(1, 3001)], k=30_000)
    ca, cb = py.Cache(300), c.Cache(300)
    for i, k in enumerate(trace):
        if i % 7000 == 0:
            for j in range(500):
                ca.put(("scan", i, j), j)
                cb.put(("scan", i, j), j)
        ra, rb = ca.get(k), cb.get(k)
        assert ra == rb
        if ra is None:
            assert ca.put(k, k) == cb.put(k, k)
    assert ca.stats() == cb.stats()


# ---------------------------------------------------------------- Cache object sizes, weights

@pytest.mark.parametrize("value, size", [
    (2048, 2048), ("50mb", 52428800), ("50MB", 52428800), ("512kb", 524288), ("1gb", 1073741824),
    ("1G", 1073741824), (" 4096 ", 4096), ("2048b", 2048), (10485760, 10485760),
])
def test_cache_sizes_accept_integers_and_suffixes(value, size):
    assert parse_cache_size(value, "$.Cache.dnsTxt") == size


@pytest.mark.parametrize("value, message", [
    (2047, "at least 2048"), ("1kb", "at least 2048"), (0, "at least 2048"), (-5, "out of range"),
    ("50 megabytes", "not a byte size"), ("", "not a byte size"), (True, "not a byte size"),
    (1.5, "not a byte size"), (None, "not a byte size"), ("1tb", "not a byte size"),
])
def test_cache_size_errors_name_the_field(value, message):
    with pytest.raises(ConfigError) as info:
        parse_cache_size(value, "$.Cache.accounts")
    assert info.value.path == "$.Cache.accounts" and message in info.value.message


def test_cache_object_defaults_and_overrides():
    sizes = cache_sizes({"dnsTxt": "8mb", "accounts": 4096, "negativeTtl": 60000})
    assert sizes["dnsTxt"] == 8388608 and sizes["accounts"] == 4096
    assert sizes["messages"] == 52428800 and sizes["dnsRbl"] == 5242880
    assert set(sizes) == set(CACHE_SIZE_DEFAULTS) and len(sizes) == 25
    assert all(v >= MIN_CACHE_SIZE for v in CACHE_SIZE_DEFAULTS.values())
    assert cache_sizes(None) == dict(CACHE_SIZE_DEFAULTS)
    with pytest.raises(ConfigError) as info:
        cache_sizes({"dnsTxt": "1kb"})
    assert info.value.path == "$.Cache.dnsTxt"
    with pytest.raises(ConfigError) as info:
        cache_sizes({"dnsTXT": 4096})
    assert info.value.path == "$.Cache.dnsTXT"


def test_entry_weights_count_contents():
    import ipaddress

    assert approximate_size("abc") == 27 and approximate_size(b"abc") == 19
    assert approximate_size(ipaddress.ip_address("192.0.2.1")) == 4
    assert approximate_size(ipaddress.ip_address("2001:db8::1")) == 16
    txt = ("v=spf1 include:_spf.example.org -all",)
    assert approximate_size(txt) == 16 + len(txt[0]) + 24
    assert approximate_size(["a" * 100, "b" * 200]) > approximate_size(["a"])
    assert entry_weight("k", NEGATIVE) == 25 + 8
    nested = [[[[[[[[[["deep"]]]]]]]]]]
    assert approximate_size(nested) > 0


def test_new_cache_weighs_in_bytes():
    c = new_cache(4096)
    c.put("name.example.", ("192.0.2.1",))
    assert c.weight == approximate_size("name.example.") + approximate_size(("192.0.2.1",))
    counted = new_cache(4096, weigher=None)
    counted.put("x", "y" * 1000)
    assert counted.weight == 1
