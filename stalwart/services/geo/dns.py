"""The ``Dns`` variant: ASN and country from TXT records, Team Cymru style (spec/services.md §3
"Dns: TXT lookup" and "We do better: DNS variant").

``8.8.8.8`` is looked up as ``8.8.8.8.origin.asn.cymru.com.`` and answers
``15169 | 8.8.8.0/24 | US | arin | 2023-12-28``; the fields are split on ``separator`` and picked
by ``indexAsn``, ``indexAsnName`` and ``indexCountry``.

The TXT query goes through the small :class:`TxtLookup` interface: :class:`ResolverTxt` answers
it with the project's resolver and its ``dnsTxt`` cache (spec/services.md §1, the ``DnsResolver``
object), :class:`DnspythonTxt` with a bare dnspython resolver (tests, tools).
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Protocol

from ...errors import StalwartError
from .config import AsnDns
from .info import GeoInfo

CACHE_LIMIT = 65536  # answers kept per worker; the oldest half goes when it fills


class DnsLookupError(StalwartError):
    """The TXT lookup failed (timeout, SERVFAIL, no server): nothing is cached."""


@dataclass(frozen=True, slots=True)
class TxtAnswer:
    """The TXT records of a name, each record's strings joined, and how long they may be kept.
    An NXDOMAIN or NODATA answer has no records; its ``ttl`` is the RFC 2308 §5 negative TTL
    (``min(SOA TTL, SOA MINIMUM)``) or 0 when the answer had no SOA."""

    records: tuple[bytes, ...]
    ttl: int


class TxtLookup(Protocol):
    async def txt(self, name: str) -> TxtAnswer: ...

    def txt_sync(self, name: str) -> TxtAnswer: ...


class DnspythonTxt:
    """:class:`TxtLookup` on dnspython, with the OS resolver configuration unless ``nameservers``
    (``[(address, port), …]``) is given. dnspython's own cache stays off: callers cache."""

    def __init__(self, nameservers: list[tuple[str, int]] | None = None, timeout: float = 5.0):
        self.nameservers = nameservers
        self.timeout = timeout
        self._async = None
        self._sync = None

    def _configure(self, resolver):
        if self.nameservers:
            from dns.nameserver import Do53Nameserver

            resolver.nameservers = [Do53Nameserver(a, p) for a, p in self.nameservers]
        resolver.lifetime = self.timeout
        resolver.timeout = self.timeout
        resolver.cache = None
        return resolver

    def _resolver(self, asynchronous: bool):
        import dns.asyncresolver
        import dns.resolver

        if asynchronous:
            if self._async is None:
                self._async = self._configure(dns.asyncresolver.Resolver(configure=not self.nameservers))
            return self._async
        if self._sync is None:
            self._sync = self._configure(dns.resolver.Resolver(configure=not self.nameservers))
        return self._sync

    async def txt(self, name: str) -> TxtAnswer:
        import dns.exception
        import dns.resolver

        try:
            answer = await self._resolver(True).resolve(name, "TXT", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return TxtAnswer((), _negative_ttl(exc.response(exc.qnames()[0]) if exc.qnames() else None))
        except dns.exception.DNSException as exc:
            raise DnsLookupError(f"TXT {name}: {exc}") from None
        return _answer(answer)

    def txt_sync(self, name: str) -> TxtAnswer:
        import dns.exception
        import dns.resolver

        try:
            answer = self._resolver(False).resolve(name, "TXT", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return TxtAnswer((), _negative_ttl(exc.response(exc.qnames()[0]) if exc.qnames() else None))
        except dns.exception.DNSException as exc:
            raise DnsLookupError(f"TXT {name}: {exc}") from None
        return _answer(answer)


class ResolverTxt:
    """:class:`TxtLookup` on the project's resolver (spec/services.md §1): TXT answers are cached
    in its ``dnsTxt`` cache for their TTL (negative answers for the RFC 2308 TTL), so the answers
    handed on carry ``ttl=0`` and :class:`DnsAsn` keeps no second copy.

    ``make_resolver()`` returns a :class:`stalwart.services.dns.lookups.Resolver`; the async path
    keeps the first one it makes (one per event loop, as the resolver requires), the blocking path
    (control socket) makes a fresh one for each query and gives up after ``sync_timeout``."""

    def __init__(self, make_resolver, sync_timeout: float = 2.0):
        self.make_resolver = make_resolver
        self.sync_timeout = sync_timeout
        self._resolver = None

    async def _txt(self, resolver, name: str) -> TxtAnswer:
        from ..dns.client import DnsError

        try:
            records = await resolver.txt(name, "records")
        except (DnsError, ValueError) as exc:
            raise DnsLookupError(f"TXT {name}: {exc}") from None
        return TxtAnswer(tuple(records or ()), 0)

    async def txt(self, name: str) -> TxtAnswer:
        if self._resolver is None:
            self._resolver = self.make_resolver()
        return await self._txt(self._resolver, name)

    def txt_sync(self, name: str) -> TxtAnswer:
        import asyncio

        async def once() -> TxtAnswer:
            return await asyncio.wait_for(self._txt(self.make_resolver(), name), self.sync_timeout)

        try:
            return asyncio.run(once())
        except TimeoutError:
            raise DnsLookupError(f"TXT {name}: no answer within {self.sync_timeout:.0f} s") from None


def _answer(answer) -> TxtAnswer:
    if answer.rrset is None:
        return TxtAnswer((), _negative_ttl(answer.response))
    return TxtAnswer(tuple(b"".join(rd.strings) for rd in answer.rrset), answer.rrset.ttl)


def _negative_ttl(response) -> int:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section, else 0 (not cached)."""
    import dns.rdatatype

    for rrset in getattr(response, "authority", None) or ():
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return min(rrset.ttl, rrset[0].minimum)
    return 0


def query_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, cfg: AsnDns) -> str:
    """``<reversed address>.<zone>.``: IPv4 octets reversed, IPv6 as 32 reversed nibbles."""
    if ip.version == 4:
        rev = ".".join(reversed(str(ip).split(".")))
        zone = cfg.zone_ip_v4
    else:
        rev = ".".join(reversed(ip.packed.hex()))
        zone = cfg.zone_ip_v6
    return f"{rev}.{zone.strip().strip('.')}."


def parse_records(records: tuple[bytes, ...], cfg: AsnDns) -> GeoInfo | None:
    """The first record that yields an AS number wins; a field with several space-separated
    numbers (multi-origin prefixes) yields the first. The country is upper-cased and kept only
    when it is two ASCII letters. Without an AS number there is no result, as in the reference."""
    for raw in records:
        text = raw.decode("utf-8", "replace")
        parts = [p.strip() for p in text.split(cfg.separator)]
        field = parts[cfg.index_asn] if cfg.index_asn < len(parts) else ""
        words = field.split()
        if not words or not words[0].isdigit() or not words[0].isascii() or int(words[0]) > 0xFFFFFFFF:
            continue
        asn = int(words[0])
        name = None
        if cfg.index_asn_name is not None and cfg.index_asn_name < len(parts):
            name = parts[cfg.index_asn_name] or None
        country = None
        if cfg.index_country is not None and cfg.index_country < len(parts):
            cc = parts[cfg.index_country].upper()
            if len(cc) == 2 and cc.isascii() and cc.isalpha():
                country = cc
        return GeoInfo(asn, name, country)
    return None


def never_queried(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Private, loopback, link-local, multicast and other reserved addresses have no public AS."""
    return not ip.is_global or ip.is_multicast


class DnsAsn:
    """TXT lookups with answers cached for their TTL (negative answers for the RFC 2308 TTL)."""

    def __init__(self, cfg: AsnDns, txt: TxtLookup | None = None, clock=time.monotonic):
        self.cfg = cfg
        self.txt = txt or DnspythonTxt()
        self.clock = clock
        self.cache: dict[bytes, tuple[float, GeoInfo | None]] = {}

    def cached(self, packed: bytes) -> tuple[bool, GeoInfo | None]:
        hit = self.cache.get(packed)
        if hit is None:
            return False, None
        if hit[0] <= self.clock():
            del self.cache[packed]
            return False, None
        return True, hit[1]

    def _store(self, packed: bytes, answer: TxtAnswer) -> GeoInfo | None:
        info = parse_records(answer.records, self.cfg)
        if answer.ttl > 0:
            if len(self.cache) >= CACHE_LIMIT:
                for key in list(self.cache)[: CACHE_LIMIT // 2]:  # dicts keep insertion order
                    del self.cache[key]
            self.cache[packed] = (self.clock() + answer.ttl, info)
        return info

    async def lookup(self, ip, packed: bytes) -> GeoInfo | None:
        if never_queried(ip):
            return None
        found, info = self.cached(packed)
        if found:
            return info
        return self._store(packed, await self.txt.txt(query_name(ip, self.cfg)))

    def lookup_sync(self, ip, packed: bytes) -> GeoInfo | None:
        if never_queried(ip):
            return None
        found, info = self.cached(packed)
        if found:
            return info
        return self._store(packed, self.txt.txt_sync(query_name(ip, self.cfg)))
