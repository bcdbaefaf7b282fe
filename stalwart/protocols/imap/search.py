"""SEARCH keys (RFC 3501 §6.4.4): flags, sizes, sequence numbers, UIDs, internal and sent dates,
header fields and text (case-insensitive substring, RFC 3501 §6.4.4). Keys not listed here are
answered ``BAD`` with the key's name, so a client learns at once what this server does not search."""
from __future__ import annotations

import datetime
import email.utils
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .fetch import header_fields, split_message
from .syntax import ImapSyntaxError, SequenceSet, astring

if TYPE_CHECKING:
    from ...mailstore import Message

# (seq, msg, largest seq, largest uid, message bytes or None when no key needs them)
Predicate = Callable[[int, "Message", int, int, "bytes | None"], bool]

_FLAG_KEYS = {"SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False), "ANSWERED": ("\\Answered", True),
              "UNANSWERED": ("\\Answered", False), "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
              "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False), "DRAFT": ("\\Draft", True),
              "UNDRAFT": ("\\Draft", False)}
_HEADER_KEYS = {"SUBJECT": "Subject", "FROM": "From", "TO": "To", "CC": "Cc", "BCC": "Bcc"}
_MONTHS = {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                       "NOV", "DEC"), 1)}
_DATE_RE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")
MAX_DEPTH = 32


class Search:
    """A parsed SEARCH: ``matches(...)`` per message; ``needs_content`` when a key reads the message."""

    def __init__(self, tokens: list):
        self.needs_content = False
        self.recent: frozenset[int] = frozenset()  # the session's \\Recent UIDs, set before matching
        if not tokens:
            raise ImapSyntaxError("SEARCH needs at least one key")
        self._keys = self._all(tokens, 0)

    def matches(self, seq: int, msg: Message, largest_seq: int, largest_uid: int, data: bytes | None) -> bool:
        return all(k(seq, msg, largest_seq, largest_uid, data) for k in self._keys)

    def _all(self, tokens: list, depth: int) -> list[Predicate]:
        pos, keys = 0, []
        while pos < len(tokens):
            key, pos = self._key(tokens, pos, depth)
            keys.append(key)
        return keys

    def _arg(self, tokens: list, pos: int, key: str) -> str:
        if pos >= len(tokens) or isinstance(tokens[pos], list):
            raise ImapSyntaxError(f"{key} needs an argument")
        return astring(tokens[pos])

    def _key(self, tokens: list, pos: int, depth: int) -> tuple[Predicate, int]:
        try:
            return _key(tokens, pos, depth, self)
        except IndexError:
            raise ImapSyntaxError("incomplete search key") from None


def parse_search(tokens: list) -> Search:
    return Search(tokens)


def _day(text: str) -> datetime.date:
    m = _DATE_RE.match(text)
    if m is None or m.group(2).upper() not in _MONTHS:
        raise ImapSyntaxError("invalid date (expected d-Mon-yyyy)")
    try:
        return datetime.date(int(m.group(3)), _MONTHS[m.group(2).upper()], int(m.group(1)))
    except ValueError:
        raise ImapSyntaxError("invalid date") from None


def _internal_day(msg: Message) -> datetime.date:
    t = time.gmtime(msg.mtime)
    return datetime.date(t.tm_year, t.tm_mon, t.tm_mday)


def _sent_day(data: bytes | None) -> datetime.date | None:
    field = header_fields(split_message(data or b"")[0], ["date"], False)
    try:
        return email.utils.parsedate_to_datetime(field.split(b":", 1)[1].decode("latin-1").strip()).date()
    except (IndexError, TypeError, ValueError):
        return None


def _compare(op: str, day: datetime.date | None, ref: datetime.date) -> bool:
    if day is None:
        return False
    return day < ref if op == "BEFORE" else day == ref if op == "ON" else day >= ref


def _contains(haystack: bytes, needle: str) -> bool:
    return needle.lower().encode("utf-8") in haystack.lower()


