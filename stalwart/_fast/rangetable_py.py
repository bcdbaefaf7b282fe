"""Range table: disjoint sorted address ranges with a value each, in one flat buffer (twin of
``rangetable.pyx``; spec/services.md §3 "Storage and refresh", "We do better: overlaps").

The master builds the table once into a file in the data directory; every worker maps that file
read-only, so the table costs one copy of page cache however many workers there are. Lookups are a
bucket index on the top 16 bits followed by a binary search in the bucket, so a table of 500,000
IPv4 ranges needs about 3 comparisons instead of 19.

File layout (little-endian, every section 8-byte aligned)::

    header   64 bytes  magic "STWRANGE", version u32, flags u32, n4 u64, n6 u64, nvals u64,
                       built_at u64 (Unix s), fingerprint u64, reserved u64
    ipv4     index u32[65538]; starts u32[n4]; (end u32, value u32)[n4]
    ipv6     index u32[65538]; start_hi u64[n6]; (start_lo u64, end_hi u64, end_lo u64,
             value u32, pad u32)[n6]
    values   offsets u32[nvals+1]; records: u32 number + UTF-8 label, at offsets relative to the
             end of the offsets array

Why this shape: the binary search reads only the dense start array (16 IPv4 or 8 IPv6 starts per
cache line; an IPv6 start's low half is read only on a tie of the high halves), and the end and
value of the found range sit together, so a lookup in a 15 MiB table costs about three cache
misses (bucket bound, starts, end+value). The index has one spare entry to keep what follows it
8-byte aligned.

``index[b]`` is the first range whose start has top-16-bit bucket ``>= b``; ``index[65536] == n``.
The range holding an address is the last one whose start is ``<=`` the address, provided its end is
``>=`` the address. Ranges passed to :func:`write` must already be disjoint (see
``stalwart.services.geo.ranges.flatten``).
"""
from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate

MAGIC = b"STWRANGE"
VERSION = 2
HEADER = struct.Struct("<8sIIQQQQQQ")
HEADER_SIZE = 64
BUCKETS = 65536
INDEX_BYTES = 4 * (BUCKETS + 2)  # bucket bounds plus one spare entry for alignment
_MASK64 = (1 << 64) - 1


class RangeTableError(ValueError):
    """The buffer is not a range table of this version, or is truncated."""


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _layout(n4: int, n6: int, nvals: int) -> tuple[int, int, int]:
    """Byte offsets of the IPv4, IPv6 and values sections."""
    off4 = HEADER_SIZE
    off6 = off4 + _align8(INDEX_BYTES + 12 * n4)
    offv = off6 + _align8(INDEX_BYTES + 40 * n6)
    return off4, off6, offv


def _bucket_index(bucket_of_each: Iterable[int], n: int) -> array:
    """``index[b]`` = first position whose bucket is >= b, for a sorted sequence of buckets."""
    counts = [0] * (BUCKETS + 1)
    for b in bucket_of_each:
        counts[b + 1] += 1
    index = array("I", accumulate(counts))
    assert index[BUCKETS] == n
    index.append(n)  # the spare entry
    return index


def encode(v4: Sequence[tuple[int, int, int]], v6: Sequence[tuple[int, int, int]],
           values: Sequence[tuple[int, str]], built_at: int = 0, fingerprint: int = 0) -> bytes:
    """Serialise a table. ``v4``/``v6`` are sorted, disjoint ``(start, end, value_index)`` with
    integer addresses; ``values`` are ``(number, label)`` records referred to by index."""
    nvals = len(values)
    prev = -1
    for s, e, v in v4:
        if not (prev < s <= e <= 0xFFFFFFFF) or not 0 <= v < nvals:
            raise RangeTableError(f"IPv4 range {s}-{e} is unsorted, overlapping or out of range")
        prev = e
    prev = -1
    for s, e, v in v6:
        if not (prev < s <= e <= (1 << 128) - 1) or not 0 <= v < nvals:
            raise RangeTableError(f"IPv6 range {s}-{e} is unsorted, overlapping or out of range")
        prev = e
    n4, n6 = len(v4), len(v6)
    off4, off6, offv = _layout(n4, n6, nvals)
    out = bytearray(HEADER.pack(MAGIC, VERSION, 0, n4, n6, nvals, built_at, fingerprint & _MASK64, 0))
    out += bytes(HEADER_SIZE - len(out))

    out += _bucket_index((r[0] >> 16 for r in v4), n4).tobytes()
    out += array("I", [r[0] for r in v4]).tobytes()
    tail = array("I")
    for r in v4:
        tail.append(r[1])
        tail.append(r[2])
    out += tail.tobytes()
    out += bytes(off6 - len(out))

    out += _bucket_index((r[0] >> 112 for r in v6), n6).tobytes()
    out += array("Q", [r[0] >> 64 for r in v6]).tobytes()
    rest = array("Q")
    for r in v6:
        rest.append(r[0] & _MASK64)
        rest.append(r[1] >> 64)
        rest.append(r[1] & _MASK64)
        rest.append(r[2])  # value in the low half, zero padding in the high half
    out += rest.tobytes()
    out += bytes(offv - len(out))

    blobs = [struct.pack("<I", num & 0xFFFFFFFF) + label.encode("utf-8") for num, label in values]
    offsets = array("I", [0])
    for b in blobs:
        offsets.append(offsets[-1] + len(b))
    out += offsets.tobytes()
    out += b"".join(blobs)
    return bytes(out)


