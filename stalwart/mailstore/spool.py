"""Messages being received, kept on disk once they outgrow memory: ``<data-dir>/spool/``.

SMTP and LMTP keep a small message in memory; a large one is written here while it arrives
(stalwart.protocols.smtp_data), so a hundred clients sending 250 MiB each cost disk, not RAM.

The spool file is the delivered message itself: its first bytes are the ``Received:`` header
(known when DATA starts, dated when the file is created), then the body as it arrives. At the end
it is fsynced once and hard-linked into each recipient's ``tmp/``, renamed into ``new/`` and the
directory fsynced (:meth:`Maildir.deliver_link`): one write for N recipients, each delivery atomic.
A copy is made only where a link cannot be (another filesystem) or when a header must go in front
of the body (the AI classification, known only at the end).

Every method blocks (disk) and runs in a pool thread, one job at a time per session (the session
core waits for each), except :meth:`Spool.discard`, which any thread may call at any time and which
never blocks: the event loop calls it when a client drops mid-DATA, and unlinking a file of up to
100 MiB takes 5-50 ms, so the close and unlink are left to one background thread per process
(:class:`_Reaper`). After a crash only files under ``spool/`` (and Maildir ``tmp/``) remain, never a
partial file in ``new/``; :func:`sweep` removes spool files older than :data:`MAX_AGE`.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time

from ..fileio import write_all, write_durable
from .maildir import MailstoreError, copy_file

#: spool files older than this are leftovers of a killed worker (a session lives ten minutes at most)
MAX_AGE = 86400.0
_counter = itertools.count(1)


class SpoolDiscarded(MailstoreError):
    """The spool was discarded (the connection went away) before the job that wanted it ran."""


class _Reaper:
    """Closes and unlinks discarded spool files on one daemon thread of this process.

    One thread with an unbounded queue rather than a thread per file: :meth:`put` never blocks
    (``SimpleQueue.put``; starting a thread is only paid once), and a thousand clients dropping at
    once cost one thread unlinking one file after another instead of a thousand threads. A file
    still queued when the process dies is left for :func:`sweep`. A forked child starts with an
    empty queue and no thread: the parent's pending files are the parent's to remove."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int | None, str | None]] = queue.SimpleQueue()
        self._mu = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, fd: int | None, path: str | None) -> None:
        self._queue.put((fd, path))
        if self._thread is None:
            with self._mu:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="spool-reaper", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            fd, path = self._queue.get()
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:  # gone already, or not removable now: sweep() takes what is left
                    pass


_reaper = _Reaper()


def _after_fork_in_child() -> None:
    global _reaper
    _reaper = _Reaper()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Spool:
    """One message being received. Created empty (no I/O); the first :meth:`append` creates the file."""

    __slots__ = ("_discarded", "_fd", "_lock", "directory", "head", "path", "size")

    def __init__(self, directory: str):
        self.directory = directory
        self.path: str | None = None
        self.head = b""  # the header written first, for a copy that puts another header after it
        self.size = 0  # bytes in the file
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._discarded = False

    @property
    def opened(self) -> bool:
        return self.path is not None

    def append(self, head: bytes, chunk) -> None:
        """Write ``chunk`` at the end; ``head`` first when the file does not exist yet. A failed
        write (disk full) discards the spool and raises."""
        with self._lock:
            try:
                if self._discarded:
                    raise SpoolDiscarded("spool discarded")
                if self.path is None:
                    os.makedirs(self.directory, mode=0o700, exist_ok=True)
                    path = os.path.join(self.directory, f"{time.time():.6f}.P{os.getpid()}Q{next(_counter)}")
                    self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    self.path = path
                    write_all(self._fd, head)
                    self.head = bytes(head)
                    self.size = len(head)
                write_all(self._fd, chunk)
                self.size += len(chunk)
            except BaseException:
                self._discarded = True
                self._remove()
                raise
        self._after_job()

    def deliver(self, store, tail: bytes, extra: bytes, accounts: list[str]) -> dict[str, BaseException | None]:
        """Write the last bytes, fsync, deliver to every account and remove the spool file.

        ``extra`` (another header) goes right after the ``Received:`` header, which needs a copy.
        Returns what :meth:`MailStore.deliver` returns: per account ``None`` or the error it met."""
        composed = None
        with self._lock:
            try:
                if self._discarded or self.path is None:
                    raise SpoolDiscarded("spool discarded")
                write_all(self._fd, tail)
                self.size += len(tail)
                source = self.path
                if extra:
                    composed = source + ".final"
                    with open(source, "rb") as src:
                        def fill(fd: int) -> None:
                            write_all(fd, self.head + extra)
                            copy_file(src.fileno(), fd, len(self.head), self.size - len(self.head))

                        write_durable(composed, fill)
                    source = composed
                else:
                    os.fdatasync(self._fd)  # once, for every recipient: they all get this inode
                return store.deliver_file(source, self.size + len(extra), accounts)
            finally:
                if composed is not None:
                    try:
                        os.unlink(composed)
                    except FileNotFoundError:
                        pass
                self._discarded = True  # delivered or failed: the client gets its answer either way
                self._remove()

    def discard(self) -> None:
        """Remove the file, from any thread, at any time, any number of times, without waiting: if a
        job is writing or delivering right now, that job removes it when it is done; otherwise the
        file is taken from this spool here and closed and unlinked by the background thread (the
        caller may be the event loop), so no later job can see it."""
        self._discarded = True
        if self._lock.acquire(blocking=False):
            try:
                fd, self._fd = self._fd, None
                path, self.path = self.path, None
            finally:
                self._lock.release()
            if fd is not None or path is not None:
                _reaper.put(fd, path)

    def _after_job(self) -> None:
        # A discard() that came while the job held the lock could not remove the file: do it now.
        if self._discarded and self._lock.acquire(blocking=False):
            try:
                self._remove()
            finally:
                self._lock.release()

    def _remove(self) -> None:
        """With the lock held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        path, self.path = self.path, None
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def sweep(directory: str, max_age: float = MAX_AGE, now: float | None = None) -> int:
    """Remove spool files older than ``max_age`` seconds (left by a killed worker); how many."""
    limit = (time.time() if now is None else now) - max_age
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < limit:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
