"""Range table kernel (spec/services.md §3 "Storage and refresh"): both twins against a brute-force
scan, file round trips through mmap, damaged buffers refused, and the twins cross-checked."""
import mmap
import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernels import kernel_fixture

from stalwart._fast import load
from stalwart.services.geo.tables import flatten

rangetable = kernel_fixture("rangetable")

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1


def p4(i):
    return i.to_bytes(4, "big")


def p6(i):
    return i.to_bytes(16, "big")


def brute(ranges, ip):
    """The value of the narrowest range holding ip (first listed on a tie), or -1."""
    best = None
    for k, (s, e, v) in enumerate(ranges):
        if s <= ip <= e and (best is None or e - s < best[0]):
            best = (e - s, v)
    return -1 if best is None else best[1]


def make(mod, v4, v6, nvals):
    values = [(i, f"v{i}") for i in range(nvals)]
    return mod.RangeTable(mod.encode(flatten(v4), flatten(v6), values, 123, 456))


def test_compiled_kernel_is_really_compiled():
    assert load("rangetable", compiled=True).__file__.endswith(".so")


def test_basic_lookups(rangetable):
    v4 = [(0x01000000, 0x010000FF, 0), (0x08080800, 0x080808FF, 1), (0x08000000, 0x08FFFFFF, 2)]
    v6 = [(0x20010200 << 96, ((0x20010200 << 96) | ((1 << 96) - 1)), 3)]
    t = make(rangetable, v4, v6, 4)
    assert t.find(socket.inet_pton(socket.AF_INET, "1.0.0.7")) == 0
    assert t.find(socket.inet_pton(socket.AF_INET, "8.8.8.8")) == 1  # narrowest wins
    assert t.find(socket.inet_pton(socket.AF_INET, "8.8.9.1")) == 2
    assert t.find(socket.inet_pton(socket.AF_INET, "9.0.0.0")) == -1
    assert t.find(socket.inet_pton(socket.AF_INET6, "::ffff:8.8.8.8")) == 1  # mapped counts as IPv4
    assert t.find(socket.inet_pton(socket.AF_INET6, "2001:200::1")) == 3
    assert t.find(socket.inet_pton(socket.AF_INET6, "2001:201::1")) == -1
    assert t.get(socket.inet_pton(socket.AF_INET6, "2001:200::1")) == (3, "v3")
    assert t.get(p4(0)) is None
    assert t.value(1) == (1, "v1")
    assert (t.n4, t.n6, t.nvals, t.built_at, t.fingerprint) == (4, 1, 4, 123, 456)
    assert len(t) == 5


def test_range_spanning_buckets_and_edges(rangetable):
    v4 = [(0, 0, 0), (0x0000FFFF, 0x00FF0000, 1), (V4_MAX, V4_MAX, 2)]
    v6 = [(0, 5, 0), (1 << 112, (3 << 112) + 7, 1), (V6_MAX, V6_MAX, 2)]
    t = make(rangetable, v4, v6, 3)
    assert t.find(p4(0)) == 0 and t.find(p4(1)) == -1
    assert t.find(p4(0x00123456)) == 1 and t.find(p4(0x00FF0001)) == -1
    assert t.find(p4(V4_MAX)) == 2 and t.find(p4(V4_MAX - 1)) == -1
    assert t.find(p6(3)) == 0 and t.find(p6(6)) == -1
    assert t.find(p6((2 << 112) + 99)) == 1 and t.find(p6((3 << 112) + 8)) == -1
    assert t.find(p6(V6_MAX)) == 2
    assert t.find_int(0x00123456, False) == 1 and t.find_int((2 << 112), True) == 1


def test_empty_table(rangetable):
    t = rangetable.RangeTable(rangetable.encode([], [], []))
    assert t.find(p4(12345)) == -1 and t.find(p6(12345 << 100)) == -1 and len(t) == 0


def test_bad_input(rangetable):
    t = make(rangetable, [(1, 2, 0)], [], 1)
    with pytest.raises(ValueError):
        t.find(b"abc")
    with pytest.raises(TypeError):
        t.find("1.2.3.4")
    with pytest.raises(IndexError):
        t.value(5)


def test_encode_refuses_overlaps_and_bad_values(rangetable):
    with pytest.raises(rangetable.RangeTableError):
        rangetable.encode([(1, 10, 0), (5, 20, 0)], [], [(0, "")])
    with pytest.raises(rangetable.RangeTableError):
        rangetable.encode([(1, 10, 3)], [], [(0, "")])


def test_damaged_buffers_are_refused(rangetable):
    good = rangetable.encode([(1, 10, 0), (100, 200, 1)], [(5, 9, 1)], [(1, "a"), (2, "b")])
    with pytest.raises(rangetable.RangeTableError):
        rangetable.RangeTable(b"NOTATABLE" + good[9:])
    with pytest.raises(rangetable.RangeTableError):
        rangetable.RangeTable(good[:-3])
    with pytest.raises(rangetable.RangeTableError):
        rangetable.RangeTable(good[:40])
    # Corrupt one bucket bound of the IPv4 index: lookups would trust it.
    bad = bytearray(good)
    bad[64 + 4 * 3: 64 + 4 * 4] = (999).to_bytes(4, "little")
    with pytest.raises(rangetable.RangeTableError):
        rangetable.RangeTable(bytes(bad))
    rng = random.Random(7)
    for _ in range(300):  # random byte flips: refused or still a safe table, never a crash
        bad = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            t = rangetable.RangeTable(bytes(bad))
        except rangetable.RangeTableError:
            continue
        for _ in range(20):
            i = t.find(p4(rng.getrandbits(32)))
            if i >= 0:
                try:
                    t.value(i)
                except UnicodeDecodeError:
                    pass


