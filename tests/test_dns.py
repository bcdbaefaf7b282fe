"""The DNS resolver against a real unbound on loopback (spec/services.md §1).

unbound serves ``example.test`` (SOA minimum 2 s, so negative answers live 2 s) and a reverse zone
over UDP, TCP and DNS over TLS with a certificate for ``127.0.0.1`` and ``dns.test``. TTLs are
checked with an injected cache clock; the wire is real.
"""
from __future__ import annotations

import asyncio
import ssl
import time

import pytest

from dns_harness import SOA, UNBOUND, Unbound, silent_udp
from stalwart.services.cache import NEGATIVE
from stalwart.services.cache.registry import CacheRegistry
from stalwart.services.dns.client import DnsClient, DnsError, Nameserver, Transport
from stalwart.services.dns.config import DnsCustomResolver, DnsResolverCustom
from stalwart.services.dns.lookups import MtaStsRecord, MxGroup, Resolver, TxtParseError

pytestmark = pytest.mark.skipif(UNBOUND is None, reason="unbound is not installed (scripts/test-deps)")

BIG = " ".join('"' + chr(97 + i) * 250 + '"' for i in range(8))  # 2000 bytes: > 1232 even with EDNS
MEDIUM = " ".join('"' + "m" * 200 + '"' for _ in range(3))  # 600 bytes: > 512, < 1232
ZONE = [
    SOA,
    "a.example.test. 5 IN A 192.0.2.1",
    "a.example.test. 5 IN A 192.0.2.2",
    "a.example.test. 30 IN AAAA 2001:db8::1",
    "mx.example.test. 60 IN MX 20 MX2.Example.Test.",
    "mx.example.test. 60 IN MX 10 mx1.example.test.",
    "mx.example.test. 60 IN MX 10 mx1b.example.test.",
    "onlya.example.test. 60 IN A 192.0.2.9",
    "alias.example.test. 3 IN CNAME a.example.test.",
    f"big.example.test. 60 IN TXT {BIG}",
    f"medium.example.test. 60 IN TXT {MEDIUM}",
    'spf.example.test. 60 IN TXT "v=spf1 " "ip4:192.0.2.0/24 -all"',
    '_mta-sts.sts.example.test. 60 IN TXT "v=STSv1; id=20240101T000000;"',
    '_mta-sts.badsts.example.test. 60 IN TXT "v=STSv2; id=1"',
    "1.2.0.192.in-addr.arpa. 60 IN PTR A.example.test.",
    "9.2.0.192.in-addr.arpa. 60 IN PTR liar.example.test.",
    "2.0.0.127.rbl.example.test. 40 IN A 127.0.0.2",
    "2.0.0.127.rbl.example.test. 40 IN A 127.0.0.3",
]


@pytest.fixture(scope="module")
def unbound(tmp_path_factory):
    server = Unbound(tmp_path_factory.mktemp("unbound"), ZONE,
                     zones=("example.test.", "2.0.192.in-addr.arpa.")).start()
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def custom(*servers: dict, **common) -> DnsResolverCustom:
    return DnsResolverCustom(servers=[DnsCustomResolver(**s) for s in servers], **common)


def resolver(cfg, clock=None, **kw) -> Resolver:
    return Resolver(DnsClient(cfg, **kw), CacheRegistry(clock=clock))


def run(coro):
    return asyncio.run(coro)


def test_typed_answers(unbound):
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}))

    async def go():
        assert sorted(map(str, await r.ipv4("a.example.test"))) == ["192.0.2.1", "192.0.2.2"]
        assert [str(a) for a in await r.ipv6("a.example.test")] == ["2001:db8::1"]
        # grouped by preference, ascending, lower-cased (services.md §1 dnsMx)
        assert await r.mx("mx.example.test") == (
            MxGroup(10, ("mx1.example.test.", "mx1b.example.test.")), MxGroup(20, ("mx2.example.test.",)))
        assert await r.txt("spf.example.test") == (b"v=spf1 ip4:192.0.2.0/24 -all",)  # strings joined
        assert await r.ptr("192.0.2.1") == ("a.example.test.",)
        assert await r.ips("a.example.test", limit=3) == (*(await r.ipv4("a.example.test")),
                                                          *(await r.ipv6("a.example.test")))
    run(go())


def test_keys_are_case_and_dot_insensitive(unbound):
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}))

    async def go():
        for name in ("a.example.test", "A.EXAMPLE.TEST.", "a.Example.test."):
            await r.ipv4(name)
    run(go())
    assert r.client.queries == 1
    assert r.caches.cache("dnsIpv4").peek("a.example.test.") is not None


