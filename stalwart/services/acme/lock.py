"""Advisory locks that keep ACME operations on one account from interleaving.

``stalwart-cli acme rollover|deactivate|revoke|rollback`` and the server's renewal helper are separate
processes that read and write the same files under ``<data-dir>/acme/``. Without coordination a
rollover racing a renewal can lose the new key (the renewal writes back the account file it read
before the rollover) or the renewal signs with a key the CA has already replaced.

One lock per AcmeProvider, ``<data-dir>/acme/locks/<provider-id>.lock``, rather than one for the
whole directory: everything that must not interleave goes through one account (its key, its URI,
and the certificates ordered with it), while renewals on different CAs are independent; a single
lock would make a rollover at one CA wait behind a DNS-01 propagation wait at another.

* ``fcntl.flock`` on the lock file: the kernel releases it when the holder dies, so a crashed helper
  or a killed CLI never leaves a stale lock behind (the file's text may stay; it is only believed
  while the lock is actually held, see :func:`holder`).
* The holder writes its PID, what it is doing and since when into the file (one JSON line), so a
  waiter and ``acme status`` can say who holds it; the text is cleared before the lock is released.
* Waiting is bounded: a waiter polls with ``LOCK_NB`` (flock has no timeout) and gives up with
  :class:`StateLocked`, which names the holder.
* Lock files are never removed: unlinking a lock file lets two processes lock two different inodes.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from ...fileio import try_flock
from ...tls.certs import iso_time
from .challenges import acme_dir
from .client import AcmeError
from .state import _safe

POLL_INTERVAL = 0.1  # s between LOCK_NB attempts while waiting


class StateLocked(AcmeError):
    """Another process holds the provider's lock past the wait: retry later (temporary)."""

    kind = "Locked"
    temporary = True


def lock_path(data_dir: str, provider_id: str) -> str:
    return os.path.join(acme_dir(data_dir), "locks", f"{_safe(provider_id)}.lock")


def describe(info: dict | None) -> str:
    """``pid 1234 (renewal of example.org, since 2026-11-24T08:30:00Z)`` for a :func:`holder` answer."""
    if not info:
        return "another process"
    since = f", since {iso_time(info['since'])}" if isinstance(info.get("since"), (int, float)) else ""
    return f"pid {info.get('pid', '?')} ({info.get('what', '?')}{since})"


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0)
        doc = json.loads(text) if text.strip() else {}
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def holder(data_dir: str, provider_id: str) -> dict | None:
    """Who holds the provider's lock now (``{"pid", "what", "since"}``), or None when nobody does.

    Probes with a non-blocking flock instead of trusting the file: the text of a holder that died
    stays behind, but its lock does not. Never creates the file."""
    try:
        fd = os.open(lock_path(data_dir, provider_id), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {"pid": None, "what": "unknown"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class ProviderLock:
    """The exclusive lock of one provider's ACME state; use :meth:`held`."""

    def __init__(self, data_dir: str, provider_id: str):
        self.data_dir = data_dir
        self.provider_id = provider_id
        self.path = lock_path(data_dir, provider_id)
        self._fd: int | None = None

    def try_acquire(self, what: str) -> bool:
        """Take the lock without waiting; on success record who holds it and why."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = try_flock(self.path)
        if fd is None:
            return False
        self._fd = fd
        doc = json.dumps({"pid": os.getpid(), "what": what, "since": round(time.time(), 3)}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, doc + b"\n", 0)
        except OSError:
            pass  # the lock is what matters; the text only informs waiters
        return True

    async def acquire(self, what: str, wait: float, on_wait: Callable[[dict | None], None] | None = None) -> None:
        """Take the lock, waiting at most ``wait`` seconds; raise :class:`StateLocked` naming the
        holder after that. ``on_wait(holder)`` is called once when the lock is busy at first try."""
        deadline = time.monotonic() + max(0.0, wait)
        first = True
        while not self.try_acquire(what):
            info = self._holder_now()
            if first and on_wait is not None:
                on_wait(info)
            first = False
            if time.monotonic() >= deadline:
                raise StateLocked(f"the ACME state of AcmeProvider {self.provider_id!r} is locked by "
                                  f"{describe(info)}; gave up after {wait:g} s")
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))

    def _holder_now(self) -> dict | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return _read(fd) or None
        finally:
            os.close(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # nobody holds it: leave no name behind
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @asynccontextmanager
    async def held(self, what: str, wait: float, on_wait: Callable[[dict | None], None] | None = None):
        await self.acquire(what, wait, on_wait)
        try:
            yield self
        finally:
            self.release()
