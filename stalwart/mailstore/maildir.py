"""Maildir delivery and reading, with a UID map for IMAP and POP3.

Layout of one mailbox (``<data-dir>/mail/<account>/``)::

    tmp/  new/  cur/      the Maildir proper (https://cr.yp.to/proto/maildir.html)
    uidlist               "<uidvalidity> <nextuid>" then one "<uid> <basename>" line per message
    uidlist.lock          flock(2) target guarding the UID map across worker processes
    maildrop.lock         flock(2) target of the POP3 exclusive-access lock (RFC 1939 §8)

Delivery writes ``tmp/<unique>``, fsyncs it, renames it into ``new/`` and fsyncs ``new/``, so after a
crash a message is either wholly in ``new/`` or not there at all. Every method here blocks (disk):
sessions call them through :class:`~stalwart.protocols.base.Blocking`.

Sessions of one account run in several worker processes at once, so everything shared lives on disk
and is guarded by flock(2), which works across processes and between two descriptors of one process.

Invariant of the UID map (RFC 3501 §2.3.1.1), for as long as one UIDVALIDITY lasts:

* a UID names one message (one basename) for ever: it is never given to another message, and a
  message keeps its UID until it is expunged;
* ``nextuid`` never decreases, and every UID in the list is below it;
* a message in ``new/`` or ``cur/`` gets its UID the first time any session takes a snapshot after
  the delivery, so no delivery is lost and none gets two UIDs.

It holds because the map is only read-modified-written under an exclusive lock on ``uidlist.lock``
(written to ``uidlist.tmp``, fsynced, renamed, directory fsynced: a crash leaves the old or the new
list, never a shorter ``nextuid`` than a client saw), and because the only renames of a listed
message (flag changes, ``new/`` to ``cur/``) take a shared lock on the same file. The directory
scan that rebuilds the map therefore never misses a listed message half-way through a rename, which
would otherwise drop its UID and give it a new one on the next snapshot. Deliveries
(``tmp/`` to ``new/``) and unlinks need no lock: an arrival missed by a scan is picked up by the
next one, and an expunged message simply leaves the map. A snapshot is a view: readers of a message
that another session has since expunged get :class:`MessageGone`, never a crash.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import StalwartError
from ..fileio import dir_sync, fsync_dir, try_flock, write_all, write_durable

#: RFC 3501 §2.3.2 system flags and their Maildir info letters (sorted ASCII in a file name)
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}
_counter = itertools.count(1)


class MailstoreError(StalwartError):
    """A mailbox could not be read or written (disk full, permissions, corrupt UID list)."""


class MessageGone(MailstoreError):
    """The message was expunged (by another session) after the snapshot that listed it."""


def _flags_of(filename: str) -> frozenset[str]:
    _, sep, info = filename.partition(":2,")
    return frozenset(LETTER_FLAGS[c] for c in info if c in LETTER_FLAGS) if sep else frozenset()


def _info(flags: frozenset[str]) -> str:
    return ":2," + "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))


class MaildropLock:
    """The POP3 exclusive-access lock on one maildrop (RFC 1939 §4, §8), held across processes.

    :meth:`acquire` runs in a pool thread and never waits: ``flock(LOCK_EX | LOCK_NB)`` on
    ``maildrop.lock``, held by a descriptor this object owns. :meth:`release` may be called from any
    thread, any number of times, also while or before :meth:`acquire` runs (the connection went away
    during the job): a lock taken after the release is dropped at once, so no descriptor outlives
    its session. The kernel drops the lock if the process dies, so a killed worker never leaves a
    maildrop locked.
    """

    def __init__(self, path: str):
        self.path = path
        self._mu = threading.Lock()
        self._fd: int | None = None
        self._released = False

    def acquire(self) -> bool:
        """True if the lock is now held; False if another session holds it (or this was released)."""
        with self._mu:
            if self._released or self._fd is not None:
                return self._fd is not None
            self._fd = try_flock(self.path)
            return self._fd is not None

    def release(self) -> None:
        with self._mu:
            self._released = True
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:
        # Backstop only: sessions release explicitly on every path (QUIT, connection closed).
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)


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
        return _flags_of(self.filename)


#: os.link errors that mean "copy instead": another filesystem, no hard links there, too many links
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def copy_file(src: int, dst: int, offset: int, count: int) -> None:
    """Copy ``count`` bytes of ``src`` from ``offset`` to the end of ``dst``, inside the kernel
    where it can (copy_file_range, which may share blocks on btrfs/XFS), else through a buffer."""
    try:
        while count > 0:
            n = os.copy_file_range(src, dst, min(count, 1 << 30), offset)
            if n == 0:
                raise MailstoreError("spool file shorter than expected")
            offset += n
            count -= n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while count > 0:
        chunk = os.pread(src, min(count, 1 << 20), offset)
        if not chunk:
            raise MailstoreError("spool file shorter than expected")
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        offset += len(chunk)
        count -= len(chunk)


_DIGITS = re.compile(r"([0-9]+)")


def _arrival_key(base: str, mtime: float) -> tuple:
    """Order of arrival: mtime, then the name with its digit runs compared as numbers. Two deliveries
    within one timestamp tick share an mtime, and names such as ``…M99876…`` and ``…M100123…`` (the
    microseconds are not zero-padded, as in other Maildir writers) must not sort as text."""
    parts: list = _DIGITS.split(base)
    parts[1::2] = map(int, parts[1::2])  # the runs the ASCII pattern matched (str.isdigit() takes '²' too)
    return mtime, parts


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
        parent = os.path.dirname(self.path)
        fresh = not os.path.isdir(parent)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
        # The first message's 250 must not outlive its mailbox after a crash: the new directory
        # entries are made durable too (the mailbox in mail/, and mail/ itself when it is new).
        fsync_dir(self.path)
        fsync_dir(parent)
        if fresh:
            fsync_dir(os.path.dirname(parent))

    # -- delivery --------------------------------------------------------------------------------
    def delivery_paths(self, size: int) -> tuple[str, str, str, str]:
        """A new message's unique name, its ``tmp/`` and ``new/`` paths, and the ``new/`` directory."""
        name = _unique_name(size)
        new = os.path.join(self.path, "new")
        return name, os.path.join(self.path, "tmp", name), os.path.join(new, name), new

    def deliver(self, message: bytes) -> str:
        """Store ``message`` atomically in ``new/``; returns its unique name once it is durable.
        (:class:`~stalwart.mailstore.committer.Committer` does the same from the event loop.)"""
        self.ensure()
        name = _unique_name(len(message))
        tmp = os.path.join(self.path, "tmp", name)
        write_durable(tmp, lambda fd: write_all(fd, message))
        return self._publish(tmp, name)

    def _publish(self, tmp: str, name: str) -> str:
        """Rename the durable ``tmp/`` file into ``new/`` and make the rename durable (group commit)."""
        os.rename(tmp, os.path.join(self.path, "new", name))
        dir_sync.sync(os.path.join(self.path, "new"))
        return name

    def deliver_link(self, source: str, size: int) -> str:
        """Deliver the already-fsynced file ``source`` (a spooled message) atomically into ``new/``:
        hard-linked into ``tmp/`` (so N recipients share one inode and one write), or copied and
        fsynced where a link cannot be made (another filesystem), then renamed like :meth:`deliver`."""
        self.ensure()
        name = _unique_name(size)
        tmp = os.path.join(self.path, "tmp", name)
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            with open(source, "rb") as src:
                write_durable(tmp, lambda fd: copy_file(src.fileno(), fd, 0, size))
        return self._publish(tmp, name)

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

    def _names(self, wanted: set[str]) -> dict[str, tuple[str, str]]:
        """basename -> (subdir, filename) now of those messages in ``wanted`` that are there: a
        listing without a stat per file."""
        found: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):  # cur/ last: a name seen in both was moved to cur/ meanwhile
            try:
                names = os.listdir(os.path.join(self.path, sub))
            except FileNotFoundError:
                continue
            for name in names:
                base = name.split(":", 1)[0]
                if base in wanted:
                    found[base] = (sub, name)
        return found

    def maildrop_lock(self) -> MaildropLock:
        """A POP3 exclusive-access lock on this maildrop, not yet acquired (see :class:`MaildropLock`)."""
        return MaildropLock(os.path.join(self.path, "maildrop.lock"))

    @contextmanager
    def _map_lock(self, exclusive: bool) -> Iterator[None]:
        """Exclusive: the UID map is being rebuilt. Shared: a listed message is being renamed."""
        fd = os.open(os.path.join(self.path, "uidlist.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def snapshot(self) -> tuple[int, int, list[Message]]:
        """(UIDVALIDITY, UIDNEXT, messages in UID order), assigning UIDs to new arrivals.

        RFC 3501 §2.3.1.1: UIDs strictly ascend and are never reused while UIDVALIDITY stays;
        the list survives sessions and restarts. Arrivals get UIDs in delivery (mtime) order.
        See the module docstring for the invariant and the locking that keeps it."""
        self.ensure()
        with self._map_lock(exclusive=True):
            validity, next_uid, uids = self._read_uidlist()
            found = self._scan()
            changed = False
            for base in [b for b in uids if b not in found]:
                del uids[base]
                changed = True
            for base in sorted((b for b in found if b not in uids), key=lambda b: _arrival_key(b, found[b][3])):
                uids[base] = next_uid
                next_uid += 1
                changed = True
            if changed or not os.path.exists(os.path.join(self.path, "uidlist")):
                self._write_uidlist(validity, next_uid, uids)
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
        # A lost rename after a crash would bring back a smaller nextuid than clients have seen.
        fsync_dir(self.path)

    def _each(self, msgs: list[Message], retry: list[int], tries: int,
              listing: dict[str, tuple[str, str]] | None = None) -> Iterator[tuple[int, tuple[str, str] | None]]:
        """(index, (subdir, filename)) for each of ``msgs`` where it is on disk now, or (index, None)
        for one that is gone: another session may have renamed it (flags) or expunged it.

        Each message is looked for under its name in ``listing`` (a :meth:`_names` the caller took)
        or, without one, under the name it was listed with (one stat). One not found there was
        renamed or expunged since, or was being renamed while ``listing`` was taken (a listing holds
        no lock, and a listing may miss a file renamed in the middle of it): every such miss of the
        round gets a second look in ONE listing taken after all the first looks, so a call costs
        at most one more listing however many messages vanished, not one each (that was
        O(vanished x mailbox): 2000 vanished of 20000 took 19 s).

        The consumer appends to ``retry`` the index of a message whose name failed it
        (FileNotFoundError: renamed again or unlinked meanwhile). Those are looked up again after
        the round, in the same way, for up to ``tries`` rounds in all; any index left in ``retry``
        at the end kept changing under us."""
        todo: list[int] = list(range(len(msgs)))
        for _ in range(tries):
            retry.clear()
            where: list[tuple[str, str] | None] = []
            missed: list[int] = []
            for k, i in enumerate(todo):
                msg = msgs[i]
                if listing is not None:
                    loc = listing.get(msg.basename)
                elif os.path.exists(os.path.join(self.path, msg.subdir, msg.filename)):
                    loc = (msg.subdir, msg.filename)
                else:
                    loc = None
                if loc is None:
                    missed.append(k)
                where.append(loc)
            if missed:
                again = self._names({msgs[todo[k]].basename for k in missed})
                for k in missed:
                    where[k] = again.get(msgs[todo[k]].basename)
            for i, loc in zip(todo, where):
                yield i, loc
            if not retry:
                return
            todo, listing = list(retry), None

    def read(self, msg: Message) -> bytes:
        """The message bytes; :class:`MessageGone` if it was expunged since ``msg`` was listed."""
        for _, data in self.read_each([msg]):
            if data is not None:
                return data
        raise MessageGone(f"message {msg.basename} is gone")

    def read_each(self, msgs: list[Message]) -> Iterator[tuple[int, bytes | None]]:
        """(index, bytes) for each of ``msgs``, one at a time, or (index, None) for one that was
        expunged since it was listed. Not in order: one renamed while it was being opened comes
        after the others (see :meth:`_each`)."""
        retry: list[int] = []
        for i, loc in self._each(msgs, retry, 3):  # a concurrent rename between locate and open: look again
            if loc is None:
                yield i, None
                continue
            try:
                with open(os.path.join(self.path, *loc), "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                retry.append(i)
                continue
            yield i, data
        for i in retry:
            yield i, None

    def change_flags(self, msgs: list[Message], add: frozenset[str] = frozenset(),
                     remove: frozenset[str] = frozenset(), replace: frozenset[str] | None = None
                     ) -> list[Message | None]:
        """Rename each message into ``cur/`` with its flags changed; returns them updated, or None
        for one that is gone.

        The change applies to the flags the message carries on disk now, not to those of the
        caller's snapshot, so two sessions changing different flags of one message both keep
        theirs (RFC 3501 §6.4.6 +FLAGS/-FLAGS). A rename fails if another session renamed the file
        first, and is then retried on the new name."""
        if not msgs:
            return []
        out: list[Message | None] = [None] * len(msgs)
        retry: list[int] = []
        with self._map_lock(exclusive=False):
            for i, loc in self._each(msgs, retry, 5):  # each miss: another session renamed it meanwhile
                if loc is None:
                    continue
                msg, (sub, name) = msgs[i], loc
                flags = (_flags_of(name) if replace is None else replace) | add
                new_name = msg.basename + _info(flags - remove)
                if sub != "cur" or name != new_name:
                    try:
                        os.rename(os.path.join(self.path, sub, name), os.path.join(self.path, "cur", new_name))
                    except FileNotFoundError:
                        retry.append(i)
                        continue
                out[i] = Message(msg.uid, msg.basename, "cur", new_name, msg.size, msg.mtime)
        if retry:
            raise MailstoreError(f"message {msgs[retry[0]].basename} keeps changing under us")
        return out

    def set_flags(self, msg: Message, flags: frozenset[str]) -> Message:
        """Rename the message into ``cur/`` with exactly ``flags``; returns it updated."""
        [done] = self.change_flags([msg], replace=frozenset(flags))
        if done is None:
            raise MessageGone(f"message {msg.basename} is gone")
        return done

    def remove(self, msgs: list[Message]) -> int:
        """Unlink messages (POP3 QUIT); returns how many were still there."""
        n = 0
        retry: list[int] = []
        for i, loc in self._each(msgs, retry, 3):  # renamed (flags) between locate and unlink: look again
            if loc is None:
                continue
            try:
                os.unlink(os.path.join(self.path, *loc))
                n += 1
            except FileNotFoundError:
                retry.append(i)
        if n:
            self._sync_dirs()
        return n

    def expunge(self, msgs: list[Message]) -> list[int]:
        """RFC 3501 §6.4.3: unlink those of ``msgs`` that carry ``\\Deleted`` on disk now (whichever
        session set it); returns their UIDs. A message whose flag another session removed
        meanwhile stays: the unlink names the exact file, which such a rename makes disappear.

        Every message is looked up in one listing; those missing from it were expunged elsewhere (the
        next refresh reports them) or were being renamed by another session right then (the scan
        holds no lock): :meth:`_each` gives them all one more look, in one more listing."""
        gone: list[int] = []
        retry: list[int] = []
        for i, loc in self._each(msgs, retry, 3, listing=self._names({m.basename for m in msgs})):
            if loc is None or "\\Deleted" not in _flags_of(loc[1]):
                continue
            try:
                os.unlink(os.path.join(self.path, *loc))
                gone.append(msgs[i].uid)
            except FileNotFoundError:
                retry.append(i)  # renamed meanwhile: unlinked on its new name if that keeps \Deleted
        if gone:
            self._sync_dirs()
        return gone

    def _sync_dirs(self) -> None:
        fsync_dir(os.path.join(self.path, "cur"))
        fsync_dir(os.path.join(self.path, "new"))
