"""Propagation checks against a zone's authoritative nameservers (services.md §2 "We do better").

The system resolver finds the zone's NS names and their addresses once per check; each nameserver
is then asked directly (recursion off, no cache), and a TXT record is visible when one record's
joined strings **equal** the expected value. :func:`wait_for_txt` polls every
``pollingInterval`` until ``propagationTimeout`` (after ``propagationDelay``).
"""
from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from ... import events
from .records import DnsProviderError, DnsUpdater, fqdn

QUERY_TIMEOUT = 5.0  # s per nameserver


async def _nameserver_addresses(zone: str, resolver_ip: str | None, port: int) -> list[str]:
    resolver = dns.asyncresolver.Resolver(configure=resolver_ip is None)
    if resolver_ip is not None:
        resolver.nameservers = [resolver_ip]
        resolver.port = port
    resolver.lifetime = QUERY_TIMEOUT
    answer = await resolver.resolve(fqdn(zone) + ".", "NS")
    addresses: list[str] = []
    for ns in answer:
        for rtype in ("A", "AAAA"):
            try:
                addresses.extend(r.to_text() for r in await resolver.resolve(ns.target, rtype))
            except dns.exception.DNSException:
                continue
    return addresses


async def query_authoritative_txt(zone: str, name: str, *, resolver_ip: str | None = None,
                                  port: int = 53) -> list[str] | None:
    """TXT values at ``name`` from the first authoritative server that answers (None: none did).
    ``resolver_ip`` replaces the system resolver for the NS lookup; ``port`` is the DNS port of
    both (tests run everything on one loopback port)."""
    try:
        servers = await _nameserver_addresses(zone, resolver_ip, port)
    except dns.exception.DNSException:
        return None
    owner = dns.name.from_text(fqdn(name) + ".")
    for server in servers:
        q = dns.message.make_query(owner, "TXT")
        q.flags &= ~dns.flags.RD
        try:
            resp = await dns.asyncquery.udp(q, server, timeout=QUERY_TIMEOUT, port=port)
        except (OSError, dns.exception.DNSException):
            continue
        return [b"".join(rd.strings).decode("utf-8", "replace") for rrset in resp.answer
                if rrset.name == owner and rrset.rdtype == dns.rdatatype.TXT for rd in rrset]
    return None


async def wait_for_txt(updater: DnsUpdater, zone: str, name: str, expected: str, *, delay: float = 0.0,
                       interval: float = 15.0, timeout: float = 60.0, clock=time.monotonic,
                       sleep=asyncio.sleep) -> None:
    """Return once ``expected`` is visible at ``name``; raise a temporary :class:`DnsProviderError`
    at the deadline (tls.md §7.5: the challenge is posted only after propagation was observed)."""
    if delay > 0:
        await sleep(delay)
    deadline = clock() + timeout
    while True:
        values = await updater.authoritative_txt(zone, name)
        if values is None:
            events.emit("dns.record-lookup-failed", level="debug", Hostname=fqdn(name))
        elif expected in values:
            events.emit("dns.record-propagated", level="debug", Hostname=fqdn(name))
            return
        else:
            events.emit("dns.record-not-propagated", level="debug", Hostname=fqdn(name))
        if clock() + interval > deadline:
            events.emit("dns.record-propagation-timeout", level="warn", Hostname=fqdn(name))
            raise DnsProviderError(f"{fqdn(name)} TXT not visible on the authoritative servers after {timeout:g} s",
                                   temporary=True)
        await sleep(interval)
