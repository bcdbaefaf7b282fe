"""Per-account Sieve script storage for ManageSieve (RFC 5804): one file per script, plus a file
naming the active one. Scripts are stored, listed and activated; executing them is not done here."""
from __future__ import annotations

import os

from ..errors import StalwartError

#: RFC 5804 §1.6: script names are UTF-8 without control characters; we also keep them usable as
#: file names (no "/", no leading dot) and bounded.
MAX_NAME = 128
#: per-account quota, advertised through HAVESPACE (RFC 5804 §2.5)
MAX_SCRIPT_BYTES = 1 << 20
MAX_SCRIPTS = 64


class SieveError(StalwartError):
    """A script operation cannot be done; ``code`` is the RFC 5804 response code (or "")."""

    def __init__(self, message: str, code: str = ""):
        self.code = code
        super().__init__(message)


def valid_name(name: str) -> bool:
    return (0 < len(name) <= MAX_NAME and "/" not in name and not name.startswith(".")
            and all(ord(c) >= 0x20 and c not in "\x7f\u2028\u2029" for c in name))


class SieveStore:
    def __init__(self, path: str):
        self.path = path

    def _file(self, name: str) -> str:
        if not valid_name(name):
            raise SieveError("Invalid script name.")
        return os.path.join(self.path, name.encode("utf-8").hex() + ".sieve")

    def _active_path(self) -> str:
        return os.path.join(self.path, "active")

    def active(self) -> str | None:
        try:
            with open(self._active_path(), encoding="utf-8") as fh:
                return fh.read() or None
        except FileNotFoundError:
            return None

    def list(self) -> list[tuple[str, bool]]:
        """(name, is_active) of every script, sorted by name."""
        try:
            files = os.listdir(self.path)
        except FileNotFoundError:
            return []
        active = self.active()
        names = sorted(bytes.fromhex(f[:-6]).decode("utf-8") for f in files if f.endswith(".sieve"))
        return [(n, n == active) for n in names]

    def get(self, name: str) -> bytes:
        try:
            with open(self._file(name), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise SieveError("There is no script by that name.", "NONEXISTENT") from None

    def have_space(self, name: str, size: int) -> None:
        """Raise ``QUOTA/MAXSIZE`` or ``QUOTA/MAXSCRIPTS`` if the script would not fit."""
        if size > MAX_SCRIPT_BYTES:
            raise SieveError("Script is too large.", "QUOTA/MAXSIZE")
        existing = [n for n, _ in self.list()]
        if name not in existing and len(existing) >= MAX_SCRIPTS:
            raise SieveError("Too many scripts.", "QUOTA/MAXSCRIPTS")

    def put(self, name: str, script: bytes) -> None:
        self.have_space(name, len(script))
        path = self._file(name)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(script)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)

    def set_active(self, name: str) -> None:
        """Activate ``name``; the empty name deactivates every script (RFC 5804 §2.8)."""
        if name and not os.path.exists(self._file(name)):
            raise SieveError("There is no script by that name.", "NONEXISTENT")
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        tmp = self._active_path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(name)
        os.rename(tmp, self._active_path())

    def delete(self, name: str) -> None:
        if self.active() == name:
            raise SieveError("You may not delete an active script.", "ACTIVE")
        try:
            os.unlink(self._file(name))
        except FileNotFoundError:
            raise SieveError("There is no script by that name.", "NONEXISTENT") from None

    def rename(self, old: str, new: str) -> None:
        src = self._file(old)
        if not os.path.exists(src):
            raise SieveError("There is no script by that name.", "NONEXISTENT")
        dst = self._file(new)
        if os.path.exists(dst):
            raise SieveError("A script with that name already exists.", "ALREADYEXISTS")
        os.rename(src, dst)
        if self.active() == old:
            self.set_active(new)


def check_script(script: bytes) -> str | None:
    """A shallow RFC 5228 syntax check: UTF-8, terminated strings and comments, balanced
    brackets, and every command ended by ";" or a block. Returns the problem, or None."""
    try:
        text = script.decode("utf-8")
    except UnicodeDecodeError:
        return "Script is not valid UTF-8."
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    pending = False  # a command started but not yet ended by ";" or "{"
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                return f"line {line}: unterminated comment."
            line += text.count("\n", i, end)
            i = end + 2
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                return f"line {line}: unterminated string."
            line += text.count("\n", i, j)
            i = j + 1
        elif text.startswith("text:", i):
            end = text.find("\n.\r\n", i)
            end2 = text.find("\n.\n", i)
            ends = [e for e in (end, end2) if e >= 0]
            if not ends:
                return f"line {line}: unterminated multi-line string."
            stop = min(ends)
            line += text.count("\n", i, stop + 2)
            i = stop + (4 if stop == end else 3)
        elif c in "([{":
            if c == "{":
                if not pending:
                    return f"line {line}: block without a command."
                pending = False
            stack.append(c)
            i += 1
        elif c in ")]}":
            if not stack or stack[-1] != pairs[c]:
                return f"line {line}: unbalanced '{c}'."
            stack.pop()
            i += 1
        elif c == ";":
            if not pending:
                return f"line {line}: unexpected ';'."
            pending = False
            i += 1
        elif c.isalnum() or c in "_:,@.-+*$%!&=<>|'\\/?^~`":
            if not (stack and stack[-1] in "(["):
                pending = True
            i += 1
        else:
            return f"line {line}: unexpected character {c!r}."
    if stack:
        return "unbalanced brackets at the end of the script."
    if pending:
        return "the last command is missing its ';'."
    return None
