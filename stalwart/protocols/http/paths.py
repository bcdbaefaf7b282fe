"""Request-path normalisation and the ``Security.scanBanPaths`` glob set (security.md §6).

Every request path is normalised once, before routing, and tested against the banned-path globs
compiled once per configuration load. Globs are the reference's (``crates/utils/src/glob.rs``):
``*`` matches any run of characters including ``/``, ``?`` exactly one, ``\\x`` the literal ``x``,
anything else itself, case-insensitively, anchored at both ends.

Matching splits a glob at its stars: the first piece is anchored at the start, the last at the end,
and each middle piece is taken at its left-most position. Taking the left-most occurrence is always
safe for star-separated pieces, so a match costs O(path × pattern) whatever the operator wrote,
where a translated backtracking regex can go exponential on a pattern with many stars.
"""
from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_SLASHES = re.compile(r"/{2,}")


def request_path(target: str) -> str:
    """The path of a request target: origin-form as is, absolute-form's path part, no query or
    fragment (RFC 9112 §3.2)."""
    if not target.startswith("/"):
        scheme = target.find("://")
        if scheme > 0:
            slash = target.find("/", scheme + 3)
            target = target[slash:] if slash >= 0 else "/"
    for sep in ("?", "#"):
        cut = target.find(sep)
        if cut >= 0:
            target = target[:cut]
    return target


def decode_path(path: str) -> str:
    """Percent-decode once (malformed escapes stay as written), UTF-8 with U+FFFD for invalid
    sequences, ``\\`` to ``/``, runs of ``/`` collapsed; ``.`` and ``..`` segments are kept so the
    globs see them (security.md §6 steps 2-5). Case is preserved: routing is case-sensitive."""
    if "%" in path:
        path = unquote_to_bytes(path).decode("utf-8", "replace")
    if "\\" in path:
        path = path.replace("\\", "/")
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return path


class _Glob:
    """One compiled glob: literal or ``?``-bearing pieces between stars."""

    __slots__ = ("pieces", "starred", "text")

    def __init__(self, text: str):
        self.text = text
        pieces: list[list[str | None]] = [[]]  # None stands for "?"
        starred = False
        i = 0
        low = text.lower()
        while i < len(low):
            c = low[i]
            if c == "*":
                starred = True
                pieces.append([])
                while i + 1 < len(low) and low[i + 1] == "*":
                    i += 1  # a run of stars is one star
            elif c == "?":
                pieces[-1].append(None)
            elif c == "\\" and i + 1 < len(low):
                i += 1
                pieces[-1].append(low[i])
            else:
                pieces[-1].append(c)
            i += 1
        self.starred = starred
        self.pieces = [_Piece(p) for p in pieces]

    def matches(self, s: str) -> bool:
        pieces = self.pieces
        if not self.starred:
            return len(pieces[0]) == len(s) and pieces[0].at(s, 0)
        first, last = pieces[0], pieces[-1]
        if len(first) + len(last) > len(s) or not first.at(s, 0):
            return False
        end = len(s) - len(last)
        if not last.at(s, end):
            return False
        pos = len(first)
        for piece in pieces[1:-1]:
            found = piece.find(s, pos, end)
            if found < 0:
                return False
            pos = found + len(piece)
        return True


class _Piece:
    __slots__ = ("chars", "literal", "size")

    def __init__(self, chars: list[str | None]):
        self.chars = chars
        self.literal = None if None in chars else "".join(chars)  # type: ignore[arg-type]
        self.size = len(chars)

    def __len__(self) -> int:
        return self.size

    def at(self, s: str, pos: int) -> bool:
        if self.literal is not None:
            return s.startswith(self.literal, pos)
        if pos + len(self.chars) > len(s):
            return False
        return all(c is None or s[pos + k] == c for k, c in enumerate(self.chars))

    def find(self, s: str, start: int, end: int) -> int:
        """Left-most position >= start where this piece fits entirely before ``end``."""
        if self.literal is not None:
            return s.find(self.literal, start, end)
        for pos in range(start, end - len(self.chars) + 1):
            if self.at(s, pos):
                return pos
        return -1


class BannedPaths:
    """``Security.scanBanPaths`` compiled once per configuration load.

    Most globs are ``*literal*`` (every default is): those become one regex alternation of escaped
    literals searched in a single C call, and only the other shapes run the piecewise matcher.
    """

    __slots__ = ("contains", "general", "globs")

    def __init__(self, patterns: list[str]):
        self.globs = [_Glob(p) for p in patterns if p]
        literals = [g.pieces[1].literal for g in self.globs if _is_contains(g)]
        self.contains = re.compile("|".join(re.escape(lit) for lit in literals)) if literals else None
        self.general = [g for g in self.globs if not _is_contains(g)]

    def _hit(self, s: str) -> bool:
        if self.contains is not None and self.contains.search(s) is not None:
            return True
        return any(g.matches(s) for g in self.general)

    def match(self, normalised: str, raw: str) -> str | None:
        """The first glob matching the normalised path or the raw path (security.md §6: a match on
        either bans); ``normalised`` and ``raw`` are compared lower-cased."""
        if not self.globs:
            return None
        norm = normalised.lower()
        raw = raw.lower()
        if not self._hit(norm) and (raw == norm or not self._hit(raw)):
            return None
        for glob in self.globs:  # a match: say which glob, for the log
            if glob.matches(norm) or glob.matches(raw):
                return glob.text
        return None


def _is_contains(glob: _Glob) -> bool:
    """``*literal*``: two stars around one literal piece."""
    p = glob.pieces
    return len(p) == 3 and not len(p[0]) and not len(p[2]) and p[1].literal is not None and len(p[1]) > 0
