"""The ``Dns`` variant (spec/services.md §3 "Dns: TXT lookup", "We do better: DNS variant") against a
real DNS server on loopback serving a Team Cymru style TXT zone over UDP."""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import msgspec
import pytest

from stalwart.config import parse_bytes
from stalwart.services.geo.dns import DnsAsn, DnsLookupError, DnspythonTxt, parse_records, query_name
from stalwart.services.geo.info import GeoInfo
from stalwart.services.geo.service import GeoService

ZONE4 = "origin.asn.example"
ZONE6 = "origin6.asn.example"


class TxtZone:
    """A UDP DNS server on 127.0.0.1: ``records`` maps a name to (ttl, [TXT strings per record]);
    other names under the zones answer NXDOMAIN with an SOA (negative TTL 30)."""

    def __init__(self):
        self.records: dict[str, tuple[int, list[list[bytes]]]] = {}
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while self.running:
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - a test server ignores garbage
                continue
            q = query.question[0]
            name = q.name.to_text()
            self.queries.append(name)
            resp = dns.message.make_response(query)
            resp.flags |= dns.flags.AA
            if name in self.records and q.rdtype == dns.rdatatype.TXT:
                ttl, recs = self.records[name]
                texts = [" ".join('"' + s.decode() + '"' for s in strings) for strings in recs]
                resp.answer.append(dns.rrset.from_text(name, ttl, "IN", "TXT", *texts))
            else:
                resp.set_rcode(dns.rcode.NXDOMAIN)
                zone = ZONE6 if ZONE6 in name else ZONE4
                resp.authority.append(dns.rrset.from_text(
                    zone + ".", 3600, "IN", "SOA", f"ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 30"))
            self.sock.sendto(resp.to_wire(), addr)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def zone():
    with TxtZone() as z:
        z.records["8.8.8.8.origin.asn.example."] = (300, [[b"15169 | 8.8.8.0/24 | us | arin | 2023-12-28"]])
        z.records["1.0.0.1.origin.asn.example."] = (300, [[b"not-a-number | 1.0.0.0/24 | AU"],
                                                          [b"13335 | 1.0.0.0/24 | ", b"AU | apnic"]])
        z.records["4.4.8.8.origin.asn.example."] = (300, [[b"15169 3356 | 8.8.4.0/24 | USA"]])
        six = ".".join(reversed(ipaddress.ip_address("2001:4860::8888").packed.hex()))
        z.records[f"{six}.{ZONE6}."] = (60, [[b"15169 | 2001:4860::/32 | US | arin"]])
        yield z


def dns_cfg(**extra):
    doc = {"Asn": {"@type": "Dns", "zoneIpV4": ZONE4, "zoneIpV6": ZONE6 + ".", "indexAsn": 0, "indexCountry": 2,
                   **extra}}
    return parse_bytes(msgspec.json.encode(doc)).Asn


def p(text):
    return ipaddress.ip_address(text).packed


def test_query_names():
    cfg = dns_cfg()
    assert query_name(ipaddress.ip_address("192.0.2.1"), cfg) == "1.2.0.192.origin.asn.example."
    name = query_name(ipaddress.ip_address("2001:db8::1"), cfg)
    assert name == "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.origin6.asn.example."


def test_parse_records_rules():
    cfg = dns_cfg(indexAsnName=1)
    assert parse_records((b"15169 | 8.8.8.0/24 | us",), cfg) == GeoInfo(15169, "8.8.8.0/24", "US")
    assert parse_records((b"x | y | US", b"64500|n|DE"), cfg) == GeoInfo(64500, "n", "DE")
    assert parse_records((b"15169 3356 | p | USA",), cfg) == GeoInfo(15169, "p", None)  # first number; 3 letters refused
    assert parse_records((b"| p | US",), cfg) is None  # no AS number: no result
    assert parse_records((), cfg) is None
    multi = dns_cfg(separator=" :: ", indexCountry=1)
    assert parse_records((b"64500 :: fr :: x",), multi) == GeoInfo(64500, None, "FR")
    assert parse_records((b"64500",), dns_cfg(indexCountry=7)) == GeoInfo(64500, None, None)


