"""Pure-Python twin of ``ratecounter.pyx``: same layout, same API, same results.

Python has no atomic operations on shared memory, so the twin serialises every update with one
process-shared lock created with the table (before the master forks). Slower, equally correct.
"""
from __future__ import annotations

import multiprocessing
import os

HDR = 8
ENTRY = 64
RING = 61
MAX_PROBE = 16
MAGIC = 0x52415445434E5452
SUBBUCKETS = 60

_M64 = (1 << 64) - 1
_BMASK = (1 << 40) - 1
_CMAX = (1 << 24) - 1


def _pow2(capacity: int) -> int:
    if not 1 <= capacity <= (1 << 24):
        raise ValueError("capacity must be between 1 and 2**24")
    n = 16
    while n < capacity:
        n <<= 1
    return n


def size_for(capacity: int) -> int:
    return 8 * (HDR + ENTRY * _pow2(capacity))


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13_words(k0: int, k1: int, data: bytes) -> int:
    """SipHash-1-3 with the key as two little-endian words."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def siphash13(key: bytes, data: bytes) -> int:
    if len(key) != 16:
        raise ValueError("the key has 16 bytes")
    return siphash13_words(int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"), data)


def _width(period_ms: int) -> int:
    return max(1, period_ms // SUBBUCKETS)


class RateCounter:
    def __init__(self, buf, capacity: int, key: bytes | None = None):
        cap = _pow2(capacity)
        view = memoryview(buf).cast("B")
        if len(view) < size_for(capacity):
            raise ValueError("buffer too small for the table")
        self._c = view.cast("Q")
        self.capacity = cap
        self._mask = cap - 1
        self._lock = multiprocessing.Lock()
        c = self._c
        if c[0] == 0:
            if key is None or len(key) != 16:
                key = os.urandom(16)
            c[1] = cap
            c[2] = int.from_bytes(key[:8], "little")
            c[3] = int.from_bytes(key[8:], "little")
            c[0] = MAGIC
        elif c[0] != MAGIC or c[1] != cap:
            raise ValueError("buffer holds a table of another shape")
        self._k0, self._k1 = c[2], c[3]

    def _find(self, key: bytes, now: int, width: int, create: bool) -> int:
        """Cell index of the entry of ``key``, or -1."""
        c = self._c
        tag = siphash13_words(self._k0, self._k1, key) or 1
        pos = tag & self._mask
        for i in range(MAX_PROBE):
            e = HDR + ((pos + i) & self._mask) * ENTRY
            if c[e] == tag:
                return e
            if c[e] == 0:
                break
        if not create:
            return -1
        lru = -1
        for i in range(MAX_PROBE):
            e = HDR + ((pos + i) & self._mask) * ENTRY
            t = c[e]
            if t == tag:
                return e
            if t == 0 or c[e + 1] + c[e + 2] * (RING + 1) < now:
                c[e] = tag
                self._clear(e, now, width)
                return e
            if lru < 0 or c[e + 1] < c[lru + 1]:
                lru = e
        c[lru] = tag
        c[4] += 1
        self._clear(lru, now, width)
        return lru

    def _clear(self, e: int, now: int, width: int) -> None:
        c = self._c
        c[e + 1] = now
        c[e + 2] = width
        for j in range(RING):
            c[e + 3 + j] = 0

    def _sum(self, e: int, b: int) -> int:
        c = self._c
        total = 0
        for i in range(RING):
            word = c[e + 3 + i]
            if word and ((b - (word >> 24)) & _BMASK) <= SUBBUCKETS:
                total += word & _CMAX
        return total

    def hit(self, key: bytes, now_ms: int, period_ms: int, n: int = 1) -> int:
        if period_ms <= 0 or n < 0:
            raise ValueError("period and count must be positive")
        width = _width(period_ms)
        c = self._c
        with self._lock:
            e = self._find(key, now_ms, width, True)
            if c[e + 2] != width:
                c[e + 2] = width
            if c[e + 1] < now_ms:
                c[e + 1] = now_ms
            b = (now_ms // width) & _BMASK
            slot = e + 3 + (now_ms // width) % RING
            word = c[slot]
            if word and (word >> 24) == b:
                c[slot] = (b << 24) | min((word & _CMAX) + n, _CMAX)
            else:
                c[slot] = (b << 24) | min(n, _CMAX)
            return self._sum(e, b)

    def count(self, key: bytes, now_ms: int, period_ms: int) -> int:
        if period_ms <= 0:
            raise ValueError("period must be positive")
        width = _width(period_ms)
        with self._lock:
            e = self._find(key, now_ms, width, False)
            return 0 if e < 0 else self._sum(e, (now_ms // width) & _BMASK)

    def retry_after(self, key: bytes, now_ms: int, period_ms: int, limit: int) -> int:
        if period_ms <= 0:
            raise ValueError("period must be positive")
        width = _width(period_ms)
        c = self._c
        with self._lock:
            e = self._find(key, now_ms, width, False)
            if e < 0:
                return 0
            b = (now_ms // width) & _BMASK
            total = self._sum(e, b)
            if total < limit:
                return 0
            counts = [0] * RING
            for i in range(RING):
                word = c[e + 3 + i]
                if word:
                    age = (b - (word >> 24)) & _BMASK
                    if age <= SUBBUCKETS:
                        counts[age] += word & _CMAX
        for k in range(SUBBUCKETS, -1, -1):
            total -= counts[k]
            if total < limit:
                return ((now_ms // width) + RING - k) * width - now_ms
        return RING * width

    def evictions(self) -> int:
        return self._c[4]
