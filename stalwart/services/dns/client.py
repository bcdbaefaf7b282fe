"""Sending queries to the configured upstreams: transports, retries and parallel nameservers.

A :class:`DnsClient` turns a ``DnsResolver`` configuration (services.md §1) into nameservers and
answers ``query(name, rdtype)`` with one parsed :class:`Answer` or raises :class:`NegativeAnswer`
(NXDOMAIN / NODATA) or :class:`DnsError` (no upstream answered). It has no cache: the typed
caches in ``lookups.py`` replace a library cache, as the spec asks.

Wire exchanges are dnspython's async query layer (``dns.asyncquery.udp``/``tcp``/``tls``, the one
``dns.asyncresolver`` itself uses). The resolution policy around them is ours, because the spec's
common fields have no equivalent in dnspython's resolver loop:

* ``concurrency``: that many nameservers are asked at once and the first usable answer wins
  (0 or 1: one after another);
* ``attempts``: rounds over the nameservers after the first one fails;
* ``timeout``: per exchange; ``tcpOnError``: a UDP exchange that fails (timeout, socket error,
  malformed or truncated answer) is repeated over TCP on the same address and port. A nameserver
  configured with a TCP or TLS transport beside UDP (UDP+TCP mode) always goes on to it after a
  truncated answer, whatever ``tcpOnError`` says (RFC 7766 §5);
* ``enableEdns``: EDNS0 with a 1232-byte UDP payload (DNS flag day 2020), else plain 512-byte DNS;
* ``preserveIntermediates``: the CNAME chain is kept in the :class:`Answer`.
"""
from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from ... import events
from ...errors import StalwartError
from .config import (CLOUDFLARE, GOOGLE, QUAD9, DnsResolverBase, DnsResolverCloudflare,
                     DnsResolverCustom, DnsResolverGoogle, DnsResolverQuad9, DnsResolverSystem)

__all__ = ["Answer", "DnsClient", "DnsError", "Histogram", "NegativeAnswer", "Nameserver",
           "Transport", "nameservers_for"]

EDNS_PAYLOAD = 1232  # DNS flag day 2020: no IP fragmentation on common paths
#: Upper bound of a negative TTL. RFC 2308 §5: values over a day cause trouble and one to three
#: hours work well; BIND's max-ncache-ttl default is the same 3 h.
MAX_NEGATIVE_TTL = 10800
MAX_CNAME_CHAIN = 16
RESOLV_CONF = "/etc/resolv.conf"
DNSSEC_REPROBE = 600.0  # s between probes while DNSSEC is unavailable (services.md §1)


class DnsError(StalwartError):
    """No usable answer: every nameserver failed or timed out. Never cached."""


class NegativeAnswer(DnsError):
    """NXDOMAIN (``nxdomain``) or NODATA for the name. ``ttl`` is the RFC 2308 §5 negative TTL,
    ``min(SOA TTL, SOA MINIMUM)`` from the authority section, bounded by
    :data:`MAX_NEGATIVE_TTL`; None when the answer carried no SOA (then it is not cached)."""

    def __init__(self, name: str, rdtype: str, nxdomain: bool, ttl: int | None):
        self.nxdomain = nxdomain
        self.ttl = ttl
        super().__init__(f"{name} {rdtype}: {'NXDOMAIN' if nxdomain else 'no records (NODATA)'}")


@dataclass(frozen=True, slots=True)
class Transport:
    protocol: str  # "udp" | "tcp" | "tls"
    port: int
    server_name: str | None = None  # TLS: SNI and the name the certificate must carry