def test_positive_ttl_is_the_answer_minimum(unbound):
    clock = Clock()
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}), clock)

    async def go():
        await r.ipv4("a.example.test")
        assert r.cache_state("A", "a.example.test")["ttl"] == 5.0
        clock.now += 4.9
        await r.ipv4("a.example.test")
        assert r.client.queries == 1
        clock.now += 0.2  # 5.1 s: expired, asked again
        await r.ipv4("a.example.test")
        assert r.client.queries == 2
        # through a CNAME the chain's 3 s TTL is the minimum
        assert sorted(map(str, await r.ipv4("alias.example.test"))) == ["192.0.2.1", "192.0.2.2"]
        assert r.cache_state("A", "alias.example.test")["ttl"] == 3.0
    run(go())


def test_nxdomain_and_nodata_are_cached_for_the_soa_minimum(unbound):
    clock = Clock()
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}), clock)

    async def go():
        assert await r.ipv4("missing.example.test") == ()  # NXDOMAIN
        assert await r.ipv6("onlya.example.test") == ()  # NODATA
        assert await r.mx("onlya.example.test") == ()
        assert await r.txt("missing.example.test") is None
        queries = r.client.queries
        for state in (r.cache_state("A", "missing.example.test"), r.cache_state("AAAA", "onlya.example.test")):
            # RFC 2308 §5: min(SOA TTL 3600, SOA MINIMUM 2)
            assert state["negative"] and state["ttl"] == 2.0
        assert r.caches.cache("dnsIpv4").peek("missing.example.test.") is NEGATIVE
        clock.now += 1.9
        await r.ipv4("missing.example.test")
        await r.ipv6("onlya.example.test")
        assert r.client.queries == queries
        clock.now += 0.2
        await r.ipv4("missing.example.test")
        assert r.client.queries == queries + 1
    run(go())


def test_truncated_udp_goes_to_tcp_with_tcp_on_error(unbound):
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port, "protocol": "udp"}))
    records = run(r.txt("big.example.test"))
    assert len(records[0]) == 2000
    assert r.client.queries == 2  # the truncated UDP exchange, then TCP


def test_truncated_udp_fails_without_tcp_on_error(unbound):
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}, tcp_on_error=False, attempts=0))
    with pytest.raises(DnsError, match="Truncated"):
        run(r.txt("big.example.test"))
    assert r.caches.cache("dnsTxt").peek(("big.example.test.", "records")) is None  # errors are not cached


def test_udp_and_tcp_pair_falls_back_on_truncation_regardless(unbound):
    # an address with a TCP transport (UDP+TCP mode) always takes a truncated answer to TCP
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port},
                        {"address": "127.0.0.1", "port": unbound.port, "protocol": "tcp"},
                        tcp_on_error=False))
    assert len(run(r.txt("big.example.test"))[0]) == 2000


def test_enable_edns_sets_the_udp_payload(unbound):
    with_edns = resolver(custom({"address": "127.0.0.1", "port": unbound.port}))
    assert len(run(with_edns.txt("medium.example.test"))[0]) == 600
    assert with_edns.client.queries == 1  # 600 bytes fit in the advertised 1232
    without = resolver(custom({"address": "127.0.0.1", "port": unbound.port}, enable_edns=False))
    assert len(run(without.txt("medium.example.test"))[0]) == 600
    assert without.client.queries == 2  # plain DNS: 512 bytes, truncated, then TCP


def test_timeout_against_a_server_that_never_answers():
    sock, port = silent_udp()
    try:
        r = resolver(custom({"address": "127.0.0.1", "port": port}, timeout=200, attempts=1,
                            tcp_on_error=False))
        start = time.monotonic()
        with pytest.raises(DnsError, match="no nameserver answered"):
            run(r.ipv4("a.example.test"))
        elapsed = time.monotonic() - start
        assert 0.35 < elapsed < 2.0  # two rounds (attempts 1) of 200 ms
        assert r.client.queries == 2
        with pytest.raises(DnsError):  # failures are never cached: asked again
            run(r.ipv4("a.example.test"))
        assert r.client.queries == 4
        hist = r.client.lookup_time.snapshot()  # dns.lookup-time: both failed lookups observed
        assert hist["count"] == 2 and hist["buckets"][0.25] == 0 and hist["buckets"][1.0] == 2
    finally:
        sock.close()


def test_concurrency_asks_nameservers_in_parallel(unbound):
    sock, port = silent_udp("127.0.0.2")
    try:
        silent = {"address": "127.0.0.2", "port": port}  # a socket that swallows the query
        real = {"address": "127.0.0.1", "port": unbound.port}
        parallel = resolver(custom(silent, real, timeout=1000, concurrency=2, tcp_on_error=False))
        start = time.monotonic()
        assert run(parallel.ipv4("onlya.example.test"))
        assert time.monotonic() - start < 0.8
        serial = resolver(custom(silent, real, timeout=400, concurrency=1, tcp_on_error=False))
        start = time.monotonic()
        assert run(serial.ipv4("onlya.example.test"))
        assert time.monotonic() - start >= 0.38  # the first server timed out before the second was asked
    finally:
        sock.close()