def test_lookups_through_a_real_dns_server(zone):
    txt = DnspythonTxt([("127.0.0.1", zone.port)], timeout=5.0)
    geo = GeoService(dns_cfg(), "/nonexistent", txt)

    async def run():
        return [await geo.resolve(p(a)) for a in
                ("8.8.8.8", "1.0.0.1", "8.8.4.4", "2001:4860::8888", "9.9.9.9", "::ffff:8.8.8.8")]

    got = asyncio.run(run())
    assert got == [GeoInfo(15169, None, "US"), GeoInfo(13335, None, "AU"), GeoInfo(15169, None, None),
                   GeoInfo(15169, None, "US"), None, GeoInfo(15169, None, "US")]
    # ::ffff:8.8.8.8 was answered from the cache of 8.8.8.8; 9.9.9.9 was NXDOMAIN.
    assert zone.queries.count("8.8.8.8.origin.asn.example.") == 1
    # lookup() answers from the cache only, NXDOMAIN included (cached for the SOA's negative TTL).
    assert geo.lookup(p("8.8.8.8")) == GeoInfo(15169, None, "US")
    assert geo.lookup(p("9.9.9.9")) is None
    asyncio.run(geo.resolve(p("9.9.9.9")))
    assert zone.queries.count("9.9.9.9.origin.asn.example.") == 1
    assert geo.lookup(p("8.8.9.9")) is None  # never asked: a cache miss, no query
    assert "9.9.8.8.origin.asn.example." not in zone.queries


def test_cache_expires_with_the_ttl(zone):
    now = [1000.0]
    resolver = DnsAsn(dns_cfg(), DnspythonTxt([("127.0.0.1", zone.port)], timeout=5.0), clock=lambda: now[0])
    ip = ipaddress.ip_address("8.8.8.8")
    assert resolver.lookup_sync(ip, ip.packed).asn == 15169
    now[0] += 299
    assert resolver.lookup_sync(ip, ip.packed).asn == 15169
    assert zone.queries.count("8.8.8.8.origin.asn.example.") == 1
    now[0] += 2
    assert resolver.lookup_sync(ip, ip.packed).asn == 15169
    assert zone.queries.count("8.8.8.8.origin.asn.example.") == 2


def test_reserved_addresses_are_never_queried(zone):
    geo = GeoService(dns_cfg(), "/nonexistent", DnspythonTxt([("127.0.0.1", zone.port)], timeout=5.0))

    async def run():
        return [await geo.resolve(p(a)) for a in
                ("10.1.2.3", "192.168.1.1", "127.0.0.1", "169.254.1.1", "::1", "fe80::1", "fc00::1", "224.0.0.1")]

    assert asyncio.run(run()) == [None] * 8
    assert zone.queries == []


def test_unreachable_server_answers_none_and_caches_nothing():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never answers
        geo = GeoService(dns_cfg(), "/nonexistent", DnspythonTxt([("127.0.0.1", s.getsockname()[1])], timeout=0.3))
        assert asyncio.run(geo.resolve(p("8.8.8.8"))) is None
        assert geo.dns.cache == {}


def whole_config(zone, timeout=3000, **asn):
    return parse_bytes(msgspec.json.encode({
        "DnsResolver": {"@type": "Custom", "servers": [{"protocol": "udp", "address": "127.0.0.1", "port": zone.port}],
                        "timeout": timeout, "attempts": 0},
        "Asn": {"@type": "Dns", "zoneIpV4": ZONE4, "zoneIpV6": ZONE6, "indexCountry": 2, **asn}}))


def test_through_the_project_resolver_and_its_txt_cache(zone):
    geo = GeoService.for_config(whole_config(zone), "/nonexistent")

    async def run():
        return [await geo.resolve(p(a)) for a in ("8.8.8.8", "8.8.8.8", "9.9.9.9", "9.9.9.9", "2001:4860::8888")]

    assert asyncio.run(run()) == [GeoInfo(15169, None, "US")] * 2 + [None, None, GeoInfo(15169, None, "US")]
    # Positive and NXDOMAIN answers both came from the dnsTxt cache the second time.
    assert zone.queries.count("8.8.8.8.origin.asn.example.") == 1
    assert zone.queries.count("9.9.9.9.origin.asn.example.") == 1
    assert geo.dns.cache == {}  # no second copy in the geo layer
    # The blocking path (control socket) makes its own resolver for each query.
    assert geo.resolve_sync(p("1.0.0.1")) == GeoInfo(13335, None, "AU")


def test_project_resolver_failure_answers_none():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never answers

        class Silent:
            port = s.getsockname()[1]

        geo = GeoService.for_config(whole_config(Silent, timeout=300), "/nonexistent", sync_timeout=0.5)
        assert asyncio.run(geo.resolve(p("8.8.8.8"))) is None
        with pytest.raises(DnsLookupError):
            geo.resolve_sync(p("8.8.8.8"))
