"""Record values as providers exchange them, and the updater interface (services.md §2.3, §2.4).

A record set is ``(name, type, values)`` with ``name`` absolute without the trailing dot and each
value in zone-file presentation form, except TXT whose values are the raw text (one value may
exceed 255 bytes: it is split into several strings at UTF-8 boundaries, services.md §2.3).
"""
from __future__ import annotations

import abc
from collections.abc import Sequence

from ...errors import StalwartError

SUPPORTED_TYPES = ("A", "AAAA", "CNAME", "NS", "MX", "TXT", "SRV", "TLSA", "CAA")


class DnsProviderError(StalwartError):
    """An update, listing or propagation check failed. ``temporary``: timeouts, SERVFAIL, HTTP 5xx
    and 429 are retried by the caller; configuration and authentication problems are not."""

    def __init__(self, message: str, *, temporary: bool = False):
        super().__init__(message)
        self.temporary = temporary


def split_txt(value: str) -> list[bytes]:
    """Strings of at most 255 bytes, cut only between UTF-8 characters (RFC 1035 §3.3.14)."""
    raw = value.encode("utf-8")
    out = []
    while len(raw) > 255:
        cut = 255
        while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # never inside a multi-byte character
            cut -= 1
        out.append(raw[:cut])
        raw = raw[cut:]
    out.append(raw)
    return out


def fqdn(name: str) -> str:
    return name.rstrip(".").lower()


def check_type(rtype: str) -> str:
    rtype = rtype.upper()
    if rtype not in SUPPORTED_TYPES:
        raise DnsProviderError(f"record type {rtype} is not supported ({', '.join(SUPPORTED_TYPES)})")
    return rtype


class DnsUpdater(abc.ABC):
    """What every provider offers. ``zone`` is the apex the records live under."""

    ttl: int = 300  # s
    propagation_delay: float = 0.0  # s, the DnsServer timing fields (build_updater sets them)
    polling_interval: float = 15.0
    propagation_timeout: float = 60.0

    @abc.abstractmethod
    async def set_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str]) -> None:
        """Replace the RRset with ``values`` (empty: delete it)."""

    async def add_to_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str]) -> None:
        current = await self.list_rrset(zone, name, rtype)
        await self.set_rrset(zone, name, rtype, list(dict.fromkeys([*current, *values])))

    async def remove_from_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str]) -> None:
        current = await self.list_rrset(zone, name, rtype)
        await self.set_rrset(zone, name, rtype, [v for v in current if v not in set(values)])

    @abc.abstractmethod
    async def list_rrset(self, zone: str, name: str, rtype: str) -> list[str]:
        """Values of the RRset now (empty when there is none)."""

    async def authoritative_txt(self, zone: str, name: str) -> list[str] | None:
        """TXT values at ``name`` as the zone's authoritative servers answer now (None: could not ask)."""
        from .propagation import query_authoritative_txt

        return await query_authoritative_txt(zone, name)
