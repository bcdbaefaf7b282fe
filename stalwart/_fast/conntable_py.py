"""Pure-Python twin of ``conntable.pyx``: same layout, same API, same results.

Python has no atomic operations on shared memory, so the twin serialises every update with one
process-shared lock created with the table (before the master forks). Slower, equally correct.
"""
from __future__ import annotations

import multiprocessing
import struct

HDR = 8
EPOCHS = 4
MAGIC = 0x5354414C57415254

OK = 0
LISTENER_FULL = 1
SERVER_FULL = 2

_Q = struct.Struct("<q")


def size_for(max_listeners: int, max_workers: int) -> int:
    return 8 * (HDR + max_listeners + max_workers + max_workers * max_listeners)


class ConnectionTable:
    def __init__(self, buf, max_listeners: int, max_workers: int):
        view = memoryview(buf).cast("B")
        if len(view) < size_for(max_listeners, max_workers):
            raise ValueError("buffer too small for the table")
        if max_listeners < 1 or max_workers < 1:
            raise ValueError("capacity must be positive")
        self._cells = view.cast("q")
        self.max_listeners = max_listeners
        self.max_workers = max_workers
        self._lock = multiprocessing.Lock()
        c = self._cells
        if c[0] == 0:
            c[1] = max_listeners
            c[2] = max_workers
            c[0] = MAGIC
        elif c[0] != MAGIC or c[1] != max_listeners or c[2] != max_workers:
            raise ValueError("buffer holds a table of another shape")
        self._lbase = HDR
        self._bbase = HDR + max_listeners
        self._hbase = HDR + max_listeners + max_workers

    def _check(self, listener: int, worker: int) -> None:
        if not 0 <= listener < self.max_listeners:
            raise IndexError("listener index out of range")
        if not 0 <= worker < self.max_workers:
            raise IndexError("worker index out of range")

    def acquire(self, listener: int, worker: int, listener_limit: int, server_limit: int) -> int:
        self._check(listener, worker)
        c = self._cells
        li = self._lbase + listener
        with self._lock:
            if listener_limit > 0 and c[li] >= listener_limit:
                return LISTENER_FULL
            if c[3] >= server_limit:
                return SERVER_FULL
            c[li] += 1
            c[3] += 1
            c[self._hbase + worker * self.max_listeners + listener] += 1
        return OK

    def release(self, listener: int, worker: int) -> None:
        self._check(listener, worker)
        c = self._cells
        with self._lock:
            c[self._hbase + worker * self.max_listeners + listener] -= 1
            c[self._lbase + listener] -= 1
            c[3] -= 1

    def reclaim(self, worker: int) -> int:
        self._check(0, worker)
        c = self._cells
        total = 0
        row = self._hbase + worker * self.max_listeners
        with self._lock:
            for lst in range(self.max_listeners):
                n = c[row + lst]
                if n:
                    c[row + lst] = 0
                    c[self._lbase + lst] -= n
                    c[3] -= n
                    total += n
        return total

    def beat(self, worker: int) -> None:
        self._check(0, worker)
        with self._lock:
            self._cells[self._bbase + worker] += 1

    def heartbeat(self, worker: int) -> int:
        self._check(0, worker)
        return self._cells[self._bbase + worker]

    def reset_worker(self, worker: int) -> None:
        self._check(0, worker)
        with self._lock:
            self._cells[self._bbase + worker] = 0

    def server_count(self) -> int:
        return self._cells[3]

    def epoch(self, which: int) -> int:
        if not 0 <= which < EPOCHS:
            raise IndexError("epoch index out of range")
        return self._cells[4 + which]

    def bump_epoch(self, which: int) -> int:
        if not 0 <= which < EPOCHS:
            raise IndexError("epoch index out of range")
        with self._lock:
            self._cells[4 + which] += 1
            return self._cells[4 + which]

    def listener_count(self, listener: int) -> int:
        self._check(listener, 0)
        return self._cells[self._lbase + listener]

    def held(self, worker: int, listener: int) -> int:
        self._check(listener, worker)
        return self._cells[self._hbase + worker * self.max_listeners + listener]
