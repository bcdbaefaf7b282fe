"""Sliding-window rate counters (security.md §3), on the compiled kernel and its twin."""
import mmap
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import kernel_fixture
from stalwart._fast import load

ratecounter = kernel_fixture("ratecounter")
KEY = bytes(range(16))
NOW = 1_800_000_000_000
DAY = 86_400_000


def make(mod, capacity=256):
    buf = mmap.mmap(-1, mod.size_for(capacity))
    return mod.RateCounter(buf, capacity, KEY), buf


def test_compiled_kernel_is_really_compiled():
    assert load("ratecounter", compiled=True).__file__.endswith(".so")


def test_counts_inside_the_window(ratecounter):
    t, _ = make(ratecounter)
    k = b"\x01\x01198.51.100.7/32"
    assert [t.hit(k, NOW + i, DAY) for i in range(5)] == [1, 2, 3, 4, 5]
    assert t.count(k, NOW + 10, DAY) == 5
    assert t.count(b"\x01\x01other", NOW, DAY) == 0


def test_no_burst_at_a_window_boundary(ratecounter):
    """Fixed epoch windows let 2x the rate through across a boundary; a sliding one does not."""
    t, _ = make(ratecounter)
    k = b"\x02\x01x"
    period = 60_000
    boundary = (NOW // period + 1) * period
    for i in range(10):
        t.hit(k, boundary - 100 + i, period)  # just before the boundary
    assert t.hit(k, boundary + 100, period) == 11  # just after: still the same window


def test_events_leave_the_window(ratecounter):
    t, _ = make(ratecounter)
    k = b"\x03\x01y"
    period = 60_000
    for i in range(3):
        t.hit(k, NOW + i * 1000, period)
    # over-counting by at most one sub-bucket is allowed; under-counting never
    assert t.count(k, NOW + 2000 + period - 1, period) >= 1
    assert t.count(k, NOW + 2000 + period + period // 60 + 1000, period) == 0
    assert t.hit(k, NOW + 10 * period, period) == 1


def test_retry_after_is_when_enough_old_events_leave(ratecounter):
    t, _ = make(ratecounter)
    k = b"\x01\x02login"
    period = 60_000
    for i in range(5):
        t.hit(k, NOW + i * 1000, period)
    wait = t.retry_after(k, NOW + 4000, period, 5)
    assert 0 < wait <= period
    assert t.count(k, NOW + 4000 + wait, period) < 5
    assert t.retry_after(k, NOW + 4000, period, 6) == 0


def test_full_table_evicts_least_recently_used(ratecounter):
    t, _ = make(ratecounter, capacity=16)
    for i in range(200):
        t.hit(b"\x01\x01k%d" % i, NOW + i, DAY)
    assert t.evictions() > 0
    assert t.hit(b"\x01\x01k199", NOW + 300, DAY) == 2  # the newest keys survive


def test_stale_entries_are_reused_without_eviction(ratecounter):
    t, _ = make(ratecounter, capacity=16)
    for i in range(16):
        t.hit(b"old%d" % i, NOW, 1000)
    for i in range(16):
        t.hit(b"new%d" % i, NOW + 10 * 1000, 1000)
    assert t.evictions() == 0


def test_other_shape_is_refused(ratecounter):
    buf = mmap.mmap(-1, ratecounter.size_for(64))
    ratecounter.RateCounter(buf, 64)
    try:
        ratecounter.RateCounter(buf, 32)
    except ValueError:
        pass
    else:
        raise AssertionError("a table of another shape was accepted")


def test_two_processes_lose_no_increments(ratecounter):
    """Both processes hammer one key at once: every increment is counted (issue 6)."""
    t, buf = make(ratecounter)
    k = b"\x01\x01203.0.113.9/32"
    n = 20_000 if ratecounter.__file__.endswith(".so") else 3_000
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(n):
                    t.hit(k, NOW + i % 1000, DAY)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert t.count(k, NOW + 1000, DAY) == 2 * n


def test_siphash_twins_agree():
    c, py = load("ratecounter", compiled=True), load("ratecounter", compiled=False)
    for data in (b"", b"a", bytes(range(7)), bytes(range(8)), bytes(range(9)), bytes(range(64))):
        assert c.siphash13(KEY, data) == py.siphash13(KEY, data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c", b"dd"]), st.integers(0, 200_000)), max_size=60),
       st.sampled_from([1000, 60_000, 86_400_000]))
def test_twins_agree(ops, period):
    c, py = load("ratecounter", compiled=True), load("ratecounter", compiled=False)
    tc, _b1 = make(c, 16)
    tp, _b2 = make(py, 16)
    now = NOW
    for key, dt in ops:
        now += dt
        assert tc.hit(key, now, period) == tp.hit(key, now, period)
        assert tc.retry_after(key, now, period, 3) == tp.retry_after(key, now, period, 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5_000), min_size=1, max_size=80))
def test_never_under_counts(gaps):
    """Against an exact log: the ring counts at least every event of the last ``period``."""
    mod = load("ratecounter", compiled=True)
    t, _ = make(mod, 16)
    period = 60_000
    now, times = NOW, []
    for gap in gaps:
        now += gap
        times.append(now)
        got = t.hit(b"k", now, period)
        exact = sum(1 for x in times if x > now - period)
        upper = sum(1 for x in times if x > now - period - 2 * (period // 60))
        assert exact <= got <= upper
