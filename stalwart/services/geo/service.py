"""ASN and country lookups for sessions: :class:`GeoService` (spec/services.md §3).

How to use it (a worker, or the SMTP session that builds the ``Received:`` header)::

    geo = GeoService.for_config(cfg, data_dir, caches)  # once per configuration generation
    info = geo.lookup(packed_ip)                        # GeoInfo | None; never blocks, and never
                                                        # raises for bytes input
    info = await geo.resolve(packed_ip)                 # same, and queries DNS for the Dns variant

In a worker, ``cfg`` is ``plan.config``, ``data_dir`` is ``plan.extra["data_dir"]`` (the master
passes both to every generation) and ``caches`` the worker's ``CacheRegistry`` (or None). ``packed_ip`` is ``socket.inet_pton`` output (4 or 16 bytes; IPv4-mapped IPv6 counts as IPv4).
``info.received_comment()`` is the ``AS64500 EXAMPLE-NET, US`` inside the ``Received:`` header's
``(… [ip] (…))``; ``info.event_keys()`` gives ``Asn`` and ``Country`` for session log events;
``await geo.answer("192.0.2.1")`` is the JSON answer for a management endpoint.

For ``Resource`` and ``Mmdb`` the tables are files in ``<data-dir>/geo/`` written by the master's
refresh helper; every worker maps them read-only (one copy in the page cache for all workers) and
notices a new file within ``CHECK_INTERVAL``. Loopback addresses are never looked up; private and
reserved ones are (a table may cover them). For ``Dns``, :meth:`GeoService.lookup` answers from the
TXT cache only and :meth:`GeoService.resolve` queries.
"""
from __future__ import annotations

import ipaddress
import mmap
import os
import time

from ... import events
from ..._fast import load as load_kernel
from .config import Asn, AsnDns, AsnMmdb, AsnResource
from .dns import DnsAsn, DnsLookupError, ResolverTxt, TxtLookup
from .info import GeoInfo
from .refresh import table_path
from .tables import ASN, COUNTRY

rangetable = load_kernel("rangetable")

CHECK_INTERVAL = 1.0  # s between checks for a new table file
INFO_CACHE_LIMIT = 1 << 16


class MappedTable:
    """One table file mapped read-only, re-mapped when the path points at a new file."""

    def __init__(self, path: str):
        self.path = path
        self.table = None
        self.signature: tuple[int, int, int] | None = None
        self._map: mmap.mmap | None = None

    def refresh(self) -> bool:
        """Map the file again if it changed; True when the table changed."""
        try:
            st = os.stat(self.path)
        except OSError:
            changed = self.table is not None
            self._drop()
            return changed
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self.signature:
            return False
        self.signature = sig
        try:
            with open(self.path, "rb") as fh:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            table = rangetable.RangeTable(mapped)
        except (OSError, ValueError) as exc:  # RangeTableError is a ValueError
            events.emit("resource.error", level="warn", Path=self.path, Reason=f"unusable table: {exc}")
            self._drop()
            return True
        self._drop()
        self.table, self._map = table, mapped
        return True

    def _drop(self) -> None:
        if self.table is not None:
            self.table.release()
        self.table = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere: the mapping goes with it
                pass
        self._map = None

    def close(self) -> None:
        self._drop()
        self.signature = None


