"""CSV tables in the ip-location-db layout, turned into disjoint range tables (spec/services.md §3
"Resource: CSV format", "We do better: CSV, Numeric files, Overlaps").

Two kinds of file, no header row (one is tolerated and skipped):

* ASN: ``start,end,number[,organisation]`` — e.g. ``1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc."``
* country: ``start,end,code[,code-override]`` — e.g. ``2001:200::,2001:200:ffff:…:ffff,JP``

Rows are RFC 4180 records read one line at a time: a quoted column may hold commas and doubled
quotes; an unbalanced quote invalidates only its row. Columns beyond the ones used are ignored, the
last line counts with or without a newline, and every invalid row is counted (never silently ends
the file). ``*-num.csv`` files carry decimal integers instead of textual addresses.
"""
from __future__ import annotations

import csv
import heapq
import socket
from dataclasses import dataclass, field

ASN = "asn"
COUNTRY = "country"
_V4_MAX = 0xFFFFFFFF
_V6_MAX = (1 << 128) - 1


def split_row(line: str) -> list[str] | None:
    """Columns of one CSV row (RFC 4180 §2), trimmed; None when the row is not well-formed (an
    unbalanced quote, or text after a closing quote)."""
    if '"' not in line:
        return [c.strip() for c in line.split(",")]
    try:
        # The C reader handles quoted commas and doubled quotes; strict mode refuses what is not
        # RFC 4180 instead of guessing. One line at a time, so a bad quote costs only its row.
        cols = next(csv.reader((line,), strict=True))
    except (csv.Error, StopIteration):
        return None
    return [c.strip() for c in cols]


def parse_address(text: str) -> tuple[int, bool] | None:
    """``(integer, is_ipv6)`` of a textual address, or None."""
    try:
        if ":" in text:
            return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big"), True
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"), False
    except (OSError, ValueError):
        return None


@dataclass
class ParsedTable:
    """Ranges of one kind gathered from any number of files, before flattening.

    ``values`` holds ``(number, label)`` records: for ASN tables the AS number and its organisation
    (interned per number, first name wins); for country tables ``(0, code)``."""

    kind: str
    v4: list[tuple[int, int, int]] = field(default_factory=list)
    v6: list[tuple[int, int, int]] = field(default_factory=list)
    values: list[tuple[int, str]] = field(default_factory=list)
    _index: dict = field(default_factory=dict)

    def value_id(self, key, number: int, label: str) -> int:
        vid = self._index.get(key)
        if vid is None:
            vid = self._index[key] = len(self.values)
            self.values.append((number, label))
        return vid

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)


@dataclass
class FileStats:
    """What one file contributed: rows kept, rows skipped as invalid, and the first bad row."""

    rows: int = 0
    invalid: int = 0
    header_skipped: bool = False
    first_invalid: str | None = None


def parse_csv(text: str, table: ParsedTable, url: str = "") -> FileStats:
    """Add the rows of one CSV file to ``table``. ``url`` selects the numeric format
    (``-num.csv``) and, for it, the family (IPv6 when the URL contains ``ipv6``)."""
    stats = FileStats()
    low = url.lower().split("?", 1)[0]
    numeric = low.endswith(("-num.csv", "-num.csv.gz", "-num.csv.gzip"))
    numeric_v6 = "ipv6" in low
    is_asn = table.kind == ASN
    first = True
    for line in text.split("\n"):
        if not line.strip():
            continue
        cols = split_row(line)
        ok = False
        if cols is not None and len(cols) >= 3:
            if numeric:
                rng = _numeric_range(cols[0], cols[1], numeric_v6)
            else:
                a, b = parse_address(cols[0]), parse_address(cols[1])
                rng = (a[0], b[0], a[1]) if a and b and a[1] == b[1] else None
            if rng is None and first:
                # A first row whose columns 0-1 are not addresses is a header (We do better).
                first = False
                stats.header_skipped = True
                continue
            if rng is not None and rng[0] <= rng[1]:
                start, end, v6 = rng
                vid = _value(table, cols, is_asn)
                if vid >= 0:
                    (table.v6 if v6 else table.v4).append((start, end, vid))
                    ok = True
        elif cols is not None and first and not numeric and parse_address(cols[0]) is None:
            first = False
            stats.header_skipped = True
            continue
        first = False
        if ok:
            stats.rows += 1
        else:
            stats.invalid += 1
            if stats.first_invalid is None:
                stats.first_invalid = line[:200]
    return stats


def _numeric_range(a: str, b: str, v6: bool) -> tuple[int, int, bool] | None:
    if not (a.isdigit() and b.isdigit()):
        return None
    start, end = int(a), int(b)
    if end > (_V6_MAX if v6 else _V4_MAX):
        return None
    return start, end, v6


def _value(table: ParsedTable, cols: list[str], is_asn: bool) -> int:
    if is_asn:
        num = cols[2]
        if not num.isdigit() or not num.isascii():
            return -1
        asn = int(num)
        if asn > _V4_MAX:
            return -1
        name = cols[3] if len(cols) > 3 else ""
        return table.value_id(asn, asn, name)
    code = cols[3] if len(cols) > 3 and cols[3] else cols[2]
    if not 2 <= len(code.encode("utf-8", "replace")) <= 3 or not code.isascii():
        return -1
    code = code.upper()
    return table.value_id(code, 0, code)


def flatten(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Disjoint sorted ``(start, end, value)`` intervals where the narrowest range containing an
    address wins (spec/services.md §3 "We do better: Overlaps"); among equal widths the one listed
    first wins. Adjacent pieces with the same value are joined."""
    order = sorted(range(len(ranges)), key=lambda k: ranges[k][0])
    ranges, positions = [ranges[k] for k in order], order
    if all(ranges[i][0] > ranges[i - 1][1] for i in range(1, len(ranges))):
        return _join(ranges)
    # Sweep the boundaries; the heap holds the ranges covering the current point, narrowest first.
    bounds = sorted({r[0] for r in ranges} | {r[1] + 1 for r in ranges})
    out: list[tuple[int, int, int]] = []
    heap: list[tuple[int, int, int, int]] = []
    i, n = 0, len(ranges)
    for k, x in enumerate(bounds[:-1]):
        while i < n and ranges[i][0] == x:
            s, e, v = ranges[i]
            heapq.heappush(heap, (e - s, positions[i], e, v))
            i += 1
        while heap and heap[0][2] < x:
            heapq.heappop(heap)
        if not heap:
            continue
        seg_end = bounds[k + 1] - 1
        v = heap[0][3]
        if out and out[-1][2] == v and out[-1][1] + 1 == x:
            out[-1] = (out[-1][0], seg_end, v)
        else:
            out.append((x, seg_end, v))
    return out


def _join(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Join neighbours that touch and carry the same value (an MMDB yields one range per CIDR)."""
    out: list[tuple[int, int, int]] = []
    for r in ranges:
        if out and out[-1][2] == r[2] and out[-1][1] + 1 == r[0]:
            out[-1] = (out[-1][0], r[1], r[2])
        else:
            out.append(r)
    return out


def fingerprint(sources: list[str]) -> int:
    """A 64-bit tag of a table's source list, stored in the table file, so a changed list of URLs
    (or database files) is fetched at once instead of waiting for the old table to expire."""
    import hashlib

    digest = hashlib.blake2b("\n".join(sources).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
