"""MTA-STS policies through the dnsTxt and dnsMtaSts caches (RFC 8461, spec/services.md §1)."""
from __future__ import annotations

import asyncio
import ssl

import pytest

from dns_harness import CountingServer, make_ip_cert
from stalwart.services.cache.registry import CacheRegistry
from stalwart.services.dns.client import DnsClient
from stalwart.services.dns.config import DnsCustomResolver, DnsResolverCustom
from stalwart.services.dns.lookups import Resolver
from stalwart.services.dns.mtasts import (MtaStsError, MtaStsPolicies, MtaStsPolicy, parse_policy,
                                          policy_ttl)

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mail.d.test\r\nmx: *.backup.d.test\r\nmax_age: 604800\r\n"


def test_parse_policy():
    p = parse_policy(POLICY, "id1")
    assert p == MtaStsPolicy("id1", "enforce", 604800, ("mail.d.test", "*.backup.d.test"))
    assert p.matches("MAIL.d.test.") and p.matches("mx1.backup.d.test")
    assert not p.matches("backup.d.test") and not p.matches("a.b.backup.d.test") and not p.matches("x.d.test")
    lf = parse_policy(b"version: STSv1\nmode: none\nmax_age: 86400\nextension: ignored\n", "id2")
    assert lf.mode == "none" and lf.mx == ()
    # the first occurrence of a field counts (RFC 8461 §3.2)
    assert parse_policy(POLICY + b"mode: testing\r\n", "x").mode == "enforce"


@pytest.mark.parametrize("body, message", [
    (b"version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n", "STSv1"),
    (b"version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
    (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
    (b"version: STSv1\nmode: enforce\nmx: a\nmax_age: 31557601\n", "max_age"),
    (b"version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n", "max_age"),
    (b"version: STSv1\nmode enforce\n", "colon"),
    (b"\xff\xfe", "UTF-8"),
])
def test_bad_policies(body, message):
    with pytest.raises(MtaStsError, match=message):
        parse_policy(body, "id")


def test_cache_lifetime_rule():
    assert policy_ttl(MtaStsPolicy("i", "enforce", 3600, ("a",))) == 3600
    assert policy_ttl(MtaStsPolicy("i", "enforce", 3599, ("a",))) == 86400
    assert policy_ttl(MtaStsPolicy("i", "enforce", 31557600, ("a",))) == 86400
    assert policy_ttl(MtaStsPolicy("i", "enforce", 604800, ("a",))) == 604800


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_policy_fetched_once_per_id_and_kept_when_dns_or_fetch_fails():
    clock = Clock()
    fetches: list[str] = []
    failing = [False]

    async def fetch(domain: str) -> bytes:
        fetches.append(domain)
        await asyncio.sleep(0.02)
        if failing[0]:
            raise OSError("connection refused")
        return POLICY

    async def go():
        server = await CountingServer({("_mta-sts.d.test.", "TXT"): ['"v=STSv1; id=one"']}, ttl=60).start()
        try:
            cfg = DnsResolverCustom(servers=[DnsCustomResolver(address="127.0.0.1", port=server.port)],
                                    timeout=300, attempts=0)
            policies = MtaStsPolicies(Resolver(DnsClient(cfg), CacheRegistry(clock=clock)), fetch=fetch)
            results = await asyncio.gather(*(policies.policy("D.test") for _ in range(10)))
            assert all(r is results[0] for r in results) and results[0].id == "one"
            assert fetches == ["d.test"]  # ten callers, one fetch
            clock.now += 120  # the TXT record expired, the id is the same: no fetch
            assert (await policies.policy("d.test")).id == "one"
            assert fetches == ["d.test"] and server.queries[("_mta-sts.d.test.", "TXT")] == 2
            # the id changes: fetched again
            server.zone[("_mta-sts.d.test.", "TXT")] = ['"v=STSv1; id=two"']
            clock.now += 120
            assert (await policies.policy("d.test")).id == "two"
            assert len(fetches) == 2
            # a new id whose fetch fails keeps the still-valid policy
            server.zone[("_mta-sts.d.test.", "TXT")] = ['"v=STSv1; id=three"']
            clock.now += 120
            failing[0] = True
            assert (await policies.policy("d.test")).id == "two"
            # the record disappears (NXDOMAIN): the cached policy still applies (RFC 8461 §5.1)
            del server.zone[("_mta-sts.d.test.", "TXT")]
            clock.now += 120
            assert (await policies.policy("d.test")).id == "two"
            # the DNS server goes away: same
            server.close()
            clock.now += 120
            assert (await policies.policy("d.test")).id == "two"
            # and once the policy's own max_age has passed, nothing is left
            clock.now += 604800
            assert await policies.policy("d.test") is None
            assert await policies.policy("nopolicy.test") is None
        finally:
            server.close()
    asyncio.run(go())


@pytest.mark.parametrize("status, ctype, body, ok", [
    (b"200 OK", b"text/plain; charset=utf-8", POLICY, True),
    (b"301 Moved Permanently", b"text/plain", POLICY, False),  # redirects are not followed
    (b"200 OK", b"text/html", POLICY, False),
    (b"200 OK", b"text/plain", b"x" * 70000, False),
])
def test_https_fetch(tmp_path, status, ctype, body, ok):
    cert, key = make_ip_cert(tmp_path, names=("mta-sts.d.test",), ips=())
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    requests: list[bytes] = []

    async def handle(reader, writer):
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    async def go():
        https = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        dns_server = await CountingServer({("_mta-sts.d.test.", "TXT"): ['"v=STSv1; id=abc"'],
                                           ("mta-sts.d.test.", "A"): ["127.0.0.1"]}).start()
        try:
            cfg = DnsResolverCustom(servers=[DnsCustomResolver(address="127.0.0.1", port=dns_server.port)])
            policies = MtaStsPolicies(Resolver(DnsClient(cfg)), port=https.sockets[0].getsockname()[1],
                                      tls_context=ssl.create_default_context(cafile=str(cert)))
            policy = await policies.policy("d.test")
            assert requests and requests[0].startswith(b"GET /.well-known/mta-sts.txt HTTP/1.0\r\n")
            assert b"Host: mta-sts.d.test\r\n" in requests[0]
            if ok:
                assert policy == MtaStsPolicy("abc", "enforce", 604800, ("mail.d.test", "*.backup.d.test"))
            else:
                assert policy is None
                with pytest.raises(MtaStsError):
                    await policies.fetch_https("d.test")
        finally:
            https.close()
            dns_server.close()
    asyncio.run(go())
