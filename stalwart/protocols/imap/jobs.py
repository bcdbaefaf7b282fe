"""The disk side of the IMAP session: functions run as Blocking jobs in a worker thread, and the
FLAGS rendering they share with the session. Nothing here touches session state."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...mailstore import MailstoreError

if TYPE_CHECKING:
    from ...mailstore import Maildir, Message


def fetch_job(maildir: Maildir, msgs: list[Message], content: bool, seen: bool) -> list:
    out = []
    for m in msgs:
        data = maildir.read(m) if content else None
        if seen and "\\Seen" not in m.flags:
            m = maildir.set_flags(m, m.flags | {"\\Seen"})
        out.append((m, data))
    return out


def search_job(maildir: Maildir | None, msgs: list[Message], search) -> list[tuple[int, Message]]:
    """(sequence number, message) of every match; reads one message at a time when a key needs
    the contents (``maildir`` is None when none does)."""
    largest_seq, largest_uid = len(msgs), (msgs[-1].uid if msgs else 0)
    hits = []
    for i, m in enumerate(msgs, 1):
        data = None
        if maildir is not None:
            try:
                data = maildir.read(m)
            except MailstoreError:
                continue  # expunged by another session meanwhile: it matches nothing
        if search.matches(i, m, largest_seq, largest_uid, data):
            hits.append((i, m))
    return hits


def store_job(maildir: Maildir, changes: list) -> list:
    return [maildir.set_flags(m, flags) for m, flags in changes]


def expunge_job(maildir: Maildir, msgs: list[Message]) -> int:
    return maildir.remove(msgs)


def claim_job(maildir: Maildir, readonly: bool) -> tuple[int, int, list[Message], set[int]]:
    """Snapshot the mailbox; a read-write session moves what is in ``new/`` to ``cur/`` (Maildir's
    "seen by a client") and reports those UIDs as \\Recent to itself only (RFC 3501 §2.3.2)."""
    validity, uidnext, msgs = maildir.snapshot()
    recent = {m.uid for m in msgs if m.subdir == "new"}
    if not readonly:
        for i, m in enumerate(msgs):
            if m.subdir == "new":
                try:
                    msgs[i] = maildir.set_flags(m, m.flags)
                except (OSError, MailstoreError):
                    continue  # claimed or expunged by another session: left as it is
    return validity, uidnext, msgs, recent


def render_flags(msg: Message, recent: bool) -> bytes:
    flags = sorted(msg.flags) + (["\\Recent"] if recent else [])
    return ("(" + " ".join(flags) + ")").encode()
