"""SEARCH keys (RFC 3501 §6.4.4) over flags, sizes, sequence numbers and UIDs.

Keys that need message contents or dates (SUBJECT, FROM, BODY, SINCE, …) are answered ``BAD`` with
the key's name, so a client learns at once what this server does not search."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .syntax import ImapSyntaxError, SequenceSet

if TYPE_CHECKING:
    from ...mailstore import Message

Predicate = Callable[[int, "Message", int, int], bool]  # (seq, msg, largest seq, largest uid)

_FLAG_KEYS = {"SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False), "ANSWERED": ("\\Answered", True),
              "UNANSWERED": ("\\Answered", False), "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
              "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False), "DRAFT": ("\\Draft", True),
              "UNDRAFT": ("\\Draft", False)}
MAX_DEPTH = 32


def parse_search(tokens: list) -> Predicate:
    """The conjunction of every key in ``tokens``."""
    if not tokens:
        raise ImapSyntaxError("SEARCH needs at least one key")
    pos, keys = 0, []
    while pos < len(tokens):
        key, pos = _key(tokens, pos, 0)
        keys.append(key)
    return lambda s, m, ls, lu: all(k(s, m, ls, lu) for k in keys)


def _key(tokens: list, pos: int, depth: int) -> tuple[Predicate, int]:
    if depth > MAX_DEPTH:
        raise ImapSyntaxError("search keys nested too deeply")
    tok = tokens[pos]
    if isinstance(tok, list):
        inner = parse_search(tok) if tok else None
        if inner is None:
            raise ImapSyntaxError("empty search group")
        return inner, pos + 1
    if not isinstance(tok, str):
        raise ImapSyntaxError("invalid search key")
    up = tok.upper()
    if up == "ALL":
        return (lambda s, m, ls, lu: True), pos + 1
    if up in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[up]
        return (lambda s, m, ls, lu: (flag in m.flags) == want), pos + 1
    if up == "RECENT":
        return (lambda s, m, ls, lu: m.subdir == "new"), pos + 1
    if up == "OLD":
        return (lambda s, m, ls, lu: m.subdir != "new"), pos + 1
    if up == "NEW":
        return (lambda s, m, ls, lu: m.subdir == "new" and "\\Seen" not in m.flags), pos + 1
    if up == "NOT":
        if pos + 1 >= len(tokens):
            raise ImapSyntaxError("NOT needs a key")
        inner, nxt = _key(tokens, pos + 1, depth + 1)
        return (lambda s, m, ls, lu: not inner(s, m, ls, lu)), nxt
    if up == "OR":
        if pos + 2 >= len(tokens):
            raise ImapSyntaxError("OR needs two keys")
        a, nxt = _key(tokens, pos + 1, depth + 1)
        if nxt >= len(tokens):
            raise ImapSyntaxError("OR needs two keys")
        b, nxt = _key(tokens, nxt, depth + 1)
        return (lambda s, m, ls, lu: a(s, m, ls, lu) or b(s, m, ls, lu)), nxt
    if up in ("LARGER", "SMALLER"):
        if pos + 1 >= len(tokens) or not isinstance(tokens[pos + 1], str) or not tokens[pos + 1].isdigit():
            raise ImapSyntaxError(f"{up} needs a number")
        n = int(tokens[pos + 1][:20])
        if up == "LARGER":
            return (lambda s, m, ls, lu: m.size > n), pos + 2
        return (lambda s, m, ls, lu: m.size < n), pos + 2
    if up == "UID":
        if pos + 1 >= len(tokens) or not isinstance(tokens[pos + 1], str):
            raise ImapSyntaxError("UID needs a sequence set")
        uids = SequenceSet(tokens[pos + 1])
        return (lambda s, m, ls, lu: uids.contains(m.uid, lu)), pos + 2
    if up[:1].isdigit() or up[:1] == "*":
        seqs = SequenceSet(up)
        return (lambda s, m, ls, lu: seqs.contains(s, ls)), pos + 1
    raise ImapSyntaxError(f"unsupported search key {up[:20]}")
