"""Pure-Python twin of ``ipset.pyx``: a CIDR set for IPv4 and IPv6 with expiry and a payload.

Semantics (spec/README.md "IpMask", security.md §2):

* Every entry and every address lives in one 128-bit space: an IPv4 address ``a.b.c.d`` is its
  IPv4-mapped form ``::ffff:a.b.c.d`` and an IPv4 prefix ``p`` is ``96 + p``. That single rule gives
  the spec's cross-family matching for free: IPv4 entries match IPv4-mapped IPv6 addresses, and IPv6
  entries match IPv4 addresses through the mapped form. It also means ``10.0.0.0/8`` and
  ``::ffff:10.0.0.0/104`` are the same entry; it is reported in its IPv4 form.
* Networks compare masked; host bits of an added network are cleared.
* :meth:`IpSet.match` returns the payload of the longest unexpired prefix that contains the address.
  An entry is expired when ``0 < expires <= now``; ``now=0`` ignores expiry.
* Lookup probes one hash table per prefix length *in use*, longest first, and only the lengths that
  can contain the address at all (entries inside ``::ffff:0:0/96`` are never probed for a native IPv6
  address and the other way round), so the cost depends on the number of distinct prefix lengths,
  not on the number of entries (security.md §2 "We do better").

The compiled kernel imports :class:`IpEntry` and the text parsers from this module, so both twins
share one definition of the entry type and of the IpMask text rules.
"""
from __future__ import annotations

import socket
from typing import Any, Iterator, NamedTuple

_MAPPED_NET = 0xFFFF << 32  # ::ffff:0:0/96 as a 128-bit integer
_ALL = (1 << 128) - 1
_MASKS = tuple(_ALL ^ ((1 << (128 - n)) - 1) for n in range(129))


class IpEntry(NamedTuple):
    """One set entry: ``address`` packed (4 or 16 bytes, host bits cleared), ``prefix`` in that
    address's family, ``expires`` in unix seconds (0 = never), ``value`` the payload."""

    address: bytes
    prefix: int
    expires: int
    value: Any

    def __str__(self) -> str:
        fam = socket.AF_INET if len(self.address) == 4 else socket.AF_INET6
        text = socket.inet_ntop(fam, self.address)
        return text if self.prefix == len(self.address) * 8 else f"{text}/{self.prefix}"


def parse_address(text: str) -> bytes:
    """Packed form of an IP address given as text (``getpeername`` style).

    A zone id (``fe80::1%eth0``) is dropped: the peer's address is what is matched. Raises
    ValueError when ``text`` is not an IPv4 or IPv6 address.
    """
    if not isinstance(text, str):
        raise TypeError("address text must be str")
    pct = text.find("%")
    if pct >= 0:
        text = text[:pct]
    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text)
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IP address") from None


def parse_mask(text: str) -> tuple[bytes, int]:
    """Parse an IpMask (spec/README.md "IpMask") into ``(packed network, prefix)``.

    Accepts an address (prefix 32 / 128) or ``address/prefix`` with prefix 8..32 (IPv4) or 8..128
    (IPv6). Host bits are cleared. Unspecified addresses and zone ids are rejected (ValueError).
    """
    if not isinstance(text, str):
        raise TypeError("IpMask text must be str")
    text = text.strip()
    if "%" in text:
        raise ValueError(f"{text!r}: zone identifiers are not allowed")
    addr, slash, plen = text.partition("/")
    try:
        packed = parse_address(addr)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network") from None
    bits = len(packed) * 8
    if slash:
        if not plen.isdigit() or not plen.isascii() or (len(plen) > 1 and plen[0] == "0"):
            raise ValueError(f"{text!r}: bad prefix length")
        prefix = int(plen)
        if not 8 <= prefix <= bits:
            raise ValueError(f"{text!r}: prefix length must be 8..{bits}")
    else:
        prefix = bits
    packed = _clear_host(packed, prefix)
    if not any(packed):
        raise ValueError(f"{text!r}: the unspecified address is not allowed")
    return packed, prefix


