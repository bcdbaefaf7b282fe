import mmap
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import kernel_fixture
from stalwart._fast import load

conntable = kernel_fixture("conntable")


def make(mod, listeners=4, workers=4):
    buf = mmap.mmap(-1, mod.size_for(listeners, workers))
    return mod.ConnectionTable(buf, listeners, workers), buf


def test_compiled_kernel_is_really_compiled():
    mod = load("conntable", compiled=True)
    assert mod.__file__.endswith(".so")


def test_listener_then_server_cap(conntable):
    t, _ = make(conntable)
    assert [t.acquire(0, 0, 2, 3) for _ in range(3)] == [conntable.OK, conntable.OK, conntable.LISTENER_FULL]
    assert t.acquire(1, 0, 0, 3) == conntable.OK  # listener without its own cap
    assert t.acquire(1, 1, 0, 3) == conntable.SERVER_FULL
    # a server refusal gives the listener slot back
    assert t.listener_count(1) == 1
    assert t.server_count() == 3
    t.release(0, 0)
    assert t.server_count() == 2 and t.listener_count(0) == 1 and t.held(0, 0) == 1


def test_reclaim_dead_worker(conntable):
    t, _ = make(conntable)
    for _ in range(3):
        assert t.acquire(2, 3, 10, 10) == conntable.OK
    assert t.acquire(1, 3, 10, 10) == conntable.OK
    assert t.acquire(1, 0, 10, 10) == conntable.OK
    assert t.reclaim(3) == 4
    assert t.server_count() == 1 and t.listener_count(2) == 0 and t.listener_count(1) == 1
    assert t.reclaim(3) == 0


def test_heartbeat(conntable):
    t, _ = make(conntable)
    assert t.heartbeat(2) == 0
    t.beat(2)
    t.beat(2)
    assert t.heartbeat(2) == 2
    t.reset_worker(2)
    assert t.heartbeat(2) == 0


def test_bounds_and_shape(conntable):
    t, buf = make(conntable, 2, 2)
    with pytest.raises(IndexError):
        t.acquire(2, 0, 1, 1)
    with pytest.raises(IndexError):
        t.beat(5)
    with pytest.raises(ValueError):
        conntable.ConnectionTable(buf, 3, 2)  # another shape over the same memory
    with pytest.raises(ValueError):
        conntable.ConnectionTable(bytearray(8), 2, 2)


def test_no_overshoot_across_processes(conntable):
    """Two processes hammering one cap never take more than the limit, and nothing is lost."""
    t, buf = make(conntable, 2, 4)
    limit = 7
    pids = []
    for w in range(2):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for _ in range(20000):
                    if t.acquire(0, w, limit, 1 << 40) == conntable.OK:
                        if t.listener_count(0) > limit:
                            code = 1
                        t.release(0, w)
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert t.listener_count(0) == 0 and t.server_count() == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 2)), max_size=60),
       st.integers(1, 4), st.integers(1, 6))
def test_twins_agree(ops, llimit, slimit):
    c = load("conntable", compiled=True)
    p = load("conntable", compiled=False)
    tc, _ = make(c, 3, 3)
    tp, _ = make(p, 3, 3)
    held = {}
    for acquire, lst, w in ops:
        if acquire or not held.get((lst, w)):
            rc, rp = tc.acquire(lst, w, llimit, slimit), tp.acquire(lst, w, llimit, slimit)
            assert rc == rp
            if rc == 0:
                held[(lst, w)] = held.get((lst, w), 0) + 1
        else:
            tc.release(lst, w)
            tp.release(lst, w)
            held[(lst, w)] -= 1
        assert tc.server_count() == tp.server_count()
        assert [tc.listener_count(i) for i in range(3)] == [tp.listener_count(i) for i in range(3)]


def test_epochs(conntable):
    t, _ = make(conntable)
    assert [t.epoch(i) for i in range(4)] == [0, 0, 0, 0]
    assert t.bump_epoch(0) == 1 and t.bump_epoch(0) == 2 and t.bump_epoch(3) == 1
    assert t.epoch(0) == 2 and t.epoch(1) == 0
    with pytest.raises(IndexError):
        t.epoch(4)
    with pytest.raises(IndexError):
        t.bump_epoch(-1)
