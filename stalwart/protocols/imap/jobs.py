"""The disk side of the IMAP session: functions run as Blocking jobs in a worker thread, and the
FLAGS rendering they share with the session. Nothing here touches session state.

Other sessions of the account (in this worker or another) may expunge or re-flag any message of
this session's view at any time. The jobs therefore report a message that vanished as gone (None)
instead of failing the command, and change flags relative to what the message carries on disk now
(see :meth:`~stalwart.mailstore.maildir.Maildir.change_flags`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...mailstore import MailstoreError

if TYPE_CHECKING:
    from ...mailstore import Maildir, Message


def fetch_job(maildir: Maildir, msgs: list[Message], content: bool, seen: bool) -> list:
    """(message, bytes or None) per message, in order; the message is None when it is gone."""
    out: list = [(m, None) for m in msgs]
    if content:
        for i, data in maildir.read_each(msgs):
            if data is None:
                out[i] = (None, None)
            else:
                out[i] = (msgs[i], data)
    if seen:
        unseen = [i for i, (m, _) in enumerate(out) if m is not None and "\\Seen" not in m.flags]
        changed = maildir.change_flags([out[i][0] for i in unseen], add=frozenset({"\\Seen"}))
        for i, m in zip(unseen, changed):
            if m is not None:  # None: expunged just after it was read; it is still served
                out[i] = (m, out[i][1])
    return out


def search_job(maildir: Maildir | None, msgs: list[Message], search) -> list[tuple[int, Message]]:
    """(sequence number, message) of every match; reads one message at a time when a key needs
    the contents (``maildir`` is None when none does)."""
    largest_seq, largest_uid = len(msgs), (msgs[-1].uid if msgs else 0)
    hits = []
    if maildir is None:
        each = ((i, None) for i in range(len(msgs)))
    else:  # one at a time; one expunged by another session meanwhile (None) matches nothing
        each = ((i, data) for i, data in maildir.read_each(msgs) if data is not None)
    for i, data in each:
        if search.matches(i + 1, msgs[i], largest_seq, largest_uid, data):
            hits.append((i + 1, msgs[i]))
    hits.sort(key=lambda hit: hit[0])  # read_each may give a message renamed meanwhile last
    return hits


def store_job(maildir: Maildir, msgs: list[Message], action: str, flags: frozenset[str]) -> list[Message | None]:
    """RFC 3501 §6.4.6 on the flags each message has now; None for one that is gone."""
    if action.startswith("+"):
        return maildir.change_flags(msgs, add=flags)
    if action.startswith("-"):
        return maildir.change_flags(msgs, remove=flags)
    return maildir.change_flags(msgs, replace=flags)


def expunge_job(maildir: Maildir, msgs: list[Message]) -> list[int]:
    return maildir.expunge(msgs)


def claim_job(maildir: Maildir, readonly: bool) -> tuple[int, int, list[Message], set[int]]:
    """Snapshot the mailbox; a read-write session moves what is in ``new/`` to ``cur/`` (Maildir's
    "seen by a client") and reports those UIDs as \\Recent to itself only (RFC 3501 §2.3.2)."""
    validity, uidnext, msgs = maildir.snapshot()
    recent = {m.uid for m in msgs if m.subdir == "new"}
    if not readonly and recent:
        fresh = [i for i, m in enumerate(msgs) if m.subdir == "new"]
        try:
            moved = maildir.change_flags([msgs[i] for i in fresh])
        except (OSError, MailstoreError):
            moved = [None] * len(fresh)  # left where they are; the next refresh tries again
        for i, m in zip(fresh, moved):
            if m is not None:  # None: expunged meanwhile, and reported at the next refresh
                msgs[i] = m
    return validity, uidnext, msgs, recent


def render_flags(msg: Message, recent: bool) -> bytes:
    flags = sorted(msg.flags) + (["\\Recent"] if recent else [])
    return ("(" + " ".join(flags) + ")").encode()
