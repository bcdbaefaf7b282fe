"""Property tests: the DNS and MTA-STS parsers only ever return a value or raise their own error,
and garbage on the wire only ever ends a lookup with DnsError."""
from __future__ import annotations

import asyncio

import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stalwart.services.cache.registry import CacheRegistry
from stalwart.services.dns.client import DnsClient, DnsError
from stalwart.services.dns.config import DnsCustomResolver, DnsResolverCustom
from stalwart.services.dns.lookups import MtaStsRecord, Resolver, normalise, parse_mta_sts_record
from stalwart.services.dns.mtasts import MtaStsError, MtaStsPolicy, _http_body, parse_policy

policy_lines = st.lists(st.one_of(
    st.sampled_from(["version: STSv1", "mode: enforce", "mode: testing", "mode: none", "max_age: 86400",
                     "max_age: 99999999999", "mx: mail.example.org", "mx: *.example.org", "version:STSv1"]),
    st.text(max_size=40)), max_size=8)


@given(st.one_of(st.binary(max_size=300), policy_lines.map(lambda ls: "\r\n".join(ls).encode("utf-8", "replace"))))
def test_policy_parser_returns_a_policy_or_its_error(body):
    try:
        policy = parse_policy(body, "id")
    except MtaStsError:
        return
    assert isinstance(policy, MtaStsPolicy) and policy.mode in ("enforce", "testing", "none")
    assert 0 <= policy.max_age <= 31557600 and (policy.mx or policy.mode == "none")


@given(st.one_of(st.binary(max_size=120),
                 st.tuples(st.sampled_from(["v=STSv1", "v=STSv1 ", "v=STSv2", ""]), st.text(max_size=40)).map(
                     lambda t: f"{t[0]}; {t[1]}".encode("utf-8", "replace"))))
def test_sts_record_parser_returns_a_record_or_value_error(record):
    try:
        parsed = parse_mta_sts_record(record)
    except ValueError:
        return
    assert isinstance(parsed, MtaStsRecord) and 1 <= len(parsed.id) <= 32 and parsed.id.isalnum()


@given(st.binary(max_size=400))
def test_http_reply_parser_returns_a_body_or_its_error(data):
    try:
        body = _http_body(data, "mta-sts.example.org")
    except MtaStsError:
        return
    assert isinstance(body, bytes) and len(body) <= 65536


@given(st.text(max_size=300))
def test_names_normalise_or_raise_value_error(name):
    try:
        key = normalise(name)
    except ValueError:
        return
    assert key.endswith(".") and key == key.lower()


class GarbageServer(asyncio.DatagramProtocol):
    """Answers every query with the next payload: random bytes, or a real reply gone wrong."""

    def __init__(self, payloads):
        self.payloads = list(payloads)
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        query = dns.message.from_wire(data)
        for payload in self.payloads:
            self.transport.sendto(payload(query) if callable(payload) else payload, addr)


def wrong_id(query):
    reply = dns.message.make_response(query)
    reply.id = (query.id + 1) % 65536
    return reply.to_wire()


def truncated_wire(query):
    return dns.message.make_response(query).to_wire()[:7]


def servfail(query):
    reply = dns.message.make_response(query)
    reply.set_rcode(2)
    return reply.to_wire()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from([wrong_id, truncated_wire, servfail])),
                min_size=1, max_size=3))
def test_garbage_replies_end_in_dns_error(payloads):
    async def go():
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(lambda: GarbageServer(payloads),
                                                                local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            cfg = DnsResolverCustom(servers=[DnsCustomResolver(address="127.0.0.1", port=port)],
                                    timeout=100, attempts=0, tcp_on_error=False)
            r = Resolver(DnsClient(cfg), CacheRegistry())
            with pytest.raises(DnsError):
                await r.ipv4("host.example.test")
            assert len(r.caches.cache("dnsIpv4")) == 0
        finally:
            transport.close()
    asyncio.run(go())
