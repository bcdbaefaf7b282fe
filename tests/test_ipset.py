"""CIDR set kernel (security.md §2, spec/README.md "IpMask"): both twins, an ipaddress oracle, and a
cross-check of the compiled kernel against the twin on the same random operations."""
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import kernel_fixture
from stalwart._fast import load

ipset = kernel_fixture("ipset")


def v4(text):
    return socket.inet_pton(socket.AF_INET, text)


def v6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def test_compiled_kernel_is_really_compiled():
    assert load("ipset", compiled=True).__file__.endswith(".so")


def test_longest_prefix_wins(ipset):
    s = ipset.IpSet()
    assert s.add(v4("10.0.0.0"), 8, value="/8")
    assert s.add(v4("10.1.0.0"), 16, value="/16")
    assert s.add(v4("10.1.2.3"), 32, value="/32")
    assert s.match(v4("10.1.2.3")) == "/32"
    assert s.match(v4("10.1.2.4")) == "/16"
    assert s.match(v4("10.2.0.1")) == "/8"
    assert s.match(v4("11.0.0.1")) is None
    assert s.contains(v4("10.200.0.1")) and not s.contains(v4("9.255.255.255"))
    assert len(s) == 3


def test_cross_family_matching(ipset):
    """IpMask: IPv4 entries match IPv4-mapped IPv6 addresses; IPv6 entries match IPv4 addresses
    through the mapped form."""
    s = ipset.IpSet()
    s.add_text("192.0.2.0/24", value="v4net")
    assert s.match(v6("::ffff:192.0.2.77")) == "v4net"
    assert s.match(v6("::192.0.2.77")) is None  # IPv4-compatible is not the mapped form
    s.add_text("::ffff:198.51.100.7", value="mapped-exact")
    assert s.match(v4("198.51.100.7")) == "mapped-exact"
    s.add_text("::ffff:0:0/96", value="all-v4")
    assert s.match(v4("203.0.113.1")) == "all-v4"
    assert s.match(v4("192.0.2.1")) == "v4net"  # longer prefix still wins
    s.add(v6("::"), 8, value="low-v6")  # the packed API takes what IpMask text rejects
    assert s.match(v6("::1")) == "low-v6"
    s.remove_text("::ffff:0:0/96")
    assert s.match(v4("203.0.113.1")) == "low-v6"  # ::/8 contains ::ffff:0:0/96
    assert s.match(v6("2001:db8::1")) is None


def test_mapped_entry_is_the_ipv4_entry(ipset):
    s = ipset.IpSet()
    assert s.add_text("10.0.0.0/8", value="a")
    assert not s.add(v6("::ffff:10.0.0.0"), 104, value="b")  # same network: replaced
    assert len(s) == 1
    (entry,) = list(s)
    assert entry == (v4("10.0.0.0"), 8, 0, "b") and str(entry) == "10.0.0.0/8"


def test_expiry_and_purge(ipset):
    s = ipset.IpSet()
    s.add_text("10.0.0.0/8", expires=0, value="forever")
    s.add_text("10.1.0.0/16", expires=100, value="until100")
    s.add_text("2001:db8::/64", expires=50, value="until50")
    assert s.match_text("10.1.1.1", now=99) == "until100"
    # expired when expires <= now; a shorter unexpired entry then answers
    assert s.match_text("10.1.1.1", now=100) == "forever"
    assert s.match_text("10.1.1.1") == "until100"  # now=0 ignores expiry
    assert s.contains(v6("2001:db8::5"), now=49) and not s.contains(v6("2001:db8::5"), now=50)
    gone = s.purge(60)
    assert [str(e) for e in gone] == ["2001:db8::/64"] and gone[0].expires == 50
    assert len(s) == 2
    assert sorted(e.value for e in s.purge(10**10)) == ["until100"]
    assert [e.value for e in s] == ["forever"]


