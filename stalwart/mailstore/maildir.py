"""Maildir delivery and reading, with a UID map for IMAP and POP3.

Layout of one mailbox (``<data-dir>/mail/<account>/``)::

    tmp/  new/  cur/      the Maildir proper (https://cr.yp.to/proto/maildir.html)
    uidlist               "<uidvalidity> <nextuid>" then one "<uid> <basename>" line per message
    uidlist.lock          flock(2) target serialising UID assignment across worker processes

Delivery writes ``tmp/<unique>``, fsyncs it, renames it into ``new/`` and fsyncs ``new/``, so after a
crash a message is either wholly in ``new/`` or not there at all. Every method here blocks (disk):
sessions call them through :class:`~stalwart.protocols.base.Blocking`.
"""
from __future__ import annotations

import fcntl
import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass

from ..errors import StalwartError

#: RFC 3501 §2.3.2 system flags and their Maildir info letters (sorted ASCII in a file name)
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}
_counter = itertools.count(1)


class MailstoreError(StalwartError):
    """A mailbox could not be read or written (disk full, permissions, corrupt UID list)."""


@dataclass(slots=True)
class Message:
    """One message of a mailbox snapshot."""

    uid: int
    basename: str  # unique name without the ``:2,`` info part
    subdir: str  # "new" or "cur"
    filename: str
    size: int
    mtime: float

    @property
    def flags(self) -> frozenset[str]:
        _, sep, info = self.filename.partition(":2,")
        return frozenset(LETTER_FLAGS[c] for c in info if c in LETTER_FLAGS) if sep else frozenset()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirSync:
    """Group commit of directory fsyncs within one process.

    Each delivery must not be acknowledged before its rename is durable, but one fsync of
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
            _fsync_dir(path)
            synced = True
        finally:
            with self._cond:
                st[2] = 0
                if synced:  # after a failure a waiter becomes the next runner and tries again
                    st[1] = max(st[1], target)
                if st[1] >= st[0] and len(self._state) > 1024:
                    self._state.pop(path, None)
                self._cond.notify_all()


_dir_sync = _DirSync()


def _unique_name(size: int) -> str:
    """Maildir unique name: time, microseconds, pid, per-process counter and host, plus the size
    (``,S=``, as Dovecot and Courier write it) so listing needs no stat."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{_host()},S={size}"


def _host() -> str:
    global _HOST
    if _HOST is None:
        _HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return _HOST


_HOST: str | None = None


class Maildir:
    def __init__(self, path: str):
        self.path = path

    def ensure(self) -> None:
        if os.path.isdir(os.path.join(self.path, "cur")):
            return  # created last (below): the other two exist too
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)

    # -- delivery --------------------------------------------------------------------------------
    def deliver(self, message: bytes) -> str:
        """Store ``message`` atomically in ``new/``; returns its unique name once it is durable."""
        self.ensure()
        name = _unique_name(len(message))
        tmp = os.path.join(self.path, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(message)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fdatasync(fd)  # data and the size that makes it readable; the rename is fsynced below
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, os.path.join(self.path, "new", name))
        _dir_sync.sync(os.path.join(self.path, "new"))
        return name

    # -- reading ---------------------------------------------------------------------------------
    def _scan(self) -> dict[str, tuple[str, str, int, float]]:
        found: dict[str, tuple[str, str, int, float]] = {}
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(os.path.join(self.path, sub)))
            except FileNotFoundError:
                continue
            for e in entries:
                if e.name.startswith("."):
                    continue
                base = e.name.split(":", 1)[0]
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue  # expunged by another session while we listed
                found[base] = (sub, e.name, st.st_size, st.st_mtime)
        return found

    def snapshot(self) -> tuple[int, int, list[Message]]:
        """(UIDVALIDITY, UIDNEXT, messages in UID order), assigning UIDs to new arrivals.

        RFC 3501 §2.3.1.1: UIDs strictly ascend and are never reused while UIDVALIDITY stays;
        the list survives sessions and restarts. Arrivals get UIDs in delivery (mtime) order."""
        self.ensure()
        lock_fd = os.open(os.path.join(self.path, "uidlist.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            validity, next_uid, uids = self._read_uidlist()
            found = self._scan()
            changed = False
            for base in [b for b in uids if b not in found]:
                del uids[base]
                changed = True
            for base in sorted((b for b in found if b not in uids), key=lambda b: (found[b][3], b)):
                uids[base] = next_uid
                next_uid += 1
                changed = True
            if changed or not os.path.exists(os.path.join(self.path, "uidlist")):
                self._write_uidlist(validity, next_uid, uids)
        finally:
            os.close(lock_fd)
        msgs = [Message(uid, base, *found[base]) for base, uid in uids.items()]
        msgs.sort(key=lambda m: m.uid)
        return validity, next_uid, msgs

    def _read_uidlist(self) -> tuple[int, int, dict[str, int]]:
        try:
            with open(os.path.join(self.path, "uidlist"), encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            # A new UIDVALIDITY: seconds since the epoch is unique per mailbox life (RFC 3501 §2.3.1.1)
            return int(time.time()) & 0xFFFFFFFF or 1, 1, {}
        try:
            validity, next_uid = (int(x) for x in lines[0].split())
            uids = {}
            for line in lines[1:]:
                uid, base = line.split(" ", 1)
                uids[base] = int(uid)
        except (ValueError, IndexError):
            # Corrupt list: start a new UID epoch rather than risk reusing UIDs.
            return int(time.time()) & 0xFFFFFFFF or 1, 1, {}
        return validity, next_uid, uids

    def _write_uidlist(self, validity: int, next_uid: int, uids: dict[str, int]) -> None:
        path = os.path.join(self.path, "uidlist")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{validity} {next_uid}\n")
            fh.writelines(f"{uid} {base}\n" for base, uid in uids.items())
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)

    def _locate(self, msg: Message) -> tuple[str, str]:
        """(subdir, filename) of ``msg`` now: another session may have renamed it (flags)."""
        if os.path.exists(os.path.join(self.path, msg.subdir, msg.filename)):
            return msg.subdir, msg.filename
        for sub in ("cur", "new"):
            for name in os.listdir(os.path.join(self.path, sub)):
                if name.split(":", 1)[0] == msg.basename:
                    return sub, name
        raise MailstoreError(f"message {msg.basename} is gone")

    def read(self, msg: Message) -> bytes:
        """The message bytes."""
        for _ in range(3):  # a concurrent rename between locate and open: look again
            sub, name = self._locate(msg)
            try:
                with open(os.path.join(self.path, sub, name), "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                continue
        raise MailstoreError(f"message {msg.basename} is gone")

    def set_flags(self, msg: Message, flags: frozenset[str]) -> Message:
        """Rename the message into ``cur/`` with ``flags`` in its info part; returns it updated."""
        letters = "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))
        new_name = f"{msg.basename}:2,{letters}"
        sub, name = self._locate(msg)
        if sub != "cur" or name != new_name:
            os.rename(os.path.join(self.path, sub, name), os.path.join(self.path, "cur", new_name))
        return Message(msg.uid, msg.basename, "cur", new_name, msg.size, msg.mtime)

    def remove(self, msgs: list[Message]) -> int:
        """Unlink messages (expunge, POP3 QUIT); returns how many were still there."""
        n = 0
        for msg in msgs:
            try:
                sub, name = self._locate(msg)
                os.unlink(os.path.join(self.path, sub, name))
                n += 1
            except (FileNotFoundError, MailstoreError):
                continue
        if n:
            _fsync_dir(os.path.join(self.path, "cur"))
            _fsync_dir(os.path.join(self.path, "new"))
        return n
