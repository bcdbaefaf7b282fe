"""Typed DNS lookups through the ``Cache`` object's result caches (services.md §1 "Result caches").

:class:`Resolver` answers A, AAAA, MX, TXT (raw records or a caller's parsed kind, MTA-STS
included), PTR, TLSA and DNSBL queries. Each goes through its own cache (``dnsIpv4``, ``dnsIpv6``,
``dnsMx``, ``dnsTxt``, ``dnsPtr``, ``dnsTlsa``, ``dnsRbl``) with single-flight loading, so
concurrent lookups of one name cause one query:

* keys are names lower-cased with a trailing dot; reverse lookups are keyed by address, DNSBL
  lookups by ``(zone, address)`` and TXT lookups by ``(name, kind)``, so a parse failure for one
  kind is never served for another ("We do better");
* a positive answer lives for the minimum TTL of the records used, CNAME chain included (no
  clamps);
* NXDOMAIN and NODATA are cached for the RFC 2308 §5 negative TTL (``min(SOA TTL, SOA MINIMUM)``,
  bounded by ``client.MAX_NEGATIVE_TTL``) and answer as "nothing"; without an SOA they are not
  cached; transport failures are never cached and raise :class:`DnsError`;
* MTA-STS policies (``dnsMtaSts``) are fetched and cached by ``mtasts.MtaStsPolicies`` on top of
  the ``_mta-sts`` TXT lookup here;
* TLSA answers are cached only when the upstream vouched for them (AD flag; DANE needs a
  validating resolver, RFC 7671 §1.3), and only usages DANE-TA(2) / DANE-EE(3) with selector
  Full/SPKI and matching Full/SHA-256/SHA-512 are kept.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import dns.exception
import dns.name
import dns.reversename

from ..cache import NEGATIVE, Loaded, LoadingCache
from ..cache.registry import CacheRegistry
from .client import Answer, DnsClient, DnsError, NegativeAnswer

__all__ = ["MtaStsRecord", "MxGroup", "Resolver", "TlsaEntry", "TlsaResult", "TxtParseError",
           "parse_mta_sts_record"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class MxGroup:
    """Exchanges sharing one preference (RFC 5321 §5.1: tried in random order within a group)."""

    preference: int
    exchanges: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TlsaEntry:
    usage: int
    selector: int
    matching: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TlsaResult:
    entries: tuple[TlsaEntry, ...]
    secure: bool


@dataclass(frozen=True, slots=True)
class TxtParseError:
    """Cached when an answer had TXT records but none parsed as the kind asked for."""

    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class MtaStsRecord:
    """``_mta-sts`` TXT record (RFC 8461 §3.1): the policy ``id`` changes when the policy does."""

    id: str


_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


def parse_mta_sts_record(record: bytes) -> MtaStsRecord:
    """RFC 8461 §3.1: ``v=STSv1`` first, then ``id`` (1–32 alphanumerics); other fields ignored."""
    text = record.decode("ascii")
    fields = [f.strip() for f in text.split(";") if f.strip()]
    if not fields or fields[0].replace(" ", "") != "v=STSv1":
        raise ValueError("not an STSv1 record")
    for f in fields[1:]:
        key, sep, value = f.partition("=")
        if sep and key.strip() == "id" and _STS_ID.match(value.strip()):
            return MtaStsRecord(value.strip())
    raise ValueError("no valid id field")


def _records(answer: Answer) -> tuple[bytes, ...]:
    # A TXT record's strings are one value (RFC 7208 §3.3, RFC 6376 §3.6.2.2): joined.
    return tuple(b"".join(r.strings) for r in answer.records)


TXT_PARSERS: dict[str, Callable[[bytes], Any]] = {"mta-sts": parse_mta_sts_record}
_TLSA_USAGES = (2, 3)
_TLSA_SELECTORS = (0, 1)
_TLSA_MATCHING = (0, 1, 2)


def normalise(name: str) -> str:
    """Cache key of a name: IDNA-encoded, lower-cased, with a trailing dot.

    Plain ASCII names (the usual case on the hit path) are only lower-cased and dotted: the
    query made on a miss parses the key with ``dns.name.from_text``, which rejects bad names."""
    name = name.strip()
    if name.isascii() and "\\" not in name and name not in ("", "."):
        key = name.lower()
        return key if key.endswith(".") else key + "."
    try:
        return dns.name.from_text(name).to_text().lower()
    except (dns.exception.DNSException, UnicodeError) as exc:  # bad IDNA, labels too long
        raise ValueError(f"{name!r} is not a valid domain name: {exc}") from None


class Resolver:
    """Typed, cached lookups over a :class:`DnsClient`; one per worker (per event loop)."""

    def __init__(self, client: DnsClient, caches: CacheRegistry | None = None):
        self.client = client
        self.caches = caches if caches is not None else CacheRegistry()
        self._negative_for = lambda exc: exc.ttl if isinstance(exc, NegativeAnswer) else None

    def _cache(self, name: str) -> LoadingCache:
        return self.caches.loading(name)

    def _lookup(self, cache: str, key: Any, load: Callable[[Any], Any]) -> Awaitable[Any]:
        """Awaits to the cached value, NEGATIVE for a cached negative answer, or a fresh load.
        An uncacheable negative answer (no SOA) raises NegativeAnswer, which callers turn into
        "nothing". Not a coroutine itself: a cache hit costs one coroutine frame, not two."""
        return self._cache(cache).get_or_load(key, load, negative_for=self._negative_for)

    async def _query_loaded(self, name: str, rdtype: str, convert: Callable[[Answer], Any],
                            dnssec: bool = False) -> Loaded:
        answer = await self.client.query(name, rdtype, dnssec=dnssec)
        return Loaded(convert(answer), ttl=answer.ttl)

    # -- addresses ---------------------------------------------------------------------------
    async def ipv4(self, name: str) -> tuple[ipaddress.IPv4Address, ...]:
        """A records (RFC 1035 §3.4.1); empty when the name or the records do not exist."""
        key = normalise(name)
        try:
            value = await self._lookup("dnsIpv4", key, lambda key: self._query_loaded(
                key, "A", lambda a: tuple(ipaddress.IPv4Address(r.address) for r in a.records)))
        except NegativeAnswer:
            return ()
        return () if value is NEGATIVE else value

    async def ipv6(self, name: str) -> tuple[ipaddress.IPv6Address, ...]:
        """AAAA records (RFC 3596 §2.2); empty when none exist."""
        key = normalise(name)
        try:
            value = await self._lookup("dnsIpv6", key, lambda key: self._query_loaded(
                key, "AAAA", lambda a: tuple(ipaddress.IPv6Address(r.address) for r in a.records)))
        except NegativeAnswer:
            return ()
        return () if value is NEGATIVE else value

    async def ips(self, name: str, limit: int = 10) -> tuple[IpAddress, ...]:
        """IPv4 then IPv6 addresses of ``name``, at most ``limit`` (``dns_exists_ip``, §1)."""
        out: tuple[IpAddress, ...] = (await self.ipv4(name))[:limit]
        if len(out) < limit:
            out += (await self.ipv6(name))[:limit - len(out)]
        return out

    # -- mail routing ----------------------------------------------------------------------
    async def mx(self, name: str) -> tuple[MxGroup, ...]:
        """MX records grouped by preference, ascending, exchanges lower-cased (RFC 5321 §5.1).
        Empty when the domain has no MX (the caller then falls back to its address records)."""
        def convert(answer: Answer) -> tuple[MxGroup, ...]:
            groups: dict[int, list[str]] = {}
            for r in answer.records:
                ex = r.exchange.to_text().lower()
                lst = groups.setdefault(r.preference, [])
                if ex not in lst:
                    lst.append(ex)
            # sorted inside a group so that the cached value does not depend on the server's
            # order; RFC 5321 §5.1 has the caller pick at random within a group
            return tuple(MxGroup(p, tuple(sorted(groups[p]))) for p in sorted(groups))

        key = normalise(name)
        try:
            value = await self._lookup("dnsMx", key, lambda key: self._query_loaded(key, "MX", convert))
        except NegativeAnswer:
            return ()
        return () if value is NEGATIVE else value

    async def txt(self, name: str, kind: str = "records",
                  parser: Callable[[bytes], Any] | None = None) -> Any:
        """TXT at ``name``. ``kind="records"``: every record, strings joined. Another kind: the
        first record ``parser`` (or the built-in parser of that kind, e.g. ``"mta-sts"``)
        accepts; :class:`TxtParseError` when records exist but none parses (cached too). None
        when the name has no TXT records."""
        if kind != "records" and parser is None:
            parser = TXT_PARSERS.get(kind)
            if parser is None:
                raise ValueError(f"no parser for TXT kind {kind!r}")

        def convert(answer: Answer) -> Any:
            records = _records(answer)
            if parser is None:
                return records
            reasons = []
            for rec in records:
                try:
                    return parser(rec)
                except (ValueError, UnicodeDecodeError) as exc:
                    reasons.append(str(exc))
            return TxtParseError(kind, "; ".join(reasons) or "no record")

        key = (normalise(name), kind)
        try:
            value = await self._lookup("dnsTxt", key, lambda k: self._query_loaded(k[0], "TXT", convert))
        except NegativeAnswer:
            return None
        return None if value is NEGATIVE else value

    async def mta_sts(self, domain: str) -> MtaStsRecord | TxtParseError | None:
        """The ``_mta-sts.<domain>`` TXT record (RFC 8461 §3.1), parsed and cached in dnsTxt."""
        return await self.txt("_mta-sts." + domain.strip().rstrip(".") + ".", "mta-sts")

    # -- reverse, DANE, DNSBL -----------------------------------------------------------------
    async def ptr(self, ip: str | IpAddress) -> tuple[str, ...]:
        """PTR names of ``ip`` (RFC 1035 §3.5, RFC 3596 §2.5), lower-cased, empty names dropped."""
        addr = ipaddress.ip_address(str(ip))
        rev = dns.reversename.from_address(str(addr))

        def convert(answer: Answer) -> tuple[str, ...]:
            names = (r.target.to_text().lower() for r in answer.records)
            return tuple(n for n in dict.fromkeys(names) if n not in (".", ""))

        try:
            value = await self._lookup("dnsPtr", addr, lambda _: self._query_loaded(rev, "PTR", convert))
        except NegativeAnswer:
            return ()
        return () if value is NEGATIVE else value

    async def verified_ptr(self, ip: str | IpAddress, max_names: int = 3) -> str | None:
        """The first PTR name of ``ip`` whose own addresses include ``ip`` (forward-confirmed
        reverse DNS, RFC 8601 §2.7.3 "iprev"), or None. Lookup errors count as unconfirmed."""
        addr = ipaddress.ip_address(str(ip))
        try:
            names = await self.ptr(addr)
        except DnsError:
            return None
        for name in names[:max_names]:
            try:
                forward = await (self.ipv4(name) if addr.version == 4 else self.ipv6(name))
            except DnsError:
                continue
            if addr in forward:
                return name
        return None

    async def tlsa(self, name: str) -> TlsaResult:
        """TLSA records for DANE (RFC 6698 §2, RFC 7672 §3.1.3); secure only when the answer has
        the AD bit and :meth:`DnsClient.dnssec_available` holds; cached only when secure."""
        def convert(answer: Answer) -> TlsaResult:
            entries = tuple(TlsaEntry(r.usage, r.selector, r.mtype, bytes(r.cert))
                            for r in answer.records
                            if r.usage in _TLSA_USAGES and r.selector in _TLSA_SELECTORS
                            and r.mtype in _TLSA_MATCHING)
            return TlsaResult(entries, answer.secure)

        async def load(key: str) -> Any:
            answer = await self.client.query(key, "TLSA", dnssec=True)
            result = convert(answer)
            if result.secure and not await self.client.dnssec_available():
                # an AD bit from a resolver that failed the probe (or is reached over UDP only)
                # proves nothing
                result = TlsaResult(result.entries, False)
            if not result.secure:
                raise _Unvouched(result)
            return Loaded(result, ttl=answer.ttl)

        try:
            value = await self._lookup("dnsTlsa", normalise(name), load)
        except _Unvouched as exc:
            return exc.result
        except NegativeAnswer:
            return TlsaResult((), False)
        return TlsaResult((), False) if value is NEGATIVE else value

    async def rbl(self, ip: str | IpAddress, zone: str) -> ipaddress.IPv4Address | None:
        """The DNSBL answer for ``ip`` in ``zone`` (RFC 5782 §2): the first A address when
        listed, None when not (NXDOMAIN, cached for the SOA negative TTL)."""
        addr = ipaddress.ip_address(str(ip))
        zone_key = normalise(zone)
        if addr.version == 4:
            label = ".".join(reversed(str(addr).split(".")))
        else:  # RFC 5782 §2.4: nibbles, least significant first
            label = ".".join(reversed(addr.exploded.replace(":", "")))
        qname = f"{label}.{zone_key}"

        def convert(answer: Answer) -> ipaddress.IPv4Address:
            if not answer.records:
                return ipaddress.IPv4Address("255.255.255.255")
            return ipaddress.IPv4Address(answer.records[0].address)

        try:
            value = await self._lookup("dnsRbl", (zone_key, addr),
                                       lambda _: self._query_loaded(qname, "A", convert))
        except NegativeAnswer:  # NXDOMAIN without an SOA: not listed, not cached
            return None
        return None if value is NEGATIVE else value

    # -- operators ---------------------------------------------------------------------------
    LOOKUP_TYPES: ClassVar[tuple[str, ...]] = ("A", "AAAA", "MX", "TXT", "PTR", "TLSA", "MTA-STS")
    _CACHE_OF: ClassVar[dict[str, str]] = {"A": "dnsIpv4", "AAAA": "dnsIpv6", "MX": "dnsMx", "TXT": "dnsTxt",
                 "PTR": "dnsPtr", "TLSA": "dnsTlsa", "MTA-STS": "dnsTxt"}

    def cache_key(self, rtype: str, name: str) -> tuple[str, Any]:
        """``(cache field, key)`` a lookup of ``rtype``/``name`` is stored under."""
        rtype = rtype.upper()
        if rtype == "PTR":
            return "dnsPtr", ipaddress.ip_address(name)
        if rtype == "TXT":
            return "dnsTxt", (normalise(name), "records")
        if rtype == "MTA-STS":
            return "dnsTxt", (normalise("_mta-sts." + name.strip().rstrip(".") + "."), "mta-sts")
        return self._CACHE_OF[rtype], normalise(name)

    async def lookup(self, rtype: str, name: str) -> Any:
        """One typed lookup by record type name, for ``stalwart-cli dns lookup``."""
        rtype = rtype.upper()
        if rtype not in self.LOOKUP_TYPES:
            raise ValueError(f"unsupported type {rtype!r} (one of {', '.join(self.LOOKUP_TYPES)})")
        return await {"A": self.ipv4, "AAAA": self.ipv6, "MX": self.mx, "TXT": self.txt,
                      "PTR": self.ptr, "TLSA": self.tlsa, "MTA-STS": self.mta_sts}[rtype](name)

    def stats(self) -> dict[str, Any]:
        """What metrics export: per DNS cache field its hits, misses, inserts, evictions, … (only
        caches used so far), the upstream exchange counters and the ``dns.lookup-time``
        histogram (services.md §1 "We do better")."""
        caches = {name: row for name, row in self.caches.stats().items() if name.startswith("dns")}
        return {"caches": caches, "queries": self.client.queries, "failures": self.client.failures,
                "lookupTime": self.client.lookup_time.snapshot()}

    def cache_state(self, rtype: str, name: str) -> dict[str, Any]:
        """Whether the answer is cached, and its remaining lifetime (operators, §1)."""
        field, key = self.cache_key(rtype, name)
        cache = self.caches.cache(field)
        entry = cache.peek_entry(key)
        if entry is None:
            return {"cache": field, "cached": False}
        value, weight, expires = entry
        state: dict[str, Any] = {"cache": field, "cached": True, "negative": value is NEGATIVE,
                                 "weight": weight}
        if expires is not None:
            state["ttl"] = max(0.0, round(expires - self.caches.clock(), 3))
        return state


class _Unvouched(DnsError):
    """A TLSA answer without the AD flag: handed to the caller, never cached."""

    def __init__(self, result: TlsaResult):
        self.result = result
        super().__init__("TLSA answer not DNSSEC-secure")
