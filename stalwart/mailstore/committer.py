"""Deliveries from the event loop to disk without a Python thread per message.

A worker installs one :class:`Committer` (:func:`install`) over the ``commit`` kernel
(``stalwart/_fast/commit.pyx``): the loop hands each message over in one call, C threads write,
fdatasync, rename and fsync the directory (group commit) without ever taking the GIL, and finished
messages come back in batches through an eventfd the loop reads. The durability contract is the one of
:meth:`Maildir.deliver`: the coroutine returns only once the message is wholly and durably in
``new/``. Where there is no committer (tests of a core alone, tools), sessions use the thread path.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import os

from .._fast import load
from .maildir import Maildir


class Committer:
    def __init__(self, loop: asyncio.AbstractEventLoop, executor, threads: int = 8, kernel=None):
        self._loop = loop
        self._executor = executor  # the worker's I/O pool: first delivery to a mailbox (mkdir)
        self._queue = (kernel or load("commit")).CommitQueue(threads)
        self._tokens = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._closed = False
        loop.add_reader(self._queue.fileno(), self._drain)

    async def deliver(self, maildir: Maildir, message: bytes) -> str:
        """Like :meth:`Maildir.deliver`, awaited on the loop: the unique name once it is durable."""
        if self._closed:  # the worker closed it after the session chose this path
            return await self._loop.run_in_executor(self._executor, maildir.deliver, message)
        name, tmp, final, directory = maildir.delivery_paths(len(message))
        token = next(self._tokens)
        fut = self._loop.create_future()
        self._waiting[token] = fut
        try:
            self._queue.submit(token, os.fsencode(tmp), os.fsencode(final), os.fsencode(directory), message)
        except BaseException:
            del self._waiting[token]
            raise
        err, published = await fut
        if err == 0:
            return name
        if err == errno.ENOENT and not published:
            # tmp/ or new/ is missing: the mailbox does not exist yet (first message of an account)
            # or was removed. The thread path creates its directories and delivers. Not after the
            # rename (published): the message is in new/ already, only its fsync failed.
            return await self._loop.run_in_executor(self._executor, maildir.deliver, message)
        raise OSError(err, os.strerror(err), final if published else tmp)

    def _drain(self) -> None:
        for token, err, published in self._queue.drain():
            fut = self._waiting.pop(token, None)
            if fut is not None and not fut.done():  # done: the session went away (cancelled)
                fut.set_result((err, published))

    def close(self) -> None:
        """Finish the queued deliveries (their sessions may be gone; the messages are kept)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._queue.fileno())
        self._queue.close()
        self._drain()


_current: Committer | None = None


def install(committer: Committer | None) -> Committer | None:
    """Make ``committer`` this process's (None: none); returns the previous one."""
    global _current
    previous, _current = _current, committer
    return previous


def current() -> Committer | None:
    return _current