def test_replace_get_remove(ipset):
    s = ipset.IpSet()
    assert s.add(v4("10.1.2.3"), 16, 5, "x")  # host bits cleared
    assert s.get(v4("10.1.0.0"), 16) == (v4("10.1.0.0"), 16, 5, "x")
    assert not s.add(v4("10.1.9.9"), 16, 0, "y")
    assert s.get(v4("10.1.255.255"), 16).value == "y" and len(s) == 1
    assert s.get(v4("10.1.0.0"), 17) is None
    assert s.remove(v4("10.1.77.1"), 16) and not s.remove(v4("10.1.0.0"), 16)
    assert len(s) == 0 and s.match(v4("10.1.0.1")) is None and s.prefix_lengths() == ()
    s.add(v4("1.2.3.4"), 32)
    assert s.match(v4("1.2.3.4")) is True  # default payload
    s.clear()
    assert len(s) == 0 and list(s) == []


def test_bad_arguments(ipset):
    s = ipset.IpSet()
    with pytest.raises(ValueError):
        s.add(b"\x01\x02\x03", 8)
    with pytest.raises(ValueError):
        s.add(v4("1.2.3.4"), 33)
    with pytest.raises(ValueError):
        s.add(v6("::1"), 129)
    with pytest.raises(ValueError):
        s.add(v4("1.2.3.4"), -1)
    with pytest.raises(ValueError):
        s.add(v4("1.2.3.4"), 32, value=None)
    with pytest.raises(ValueError):
        s.add(v4("1.2.3.4"), 32, expires=-1)
    with pytest.raises(ValueError):
        s.match(b"12345")
    with pytest.raises(ValueError):
        s.contains(b"")
    for bad in ("1.2.3", "01.2.3.4", "::g", "", "1.2.3.4\x00"):
        with pytest.raises(ValueError):
            s.match_sockaddr(bad)
    with pytest.raises(TypeError):
        s.match_sockaddr(b"1.2.3.4")


@pytest.mark.parametrize("text", ["10.0.0.0/7", "::/0", "2001:db8::/7", "0.0.0.0", "::", "0.0.0.0/8",
                                  "fe80::1%eth0", "10.0.0.0/33", "2001:db8::/129", "10.0.0.0/",
                                  "10.0.0.0/08", "10.0.0.0/+8", "10.0.0.0/٨", "example.com", "10.0.0.0/8/8"])
def test_ipmask_text_rejected(ipset, text):
    with pytest.raises(ValueError):
        ipset.IpSet().add_text(text)


@pytest.mark.parametrize("text,shown", [("10.1.2.3/8", "10.0.0.0/8"), ("192.0.2.7", "192.0.2.7"),
                                        ("192.0.2.7/32", "192.0.2.7"), ("2001:db8::7/128", "2001:db8::7"),
                                        ("2001:db8:1:2::/48", "2001:db8:1::/48"), (" 10.0.0.0/8 ", "10.0.0.0/8")])
def test_ipmask_text_accepted(ipset, text, shown):
    s = ipset.IpSet()
    s.add_text(text)
    assert [str(e) for e in s] == [shown]


def test_sockaddr_and_buffers(ipset):
    s = ipset.IpSet()
    s.add_text("fe80::/10", value="ll")
    s.add_text("127.0.0.0/8", value="lo")
    assert s.match_sockaddr("fe80::1%eth0") == "ll"
    assert s.match_sockaddr("127.0.0.1") == "lo"
    assert s.match_sockaddr("::ffff:127.0.0.1") == "lo"
    assert s.match_sockaddr("::1") is None
    assert s.match(bytearray(v4("127.1.1.1"))) == "lo"
    assert s.match(memoryview(v6("fe80::2"))) == "ll"
    assert s.add(bytearray(v4("10.0.0.0")), 8) and s.contains(memoryview(v4("10.0.0.1")))


def test_many_entries_grow_and_shrink(ipset):
    """Enough entries to force several rehashes, then delete most of them (backward-shift deletion
    must keep every remaining entry reachable)."""
    s = ipset.IpSet()
    nets = [(i * 2654435761) & 0xFFFFFF00 | 0x01000000 for i in range(3000)]
    for i, n in enumerate(nets):
        s.add(n.to_bytes(4, "big"), 24, value=i)
    assert len(s) == len({n for n in nets})
    for i, n in enumerate(nets):
        if i % 3:
            s.remove(n.to_bytes(4, "big"), 24)
    for i, n in enumerate(nets):
        assert s.contains((n | 7).to_bytes(4, "big")) == (i % 3 == 0)


