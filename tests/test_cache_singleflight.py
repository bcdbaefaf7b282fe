"""Single-flight loading (services.md §5.2) over both cache kernels, with plain asyncio.run."""
import asyncio
import random

import pytest
from kernels import kernel_fixture

from stalwart.services.cache import (
    NEGATIVE,
    LoadCancelledError,
    Loaded,
    LoadingCache,
    Negative,
    sweep_expired,
)

cache = kernel_fixture("cache")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Boom(Exception):
    pass


class NxDomain(Exception):
    pass


def loading(mod, capacity=10_000, **kw):
    clock = Clock()
    return LoadingCache(mod.Cache(capacity, clock=clock), **kw), clock


def counting_loader(result=lambda key: ("v", key), delay=0.01):
    calls = []

    async def load(key):
        calls.append(key)
        await asyncio.sleep(delay)
        out = result(key)
        if isinstance(out, BaseException):
            raise out
        return out

    return load, calls


def test_concurrent_misses_load_once(cache):
    lc, _ = loading(cache)
    load, calls = counting_loader()

    async def main():
        results = await asyncio.gather(*(lc.get_or_load("k", load) for _ in range(50)))
        assert results == [("v", "k")] * 50
        assert calls == ["k"]
        # now a hit: the loader is not called again
        assert await lc.get_or_load("k", load) == ("v", "k")
        assert calls == ["k"] and lc.in_flight() == 0

    asyncio.run(main())
    stats = lc.stats()
    assert stats["loads"] == 1 and stats["coalesced"] == 49 and stats["hits"] == 1
    assert stats["misses"] == 50  # every waiter missed before joining the flight


def test_distinct_keys_load_concurrently(cache):
    lc, _ = loading(cache)
    load, calls = counting_loader(delay=0.05)

    async def main():
        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await asyncio.gather(*(lc.get_or_load(k, load) for k in range(20) for _ in range(3)))
        assert loop.time() - start < 0.5  # not one after another
        assert results == [("v", k) for k in range(20) for _ in range(3)]

    asyncio.run(main())
    assert sorted(calls) == list(range(20))


def test_many_tasks_many_keys(cache):
    lc, _ = loading(cache)
    calls = []

    async def load(key):
        calls.append(key)
        await asyncio.sleep(random.random() * 0.01)
        return key * 2

    async def worker(rnd):
        for _ in range(20):
            k = rnd.randrange(10)
            assert await lc.get_or_load(k, load) == 2 * k
            await asyncio.sleep(rnd.random() * 0.002)

    async def main():
        await asyncio.gather(*(worker(random.Random(i)) for i in range(100)))

    asyncio.run(main())
    assert sorted(calls) == list(range(10))


def test_loader_error_reaches_every_waiter_and_is_not_cached(cache):
    lc, _ = loading(cache)
    load, calls = counting_loader(result=lambda key: Boom(key))

    async def main():
        results = await asyncio.gather(*(lc.get_or_load("k", load) for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, Boom) for r in results)
        assert "k" not in lc.cache
        with pytest.raises(Boom):
            await lc.get_or_load("k", load)

    asyncio.run(main())
    assert calls == ["k", "k"] and lc.load_errors == 2 and lc.loads == 0


def test_error_mapped_to_a_negative_entry(cache):
    lc, clock = loading(cache, negative_for=lambda exc: 30.0 if isinstance(exc, NxDomain) else None)
    load, calls = counting_loader(result=lambda key: NxDomain(key) if key.startswith("nx") else key)

    async def main():
        results = await asyncio.gather(*(lc.get_or_load("nx.example.", load) for _ in range(4)))
        assert all(r is NEGATIVE for r in results)
        assert lc.get("nx.example.") is NEGATIVE
        assert await lc.get_or_load("nx.example.", load) is NEGATIVE
        clock.now += 30
        assert await lc.get_or_load("nx.example.", load) is NEGATIVE
        # a per-call mapping overrides the default one
        with pytest.raises(NxDomain):
            await lc.get_or_load("nx.other.", load, negative_for=None)

    asyncio.run(main())
    assert calls == ["nx.example.", "nx.example.", "nx.other."]


