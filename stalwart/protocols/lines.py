"""Shared machinery of the line-oriented protocols (SMTP, LMTP, IMAP, POP3, ManageSieve)."""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from .base import Awaiting, Blocking, Delay, SessionContext, SessionCore, StartTls

#: a byte reader (SMTP DATA, IMAP and ManageSieve literals): given the buffer and where unread bytes
#: start, it returns the offset where line parsing resumes, or None when it took every byte
RawReader = Callable[[bytearray, int], "int | None"]


class LineSession(SessionCore):
    """Splits input into command lines and hands each to :meth:`handle_line`.

    A line ends at LF (a preceding CR is removed). A line longer than ``max_line`` bytes is drained
    up to its end and answered once through :meth:`line_too_long`, so a flood of bytes without a
    newline costs bounded memory.

    Two states suspend line parsing: a raw reader set with :meth:`_read_raw` takes bytes as they
    come (message bodies, literals), and a :class:`Blocking` job asked for with :meth:`_block`
    holds everything until :meth:`blocking_done` (the driver also stops reading meanwhile).
    """

    #: RFC 5321 §4.5.3.1.4 allows 512 octets for an SMTP command line; IMAP needs more. Subclasses set it.
    max_line = 8192

    def __init__(self, ctx: SessionContext):
        super().__init__(ctx)
        self._buf = bytearray()
        self._overflow = False
        self._tls_pending = False
        self._waiting: Callable[[Any, BaseException | None], None] | None = None
        self._reader: RawReader | None = None
        self.commands_seen = 0

    def receive_data(self, data: bytes) -> None:
        if self.closed or self._tls_pending:
            return
        if not data:
            self.connection_lost()
            self.closed = True
            return
        self._buf += data
        self._process()

    def _process(self) -> None:
        buf = self._buf
        start = 0
        while not self.closed and not self._tls_pending and self._waiting is None:
            reader = self._reader
            if reader is not None:
                nxt = reader(buf, start)
                if nxt is None:
                    start = len(buf)
                    break
                start = nxt
                continue
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if self._overflow or nl - start > self.max_line:
                # Too long, whether it was drained in pieces or arrived whole in one read.
                self._overflow = False
                self.commands_seen += 1
                self.line_too_long()
            else:
                end = nl - 1 if nl > start and buf[nl - 1] == 13 else nl
                self.commands_seen += 1
                self.handle_line(bytes(buf[start:end]))
            start = nl + 1
        if self._tls_pending or self.closed:
            # Bytes pipelined after STARTTLS (or after a closing reply) are discarded, never
            # replayed inside the TLS session (CVE-2011-0411).
            buf.clear()
            return
        del buf[:start]
        if self._reader is None and self._waiting is None and len(buf) > self.max_line:
            self._overflow = True
            buf.clear()

    def _read_raw(self, reader: RawReader | None) -> None:
        """Hand the following bytes to ``reader`` until it returns an offset (None: lines again)."""
        self._reader = reader

    def _block(self, fn: Callable[..., Any], args: tuple, then: Callable[[Any, BaseException | None], None],
               pool: str = "io") -> None:
        """Run ``fn(*args)`` off the event loop (``pool``: "io" or "cpu"); ``then(result, error)``
        continues the session."""
        self._waiting = then
        self._events.append(Blocking(fn, args, pool))

    def _await(self, fn: Callable[..., Any], args: tuple, then: Callable[[Any, BaseException | None], None]) -> None:
        """Run the coroutine ``fn(*args)`` on the loop; ``then(result, error)`` continues the session."""
        self._waiting = then
        self._events.append(Awaiting(fn, args))

    def _delay(self, seconds: float, then: Callable[[], None]) -> None:
        """Continue with ``then()`` after ``seconds``; nothing is read or answered meanwhile."""
        self._waiting = lambda _result, _error: then()
        self._events.append(Delay(seconds))

    def blocking_done(self, result: Any, error: BaseException | None) -> None:
        then, self._waiting = self._waiting, None
        if then is None:
            super().blocking_done(result, error)
            return
        then(result, error)
        if not self.closed and not self._tls_pending:
            self._process()  # commands pipelined behind the one that waited

    @property
    def interruptible(self) -> bool:
        return self._waiting is None and self._reader is None

    def _start_tls(self, reply: bytes) -> None:
        self._tls_pending = True
        self._events.append(StartTls(reply))

    def tls_started(self, version: str, cipher: str) -> None:
        super().tls_started(version, cipher)
        self._tls_pending = False
        self._buf.clear()

    def connection_lost(self) -> None:
        """The peer closed its side (EOF). Subclasses note an unfinished transfer here."""

    @abstractmethod
    def handle_line(self, line: bytes) -> None:
        """Act on one complete command line (without its line ending)."""

    @abstractmethod
    def line_too_long(self) -> None:
        """Answer a command line that exceeded ``max_line``."""

    @staticmethod
    def split_command(line: bytes) -> tuple[str, bytes]:
        verb, _, rest = line.partition(b" ")
        return verb.decode("ascii", "replace").upper(), rest