class GeoService:
    """ASN and country of client addresses; see the module docstring."""

    def __init__(self, cfg: Asn, data_dir: str, txt: TxtLookup | None = None, clock=time.monotonic):
        self.cfg = cfg
        self.data_dir = data_dir
        self.clock = clock
        self.dns = DnsAsn(cfg, txt, clock=time.monotonic) if isinstance(cfg, AsnDns) else None
        self.tables: dict[str, MappedTable] = {}
        if isinstance(cfg, (AsnResource, AsnMmdb)):
            self.tables = {kind: MappedTable(table_path(data_dir, kind)) for kind in (ASN, COUNTRY)}
        self._asn: MappedTable | None = self.tables.get(ASN)
        self._country: MappedTable | None = self.tables.get(COUNTRY)
        self._next_check = 0.0
        self._infos: dict[int, GeoInfo] = {}
        self._pair: tuple = (None, None)  # the current (asn, country) tables for find_pair

    @classmethod
    def from_config(cls, cfg: Asn, data_dir: str, txt: TxtLookup | None = None) -> GeoService:
        return cls(cfg, data_dir, txt)

    @classmethod
    def for_config(cls, config, data_dir: str, caches=None, sync_timeout: float = 2.0) -> GeoService:
        """The service for a whole configuration: its ``Asn`` object, and for the ``Dns`` variant
        the project resolver built from its ``DnsResolver`` and ``Cache`` objects (``caches``: the
        worker's cache registry, so the ``dnsTxt`` cache is shared with every other TXT lookup)."""
        txt = None
        if isinstance(config.Asn, AsnDns):
            from ..dns import build_resolver

            txt = ResolverTxt(lambda: build_resolver(config, caches), sync_timeout)
        return cls(config.Asn, data_dir, txt)

    @property
    def enabled(self) -> bool:
        return bool(self.tables) or self.dns is not None

    def _check(self, now: float) -> None:
        self._next_check = now + CHECK_INTERVAL
        changed = False
        for mt in self.tables.values():
            changed |= mt.refresh()
        if changed:
            self._infos = {}
            self._pair = (self._asn.table, self._country.table)

    def lookup(self, packed: bytes) -> GeoInfo | None:
        """ASN and country of ``packed`` from the tables (or the DNS cache); None when unknown."""
        if not self.tables:
            return self._cached_dns(packed)
        now = self.clock()
        if now >= self._next_check:
            self._check(now)
        n = len(packed)
        if n == 4:
            if packed[0] == 127:
                return None
        elif n != 16 or packed == _V6_LOOPBACK or (packed[12] == 127 and packed[:12] == _V4_MAPPED):
            return None
        key = rangetable.find_pair(*self._pair, packed)
        if not key:
            return None
        info = self._infos.get(key)
        if info is None:
            info = self._make_info(key)
        return info

    def _make_info(self, key: int) -> GeoInfo:
        if len(self._infos) >= INFO_CACHE_LIMIT:
            self._infos = {}
        a, c = (key >> 32) - 1, (key & 0xFFFFFFFF) - 1
        asn, name = self._asn.table.value(a) if a >= 0 else (None, None)
        cc = self._country.table.value(c)[1] if c >= 0 else None
        info = self._infos[key] = GeoInfo(asn, name or None, cc)
        return info

    def _cached_dns(self, packed: bytes) -> GeoInfo | None:
        if self.dns is None:
            return None
        ip = _address(packed)
        if ip is None or ip.is_loopback:
            return None
        return self.dns.cached(_canonical(ip))[1]

    async def resolve(self, packed: bytes) -> GeoInfo | None:
        """Like :meth:`lookup`, but the ``Dns`` variant queries the zone on a cache miss. A failed
        query is logged and answers None; it never raises."""
        if self.dns is None:
            return self.lookup(packed)
        ip = _address(packed)
        if ip is None or ip.is_loopback:
            return None
        try:
            return await self.dns.lookup(ip, _canonical(ip))
        except DnsLookupError as exc:
            events.emit("resource.error", level="debug", Reason=str(exc))
            return None

    def resolve_sync(self, packed: bytes) -> GeoInfo | None:
        """Blocking :meth:`resolve`, for the control socket and the CLI (never a worker)."""
        if self.dns is None:
            return self.lookup(packed)
        ip = _address(packed)
        if ip is None or ip.is_loopback:
            return None
        return self.dns.lookup_sync(ip, _canonical(ip))

    async def answer(self, address: str) -> dict:
        """A management answer for ``address`` (text): ``{"ok": true, "address", "found", "asn",
        "asnName", "country"}``, or ``{"ok": false, "error"}``. Same shape as the control
        socket's ``geo.lookup``, for an HTTP endpoint served by a worker."""
        try:
            ip = ipaddress.ip_address(address.strip())
        except (ValueError, AttributeError):
            return {"ok": False, "error": f"{address!r} is not an IP address"}
        if not self.enabled:
            return {"ok": False, "error": "ASN and GeoIP lookups are disabled (Asn is Disabled)"}
        info = await self.resolve(ip.packed)
        return {"ok": True, "address": str(ip), "found": info is not None, **(info.as_dict() if info else {})}

    def status(self) -> dict:
        """What each table holds: ranges and build time (for ``stalwart-cli geo status``)."""
        self._check(self.clock())
        out = {}
        for kind, mt in self.tables.items():
            t = mt.table
            out[kind] = None if t is None else {"ranges": len(t), "ipv4": t.n4, "ipv6": t.n6,
                                               "values": t.nvals, "builtAt": int(t.built_at)}
        return out

    def close(self) -> None:
        for mt in self.tables.values():
            mt.close()


_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_V6_LOOPBACK = b"\x00" * 15 + b"\x01"


def _address(packed: bytes):
    try:
        ip = ipaddress.ip_address(packed)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _canonical(ip) -> bytes:
    return ip.packed