def test_mmap_file_round_trip_and_release(rangetable, tmp_path):
    path = str(tmp_path / "t.table")
    size = rangetable.write(path, [(10, 20, 0)], [(1 << 100, (1 << 100) + 9, 1)], [(64500, "EX"), (0, "JP")], 7, 9)
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    t = rangetable.RangeTable(mapped)
    assert t.size == size
    assert t.get(p4(15)) == (64500, "EX") and t.get(p6((1 << 100) + 3)) == (0, "JP")
    t.release()
    mapped.close()  # no view is left behind
    assert t.find(p4(15)) == -1


def test_unicode_labels(rangetable):
    t = rangetable.RangeTable(rangetable.encode([(1, 1, 0)], [], [(7, "Ümlaut Ünïcode ✓")]))
    assert t.get(p4(1)) == (7, "Ümlaut Ünïcode ✓")


range4 = st.tuples(st.integers(0, V4_MAX), st.integers(0, 1 << 20)).map(
    lambda t: (t[0], min(V4_MAX, t[0] + t[1])))
range6 = st.tuples(st.integers(0, V6_MAX), st.integers(0, 1 << 90)).map(
    lambda t: (t[0], min(V6_MAX, t[0] + t[1])))


@settings(max_examples=60, deadline=None)
@given(r4=st.lists(range4, max_size=40), r6=st.lists(range6, max_size=40), seed=st.integers(0, 2**32))
def test_lookups_agree_with_brute_force(r4, r6, seed):
    """Property (issue 9): for random ranges, overlapping included, and random addresses in both
    families, both twins answer what a brute-force narrowest-range scan answers."""
    rng = random.Random(seed)
    v4 = [(s, e, i) for i, (s, e) in enumerate(r4)]
    v6 = [(s, e, len(v4) + i) for i, (s, e) in enumerate(r6)]
    nvals = len(v4) + len(v6)
    tables = [make(load("rangetable", compiled=c), v4, v6, nvals) for c in (False, True)]
    probes4 = [rng.getrandbits(32) for _ in range(50)]
    probes6 = [rng.getrandbits(128) for _ in range(50)]
    for s, e, _ in v4:  # edges and inside of every range
        probes4 += [s, e, max(0, s - 1), min(V4_MAX, e + 1), rng.randint(s, e)]
    for s, e, _ in v6:
        probes6 += [s, e, max(0, s - 1), min(V6_MAX, e + 1), rng.randint(s, e)]
    for ip in probes4:
        want = brute(v4, ip)
        assert [t.find(p4(ip)) for t in tables] == [want, want], hex(ip)
    for ip in probes6:
        if ip >> 32 == 0xFFFF:
            continue  # IPv4-mapped: looked up in the IPv4 table by design
        want = brute(v6, ip)
        assert [t.find(p6(ip)) for t in tables] == [want, want], hex(ip)


def test_large_table_twins_agree():
    rng = random.Random(1)
    starts = sorted(rng.sample(range(0, V4_MAX, 256), 20000))
    v4 = [(s, s + rng.randint(0, 255), i % 500) for i, s in enumerate(starts)]
    starts6 = sorted(rng.getrandbits(64) << 64 for _ in range(5000))
    v6 = [(s, s + rng.getrandbits(60), i % 500) for i, s in enumerate(starts6)]
    values = [(i, str(i)) for i in range(500)]
    data = load("rangetable", compiled=False).encode(v4, v6, values)
    c = load("rangetable", compiled=True).RangeTable(data)
    py = load("rangetable", compiled=False).RangeTable(data)
    for _ in range(3000):
        a = p4(rng.getrandbits(32))
        b = p6(rng.choice(starts6) + rng.getrandbits(61))
        assert c.find(a) == py.find(a)
        assert c.find(b) == py.find(b)


def test_find_pair(rangetable):
    a = make(rangetable, [(10, 20, 0)], [(1 << 100, (1 << 100) + 5, 1)], 2)
    c = make(rangetable, [(15, 30, 1)], [], 2)
    assert rangetable.find_pair(a, c, p4(16)) == (1 << 32) | 2
    assert rangetable.find_pair(a, c, p4(12)) == (1 << 32) | 0
    assert rangetable.find_pair(a, c, p4(25)) == (0 << 32) | 2
    assert rangetable.find_pair(a, c, p4(99)) == 0
    assert rangetable.find_pair(a, None, p6((1 << 100) + 1)) == 2 << 32
    assert rangetable.find_pair(None, c, b"\x00" * 10 + b"\xff\xff" + p4(16)) == 2
    assert rangetable.find_pair(None, None, p4(16)) == 0
    with pytest.raises(ValueError):
        rangetable.find_pair(a, c, b"12345")
    with pytest.raises(TypeError):
        rangetable.find_pair(None, None, "1.2.3.4")


def test_other_versions_are_refused(rangetable):
    good = bytearray(rangetable.encode([(1, 10, 0)], [], [(1, "a")]))
    good[8:12] = (1).to_bytes(4, "little")  # a version-1 file left by an older build
    with pytest.raises(rangetable.RangeTableError, match="version 1"):
        rangetable.RangeTable(bytes(good))