def test_loaded_and_negative_results_carry_their_ttl(cache):
    lc, clock = loading(cache, ttl=1000)

    async def load(key):
        if key == "mx":
            return Loaded(["mx1.example."], ttl=60, weight=40)
        if key == "nodata":
            return Negative(ttl=5)
        return "plain"

    async def main():
        assert await lc.get_or_load("mx", load) == ["mx1.example."]
        assert await lc.get_or_load("nodata", load) is NEGATIVE
        assert await lc.get_or_load("plain", load) == "plain"
        assert lc.cache.peek_entry("mx") == (["mx1.example."], 40, clock.now + 60)
        assert lc.cache.peek_entry("plain")[2] == clock.now + 1000
        assert await lc.get_or_load("plain", load, ttl=None) == "plain"  # a hit: ttl unused
        clock.now += 5
        assert lc.get("nodata") is None and lc.get("mx") == ["mx1.example."]
        clock.now += 55
        assert lc.get("mx") is None and lc.get("plain") == "plain"

    asyncio.run(main())


def test_cancelling_one_waiter_does_not_cancel_the_load(cache):
    lc, _ = loading(cache)
    load, calls = counting_loader(delay=0.05)

    async def main():
        tasks = [asyncio.create_task(lc.get_or_load("k", load)) for _ in range(3)]
        await asyncio.sleep(0.01)
        tasks[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert await tasks[1] == ("v", "k") and await tasks[2] == ("v", "k")
        # a timeout around one caller is a cancellation too
        lc.invalidate("k")
        slow = asyncio.create_task(lc.get_or_load("k", load))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lc.get_or_load("k", load), 0.01)
        assert await slow == ("v", "k")

    asyncio.run(main())
    assert calls == ["k", "k"]


def test_a_load_nobody_waits_for_still_fills_the_cache(cache):
    lc, _ = loading(cache)
    load, calls = counting_loader(delay=0.02)
    errors = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        t = asyncio.create_task(lc.get_or_load("k", load))
        await asyncio.sleep(0.005)
        t.cancel()
        await asyncio.sleep(0.05)
        assert lc.get("k") == ("v", "k") and lc.in_flight() == 0
        # same with a failing load: nothing is logged as "never retrieved"
        failing, _ = counting_loader(result=lambda key: Boom(), delay=0.02)
        t = asyncio.create_task(lc.get_or_load("f", failing))
        await asyncio.sleep(0.005)
        t.cancel()
        await asyncio.sleep(0.05)

    asyncio.run(main())
    import gc

    gc.collect()
    assert errors == [] and calls == ["k"]


def test_cancelled_load_fails_waiters_with_load_cancelled(cache):
    lc, _ = loading(cache)
    load, _ = counting_loader(delay=10)

    async def main():
        waiters = [asyncio.create_task(lc.get_or_load("k", load)) for _ in range(3)]
        await asyncio.sleep(0.01)
        (task,) = lc._tasks
        task.cancel()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, LoadCancelledError) for r in results)
        assert lc.in_flight() == 0 and "k" not in lc.cache

    asyncio.run(main())


def test_invalidate_during_a_load_keeps_its_result_out_of_the_cache(cache):
    lc, _ = loading(cache)
    versions = iter(["old", "new"])

    async def load(key):
        value = next(versions)
        await asyncio.sleep(0.02)
        return value

    async def main():
        first = asyncio.create_task(lc.get_or_load("k", load))
        await asyncio.sleep(0.005)
        lc.invalidate("k")
        second = asyncio.create_task(lc.get_or_load("k", load))
        assert await first == "old"
        assert await second == "new"
        assert lc.get("k") == "new"

    asyncio.run(main())


def test_a_store_that_fails_reaches_the_waiters(cache):
    def weigher(key, value):
        raise RuntimeError("cannot weigh")

    lc = LoadingCache(cache.Cache(1000, weigher=weigher))

    async def load(key):
        return "v"

    async def main():
        with pytest.raises(RuntimeError, match="cannot weigh"):
            await lc.get_or_load("k", load)
        assert lc.in_flight() == 0

    asyncio.run(main())


def test_an_entry_too_heavy_to_cache_is_still_returned(cache):
    lc = LoadingCache(cache.Cache(100))

    async def load(key):
        return Loaded("big", weight=1000)

    async def main():
        assert await lc.get_or_load("k", load) == "big"
        assert lc.get("k") is None and lc.cache.rejected == 1

    asyncio.run(main())


def test_sweep_expired_removes_dead_entries(cache):
    clock = Clock()
    caches = [cache.Cache(100_000, clock=clock) for _ in range(2)]
    for c in caches:
        for i in range(3000):
            c.put(i, i, ttl=10 if i % 3 else 1000)
    clock.now += 10

    async def main():
        task = asyncio.create_task(sweep_expired(lambda: caches, interval=0.01, batch=100))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if all(len(c) == 1000 for c in caches):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [len(c) for c in caches] == [1000, 1000]
    assert all(c.expired == 2000 for c in caches)