def write(path: str, v4, v6, values, built_at: int = 0, fingerprint: int = 0) -> int:
    """Write a table atomically (temporary file, fsync, rename) and return its size in bytes.

    Readers that mapped the previous file keep their mapping; they see the new one when they next
    check the path (the rename gives it a new inode)."""
    data = encode(v4, v6, values, built_at, fingerprint)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(data)


def read_header(buf) -> dict:
    """The header fields of a table buffer; raises :class:`RangeTableError` when it is not one."""
    with memoryview(buf) as mv:
        if len(mv) < HEADER_SIZE:
            raise RangeTableError("range table truncated (no header)")
        magic, version, flags, n4, n6, nvals, built_at, fingerprint, _ = HEADER.unpack_from(mv, 0)
        if magic != MAGIC:
            raise RangeTableError("not a range table (bad magic)")
        if version != VERSION:
            raise RangeTableError(f"range table version {version} is not supported (expected {VERSION})")
        _, _, offv = _layout(n4, n6, nvals)
        if len(mv) < offv + 4 * (nvals + 1):
            raise RangeTableError("range table truncated")
        end = offv + 4 * (nvals + 1) + struct.unpack_from("<I", mv, offv + 4 * nvals)[0]
        if len(mv) < end:
            raise RangeTableError("range table truncated (values)")
    return {"n4": n4, "n6": n6, "nvals": nvals, "built_at": built_at, "fingerprint": fingerprint,
            "size": end}


def _v4_of(packed: bytes) -> int:
    """The IPv4 address of a 4-byte or IPv4-mapped 16-byte packed address, else -1."""
    if len(packed) == 4:
        return int.from_bytes(packed, "big")
    if len(packed) == 16 and packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return int.from_bytes(packed[12:], "big")
    return -1


