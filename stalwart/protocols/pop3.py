"""POP3 session core (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS): greeting, CAPA, NOOP, STLS, QUIT.

Authentication and maildrop commands answer ``-ERR`` until the mail session issue adds them.
"""
from __future__ import annotations

from .base import SessionContext
from .lines import LineSession


class Pop3Session(LineSession):
    event_group = "pop3"
    max_line = 255  # RFC 2449 §4: commands are at most 255 octets including CRLF

    def __init__(self, ctx: SessionContext, timeout_ms: int = 60000):
        super().__init__(ctx)
        self._timeout_ms = timeout_ms

    @property
    def idle_timeout_ms(self) -> int:
        return self._timeout_ms

    def greeting(self) -> bytes:
        return b"+OK Stalwart POP3 at your service.\r\n"

    def handle_line(self, line: bytes) -> None:
        verb, _ = self.split_command(line)
        if verb == "QUIT":
            self._send(b"+OK Stalwart POP3 bids you farewell.\r\n", close=True)
        elif verb == "NOOP":
            self._send(b"+OK\r\n")
        elif verb == "CAPA":
            caps = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "UTF8"]
            if self.ctx.tls_available and not self.ctx.tls_active:
                caps.append("STLS")
            self._send(("+OK Capability list follows\r\n" + "".join(c + "\r\n" for c in caps) + ".\r\n").encode())
        elif verb == "STLS":
            if self.ctx.tls_active:
                self._send(b"-ERR Already in TLS mode.\r\n")
            elif not self.ctx.tls_available:
                self._send(b"-ERR TLS is not available.\r\n")
            else:
                self._start_tls(b"+OK Begin TLS negotiation now.\r\n")
        elif verb in ("USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "DELE", "RSET", "TOP", "UIDL", "UTF8"):
            self._send(b"-ERR [SYS/TEMP] Not available yet.\r\n")
        else:
            self._send(b"-ERR Unknown command.\r\n")

    def line_too_long(self) -> None:
        self._send(b"-ERR Command line too long.\r\n")

    def timeout_reply(self) -> bytes:
        return b"-ERR Connection timed out.\r\n"

    def shutdown_reply(self) -> bytes:
        return b"-ERR Server shutting down.\r\n"
