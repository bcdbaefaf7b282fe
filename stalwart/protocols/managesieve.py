"""ManageSieve session core (RFC 5804): capability greeting, CAPABILITY, NOOP, STARTTLS, LOGOUT.

Authentication and script commands answer ``NO`` until the mail session issue adds them.
"""
from __future__ import annotations

from .base import SessionContext
from .lines import LineSession


class ManageSieveSession(LineSession):
    event_group = "manage-sieve"
    max_line = 8192

    def __init__(self, ctx: SessionContext, timeout_ms: int = 60000):
        super().__init__(ctx)
        self._timeout_ms = timeout_ms

    @property
    def idle_timeout_ms(self) -> int:
        return self._timeout_ms

    def capabilities(self) -> bytes:
        lines = ['"IMPLEMENTATION" "Stalwart ManageSieve"', '"SIEVE" "fileinto reject envelope vacation"', '"SASL" ""']
        if self.ctx.tls_available and not self.ctx.tls_active:
            lines.append('"STARTTLS"')
        lines.append('"VERSION" "1.0"')
        return "".join(x + "\r\n" for x in lines).encode()

    def greeting(self) -> bytes:
        return self.capabilities() + b'OK "Stalwart ManageSieve at your service."\r\n'

    def handle_line(self, line: bytes) -> None:
        verb, _ = self.split_command(line)
        if verb == "LOGOUT":
            self._send(b'OK "Logout complete."\r\n', close=True)
        elif verb == "NOOP":
            self._send(b'OK "NOOP completed."\r\n')
        elif verb == "CAPABILITY":
            self._send(self.capabilities() + b'OK "Capability completed."\r\n')
        elif verb == "STARTTLS":
            if self.ctx.tls_active:
                self._send(b'NO "Already in TLS mode."\r\n')
            elif not self.ctx.tls_available:
                self._send(b'NO "TLS is not available."\r\n')
            else:
                self._start_tls(b'OK "Begin TLS negotiation now."\r\n')
        elif verb:
            self._send(b'NO "Command not available."\r\n')
        else:
            self._send(b'NO "Missing command."\r\n')

    def line_too_long(self) -> None:
        self._send(b'NO "Command line too long."\r\n')

    def timeout_reply(self) -> bytes:
        return b'BYE "Connection timed out."\r\n'

    def shutdown_reply(self) -> bytes:
        return b'BYE "Server shutting down."\r\n'