class RangeTable:
    """A read-only view of a table buffer (bytes, mmap). Same API as the compiled kernel.

    ``find(packed)`` takes a packed address (``socket.inet_pton`` output, 4 or 16 bytes; an
    IPv4-mapped IPv6 address is looked up as IPv4) and returns the value index or -1.
    ``value(i)`` returns ``(number, label)``; ``get(packed)`` combines both (None when absent).
    """

    def __init__(self, buf):
        hdr = read_header(buf)
        self._mv = mv = memoryview(buf).cast("B")
        self.n4, self.n6, self.nvals = hdr["n4"], hdr["n6"], hdr["nvals"]
        self.built_at, self.fingerprint, self.size = hdr["built_at"], hdr["fingerprint"], hdr["size"]
        off4, off6, offv = _layout(self.n4, self.n6, self.nvals)
        n4, n6 = self.n4, self.n6
        p = off4
        self._idx4 = mv[p:p + 4 * (BUCKETS + 1)].cast("I")
        p += INDEX_BYTES
        self._s4 = mv[p:p + 4 * n4].cast("I")
        self._ev4 = mv[p + 4 * n4:p + 12 * n4].cast("I")  # end, value, end, value, …
        p = off6
        self._idx6 = mv[p:p + 4 * (BUCKETS + 1)].cast("I")
        p += INDEX_BYTES
        self._s6 = mv[p:p + 8 * n6].cast("Q")  # start high halves
        self._r6 = mv[p + 8 * n6:p + 40 * n6].cast("Q")  # start lo, end hi, end lo, value
        self._offsets = mv[offv:offv + 4 * (self.nvals + 1)].cast("I")
        self._records = offv + 4 * (self.nvals + 1)
        self._validate()

    def _validate(self) -> None:
        """Reject a damaged file before any lookup trusts its indexes (the compiled twin would
        otherwise read out of bounds)."""
        for idx, n in ((self._idx4, self.n4), (self._idx6, self.n6)):
            bounds = idx.tolist()
            if bounds[BUCKETS] != n or sorted(bounds) != bounds:  # sorted() of a run is linear
                raise RangeTableError("range table index is damaged")
        for vals in (self._ev4[1::2], self._r6[3::4]):
            if len(vals) and max(vals) >= self.nvals:
                raise RangeTableError("range table value index out of range")
        offs = self._offsets.tolist()
        if offs[0] != 0 or any(b - a < 4 for a, b in zip(offs, offs[1:])):
            raise RangeTableError("range table values are damaged")

    def __len__(self) -> int:
        return self.n4 + self.n6

    def find(self, packed: bytes) -> int:
        if not isinstance(packed, bytes):
            raise TypeError("packed address must be bytes")
        ip = _v4_of(packed)
        if ip >= 0:
            return self._find4(ip)
        if len(packed) != 16:
            raise ValueError("packed address must be 4 or 16 bytes")
        return self._find6(int.from_bytes(packed[:8], "big"), int.from_bytes(packed[8:], "big"))

    def find_int(self, ip: int, v6: bool) -> int:
        """Look an integer address up (IPv6 when ``v6``)."""
        if v6:
            return self._find6(ip >> 64, ip & _MASK64)
        return self._find4(ip)

    def _find4(self, ip: int) -> int:
        b = ip >> 16
        lo, hi = self._idx4[b], self._idx4[b + 1]
        i = bisect_right(self._s4, ip, lo, hi) - 1
        if i < 0 or self._ev4[2 * i] < ip:
            return -1
        return self._ev4[2 * i + 1]

    def _find6(self, hi64: int, lo64: int) -> int:
        b = hi64 >> 48
        lo, hi = self._idx6[b], self._idx6[b + 1]
        s, r = self._s6, self._r6
        while lo < hi:  # first position whose start is > the address
            mid = (lo + hi) >> 1
            sh = s[mid]
            if sh > hi64 or (sh == hi64 and r[4 * mid] > lo64):
                hi = mid
            else:
                lo = mid + 1
        i = lo - 1
        if i < 0:
            return -1
        eh, el = r[4 * i + 1], r[4 * i + 2]
        if eh < hi64 or (eh == hi64 and el < lo64):
            return -1
        return r[4 * i + 3]

    def value(self, i: int) -> tuple[int, str]:
        if not 0 <= i < self.nvals:
            raise IndexError("value index out of range")
        a = self._records + self._offsets[i]
        b = self._records + self._offsets[i + 1]
        num = int.from_bytes(self._mv[a:a + 4], "little")
        return num, bytes(self._mv[a + 4:b]).decode("utf-8")

    def get(self, packed: bytes) -> tuple[int, str] | None:
        i = self.find(packed)
        return None if i < 0 else self.value(i)

    def release(self) -> None:
        """Drop every view of the buffer, so an mmap behind it can be closed."""
        for name in ("_idx4", "_s4", "_ev4", "_idx6", "_s6", "_r6", "_offsets", "_mv"):
            getattr(self, name).release()
        # Lookups after a release find nothing, as in the compiled twin.
        self.n4 = self.n6 = self.nvals = 0
        self._idx4 = self._idx6 = array("I", bytes(4 * (BUCKETS + 1)))
        self._s4 = self._ev4 = self._offsets = array("I")
        self._s6 = self._r6 = array("Q")


def find_pair(first: RangeTable | None, second: RangeTable | None, packed: bytes) -> int:
    """Both tables' value indexes for ``packed`` in one call, as ``(i1 + 1) << 32 | (i2 + 1)``
    (0 when neither holds it); either table may be None."""
    a = first.find(packed) if first is not None else -1
    c = second.find(packed) if second is not None else -1
    if second is None and first is None:
        if not isinstance(packed, bytes):
            raise TypeError("packed address must be bytes")
        if len(packed) not in (4, 16):
            raise ValueError("packed address must be 4 or 16 bytes")
    return ((a + 1) << 32) | (c + 1)
