"""MaxMind DB files: read them into range tables (the ``Mmdb`` variant), and write them.

Reading uses ``maxminddb`` and walks every network once, in the refresh helper, so workers look
addresses up in the shared range table instead of each decoding MMDB records per lookup.

The writer follows the MaxMind DB File Format Specification 2.0 (search tree of ``node_count``
nodes with two records each, a 16-byte zero separator, the data section, then the metadata after
``\\xab\\xcd\\xefMaxMind.com``). It builds IPv6 trees with IPv4 under ``::/96``, which is what
readers expect from an ``ip_version`` 6 database. The tests and ``bench/geo_lookup.py`` use it to
make databases equivalent to a CSV table; it is also a way to export a table for other tools.
"""
from __future__ import annotations

import os
import struct
import time
from array import array
from collections.abc import Iterable
from typing import Any

from .tables import ASN, COUNTRY, ParsedTable

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


# -- reading ---------------------------------------------------------------------------------------
def read_database(path: str, kind: str) -> ParsedTable:
    """Every network of the database at ``path`` as ranges of ``kind`` (``asn`` or ``country``).

    Records without the expected field are skipped (an ASN database may hold networks with no AS)."""
    import ipaddress

    import maxminddb

    table = ParsedTable(kind)
    with maxminddb.open_database(path, maxminddb.MODE_MMAP) as reader:
        for network, record in reader:
            if not isinstance(record, dict):
                continue
            if kind == ASN:
                num = record.get("autonomous_system_number")
                if not isinstance(num, int) or not 0 <= num <= 0xFFFFFFFF:
                    continue
                org = record.get("autonomous_system_organization")
                vid = table.value_id(num, num, org if isinstance(org, str) else "")
            else:
                code = _iso_code(record.get("country")) or _iso_code(record.get("registered_country"))
                if code is None:
                    continue
                vid = table.value_id(code, 0, code)
            start = int(network.network_address)
            end = int(network.broadcast_address)
            if isinstance(network, ipaddress.IPv4Network):
                table.v4.append((start, end, vid))
            elif start >> 32 == 0 and network.prefixlen >= 96:
                table.v4.append((start & 0xFFFFFFFF, end & 0xFFFFFFFF, vid))  # IPv4 under ::/96
            else:
                table.v6.append((start, end, vid))
    return table


def _iso_code(obj: Any) -> str | None:
    if isinstance(obj, dict):
        code = obj.get("iso_code")
        if isinstance(code, str) and 2 <= len(code) <= 3 and code.isascii():
            return code.upper()
    return None


# -- writing ---------------------------------------------------------------------------------------
def range_to_cidrs(start: int, end: int, bits: int) -> Iterable[tuple[int, int]]:
    """The fewest ``(network, prefix length)`` blocks covering ``start..end`` inclusive."""
    while start <= end:
        size = (start & -start).bit_length() - 1 if start else bits
        while size > 0 and start + (1 << size) - 1 > end:
            size -= 1
        yield start, bits - size
        start += 1 << size


class UInt16(int):
    """An integer stored as MMDB uint16 (metadata fields have fixed types that readers check)."""


class UInt32(int):
    """An integer stored as MMDB uint32."""


class UInt64(int):
    """An integer stored as MMDB uint64."""


_FIXED = {UInt16: 5, UInt32: 6, UInt64: 9}


class _Encoder:
    """MMDB data-section encoding (spec §"Data Section"), with identical values stored once."""

    def __init__(self):
        self.buf = bytearray()
        self.cache: dict[bytes, int] = {}

    @staticmethod
    def _ctrl(type_: int, size: int) -> bytes:
        if size < 29:
            head, extra = size, b""
        elif size < 285:
            head, extra = 29, bytes([size - 29])
        elif size < 65821:
            head, extra = 30, (size - 285).to_bytes(2, "big")
        else:
            head, extra = 31, (size - 65821).to_bytes(3, "big")
        if type_ <= 7:
            return bytes([(type_ << 5) | head]) + extra
        return bytes([head, type_ - 7]) + extra

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bool):
            return self._ctrl(14, int(value))
        if isinstance(value, str):
            raw = value.encode("utf-8")
            return self._ctrl(2, len(raw)) + raw
        if isinstance(value, int):
            if value < 0:
                raise ValueError("negative integers are not supported")
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            if type(value) in _FIXED:
                return self._ctrl(_FIXED[type(value)], len(raw)) + raw
            type_ = 5 if value < 1 << 16 else 6 if value < 1 << 32 else 9 if value < 1 << 64 else 10
            return self._ctrl(type_, len(raw)) + raw
        if isinstance(value, float):
            return self._ctrl(3, 8) + struct.pack(">d", value)
        if isinstance(value, dict):
            out = self._ctrl(7, len(value))
            for k, v in value.items():
                out += self.encode(str(k)) + self.encode(v)
            return out
        if isinstance(value, (list, tuple)):
            return self._ctrl(11, len(value)) + b"".join(self.encode(v) for v in value)
        raise TypeError(f"cannot encode {type(value).__name__} in an MMDB")

    def add(self, value: Any) -> int:
        raw = self.encode(value)
        off = self.cache.get(raw)
        if off is None:
            off = self.cache[raw] = len(self.buf)
            self.buf += raw
        return off