@dataclass(frozen=True, slots=True)
class Nameserver:
    """One upstream address with the transports it is reached by, in the order they are tried."""

    address: str
    transports: tuple[Transport, ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """The records of type ``rdtype`` at the end of the CNAME chain from ``name``.

    ``ttl`` is the minimum TTL over the records used, the chain included (services.md §1 "Result
    caches"); ``secure`` is the upstream's AD flag (RFC 4035 §3.2.3: only meaningful from a
    validating resolver on a trusted path); ``cnames`` is the chain as ``(owner, target)`` pairs,
    kept only with ``preserveIntermediates``.
    """

    name: str
    rdtype: str
    records: tuple
    ttl: int
    secure: bool
    cnames: tuple[tuple[str, str], ...] = ()


def _udp_tcp(addresses: Sequence[str]) -> list[Nameserver]:
    return [Nameserver(a, (Transport("udp", 53), Transport("tcp", 53))) for a in addresses]


def _tls(addresses: Sequence[str], server_name: str) -> list[Nameserver]:
    return [Nameserver(a, (Transport("tls", 853, server_name),)) for a in addresses]


def read_system(path: str = RESOLV_CONF) -> tuple[list[Nameserver], bool]:
    """Nameservers of the OS configuration and whether ``options rotate`` is set.

    Raises :class:`DnsError` when the file cannot be read or names no nameserver."""
    try:
        conf = dns.resolver.Resolver(filename=path, configure=True)
    except (OSError, dns.exception.DNSException) as exc:
        raise DnsError(f"Failed to read system DNS config: {path}: {exc}") from None
    servers = []
    for ns in conf.nameservers:
        address = getattr(ns, "address", ns)
        port = getattr(ns, "port", conf.port)
        servers.append(Nameserver(str(address), (Transport("udp", port), Transport("tcp", port))))
    if not servers:
        raise DnsError(f"Failed to read system DNS config: {path}: no nameserver")
    return servers, bool(conf.rotate)


def nameservers_for(cfg: DnsResolverBase, resolv_conf: str = RESOLV_CONF) -> tuple[list[Nameserver], bool]:
    """The nameservers a variant names, and whether to rotate them (``System`` with ``rotate``).

    ``System`` falls back to Cloudflare over UDP+TCP when the OS configuration cannot be read,
    keeping the configured common fields, and logs a warning naming the file (services.md §1
    "We do better")."""
    if isinstance(cfg, DnsResolverSystem):
        try:
            return read_system(resolv_conf)
        except DnsError as exc:
            events.emit("resolver.error", level="warn", Reason=str(exc), Details="using Cloudflare over UDP+TCP")
            return _udp_tcp(CLOUDFLARE[0]), False
    if isinstance(cfg, DnsResolverCloudflare):
        return (_tls(*CLOUDFLARE) if cfg.use_tls else _udp_tcp(CLOUDFLARE[0])), False
    if isinstance(cfg, DnsResolverQuad9):
        return (_tls(*QUAD9) if cfg.use_tls else _udp_tcp(QUAD9[0])), False
    if isinstance(cfg, DnsResolverGoogle):
        return _udp_tcp(GOOGLE[0]), False
    if isinstance(cfg, DnsResolverCustom):
        # Grouped by address: one nameserver per address with all its (protocol, port) pairs.
        grouped: dict[str, list[Transport]] = {}
        for s in cfg.servers:
            t = Transport(s.protocol, s.port, s.tls_server_name or (s.address if s.protocol == "tls" else None))
            ts = grouped.setdefault(s.address, [])
            if t not in ts:
                ts.append(t)
        # UDP first: the stream transports are the fallback for truncation and errors.
        return [Nameserver(a, tuple(sorted(ts, key=lambda t: t.protocol != "udp")))
                for a, ts in grouped.items()], False
    raise TypeError(f"unknown DnsResolver variant {type(cfg).__name__}")


def negative_ttl(response: dns.message.Message) -> int | None:
    """RFC 2308 §5: ``min(SOA TTL, SOA MINIMUM)`` of the authority section's SOA, bounded."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            ttl = min(rrset.ttl, rrset[0].minimum, MAX_NEGATIVE_TTL)
            return ttl if ttl > 0 else None
    return None


def parse_answer(response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                 preserve_intermediates: bool = True) -> Answer:
    """Follow the CNAME chain from ``qname`` in the answer section; the records of ``rdtype`` at
    its end, or :class:`NegativeAnswer`."""
    name, chain, ttl = qname, [], None
    type_text = dns.rdatatype.to_text(rdtype)
    for _ in range(MAX_CNAME_CHAIN):
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        if rrset is not None and len(rrset):
            ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
            return Answer(qname.to_text(), type_text, tuple(rrset), ttl,
                          bool(response.flags & dns.flags.AD),
                          tuple(chain) if preserve_intermediates else ())
        if rdtype == dns.rdatatype.CNAME:
            break
        cname = response.get_rrset(response.answer, name, dns.rdataclass.IN, dns.rdatatype.CNAME)
        if cname is None or not len(cname):
            break
        ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
        chain.append((name.to_text(), cname[0].target.to_text()))
        name = cname[0].target
    nxdomain = response.rcode() == dns.rcode.NXDOMAIN
    if chain and not nxdomain and not response.authority:
        # The server stopped at a CNAME without the target's records (an authoritative server
        # for another zone, unbound's local-data): the target must be asked for separately.
        raise _DanglingCname(name, tuple(chain), ttl)
    raise NegativeAnswer(qname.to_text(), type_text, nxdomain, negative_ttl(response))


class _DanglingCname(Exception):
    def __init__(self, target: dns.name.Name, chain: tuple[tuple[str, str], ...], ttl: int):
        self.target = target
        self.chain = chain
        self.ttl = ttl


class Histogram:
    """Cumulative buckets of lookup durations in seconds (Prometheus layout: ``le`` bounds,
    ``count`` and ``sum``), for the ``dns.lookup-time`` metric."""

    BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * len(self.BOUNDS)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.BOUNDS):
            if seconds <= bound:
                self.buckets[i] += 1

    def snapshot(self) -> dict[str, object]:
        return {"buckets": dict(zip(self.BOUNDS, self.buckets)), "count": self.count, "sum": self.sum}


# Everything an exchange can fail with: timeouts, socket and TLS errors (OSError), a closed
# stream (EOFError) and any DNSException a malformed, truncated or mismatched reply produces.
_TRANSPORT_ERRORS = (dns.exception.DNSException, OSError, EOFError)


class DnsClient:
    """Queries the upstreams of one ``DnsResolver`` configuration. One per event loop.

    ``tls_context``: the context DNS-over-TLS connections verify against (default: the system
    trust store); ``nameservers`` overrides the variant's upstreams (tests, tools).
    """

    def __init__(self, cfg: DnsResolverBase, *, tls_context: ssl.SSLContext | None = None,
                 nameservers: list[Nameserver] | None = None, resolv_conf: str = RESOLV_CONF):
        self.cfg = cfg
        if nameservers is None:
            nameservers, self.rotate = nameservers_for(cfg, resolv_conf)
        else:
            self.rotate = False
        self.nameservers = list(nameservers)
        self.timeout = int(cfg.timeout) / 1000.0
        self.concurrency = max(1, cfg.concurrency)
        self.rounds = 1 + cfg.attempts
        self.tls_context = tls_context
        self.queries = 0  # exchanges sent, for tests and metrics
        self.failures = 0
        self.lookup_time = Histogram()  # services.md §1 metric dns.lookup-time
        self._dnssec: bool | None = None  # None: not probed yet
        self._dnssec_next = 0.0

    async def dnssec_available(self, now: float | None = None) -> bool:
        """Whether DANE can trust this resolver's DNSSEC answers (services.md §1 "DNSSEC").

        True only when some upstream is reached over TCP or TLS (an AD bit over plain UDP is
        trivially spoofed, RFC 6698 §4.1 asks for a secure channel to the validator) and a root
        ``DNSKEY`` query with the DO bit comes back with AD set. A true result is kept for the
        life of the client (a reload builds a new one); a false one is probed again after
        :data:`DNSSEC_REPROBE` seconds ("We do better"). Transport errors count as false."""
        now = time.monotonic() if now is None else now
        if self._dnssec or (self._dnssec is False and now < self._dnssec_next):
            return bool(self._dnssec)
        secure = False
        if any(t.protocol != "udp" for ns in self.nameservers for t in ns.transports):
            try:
                secure = (await self.query(dns.name.root, "DNSKEY", dnssec=True)).secure
            except DnsError:
                secure = False
        self._dnssec, self._dnssec_next = secure, now + DNSSEC_REPROBE
        return secure

    def _make_query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                    dnssec: bool) -> dns.message.QueryMessage:
        if self.cfg.enable_edns:
            return dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD, want_dnssec=dnssec)
        return dns.message.make_query(qname, rdtype, use_edns=False)

    async def query(self, name: str | dns.name.Name, rdtype: str | dns.rdatatype.RdataType, *,
                    dnssec: bool = False) -> Answer:
        """One resolution: the :class:`Answer` for ``name``/``rdtype``, or
        :class:`NegativeAnswer`, or :class:`DnsError` when no upstream gave a usable answer;
        ValueError for a name that is not a valid domain name (RFC 1035 §2.3.4 limits).
        ``dnssec`` sets the DO bit so that a validating upstream reports AD."""
        if isinstance(name, dns.name.Name):
            qname = name
        else:
            try:
                qname = dns.name.from_text(name)
            except dns.exception.DNSException as exc:  # empty or too long labels, bad escapes
                raise ValueError(f"{name!r} is not a valid domain name: {exc}") from None
        rdtype = dns.rdatatype.RdataType.make(rdtype)
        target, chain, ttl, secure = qname, (), None, True
        while True:
            response = await self.exchange(self._make_query(target, rdtype, dnssec))
            try:
                answer = parse_answer(response, target, rdtype, self.cfg.preserve_intermediates)
            except _DanglingCname as dangling:
                chain += dangling.chain
                ttl = dangling.ttl if ttl is None else min(ttl, dangling.ttl)
                secure = secure and bool(response.flags & dns.flags.AD)
                if len(chain) >= MAX_CNAME_CHAIN:
                    raise DnsError(f"{qname} {dns.rdatatype.to_text(rdtype)}: CNAME chain longer "
                                   f"than {MAX_CNAME_CHAIN}") from None
                target = dangling.target
                continue
            except NegativeAnswer as neg:
                if target is qname:
                    raise
                # the answer is about the original name: its negative TTL is bounded by the chain
                ttl_neg = None if neg.ttl is None else min(neg.ttl, ttl)
                raise NegativeAnswer(qname.to_text(), dns.rdatatype.to_text(rdtype), neg.nxdomain,
                                     ttl_neg) from None
            if target is qname:
                return answer
            return Answer(qname.to_text(), answer.rdtype, answer.records, min(ttl, answer.ttl),
                          secure and answer.secure,
                          (chain + answer.cnames) if self.cfg.preserve_intermediates else ())

    async def exchange(self, query: dns.message.Message) -> dns.message.Message:
        """Send ``query`` to the nameservers, ``concurrency`` at a time, for ``1 + attempts``
        rounds; the first NOERROR or NXDOMAIN response wins."""
        servers = self.nameservers
        if self.rotate and len(servers) > 1:
            start = random.randrange(len(servers))
            servers = servers[start:] + servers[:start]
        errors: list[str] = []
        started = time.monotonic()
        try:
            for _ in range(self.rounds):
                for i in range(0, len(servers), self.concurrency):
                    response = await self._race(servers[i:i + self.concurrency], query, errors)
                    if response is not None:
                        return response
        finally:
            self.lookup_time.observe(time.monotonic() - started)
        self.failures += 1
        qtext = f"{query.question[0].name} {dns.rdatatype.to_text(query.question[0].rdtype)}"
        raise DnsError(f"{qtext}: no nameserver answered ({'; '.join(errors[-4:])})")

    async def _race(self, group: Sequence[Nameserver], query: dns.message.Message,
                    errors: list[str]) -> dns.message.Message | None:
        if len(group) == 1:
            return await self._usable(group[0], query, errors)
        tasks = [asyncio.ensure_future(self._usable(ns, query, errors)) for ns in group]
        try:
            for next_done in asyncio.as_completed(tasks):
                response = await next_done
                if response is not None:
                    return response
            return None
        finally:
            for t in tasks:
                t.cancel()

    async def _usable(self, ns: Nameserver, query: dns.message.Message,
                      errors: list[str]) -> dns.message.Message | None:
        try:
            response = await self._exchange_one(ns, query)
        except _TRANSPORT_ERRORS as exc:
            errors.append(f"{ns.address}: {type(exc).__name__} {exc}".strip())
            return None
        rcode = response.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return response
        # SERVFAIL, REFUSED, NOTIMP, FORMERR: this server cannot answer; another may
        errors.append(f"{ns.address}: {dns.rcode.to_text(rcode)}")
        return None

    async def _exchange_one(self, ns: Nameserver, query: dns.message.Message) -> dns.message.Message:
        udp = next((t for t in ns.transports if t.protocol == "udp"), None)
        streams = [t for t in ns.transports if t.protocol != "udp"]
        if udp is not None:
            self.queries += 1
            try:
                # Datagrams from elsewhere or that do not parse are ignored, not fatal: a spoofed
                # or garbled packet must not end an exchange the real server may still answer.
                return await dns.asyncquery.udp(query, ns.address, self.timeout, port=udp.port,
                                                raise_on_truncation=True, ignore_unexpected=True,
                                                ignore_errors=True)
            except dns.message.Truncated:
                if not streams and not self.cfg.tcp_on_error:
                    raise
            except _TRANSPORT_ERRORS:
                if not self.cfg.tcp_on_error:
                    raise
            if not streams:
                streams = [Transport("tcp", udp.port)]
        last: Exception | None = None
        for t in streams:
            self.queries += 1
            try:
                if t.protocol == "tcp":
                    return await dns.asyncquery.tcp(query, ns.address, self.timeout, port=t.port)
                return await dns.asyncquery.tls(query, ns.address, self.timeout, port=t.port,
                                                ssl_context=self._tls_context(),
                                                server_hostname=t.server_name or ns.address)
            except _TRANSPORT_ERRORS as exc:  # a certificate that fails to verify is an OSError
                last = exc
        assert last is not None
        raise last

    def _tls_context(self) -> ssl.SSLContext:
        if self.tls_context is None:
            ctx = ssl.create_default_context()
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self.tls_context = ctx
        return self.tls_context