def _clear_host(packed: bytes, prefix: int) -> bytes:
    bits = len(packed) * 8
    value = int.from_bytes(packed, "big") & (((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1))
    return value.to_bytes(len(packed), "big")


def _key(packed: bytes, prefix: int | None = None) -> tuple[int, int]:
    """(128-bit address, prefix in the 128-bit space) for a packed address and prefix."""
    n = len(packed)
    if n == 4:
        if prefix is not None and not 0 <= prefix <= 32:
            raise ValueError("IPv4 prefix must be 0..32")
        return _MAPPED_NET | int.from_bytes(packed, "big"), 96 + (32 if prefix is None else prefix)
    if n == 16:
        if prefix is not None and not 0 <= prefix <= 128:
            raise ValueError("IPv6 prefix must be 0..128")
        return int.from_bytes(packed, "big"), 128 if prefix is None else prefix
    raise ValueError("a packed address is 4 or 16 bytes")


def _is_mapped(addr: int) -> bool:
    return addr >> 32 == 0xFFFF


def _overlaps_mapped(net: int, plen: int) -> bool:
    """Can this entry contain an IPv4(-mapped) address?"""
    if plen <= 96:
        return (_MAPPED_NET & _MASKS[plen]) == net
    return _is_mapped(net)


def _overlaps_native(net: int, plen: int) -> bool:
    """Can this entry contain an address outside ::ffff:0:0/96?"""
    return plen < 96 or not _is_mapped(net)


def _entry(net: int, plen: int, expires: int, value: Any) -> IpEntry:
    if plen >= 96 and _is_mapped(net):
        return IpEntry((net & 0xFFFFFFFF).to_bytes(4, "big"), plen - 96, expires, value)
    return IpEntry(net.to_bytes(16, "big"), plen, expires, value)


class IpSet:
    """CIDR set with per-entry expiry and payload; see the module docstring for the semantics."""

    def __init__(self) -> None:
        self._tables: list[dict[int, tuple[int, Any]]] = [{} for _ in range(129)]
        self._n_mapped = [0] * 129
        self._n_native = [0] * 129
        # probe plans: (mask, table) per prefix length in use, longest first
        self._probe_mapped: tuple[tuple[int, dict], ...] = ()
        self._probe_native: tuple[tuple[int, dict], ...] = ()
        self._count = 0

    def _account(self, net: int, plen: int, delta: int) -> None:
        changed = False
        if _overlaps_mapped(net, plen):
            before = self._n_mapped[plen]
            self._n_mapped[plen] += delta
            changed |= (before == 0) != (self._n_mapped[plen] == 0)
        if _overlaps_native(net, plen):
            before = self._n_native[plen]
            self._n_native[plen] += delta
            changed |= (before == 0) != (self._n_native[plen] == 0)
        if changed:
            t = self._tables
            self._probe_mapped = tuple((_MASKS[n], t[n]) for n in range(128, -1, -1) if self._n_mapped[n])
            self._probe_native = tuple((_MASKS[n], t[n]) for n in range(128, -1, -1) if self._n_native[n])

    def add(self, packed: bytes, prefix: int, expires: int = 0, value: Any = True) -> bool:
        """Insert or replace the entry for ``packed/prefix`` (host bits cleared).

        ``expires`` is unix seconds, 0 for never. ``value`` is what :meth:`match` returns; it may
        not be None, which is what :meth:`match` returns on a miss. Returns True when the entry is
        new, False when it replaced one.
        """
        if value is None:
            raise ValueError("the payload may not be None")
        if expires < 0:
            raise ValueError("expires must be >= 0")
        addr, plen = _key(bytes(packed), prefix)
        net = addr & _MASKS[plen]
        table = self._tables[plen]
        new = net not in table
        table[net] = (int(expires), value)
        if new:
            self._count += 1
            self._account(net, plen, 1)
        return new

    def remove(self, packed: bytes, prefix: int) -> bool:
        """Remove the entry for ``packed/prefix``; returns whether there was one."""
        addr, plen = _key(bytes(packed), prefix)
        net = addr & _MASKS[plen]
        if self._tables[plen].pop(net, None) is None:
            return False
        self._count -= 1
        self._account(net, plen, -1)
        return True

    def get(self, packed: bytes, prefix: int) -> IpEntry | None:
        """The entry stored for exactly ``packed/prefix`` (expired or not), or None."""
        addr, plen = _key(bytes(packed), prefix)
        net = addr & _MASKS[plen]
        hit = self._tables[plen].get(net)
        return None if hit is None else _entry(net, plen, hit[0], hit[1])

    def match(self, packed: bytes, now: int = 0) -> Any:
        """Payload of the longest unexpired entry containing ``packed`` (4 or 16 bytes), or None."""
        n = len(packed)
        if n == 4:
            addr = _MAPPED_NET | int.from_bytes(packed, "big")
            plan = self._probe_mapped
        elif n == 16:
            addr = int.from_bytes(packed, "big")
            plan = self._probe_mapped if addr >> 32 == 0xFFFF else self._probe_native
        else:
            raise ValueError("a packed address is 4 or 16 bytes")
        for mask, table in plan:
            hit = table.get(addr & mask)
            if hit is not None and (hit[0] == 0 or hit[0] > now):
                return hit[1]
        return None

    def contains(self, packed: bytes, now: int = 0) -> bool:
        """Whether an unexpired entry contains ``packed``."""
        return self.match(packed, now) is not None

    def match_sockaddr(self, host: str, now: int = 0) -> Any:
        """:meth:`match` on the host part of a ``getpeername()`` result (zone id ignored)."""
        return self.match(parse_address(host), now)

    def add_text(self, text: str, expires: int = 0, value: Any = True) -> bool:
        """:meth:`add` for an IpMask written as text (``10.0.0.0/8``, ``2001:db8::7``)."""
        packed, prefix = parse_mask(text)
        return self.add(packed, prefix, expires, value)

    def remove_text(self, text: str) -> bool:
        packed, prefix = parse_mask(text)
        return self.remove(packed, prefix)

    def match_text(self, text: str, now: int = 0) -> Any:
        """:meth:`match` for an address written as text."""
        return self.match(parse_address(text), now)

    def purge(self, now: int) -> list[IpEntry]:
        """Remove every entry with ``0 < expires <= now``; returns the removed entries."""
        gone = []
        for plen, table in enumerate(self._tables):
            dead = [net for net, (exp, _) in table.items() if 0 < exp <= now]
            for net in dead:
                exp, value = table.pop(net)
                gone.append(_entry(net, plen, exp, value))
                self._count -= 1
                self._account(net, plen, -1)
        return gone

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def prefix_lengths(self) -> tuple[int, ...]:
        """Distinct prefix lengths in use, in the 128-bit space, longest first (probe order)."""
        return tuple(n for n in range(128, -1, -1) if self._tables[n])

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[IpEntry]:
        """Every entry, expired ones included; order unspecified."""
        for plen, table in enumerate(self._tables):
            for net, (exp, value) in list(table.items()):
                yield _entry(net, plen, exp, value)
