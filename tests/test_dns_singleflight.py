"""Single flight, DANE's AD rule, CNAME chains and the resolver variants (spec/services.md §1).

Uses an in-process UDP server (``dns_harness.CountingServer``) that counts the queries it gets,
can hold its answers back and can set the AD flag like a validating upstream.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from dns_harness import SOA, UNBOUND, CountingServer, Unbound
from stalwart.config import parse_bytes
from stalwart.errors import ConfigError
from stalwart.services.cache.registry import CacheRegistry
from stalwart.services.dns.client import DnsClient, Nameserver, Transport, nameservers_for
from stalwart.services.dns.config import (DnsCustomResolver, DnsResolverCloudflare, DnsResolverCustom,
                                          DnsResolverGoogle, DnsResolverQuad9, DnsResolverSystem)
from stalwart.services.dns.lookups import Resolver, TlsaEntry

SHA256 = "a" * 64


ROOT_KEY = ("257 3 8 AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3+/4RgWOq7HrxRixHlFlExOLAJr5emLvN7SWXgn"
            "Lh4+B5xQlNVz8Og8kvArMtNROxVQuCaSnIDdD5LKyWbRd2n9WGe2R8PzgCmr3EgVLrjyBxWezF0jLHwVN8efS3rCj/EWgvIWgb9t"
            "arpVUDK/b58Da+sqqls3eNbuv7pr+eoZG+SrDK6nWeL3c6H5Apxz7LjVc1uTIdsIXxuOLYA4/ilBmSVIzuDWfdRUfhHdY6+cn8HF"
            "Rm+2hM8AnXGXws9555KrUB5qihylGa8subX2Nn6UwNR1AkUTV74bU=")


def make(server: CountingServer, *protocols: str, **common) -> Resolver:
    cfg = DnsResolverCustom(servers=[DnsCustomResolver(address="127.0.0.1", port=server.port, protocol=p)
                                     for p in protocols or ("udp",)], **common)
    return Resolver(DnsClient(cfg), CacheRegistry())


def test_concurrent_lookups_of_one_name_send_one_query():
    async def go():
        server = await CountingServer({("a.test.", "A"): ["192.0.2.1"], ("b.test.", "A"): ["192.0.2.2"]},
                                      delay=0.05).start()
        try:
            r = make(server)
            results = await asyncio.gather(*(r.ipv4("a.test") for _ in range(50)),
                                           *(r.ipv4("B.test.") for _ in range(20)))
            assert {str(x[0]) for x in results} == {"192.0.2.1", "192.0.2.2"}
            assert server.queries == {("a.test.", "A"): 1, ("b.test.", "A"): 1}
            assert r.caches.stats()["dnsIpv4"]["coalesced"] == 68
            # negative answers coalesce too, and the waiters all see "nothing"
            empties = await asyncio.gather(*(r.ipv4("missing.test") for _ in range(10)))
            assert empties == [()] * 10
            assert server.queries[("missing.test.", "A")] == 1
        finally:
            server.close()
    asyncio.run(go())


def test_a_cancelled_waiter_does_not_cancel_the_shared_query():
    async def go():
        server = await CountingServer({("a.test.", "A"): ["192.0.2.1"]}, delay=0.1).start()
        try:
            r = make(server)
            first = asyncio.ensure_future(r.ipv4("a.test"))
            second = asyncio.ensure_future(r.ipv4("a.test"))
            await asyncio.sleep(0.02)
            first.cancel()
            assert [str(a) for a in await second] == ["192.0.2.1"]
            assert server.queries == {("a.test.", "A"): 1}
        finally:
            server.close()
    asyncio.run(go())


def test_tlsa_is_cached_only_when_the_upstream_vouches():
    zone = {("_25._tcp.mx.test.", "TLSA"): [f"3 1 1 {SHA256}", f"0 0 1 {SHA256}", f"2 0 2 {'b' * 128}",
                                            f"3 1 7 {SHA256}"],
            (".", "DNSKEY"): [ROOT_KEY]}

    async def go():
        plain = await CountingServer(zone).start()
        validating = await CountingServer(zone, ad=True).start()
        try:
            r = make(plain)
            result = await r.tlsa("_25._tcp.mx.test")
            # usage PKIX-TA(0) and matching type 7 are dropped (RFC 7672 §3.1.3)
            assert sorted((e.usage, e.selector, e.matching) for e in result.entries) == [(2, 0, 2), (3, 1, 1)]
            assert not result.secure
            await r.tlsa("_25._tcp.mx.test")
            assert plain.queries[("_25._tcp.mx.test.", "TLSA")] == 2  # insecure: never cached
            # AD over a UDP-only resolver proves nothing: insecure, not cached
            r = make(validating)
            assert not (await r.tlsa("_25._tcp.mx.test")).secure
            # with a TCP leg, the root DNSKEY probe passes and the AD bit counts
            r = make(validating, "udp", "tcp")
            result = await r.tlsa("_25._tcp.mx.test")
            assert result.secure and TlsaEntry(3, 1, 1, bytes.fromhex(SHA256)) in result.entries
            queries = validating.queries[("_25._tcp.mx.test.", "TLSA")]
            await r.tlsa("_25._tcp.mx.test")
            assert validating.queries[("_25._tcp.mx.test.", "TLSA")] == queries
        finally:
            plain.close()
            validating.close()
    asyncio.run(go())


def test_cname_chain_is_preserved_or_dropped():
    async def go():
        server = await CountingServer({("www.test.", "CNAME"): ["host.test."],
                                       ("host.test.", "A"): ["192.0.2.5"]}).start()
        try:
            for preserve, expected in ((True, (("www.test.", "host.test."),)), (False, ())):
                cfg = DnsResolverCustom(servers=[DnsCustomResolver(address="127.0.0.1", port=server.port)],
                                        preserve_intermediates=preserve)
                answer = await DnsClient(cfg).query("www.test.", "A")
                assert [r.address for r in answer.records] == ["192.0.2.5"]
                assert answer.cnames == expected and answer.name == "www.test."
        finally:
            server.close()
    asyncio.run(go())


def test_public_variants_and_their_transports():
    servers, _ = nameservers_for(DnsResolverCloudflare())
    assert [n.address for n in servers] == ["1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001"]
    assert all(n.transports == (Transport("tls", 853, "cloudflare-dns.com"),) for n in servers)
    servers, _ = nameservers_for(DnsResolverQuad9())
    assert servers[0] == Nameserver("9.9.9.9", (Transport("tls", 853, "dns.quad9.net"),))
    servers, _ = nameservers_for(DnsResolverQuad9(use_tls=False))
    assert servers[0] == Nameserver("9.9.9.9", (Transport("udp", 53), Transport("tcp", 53)))
    servers, _ = nameservers_for(DnsResolverGoogle())
    assert [n.address for n in servers][:2] == ["8.8.8.8", "8.8.4.4"]
    assert servers[0].transports == (Transport("udp", 53), Transport("tcp", 53))


def test_system_variant_reads_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver ::1\nsearch example.org\noptions rotate timeout:1\n")
    servers, rotate = nameservers_for(DnsResolverSystem(), str(conf))
    assert [n.address for n in servers] == ["127.0.0.53", "::1"] and rotate
    # common fields overwrite the file's options
    client = DnsClient(DnsResolverSystem(timeout=1500, attempts=4), resolv_conf=str(conf))
    assert client.timeout == 1.5 and client.rounds == 5


def test_system_variant_falls_back_to_cloudflare_keeping_common_fields(tmp_path):
    client = DnsClient(DnsResolverSystem(timeout=700, tcp_on_error=False),
                       resolv_conf=str(tmp_path / "missing.conf"))
    assert [n.address for n in client.nameservers][:2] == ["1.1.1.1", "1.0.0.1"]
    assert client.nameservers[0].transports == (Transport("udp", 53), Transport("tcp", 53))
    assert client.timeout == 0.7 and client.cfg.tcp_on_error is False


@pytest.mark.parametrize("doc, path, message", [
    ({"@type": "Custom", "servers": []}, "$.DnsResolver.servers", "length >= 1"),
    ({"@type": "Custom"}, "$.DnsResolver", "servers"),
    ({"@type": "Custom", "servers": [{"address": "dns.example"}]}, "$.DnsResolver.servers[0]", "not an IP address"),
    ({"@type": "Custom", "servers": [{"protocol": "quic"}]}, "$.DnsResolver.servers[0].protocol", ""),
    ({"@type": "Custom", "servers": [{"port": 0}]}, "$.DnsResolver.servers[0].port", ">= 1"),
    ({"@type": "Custom", "servers": [{"tlsServerName": "x"}]}, "$.DnsResolver.servers[0]", "only to protocol"),
    ({"@type": "Google", "timeout": 0}, "$.DnsResolver.timeout", ""),
    ({"@type": "Google", "useTls": True}, "$.DnsResolver", "useTls"),
    ({"@type": "Bind"}, "$.DnsResolver.@type", "Bind"),
])
def test_config_errors_name_the_field(doc, path, message):
    with pytest.raises(ConfigError) as info:
        parse_bytes(json.dumps({"DnsResolver": doc}).encode())
    assert info.value.path == path and message in info.value.message


def test_config_defaults_and_custom_ports():
    cfg = parse_bytes(b"{}")
    assert isinstance(cfg.DnsResolver, DnsResolverSystem)
    r = cfg.DnsResolver
    assert (r.preserve_intermediates, r.concurrency, r.timeout, r.attempts, r.tcp_on_error, r.enable_edns) == \
        (True, 2, 5000, 2, True, True)
    cfg = parse_bytes(json.dumps({"DnsResolver": {"@type": "Custom", "servers": [
        {"protocol": "tls", "address": "::1"}, {"protocol": "tcp"}, {}]}}).encode())
    assert [(s.protocol, s.address, s.port) for s in cfg.DnsResolver.servers] == [
        ("tls", "::1", 853), ("tcp", "127.0.0.1", 53), ("udp", "127.0.0.1", 53)]
    assert parse_bytes(b'{"DnsResolver": {"@type": "Cloudflare"}}').DnsResolver.use_tls is True


@pytest.mark.skipif(UNBOUND is None, reason="unbound is not installed (scripts/test-deps)")
def test_cli_dns_lookup(tmp_path):
    server = Unbound(tmp_path, [SOA, "a.example.test. 300 IN A 192.0.2.1",
                                'txt.example.test. 300 IN TXT "v=spf1" " -all"']).start()
    try:
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps({"DnsResolver": {"@type": "Custom", "servers": [
            {"address": "127.0.0.1", "port": server.port}]}, "Cache": {"dnsIpv4": "64kb"}}))

        def cli(*args):
            return subprocess.run([sys.executable, "-c", "from stalwart.cli import cli_main; raise SystemExit(cli_main())",
                                   "dns", "lookup", *args, "--config", str(cfg)],
                                  capture_output=True, text=True, timeout=60)

        out = cli("a", "a.example.test")
        assert out.returncode == 0, out.stderr
        assert "192.0.2.1" in out.stdout and "cache dnsIpv4: positive, ttl 300.0 s" in out.stdout
        out = cli("TXT", "txt.example.test", "--json")
        reply = json.loads(out.stdout)
        assert reply["result"] == ["v=spf1 -all"] and reply["servedFromCache"] and reply["queries"] == 1
        out = cli("A", "nothing.example.test")
        assert "(no records)" in out.stdout and "negative, ttl 2.0 s" in out.stdout
        assert cli("SRV", "a.example.test").returncode == 2
    finally:
        server.stop()


def test_bad_names_are_refused_and_not_cached():
    async def go():
        server = await CountingServer({}).start()
        try:
            r = make(server)
            for bad in ("a..example.test", "x" * 64 + ".test", ".".join(["abcdefgh"] * 40)):
                with pytest.raises(ValueError):
                    await r.ipv4(bad)
            assert server.queries == {} and len(r.caches.cache("dnsIpv4")) == 0
        finally:
            server.close()
    asyncio.run(go())


def test_dnssec_available_needs_a_stream_transport_and_ad_on_the_root_dnskey():
    root = {(".", "DNSKEY"): [ROOT_KEY]}

    async def go():
        validating = await CountingServer(root, ad=True).start()
        plain = await CountingServer(root).start()
        try:
            def client(server, *protocols):
                return DnsClient(DnsResolverCustom(servers=[
                    DnsCustomResolver(address="127.0.0.1", port=server.port, protocol=p) for p in protocols],
                    timeout=300, attempts=0))

            assert not await client(validating, "udp").dnssec_available()  # UDP only: never trusted
            assert validating.queries == {}
            # UDP + TCP: the probe goes over UDP first and gets AD (the TCP leg is the fallback)
            assert await client(validating, "udp", "tcp").dnssec_available()
            c = client(plain, "udp", "tcp")
            assert not await c.dnssec_available(now=0.0)
            assert not await c.dnssec_available(now=599.0)  # not probed again before 10 minutes
            assert plain.queries[(".", "DNSKEY")] == 1
            plain.ad = True
            assert await c.dnssec_available(now=601.0)
            assert plain.queries[(".", "DNSKEY")] == 2
        finally:
            validating.close()
            plain.close()
    asyncio.run(go())