def _key(tokens: list, pos: int, depth: int, search: Search) -> tuple[Predicate, int]:
    if depth > MAX_DEPTH:
        raise ImapSyntaxError("search keys nested too deeply")
    tok = tokens[pos]
    if isinstance(tok, list):
        if not tok:
            raise ImapSyntaxError("empty search group")
        group = search._all(tok, depth + 1)
        return (lambda s, m, ls, lu, d: all(k(s, m, ls, lu, d) for k in group)), pos + 1
    if not isinstance(tok, str):
        raise ImapSyntaxError("invalid search key")
    up = tok.upper()
    if up == "ALL":
        return (lambda s, m, ls, lu, d: True), pos + 1
    if up in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[up]
        return (lambda s, m, ls, lu, d: (flag in m.flags) == want), pos + 1
    if up == "RECENT":
        return (lambda s, m, ls, lu, d: m.uid in search.recent), pos + 1
    if up == "OLD":
        return (lambda s, m, ls, lu, d: m.uid not in search.recent), pos + 1
    if up == "NEW":
        return (lambda s, m, ls, lu, d: m.uid in search.recent and "\\Seen" not in m.flags), pos + 1
    if up == "NOT":
        if pos + 1 >= len(tokens):
            raise ImapSyntaxError("NOT needs a key")
        inner, nxt = search._key(tokens, pos + 1, depth + 1)
        return (lambda s, m, ls, lu, d: not inner(s, m, ls, lu, d)), nxt
    if up == "OR":
        if pos + 2 >= len(tokens):
            raise ImapSyntaxError("OR needs two keys")
        a, nxt = search._key(tokens, pos + 1, depth + 1)
        if nxt >= len(tokens):
            raise ImapSyntaxError("OR needs two keys")
        b, nxt = search._key(tokens, nxt, depth + 1)
        return (lambda s, m, ls, lu, d: a(s, m, ls, lu, d) or b(s, m, ls, lu, d)), nxt
    if up in ("LARGER", "SMALLER"):
        if pos + 1 >= len(tokens) or not isinstance(tokens[pos + 1], str) or not tokens[pos + 1].isdigit():
            raise ImapSyntaxError(f"{up} needs a number")
        n = int(tokens[pos + 1][:20])
        if up == "LARGER":
            return (lambda s, m, ls, lu, d: m.size > n), pos + 2
        return (lambda s, m, ls, lu, d: m.size < n), pos + 2
    if up == "UID":
        if pos + 1 >= len(tokens) or not isinstance(tokens[pos + 1], str):
            raise ImapSyntaxError("UID needs a sequence set")
        uids = SequenceSet(tokens[pos + 1])
        return (lambda s, m, ls, lu, d: uids.contains(m.uid, lu)), pos + 2
    if up in ("BEFORE", "ON", "SINCE"):
        ref = _day(search._arg(tokens, pos + 1, up))
        return (lambda s, m, ls, lu, d: _compare(up, _internal_day(m), ref)), pos + 2
    if up in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        ref = _day(search._arg(tokens, pos + 1, up))
        search.needs_content = True
        return (lambda s, m, ls, lu, d: _compare(up[4:], _sent_day(d), ref)), pos + 2
    if up in _HEADER_KEYS or up == "HEADER":
        if up == "HEADER":
            name, needle, nxt = search._arg(tokens, pos + 1, up), search._arg(tokens, pos + 2, up), pos + 3
        else:
            name, needle, nxt = _HEADER_KEYS[up], search._arg(tokens, pos + 1, up), pos + 2
        search.needs_content = True

        def in_header(s, m, ls, lu, d):
            field = header_fields(split_message(d or b"")[0], [name], False)
            # HEADER name "" matches every message that has the field (RFC 3501 §6.4.4)
            return field != b"\r\n" and _contains(field.split(b":", 1)[-1], needle)

        return in_header, nxt
    if up in ("BODY", "TEXT"):
        needle = search._arg(tokens, pos + 1, up)
        search.needs_content = True
        if up == "BODY":
            return (lambda s, m, ls, lu, d: _contains(split_message(d or b"")[1], needle)), pos + 2
        return (lambda s, m, ls, lu, d: _contains(d or b"", needle)), pos + 2
    if up[:1].isdigit() or up[:1] == "*":
        seqs = SequenceSet(up)
        return (lambda s, m, ls, lu, d: seqs.contains(s, ls)), pos + 1
    raise ImapSyntaxError(f"unsupported search key {up[:20]}")
