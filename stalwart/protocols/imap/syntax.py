"""IMAP4rev1 command syntax (RFC 3501 §9): tags, tokens, literals, sequence sets, quoting."""
from __future__ import annotations

import re

from ...errors import RemoteProtocolError

#: RFC 3501 §9 tag: ASTRING-CHAR except "+" (no CTL, SP, ( ) { % * " \ +)
TAG_RE = re.compile(rb"^[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+$")
#: a line ending in a literal announcement: {n} (synchronising) or {n+} (RFC 7888 LITERAL+)
LITERAL_RE = re.compile(rb"\{(\d{1,10})(\+?)\}$")
_ATOM_STOP = frozenset(b' ()"{\\')  # "[" handled separately: BODY[HEADER.FIELDS (A B)] is one token
_SEQ_RE = re.compile(r"^(\d+|\*)(?::(\d+|\*))?$")


class ImapSyntaxError(RemoteProtocolError):
    """The command does not parse; answered with a tagged ``BAD``."""


class Literal(bytes):
    """A string that arrived as a literal (kept apart so it is never re-tokenised)."""


def tokenize(data: bytes, literals: list[bytes]) -> list:
    """Split command arguments into atoms (str), strings (bytes: quoted or literal) and lists.

    Literal contents are not inside ``data``: each is marked by NUL, index, NUL (NUL cannot occur
    in a command line, RFC 3501 §9 CHAR8 excludes it from everything but literals)."""
    pos = 0
    stack: list[list] = [[]]
    n = len(data)
    while pos < n:
        c = data[pos]
        if c == 0x20:
            pos += 1
        elif c == 0x28:  # (
            stack.append([])
            pos += 1
        elif c == 0x29:  # )
            if len(stack) == 1:
                raise ImapSyntaxError("unbalanced parenthesis")
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif c == 0x22:  # quoted string, RFC 3501 §9 quoted
            out = bytearray()
            pos += 1
            while True:
                if pos >= n:
                    raise ImapSyntaxError("unterminated quoted string")
                ch = data[pos]
                if ch == 0x5C:
                    if pos + 1 >= n or data[pos + 1] not in (0x22, 0x5C):
                        raise ImapSyntaxError("bad escape in quoted string")
                    out.append(data[pos + 1])
                    pos += 2
                elif ch == 0x22:
                    pos += 1
                    break
                elif ch in (0x0D, 0x0A):
                    raise ImapSyntaxError("line break in quoted string")
                else:
                    out.append(ch)
                    pos += 1
            stack[-1].append(bytes(out))
        elif c == 0x00:
            end = data.find(b"\x00", pos + 1)
            if end < 0:
                raise ImapSyntaxError("NUL in command")
            try:
                stack[-1].append(Literal(literals[int(data[pos + 1:end])]))
            except (ValueError, IndexError):
                raise ImapSyntaxError("NUL in command") from None
            pos = end + 1
        elif c == 0x7B:  # a "{" that does not end the line is no literal
            raise ImapSyntaxError("unexpected character")
        else:
            start = pos
            depth = 0
            if c == 0x5C:
                pos += 1  # a flag: "\" atom (RFC 3501 §9 flag-extension)
            while pos < n:
                ch = data[pos]
                if ch == 0x5B:
                    depth += 1
                elif ch == 0x5D and depth:
                    depth -= 1
                elif depth == 0 and ch in _ATOM_STOP:
                    break
                elif ch < 0x20 or ch == 0x7F:
                    raise ImapSyntaxError("control character in atom")
                pos += 1
            if depth:
                raise ImapSyntaxError("unbalanced bracket")
            try:
                stack[-1].append(data[start:pos].decode("utf-8"))
            except UnicodeDecodeError:
                raise ImapSyntaxError("atom is not UTF-8") from None
    if len(stack) != 1:
        raise ImapSyntaxError("unbalanced parenthesis")
    return stack[0]


def astring(tok) -> str:
    """An astring argument (atom, quoted or literal) as text."""
    if isinstance(tok, bytes):
        try:
            return tok.decode("utf-8")
        except UnicodeDecodeError:
            raise ImapSyntaxError("string is not UTF-8") from None
    if isinstance(tok, str):
        return tok
    raise ImapSyntaxError("expected a string")


def quote(text: str | bytes) -> bytes:
    """An IMAP string for ``text``: quoted when it can be, a literal otherwise."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) < 1024 and not any(b in raw for b in (b"\r", b"\n", b"\x00")) and raw.isascii():
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else quote(value)


class SequenceSet:
    """RFC 3501 §9 sequence-set; ``*`` stands for the largest number in use."""

    def __init__(self, text: str):
        self.ranges: list[tuple[int | None, int | None]] = []
        if not text:
            raise ImapSyntaxError("empty sequence set")
        for part in text.split(","):
            m = _SEQ_RE.match(part)
            if m is None:
                raise ImapSyntaxError("invalid sequence set")
            lo = None if m.group(1) == "*" else int(m.group(1))
            hi = lo if m.group(2) is None else (None if m.group(2) == "*" else int(m.group(2)))
            if lo == 0 or hi == 0:
                raise ImapSyntaxError("0 is not a valid message number")
            self.ranges.append((lo, hi))

    def contains(self, n: int, largest: int) -> bool:
        for lo, hi in self.ranges:
            a = largest if lo is None else lo
            b = largest if hi is None else hi
            if a > b:
                a, b = b, a
            if a <= n <= b:
                return True
        return False
