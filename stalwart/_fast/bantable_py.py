"""Pure-Python twin of ``bantable.pyx``: same layout, same API, same results.

Python has no atomic operations on shared memory, so the twin serialises every update with one
process-shared lock created with the table (before the master forks). Slower, equally correct.
"""
from __future__ import annotations

import multiprocessing
import os

from .ratecounter_py import siphash13_words

HDR = 16
ENTRY = 4
MAX_PROBE = 32
MAGIC = 0x42414E5441424C45
NEVER = (1 << 44) - 1
REMOVED = 1
EXPIRY_MAX = NEVER - 1

CHANGED = 1
EVICTED = 2
FULL = 4

_PERSISTED = 1 << 17
_M64 = (1 << 64) - 1


def _pow2(capacity: int) -> int:
    if not 1 <= capacity <= (1 << 26):
        raise ValueError("capacity must be between 1 and 2**26")
    n = 8
    while n < capacity:
        n <<= 1
    return n


def size_for(capacity: int) -> int:
    return 8 * (HDR + ENTRY * _pow2(capacity))


def _live(state: int, now: int) -> bool:
    e = state >> 20
    return state != 0 and (e == NEVER or e > now)


def _state(expires: int, v6: int, prefix: int, reason: int, persisted: bool) -> int:
    return (expires << 20) | (_PERSISTED if persisted else 0) | (v6 << 16) | (prefix << 8) | (reason & 0xFF)


def _split(packed: bytes, prefix: int) -> tuple[int, int]:
    if len(packed) == 4:
        lo = int.from_bytes(packed, "big")
        lo &= ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF) if prefix else 0
        return 0, lo
    v = int.from_bytes(packed, "big")
    v &= (((1 << 128) - 1) << (128 - prefix)) & ((1 << 128) - 1) if prefix else 0
    return v >> 64, v & _M64


def _entry_tuple(c, e: int, state: int) -> tuple:
    v6 = (state >> 16) & 1
    hi, lo = c[e + 1], c[e + 2]
    packed = hi.to_bytes(8, "big") + lo.to_bytes(8, "big") if v6 else (lo & 0xFFFFFFFF).to_bytes(4, "big")
    exp = state >> 20
    return (packed, (state >> 8) & 0xFF, 0 if exp == NEVER else exp, state & 0xFF, bool(state & _PERSISTED))