def test_dns_over_tls_verifies_the_ip_san_by_default(unbound):
    ctx = ssl.create_default_context(cafile=str(unbound.cert))
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.tls_port, "protocol": "tls"}),
                 tls_context=ctx)
    assert r.client.nameservers[0].transports == (Transport("tls", unbound.tls_port, "127.0.0.1"),)
    assert sorted(map(str, run(r.ipv4("a.example.test")))) == ["192.0.2.1", "192.0.2.2"]


def test_dns_over_tls_with_a_server_name(unbound):
    ctx = ssl.create_default_context(cafile=str(unbound.cert))
    good = resolver(custom({"address": "127.0.0.1", "port": unbound.tls_port, "protocol": "tls",
                            "tls_server_name": "dns.test"}), tls_context=ctx)
    assert run(good.ipv4("onlya.example.test"))
    bad = resolver(custom({"address": "127.0.0.1", "port": unbound.tls_port, "protocol": "tls",
                           "tls_server_name": "other.test"}, attempts=0), tls_context=ctx)
    with pytest.raises(DnsError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        run(bad.ipv4("onlya.example.test"))
    untrusted = resolver(custom({"address": "127.0.0.1", "port": unbound.tls_port, "protocol": "tls"},
                                attempts=0))  # system trust store: the test certificate is unknown
    with pytest.raises(DnsError):
        run(untrusted.ipv4("onlya.example.test"))


def test_dnsbl_listed_and_not_listed(unbound):
    clock = Clock()
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}), clock)

    async def go():
        assert str(await r.rbl("127.0.0.2", "rbl.example.test")) in ("127.0.0.2", "127.0.0.3")
        assert await r.rbl("127.0.0.1", "rbl.example.test") is None  # NXDOMAIN: not listed
        queries = r.client.queries
        assert await r.rbl("127.0.0.1", "RBL.example.test.") is None
        assert r.client.queries == queries  # cached for the SOA negative TTL ...
        clock.now += 2.1
        await r.rbl("127.0.0.1", "rbl.example.test")
        assert r.client.queries == queries + 1  # ... not for the reference's fixed 86400 s
    run(go())


def test_txt_kinds_are_cached_apart(unbound):
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}))

    async def go():
        assert await r.mta_sts("sts.example.test") == MtaStsRecord("20240101T000000")
        bad = await r.mta_sts("badsts.example.test")
        assert isinstance(bad, TxtParseError) and "STSv1" in bad.reason
        assert await r.mta_sts("nosts.example.test") is None
        # the raw records of the same name are another key: the parse failure is not served
        assert await r.txt("_mta-sts.badsts.example.test") == (b"v=STSv2; id=1",)
        queries = r.client.queries
        assert isinstance(await r.mta_sts("badsts.example.test"), TxtParseError)  # cached as an error value
        assert r.client.queries == queries
    run(go())


def test_forward_confirmed_ptr(unbound):
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}))
    assert run(r.verified_ptr("192.0.2.1")) == "a.example.test."
    assert run(r.verified_ptr("192.0.2.9")) is None  # liar.example.test has no A record
    assert run(r.verified_ptr("192.0.2.77")) is None  # no PTR at all


def test_lookup_by_type_name_and_cache_state(unbound):
    r = resolver(custom({"address": "127.0.0.1", "port": unbound.port}))
    with pytest.raises(ValueError):
        run(r.lookup("SRV", "a.example.test"))
    assert run(r.lookup("mx", "mx.example.test"))[0].preference == 10
    state = r.cache_state("MX", "mx.example.test")
    assert state["cache"] == "dnsMx" and state["cached"] and not state["negative"]
    assert r.cache_state("PTR", "192.0.2.1") == {"cache": "dnsPtr", "cached": False}
    stats = r.stats()
    assert set(stats["caches"]) == {"dnsMx", "dnsPtr"}
    assert stats["caches"]["dnsMx"]["inserts"] == 1 and stats["caches"]["dnsMx"]["misses"] == 1
    assert stats["queries"] == 1 and stats["lookupTime"]["count"] == 1


def test_nameservers_grouped_by_address():
    cfg = custom({"address": "127.0.0.1", "port": 5300, "protocol": "tcp"},
                 {"address": "127.0.0.1", "port": 5300},
                 {"address": "::1", "protocol": "tls"})
    client = DnsClient(cfg)
    assert client.nameservers == [
        Nameserver("127.0.0.1", (Transport("udp", 5300), Transport("tcp", 5300))),
        Nameserver("::1", (Transport("tls", 853, "::1"),)),  # tls defaults to 853 (We do better)
    ]
