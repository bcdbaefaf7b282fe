"""Pure-Python twin of ``commit.pyx``: the same jobs, checks and results on Python threads (see that
module for the API)."""
from __future__ import annotations

import errno
import operator
import os
import queue
import threading

from ..fileio import dir_sync, write_all, write_durable

_INT64 = (-(1 << 63), (1 << 63) - 1)


def _store(tmp: bytes, final: bytes, directory: bytes, data: bytes) -> tuple[int, bool]:
    """(errno or 0, whether the rename was done): the kernel's ``_store`` then ``_dir_sync``."""
    try:
        write_durable(os.fsdecode(tmp), lambda fd: write_all(fd, data))  # removes tmp if it fails
        try:
            os.rename(tmp, final)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # the rename's error is the one to report
            raise
    except OSError as exc:
        return exc.errno or errno.EIO, False
    except BaseException:  # noqa: BLE001 - a job must always complete, like the kernel's
        return errno.EIO, False
    try:
        dir_sync.sync(os.fsdecode(directory))
    except OSError as exc:
        return exc.errno or errno.EIO, True
    except BaseException:  # noqa: BLE001
        return errno.EIO, True
    return 0, True


class _Shared:
    """What the threads use: never the CommitQueue itself, so dropping it without close() still
    runs __del__ (which closes), as the kernel's __dealloc__ does."""

    def __init__(self, efd: int):
        self.efd = efd
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.mu = threading.Lock()
        self.done: list[tuple[int, int, bool]] = []


def _run(sh: _Shared) -> None:
    while True:
        job = sh.jobs.get()
        if job is None:
            return
        token, *args = job
        err, published = _store(*args)
        with sh.mu:
            wake = not sh.done
            sh.done.append((token, err, published))
            if wake:
                os.eventfd_write(sh.efd, 1)


class CommitQueue:
    def __init__(self, threads=8):
        n = operator.index(threads)
        if n < 1:
            raise ValueError("threads must be at least 1")
        self._efd: int | None = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._pid = os.getpid()
        self._sh = _Shared(self._efd)
        self._queued: set[int] = set()
        self._closed = False
        self._threads = [threading.Thread(target=_run, args=(self._sh,), name=f"commit_{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def _check_open(self) -> None:
        if self._closed or self._efd is None:
            raise ValueError("CommitQueue is closed")
        if os.getpid() != self._pid:
            raise ValueError("CommitQueue used in a forked child (its threads did not survive fork)")

    def fileno(self) -> int:
        self._check_open()
        return self._efd

    def submit(self, token, tmp, final, directory, data) -> None:
        self._check_open()
        token = operator.index(token)
        for value in (tmp, final, directory, data):
            if type(value) is not bytes:
                raise TypeError(f"expected bytes, got {type(value).__name__}")
        if not _INT64[0] <= token <= _INT64[1]:
            raise OverflowError("token outside 64 bits")
        if any(b"\0" in p for p in (tmp, final, directory)):
            raise ValueError("embedded NUL byte in a path")
        if token in self._queued:
            raise ValueError(f"token {token} is already queued")
        self._queued.add(token)
        self._sh.jobs.put((token, tmp, final, directory, data))

    def drain(self) -> list[tuple[int, int, bool]]:
        if self._efd is None:
            return []
        try:
            os.eventfd_read(self._efd)  # first: a job finishing after this read writes it again
        except BlockingIOError:
            pass
        with self._sh.mu:
            done, self._sh.done = self._sh.done, []
        self._queued.difference_update(token for token, _, _ in done)
        return done

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            return  # a forked child: the threads are not ours
        for _ in self._threads:
            self._sh.jobs.put(None)  # after every queued job: they are all finished first
        for t in self._threads:
            t.join()

    def __del__(self) -> None:
        if not hasattr(self, "_threads"):
            return  # __init__ failed before the threads existed
        self.close()
        efd, self._efd = self._efd, None
        if efd is not None and os.getpid() == self._pid:
            os.close(efd)
