"""Pure-Python twin of ``commit.pyx``: the same jobs on Python threads (see that module)."""
from __future__ import annotations

import os
import queue
import threading

from ..fileio import dir_sync, write_all, write_durable


def _store(tmp: bytes, final: bytes, directory: bytes, data: bytes) -> int:
    try:
        write_durable(os.fsdecode(tmp), lambda fd: write_all(fd, data))  # removes tmp if it fails
        try:
            os.rename(tmp, final)
        except OSError:
            os.unlink(tmp)
            raise
        dir_sync.sync(os.fsdecode(directory))
    except OSError as exc:
        return exc.errno or 5  # EIO when the error carries none
    return 0


class CommitQueue:
    def __init__(self, threads: int = 8):
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._efd: int | None = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._mu = threading.Lock()
        self._done: list[tuple[int, int]] = []
        self._queued: set[int] = set()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"commit_{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def fileno(self) -> int:
        if self._efd is None:
            raise ValueError("CommitQueue is closed")
        return self._efd

    def submit(self, token: int, tmp: bytes, final: bytes, directory: bytes, data: bytes) -> None:
        if self._closed:
            raise ValueError("CommitQueue is closed")
        for value in (tmp, final, directory, data):
            if not isinstance(value, bytes):
                raise TypeError(f"expected bytes, got {type(value).__name__}")
        if any(b"\0" in p for p in (tmp, final, directory)):
            raise ValueError("embedded NUL byte in a path")
        with self._mu:
            if token in self._queued:
                raise ValueError(f"token {token} is already queued")
            self._queued.add(token)
        self._jobs.put((token, tmp, final, directory, data))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            token, *args = job
            err = _store(*args)
            with self._mu:
                wake = not self._done
                self._done.append((token, err))
                if wake:
                    os.eventfd_write(self._efd, 1)

    def drain(self) -> list[tuple[int, int]]:
        if self._efd is None:
            return []
        try:
            os.eventfd_read(self._efd)  # first: a job finishing after this read writes it again
        except BlockingIOError:
            pass
        with self._mu:
            done, self._done = self._done, []
            self._queued.difference_update(token for token, _ in done)
        return done

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)  # after every queued job: they are all finished first
        for t in self._threads:
            t.join()

    def __del__(self) -> None:
        try:
            if hasattr(self, "_threads"):
                self.close()
        finally:
            efd, self._efd = getattr(self, "_efd", None), None
            if efd is not None:
                os.close(efd)
