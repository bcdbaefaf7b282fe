"""IMAP4rev2 session core (RFC 9051): greeting, CAPABILITY, NOOP, STARTTLS, LOGOUT.

Authentication and mailbox commands are refused with ``NO [UNAVAILABLE]`` until the mail session
issue adds them; the greeting therefore advertises ``LOGINDISABLED``.
"""
from __future__ import annotations

import re

from .base import SessionContext
from .lines import LineSession

_TAG = re.compile(rb"^[\x21-\x7e]+$")


class ImapSession(LineSession):
    event_group = "imap"
    max_line = 8192

    def __init__(self, ctx: SessionContext, timeout_ms: int = 60000):
        super().__init__(ctx)
        self._timeout_ms = timeout_ms

    @property
    def idle_timeout_ms(self) -> int:
        return self._timeout_ms

    def capabilities(self) -> str:
        caps = ["IMAP4rev2", "IMAP4rev1", "ENABLE", "SASL-IR", "LITERAL+", "ID", "LOGINDISABLED"]
        if self.ctx.tls_available and not self.ctx.tls_active:
            caps.append("STARTTLS")
        return " ".join(caps)

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self.capabilities()}] Stalwart IMAP4rev2 at your service.\r\n".encode()

    def handle_line(self, line: bytes) -> None:
        tag, _, rest = line.partition(b" ")
        if not tag or not _TAG.match(tag) or tag.startswith(b"*") or tag.startswith(b"+"):
            self._send(b"* BAD Invalid tag.\r\n")
            return
        cmd = rest.split(b" ", 1)[0].decode("ascii", "replace").upper()
        t = tag.decode("ascii")
        if cmd == "CAPABILITY":
            self._send(f"* CAPABILITY {self.capabilities()}\r\n{t} OK CAPABILITY completed.\r\n".encode())
        elif cmd == "NOOP":
            self._send(f"{t} OK NOOP completed.\r\n".encode())
        elif cmd == "LOGOUT":
            self._send(f"* BYE Stalwart IMAP4rev2 bids you farewell.\r\n{t} OK LOGOUT completed.\r\n".encode(), close=True)
        elif cmd == "STARTTLS":
            if self.ctx.tls_active:
                self._send(f"{t} BAD Already in TLS mode.\r\n".encode())
            elif not self.ctx.tls_available:
                self._send(f"{t} BAD TLS is not available.\r\n".encode())
            else:
                self._start_tls(f"{t} OK Begin TLS negotiation now.\r\n".encode())
        elif cmd in ("LOGIN", "AUTHENTICATE"):
            self._send(f"{t} NO [UNAVAILABLE] Authentication is not available yet.\r\n".encode())
        elif cmd:
            self._send(f"{t} BAD Unknown command.\r\n".encode())
        else:
            self._send(f"{t} BAD Missing command.\r\n".encode())

    def line_too_long(self) -> None:
        self._send(b"* BAD Command line too long.\r\n")

    def timeout_reply(self) -> bytes:
        return b"* BYE Connection timed out.\r\n"

    def shutdown_reply(self) -> bytes:
        return b"* BYE Server shutting down.\r\n"
