"""Small file primitives shared by the mail store, the spool, the TLS store and the ACME state.

* :func:`write_all` — ``os.write`` until every byte is written (a write may be short);
* :func:`write_durable` — create a file exclusively (0600), fill it, fdatasync it, remove it on failure;
* :func:`replace_file` — atomically replace a whole file (temporary file, fsync, rename): readers
  see the old or the new content, never half;
* :func:`read_available` — everything a non-blocking pipe holds now, and whether it reached EOF;
* :func:`fsync_dir` and :data:`dir_sync` — make renames into a directory durable, the latter as a
  group commit shared by concurrent threads;
* :func:`try_flock` — open (creating, 0600) and ``flock`` a lock file without waiting: the descriptor
  that holds the lock, or ``None`` when another open file holds it. The kernel drops a flock when its
  last descriptor closes, so a holder that dies never leaves a stale lock.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import threading


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_durable(path: str, fill) -> None:
    """Create ``path`` (exclusively, 0600), let ``fill(fd)`` write it, and fdatasync it: the data and
    the size that makes it readable are durable on return. On any failure the file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            fill(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)  # a failed close (NFS reports write errors here) fails the whole write
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass  # the first error is the one to report
        raise


def try_flock(path: str, exclusive: bool = True) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_available(fd: int) -> tuple[bytes, bool]:
    """Drain the non-blocking ``fd`` (a helper process's stdout): ``(bytes read, eof)``. A read error
    counts as EOF: the helper is gone either way."""
    parts = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return b"".join(parts), False
        except OSError:
            chunk = b""
        if not chunk:
            return b"".join(parts), True
        parts.append(chunk)


def replace_file(path: str, data: bytes, keep_mode: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it and rename it over ``path``.
    The file is 0600, or keeps the mode of the file it replaces with ``keep_mode``."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_mode:
            try:
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            except FileNotFoundError:
                pass  # a new file stays 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fsync_dir(path: str) -> None:
    """Make the renames and links already done in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSync:
    """Group commit of directory fsyncs within one process.

    Each delivery of a message must not be acknowledged before its rename is durable, but one fsync of
    ``new/`` makes every rename done before it started durable. Threads that renamed into the same
    directory while an fsync was running wait for the next one and share it, so N concurrent
    deliveries cost about two directory fsyncs instead of N.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state: dict[str, list[int]] = {}  # path -> [requested, done, running]

    def sync(self, path: str) -> None:
        with self._cond:
            st = self._state.setdefault(path, [0, 0, 0])
            st[0] += 1
            ticket = st[0]
            while True:
                if st[1] >= ticket:
                    return
                if not st[2]:
                    st[2] = 1
                    target = st[0]  # this fsync covers every rename requested so far
                    break
                self._cond.wait()
        synced = False
        try:
            fsync_dir(path)
            synced = True
        finally:
            with self._cond:
                st[2] = 0
                if synced:  # after a failure a waiter becomes the next runner and tries again
                    st[1] = max(st[1], target)
                if st[1] >= st[0] and len(self._state) > 1024:
                    self._state.pop(path, None)
                self._cond.notify_all()


#: the process-wide group commit (every delivery path of a worker shares it)
dir_sync = DirSync()
