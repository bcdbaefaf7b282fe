"""Shared-memory ban table (security.md §5), on the compiled kernel and its twin."""
import ipaddress
import mmap
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import kernel_fixture
from stalwart._fast import load

bantable = kernel_fixture("bantable")
KEY = bytes(range(16))
NOW = 1_800_000_000


def make(mod, capacity=256):
    buf = mmap.mmap(-1, mod.size_for(capacity))
    return mod.BanTable(buf, capacity, KEY), buf


def ip(text):
    return ipaddress.ip_address(text).packed


def test_compiled_kernel_is_really_compiled():
    assert load("bantable", compiled=True).__file__.endswith(".so")


def test_prefix_ban_covers_the_prefix_only(bantable):
    t, _ = make(bantable)
    assert t.ban(ip("2001:db8:1:2::7"), 64, 0, 4, NOW) == bantable.CHANGED
    assert t.lookup(ip("2001:db8:1:2:ffff::1"), NOW) == 4
    assert t.lookup(ip("2001:db8:1:3::1"), NOW) == -1
    t.ban(ip("192.0.2.7"), 32, 0, 2, NOW)
    assert t.contains(ip("192.0.2.7"), NOW) and not t.contains(ip("192.0.2.8"), NOW)
    t.ban(ip("198.51.100.9"), 24, 0, 2, NOW)
    assert t.contains(ip("198.51.100.200"), NOW)


def test_expiry_and_rebanning(bantable):
    t, _ = make(bantable)
    a = ip("203.0.113.5")
    t.ban(a, 32, NOW + 10, 1, NOW)
    assert t.contains(a, NOW + 9) and not t.contains(a, NOW + 10)
    # an expired ban is replaced, not kept: the address can be banned again at once
    assert t.ban(a, 32, NOW + 100, 3, NOW + 20) == bantable.CHANGED
    assert t.lookup(a, NOW + 50) == 3


def test_upsert_keeps_later_expiry_and_newer_reason(bantable):
    t, _ = make(bantable)
    a = ip("203.0.113.5")
    t.ban(a, 32, NOW + 100, 1, NOW)
    assert t.ban(a, 32, NOW + 50, 2, NOW) == bantable.CHANGED  # reason changes, expiry stays
    [(_, packed, prefix, expires, reason, persisted, _state)] = t.entries(NOW)
    assert (packed, prefix, expires, reason, persisted) == (a, 32, NOW + 100, 2, False)
    t.ban(a, 32, 0, 2, NOW)  # permanent wins
    assert t.entries(NOW)[0][3] == 0
    assert t.ban(a, 32, NOW + 500, 2, NOW) == 0  # nothing changes


def test_unban_and_epoch(bantable):
    t, _ = make(bantable)
    a = ip("2001:db8::1")
    e0 = t.epoch()
    t.ban(a, 128, 0, 1, NOW)
    assert t.epoch() == e0 + 1
    assert t.unban(a, 128, NOW) is True
    assert t.epoch() == e0 + 2
    assert not t.contains(a, NOW)
    assert t.unban(a, 128, NOW) is False
    assert t.ban(a, 128, 0, 1, NOW) == bantable.CHANGED


def test_persisted_flag(bantable):
    t, _ = make(bantable)
    t.ban(ip("192.0.2.1"), 32, 0, 1, NOW)
    t.ban(ip("192.0.2.2"), 32, 0, 1, NOW, persisted=True)
    pending = t.entries(NOW, pending_only=True)
    assert [p[1] for p in pending] == [ip("192.0.2.1")]
    index, state = pending[0][0], pending[0][6]
    assert t.mark_persisted(index, state) is True
    assert t.entries(NOW, pending_only=True) == []
    t.ban(ip("192.0.2.1"), 32, 0, 3, NOW)  # a change makes it pending again
    assert len(t.entries(NOW, pending_only=True)) == 1
    assert t.mark_persisted(index, state) is False


def test_full_table_evicts_the_ban_expiring_soonest(bantable):
    t, _ = make(bantable, capacity=8)
    for i in range(8):
        t.ban(ip(f"10.0.0.{i}"), 32, NOW + 1000 + i, 1, NOW)
    rc = t.ban(ip("10.0.1.1"), 32, 0, 1, NOW)
    assert rc & bantable.EVICTED
    assert t.last_evicted[0] == ip("10.0.0.0")
    assert t.contains(ip("10.0.1.1"), NOW) and not t.contains(ip("10.0.0.0"), NOW)


def test_bad_input(bantable):
    t, _ = make(bantable)
    for bad in (lambda: t.ban(b"123", 32, 0, 1, NOW), lambda: t.ban(ip("1.2.3.4"), 33, 0, 1, NOW),
                lambda: t.ban(ip("::1"), 129, 0, 1, NOW), lambda: t.lookup(b"12345", NOW)):
        try:
            bad()
        except ValueError:
            continue
        raise AssertionError("bad input accepted")


def test_two_processes_ban_at_once(bantable):
    """Workers banning the same and different prefixes concurrently: every ban lands once."""
    t, buf = make(bantable, capacity=4096)
    pids = []
    for w in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(500):
                    t.ban(ip(f"10.{w}.{i // 256}.{i % 256}"), 32, 0, 1, NOW)
                    t.ban(ip(f"172.16.{i // 256}.{i % 256}"), 32, NOW + 100 + w, 2, NOW)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    entries = t.entries(NOW)
    keys = [(e[1], e[2]) for e in entries]
    assert len(keys) == len(set(keys)) == 1500
    shared = [e for e in entries if e[1][:2] == bytes([172, 16])]
    assert all(e[3] == NOW + 101 for e in shared)  # the later expiry won everywhere


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ban", "unban", "lookup"]),
                          st.sampled_from(["192.0.2.1", "192.0.2.77", "2001:db8::1", "2001:db8::2:1", "2001:db9::1"]),
                          st.sampled_from([16, 24, 32, 48, 64, 128]), st.integers(0, 50), st.integers(0, 5)),
                max_size=50))
def test_twins_agree(ops):
    c, py = load("bantable", compiled=True), load("bantable", compiled=False)
    tc, _b1 = make(c, 8)
    tp, _b2 = make(py, 8)
    now = NOW
    for op, addr, prefix, exp, reason in ops:
        packed = ip(addr)
        prefix = min(prefix, 32) if len(packed) == 4 else prefix
        now += 1
        if op == "ban":
            expires = 0 if exp == 0 else now + exp
            assert tc.ban(packed, prefix, expires, reason, now) == tp.ban(packed, prefix, expires, reason, now)
        elif op == "unban":
            assert tc.unban(packed, prefix, now) == tp.unban(packed, prefix, now)
        assert tc.lookup(packed, now) == tp.lookup(packed, now)
    assert tc.entries(now) == tp.entries(now)