# -- hypothesis: oracle and twin cross-check --------------------------------------------------------

def _net(packed, prefix):
    return ipaddress.ip_network((packed, prefix), strict=False)


def _in128(addr_packed):
    if len(addr_packed) == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr_packed)
    return ipaddress.IPv6Address(addr_packed)


def _net128(packed, prefix):
    if len(packed) == 4:
        n = _net(packed, prefix)
        return ipaddress.IPv6Network((b"\0" * 10 + b"\xff\xff" + n.network_address.packed, 96 + prefix))
    return _net(packed, prefix)


def oracle(entries, addr, now):
    """Brute force with ipaddress: the payload of the longest unexpired containing entry."""
    best = None
    a = _in128(addr)
    for (packed, prefix), (expires, value) in entries.items():
        net = _net128(packed, prefix)
        if a in net and (expires == 0 or expires > now) and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, value)
    return None if best is None else best[1]


_V4_SPECIAL = [v4("10.0.0.0"), v4("10.255.255.255"), v4("255.255.255.255"), v4("0.0.0.1")]
_V6_SPECIAL = [v6("::ffff:0:0"), v6("::ffff:10.0.0.1"), v6("::"), v6("2001:db8::"), v6("ffff::")]
packed_addr = st.one_of(
    st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16),
    st.sampled_from(_V4_SPECIAL + _V6_SPECIAL),
    st.binary(min_size=4, max_size=4).map(lambda b: b"\0" * 10 + b"\xff\xff" + b),  # mapped
)


@st.composite
def entry(draw):
    packed = draw(packed_addr)
    bits = len(packed) * 8
    prefix = draw(st.one_of(st.integers(0, bits), st.sampled_from([bits, bits - 8, bits // 2])))
    return packed, prefix, draw(st.sampled_from([0, 0, 10, 20, 30])), draw(st.integers(0, 1000))


def _canonical_key(packed, prefix):
    # the key under which both the kernel and the oracle dedupe entries: the 128-bit network
    n = _net128(packed, prefix)
    return n.network_address.packed, n.prefixlen


@settings(max_examples=300, deadline=None)
@given(st.lists(entry(), max_size=40), st.lists(packed_addr, max_size=30), st.sampled_from([0, 5, 15, 25, 40]))
def test_match_against_ipaddress_oracle(entries, probes, now):
    sets = [load("ipset", compiled=c).IpSet() for c in (True, False)]
    model = {}
    for packed, prefix, expires, value in entries:
        for s in sets:
            s.add(packed, prefix, expires, value)
        model[_canonical_key(packed, prefix)] = (expires, value)
    # probe the stored networks' edges too, so hits are common
    probes = probes + [p for p, *_ in entries]
    for addr in probes:
        want = oracle(model, addr, now)
        assert [s.match(addr, now) for s in sets] == [want, want], (addr, now)
        assert [s.contains(addr, now) for s in sets] == [want is not None] * 2
    assert len(sets[0]) == len(sets[1]) == len(model)
    assert sorted(sets[0], key=repr) == sorted(sets[1], key=repr)
    assert sets[0].prefix_lengths() == sets[1].prefix_lengths()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "purge"]), entry()), max_size=80))
def test_twins_agree_on_operation_sequences(ops):
    c = load("ipset", compiled=True).IpSet()
    p = load("ipset", compiled=False).IpSet()
    model = {}
    for op, (packed, prefix, expires, value) in ops:
        if op == "add":
            assert c.add(packed, prefix, expires, value) == p.add(packed, prefix, expires, value)
            model[_canonical_key(packed, prefix)] = (expires, value)
        elif op == "remove":
            assert c.remove(packed, prefix) == p.remove(packed, prefix)
            model.pop(_canonical_key(packed, prefix), None)
        else:
            gc, gp = c.purge(expires), p.purge(expires)
            assert sorted(gc, key=repr) == sorted(gp, key=repr)
            model = {k: v for k, v in model.items() if not 0 < v[0] <= expires}
        assert len(c) == len(p) == len(model)
        assert c.match(packed, expires) == p.match(packed, expires) == oracle(model, packed, expires)
        assert c.get(packed, prefix) == p.get(packed, prefix)
    assert sorted(c, key=repr) == sorted(p, key=repr)
