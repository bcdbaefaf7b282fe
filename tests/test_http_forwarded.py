"""Forwarded client addresses: parsing and the right-most untrusted hop (security.md §7)."""
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.protocols.http.forwarded import attribute, hops, pack, parse_node

TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48")]
PROXY = "10.0.0.1"


def trusted(packed: bytes) -> bool:
    addr = ipaddress.ip_address(packed)
    return any(addr in net for net in TRUSTED if net.version == addr.version)


def client(*headers):
    found = attribute([(n.lower(), v) for n, v in headers], PROXY, pack(PROXY), trusted)
    return found.ip, found.exempt, found.missing


def test_node_forms():
    assert parse_node("192.0.2.1") == pack("192.0.2.1")
    assert parse_node("192.0.2.1:8080") == pack("192.0.2.1")
    assert parse_node('"[2001:db8::1]:4711"') == pack("2001:db8::1")
    assert parse_node("[2001:db8::1]") == pack("2001:db8::1")
    assert parse_node("2001:db8::1") == pack("2001:db8::1")
    assert parse_node("::ffff:192.0.2.7") == pack("192.0.2.7")
    for bad in ("unknown", "_hidden", "1.2.3.4:x", "[::1", "garbage", "", "[1.2.3.4]"):
        assert parse_node(bad) is None, bad


def test_forwarded_header_wins_and_elements_are_split_outside_quotes():
    got = hops([(b"x-forwarded-for", b"203.0.113.9"),
                (b"forwarded", b'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"'),
                (b"forwarded", b"for=unknown")])
    assert got == [pack("192.0.2.60"), pack("2001:db8:cafe::17"), None]


def test_right_most_untrusted_hop():
    assert client((b"X-Forwarded-For", b"198.51.100.7, 10.1.1.1")) == ("198.51.100.7", False, False)
    # A client writing its own header cannot hide behind it: the proxy appended the real peer.
    assert client((b"X-Forwarded-For", b"127.0.0.1, 198.51.100.8")) == ("198.51.100.8", False, False)
    assert client((b"Forwarded", b"for=192.0.2.1")) == ("192.0.2.1", False, False)


def test_every_hop_trusted_gives_the_left_most_and_is_exempt():
    assert client((b"X-Forwarded-For", b"10.9.9.9, 10.1.1.1")) == ("10.9.9.9", True, False)


def test_unparseable_hop_stops_at_the_trusted_hop_to_its_right():
    assert client((b"X-Forwarded-For", b"198.51.100.7, garbage, 10.2.2.2")) == ("10.2.2.2", True, False)
    assert client((b"Forwarded", b"for=_hidden")) == (PROXY, True, False)


def test_no_header_is_missing_and_the_proxy_is_exempt():
    assert client((b"Host", b"x")) == (PROXY, True, True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_any_header_bytes_give_an_address(values):
    found = attribute([(b"x-forwarded-for", v) for v in values] + [(b"forwarded", v) for v in values],
                      PROXY, pack(PROXY), trusted)
    assert pack(found.ip) == found.packed