class BanTable:
    def __init__(self, buf, capacity: int, key: bytes | None = None):
        cap = _pow2(capacity)
        view = memoryview(buf).cast("B")
        if len(view) < size_for(capacity):
            raise ValueError("buffer too small for the table")
        self._c = view.cast("Q")
        self.capacity = cap
        self._mask = cap - 1
        self._lock = multiprocessing.Lock()
        self.last_evicted = None
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

    def _tag(self, v6: int, prefix: int, hi: int, lo: int) -> int:
        data = ((v6 << 8) | prefix).to_bytes(8, "little") + hi.to_bytes(8, "little") + lo.to_bytes(8, "little")
        t = siphash13_words(self._k0, self._k1, data)
        return t if t > 1 else t + 2

    def _same(self, e: int, tag: int, v6: int, prefix: int, hi: int, lo: int, state: int) -> bool:
        c = self._c
        return (c[e] == tag and (state >> 16) & 1 == v6 and (state >> 8) & 0xFF == prefix
                and c[e + 1] == hi and c[e + 2] == lo)

    def _lookup_one(self, v6: int, prefix: int, hi: int, lo: int, now: int) -> int:
        c = self._c
        tag = self._tag(v6, prefix, hi, lo)
        pos = tag & self._mask
        for i in range(MAX_PROBE):
            e = HDR + ((pos + i) & self._mask) * ENTRY
            t = c[e]
            if t == 0:
                return -1
            if t == tag:
                state = c[e + 3]
                if _live(state, now) and self._same(e, tag, v6, prefix, hi, lo, state):
                    return state & 0xFF
        return -1

    def lookup(self, packed: bytes, now: int) -> int:
        c = self._c
        n = len(packed)
        if n == 4:
            bits = c[5]
            for prefix in range(32, -1, -1):
                if (bits >> prefix) & 1:
                    r = self._lookup_one(0, prefix, *_split(packed, prefix), now)
                    if r >= 0:
                        return r
            return -1
        if n != 16:
            raise ValueError("a packed address has 4 or 16 bytes")
        bits = c[6] | (c[7] << 64) | (c[8] << 128)
        for prefix in range(128, -1, -1):
            if (bits >> prefix) & 1:
                r = self._lookup_one(1, prefix, *_split(packed, prefix), now)
                if r >= 0:
                    return r
        return -1

    def contains(self, packed: bytes, now: int) -> bool:
        return self.lookup(packed, now) >= 0

    def ban(self, packed: bytes, prefix: int, expires: int, reason: int, now: int, persisted: bool = False) -> int:
        n = len(packed)
        if n == 4:
            v6 = 0
            if not 0 <= prefix <= 32:
                raise ValueError("IPv4 prefix out of range")
        elif n == 16:
            v6 = 1
            if not 0 <= prefix <= 128:
                raise ValueError("IPv6 prefix out of range")
        else:
            raise ValueError("a packed address has 4 or 16 bytes")
        if not 0 <= reason <= 255:
            raise ValueError("reason out of range")
        exp = NEVER if expires <= 0 else min(expires, NEVER)
        hi, lo = _split(packed, prefix)
        c = self._c
        with self._lock:
            if v6:
                c[6 + (prefix >> 6)] |= 1 << (prefix & 63)
            else:
                c[5] |= 1 << prefix
            rc = self._upsert(v6, prefix, hi, lo, exp, reason, now, persisted)
            if rc & CHANGED:
                c[4] += 1
        return rc

    def _merge(self, e: int, v6: int, prefix: int, exp: int, reason: int, now: int, persisted: bool) -> int:
        c = self._c
        old = c[e + 3]
        if _live(old, now):
            oe = old >> 20
            keep = oe if oe == NEVER or (exp != NEVER and oe >= exp) else exp
            new = _state(keep, v6, prefix, reason, False)
            if (old & ~_PERSISTED) == new:
                if persisted:
                    c[e + 3] = old | _PERSISTED
                return 0
        else:
            new = _state(exp, v6, prefix, reason, False)
        c[e + 3] = new | (_PERSISTED if persisted else 0)
        return CHANGED

    def _upsert(self, v6, prefix, hi, lo, exp, reason, now, persisted) -> int:
        c = self._c
        tag = self._tag(v6, prefix, hi, lo)
        pos = tag & self._mask
        for i in range(MAX_PROBE):
            e = HDR + ((pos + i) & self._mask) * ENTRY
            t = c[e]
            if t == 0:
                break
            if t == tag and self._same(e, tag, v6, prefix, hi, lo, c[e + 3]):
                return self._merge(e, v6, prefix, exp, reason, now, persisted)
        victim, victim_exp = -1, 0
        for i in range(MAX_PROBE):
            e = HDR + ((pos + i) & self._mask) * ENTRY
            state = c[e + 3]
            if c[e] == 0 or (state != 0 and not _live(state, now)):
                c[e], c[e + 1], c[e + 2] = tag, hi, lo
                c[e + 3] = _state(exp, v6, prefix, reason, persisted)
                return CHANGED
            if state != 0 and (victim < 0 or state >> 20 < victim_exp):
                victim, victim_exp = e, state >> 20
        if victim < 0:
            return FULL
        self.last_evicted = _entry_tuple(c, victim, c[victim + 3])
        c[victim], c[victim + 1], c[victim + 2] = tag, hi, lo
        c[victim + 3] = _state(exp, v6, prefix, reason, persisted)
        return CHANGED | EVICTED

    def unban(self, packed: bytes, prefix: int, now: int) -> bool:
        n = len(packed)
        if n not in (4, 16):
            raise ValueError("a packed address has 4 or 16 bytes")
        v6 = int(n == 16)
        hi, lo = _split(packed, prefix)
        tag = self._tag(v6, prefix, hi, lo)
        pos = tag & self._mask
        c = self._c
        found = False
        with self._lock:
            for i in range(MAX_PROBE):
                e = HDR + ((pos + i) & self._mask) * ENTRY
                if c[e] == 0:
                    break
                state = c[e + 3]
                if state != 0 and self._same(e, tag, v6, prefix, hi, lo, state):
                    c[e + 3] = _state(REMOVED, v6, prefix, state & 0xFF, True)
                    found = found or _live(state, now)
            if found:
                c[4] += 1
        return found

    def epoch(self) -> int:
        return self._c[4]

    def entries(self, now: int, pending_only: bool = False) -> list[tuple]:
        c = self._c
        out = []
        with self._lock:
            for i in range(self.capacity):
                e = HDR + i * ENTRY
                if c[e] == 0:
                    continue
                state = c[e + 3]
                if not _live(state, now) or (pending_only and state & _PERSISTED):
                    continue
                out.append((i, *_entry_tuple(c, e, state), state))
        return out

    def mark_persisted(self, index: int, state: int) -> bool:
        if not 0 <= index < self.capacity:
            raise IndexError("entry index out of range")
        c = self._c
        with self._lock:
            e = HDR + index * ENTRY + 3
            if c[e] != state:
                return False
            c[e] = state | _PERSISTED
            return True
