"""Shared machinery of the line-oriented protocols (SMTP, LMTP, IMAP, POP3, ManageSieve)."""
from __future__ import annotations

from abc import abstractmethod

from .base import SessionContext, SessionCore, StartTls


class LineSession(SessionCore):
    """Splits input into command lines and hands each to :meth:`handle_line`.

    A line ends at LF (a preceding CR is removed). A line longer than ``max_line`` bytes is drained
    up to its end and answered once through :meth:`line_too_long`, so a flood of bytes without a
    newline costs bounded memory.
    """

    #: RFC 5321 §4.5.3.1.4 allows 512 octets for an SMTP command line; IMAP needs more. Subclasses set it.
    max_line = 8192

    def __init__(self, ctx: SessionContext):
        super().__init__(ctx)
        self._buf = bytearray()
        self._overflow = False
        self._tls_pending = False
        self.commands_seen = 0

    def receive_data(self, data: bytes) -> None:
        if self.closed or self._tls_pending:
            return
        if not data:
            self.closed = True
            return
        buf = self._buf
        buf += data
        start = 0
        while not self.closed and not self._tls_pending:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if self._overflow:
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
        if len(buf) > self.max_line:
            self._overflow = True
            buf.clear()

    def _start_tls(self, reply: bytes) -> None:
        self._tls_pending = True
        self._events.append(StartTls(reply))

    def tls_started(self, version: str, cipher: str) -> None:
        super().tls_started(version, cipher)
        self._tls_pending = False
        self._buf.clear()

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