def write_database(path: str, v4: Iterable[tuple[int, int, Any]], v6: Iterable[tuple[int, int, Any]],
                   database_type: str = "GeoLite2-ASN", description: str = "stalwart") -> int:
    """Write an MMDB holding ``(start, end, record)`` ranges; returns the node count.

    Ranges must not overlap. Records are any of the MMDB types (maps, strings, integers, …)."""
    enc = _Encoder()
    left = array("q", [0])  # child: > 0 node, 0 empty, < 0 data offset (-off - 1)
    right = array("q", [0])

    def insert(net: int, plen: int, leaf: int, node: int = 0, first: int = 0) -> None:
        for depth in range(first, plen):
            bit = (net >> (127 - depth)) & 1
            side = right if bit else left
            child = side[node]
            if depth == plen - 1:
                side[node] = leaf
                return
            if child <= 0:
                new = len(left)
                left.append(child)
                right.append(child)
                side[node] = new
                child = new
            node = child

    v4_root = -1  # the node of ::/96, where every IPv4 network hangs; made on first use
    for start, end, record in v4:
        leaf = -enc.add(record) - 1
        if v4_root < 0:
            node = 0
            for _ in range(96):  # 96 left turns
                if left[node] <= 0:
                    left.append(0)
                    right.append(0)
                    left[node] = len(left) - 1
                node = left[node]
            v4_root = node
        for net, plen in range_to_cidrs(start, end, 32):
            insert(net, 96 + plen, leaf, v4_root, 96)
    for start, end, record in v6:
        leaf = -enc.add(record) - 1
        for net, plen in range_to_cidrs(start, end, 128):
            insert(net, plen, leaf)
    n = len(left)
    data_len = len(enc.buf)
    top = n + 16 + data_len
    record_size = 24 if top < 1 << 24 else 28 if top < 1 << 28 else 32

    def rec(v: int) -> int:
        return v if v > 0 else n if v == 0 else n + 16 + (-v - 1)

    tree = bytearray()
    for i in range(n):
        a, b = rec(left[i]), rec(right[i])
        if record_size == 24:
            tree += a.to_bytes(3, "big") + b.to_bytes(3, "big")
        elif record_size == 28:
            tree += (a & 0xFFFFFF).to_bytes(3, "big") + bytes([((a >> 24) << 4) | (b >> 24)]) \
                + (b & 0xFFFFFF).to_bytes(3, "big")
        else:
            tree += a.to_bytes(4, "big") + b.to_bytes(4, "big")
    meta = _Encoder().encode({
        "node_count": UInt32(n), "record_size": UInt16(record_size), "ip_version": UInt16(6),
        "database_type": database_type, "languages": ["en"], "binary_format_major_version": UInt16(2),
        "binary_format_minor_version": UInt16(0), "build_epoch": UInt64(int(time.time())),
        "description": {"en": description},
    })
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(tree)
        fh.write(bytes(16))
        fh.write(enc.buf)
        fh.write(METADATA_MARKER)
        fh.write(meta)
    os.replace(tmp, path)
    return n


def asn_record(number: int, organisation: str) -> dict:
    """A GeoLite2-ASN record."""
    return {"autonomous_system_number": number, "autonomous_system_organization": organisation}


def country_record(code: str) -> dict:
    """A GeoLite2-Country record (the fields this project reads)."""
    return {"country": {"iso_code": code}}


__all__ = [
    "ASN",
    "COUNTRY",
    "asn_record",
    "country_record",
    "range_to_cidrs",
    "read_database",
    "write_database",
]
