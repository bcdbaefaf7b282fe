"""SMTP and LMTP session core (RFC 5321, RFC 2033, RFC 3207 STARTTLS).

This core implements the connection-level dialogue: greeting, EHLO/HELO/LHLO, NOOP, RSET, HELP,
STARTTLS, QUIT, idle-timeout and shutdown lines (network.md §8). Mail transactions (MAIL, RCPT,
DATA) are answered ``502 5.5.1`` until the mail session issue adds them.
"""
from __future__ import annotations

from .base import SessionContext
from .lines import LineSession


class SmtpSession(LineSession):
    event_group = "smtp"
    max_line = 512  # RFC 5321 §4.5.3.1.4: command line limit, including CRLF

    def __init__(self, ctx: SessionContext, timeout_ms: int = 300000, lmtp: bool = False):
        super().__init__(ctx)
        self.lmtp = lmtp
        self._timeout_ms = timeout_ms
        self.helo: str | None = None

    @property
    def idle_timeout_ms(self) -> int:
        return self._timeout_ms

    def greeting(self) -> bytes:
        kind = "LMTP" if self.lmtp else "ESMTP"
        return f"220 {self.ctx.hostname} Stalwart {kind} at your service\r\n".encode()

    def _ehlo_reply(self) -> bytes:
        lines = [self.ctx.hostname, "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self.ctx.tls_available and not self.ctx.tls_active:
            lines.append("STARTTLS")
        out = [f"250-{x}\r\n" for x in lines[:-1]] + [f"250 {lines[-1]}\r\n"]
        return "".join(out).encode()

    def handle_line(self, line: bytes) -> None:
        verb, arg = self.split_command(line)
        if verb == ("LHLO" if self.lmtp else "EHLO"):
            if not arg.strip():
                self._send(b"501 5.5.4 Invalid domain name.\r\n")
                return
            self.helo = arg.strip().decode("utf-8", "replace")
            self._send(self._ehlo_reply())
        elif verb == "HELO" and not self.lmtp:
            if not arg.strip():
                self._send(b"501 5.5.4 Invalid domain name.\r\n")
                return
            self.helo = arg.strip().decode("utf-8", "replace")
            self._send(f"250 {self.ctx.hostname} says hello\r\n".encode())
        elif verb == "QUIT":
            self._send(b"221 2.0.0 Bye.\r\n", close=True)
        elif verb == "NOOP":
            self._send(b"250 2.0.0 OK\r\n")
        elif verb == "RSET":
            self._send(b"250 2.0.0 OK\r\n")
        elif verb == "HELP":
            self._send(b"250 2.0.0 Help can be found at https://stalw.art/docs/\r\n")
        elif verb == "STARTTLS":
            if self.ctx.tls_active:
                self._send(b"504 5.7.4 Already in TLS mode.\r\n")
            elif not self.ctx.tls_available:
                self._send(b"502 5.7.0 TLS not available.\r\n")
            else:
                self._start_tls(b"220 2.0.0 Ready to start TLS.\r\n")
        elif verb in ("MAIL", "RCPT", "DATA", "BDAT", "AUTH", "VRFY", "EXPN", "ETRN", "BURL"):
            self._send(b"502 5.5.1 Command not implemented.\r\n")
        else:
            self._send(b"500 5.5.1 Invalid command.\r\n")

    def tls_started(self, version: str, cipher: str) -> None:
        super().tls_started(version, cipher)
        self.helo = None  # RFC 3207 §4.2: the client must issue EHLO again

    def line_too_long(self) -> None:
        self._send(b"500 5.5.2 Line too long.\r\n")

    def timeout_reply(self) -> bytes:
        return f"421 4.4.2 {self.ctx.hostname} Disconnecting inactive client.\r\n".encode()

    def shutdown_reply(self) -> bytes:
        return f"421 4.3.0 {self.ctx.hostname} Server shutting down.\r\n".encode()
