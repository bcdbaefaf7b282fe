"""ManageSieve session core (RFC 5804): storing and activating each account's Sieve scripts.

CAPABILITY, STARTTLS (capabilities re-sent after the handshake, §2.2), AUTHENTICATE PLAIN (with an
initial response or a continuation), LISTSCRIPTS, PUTSCRIPT, GETSCRIPT, SETACTIVE, DELETESCRIPT,
RENAMESCRIPT, HAVESPACE, CHECKSCRIPT (a shallow syntax check), NOOP, LOGOUT. Strings are quoted or
literals (``{n+}`` and ``{n}``, both read without a continuation, §4). Scripts are stored; running
them at delivery is not part of this server yet. Storage runs as :class:`~.base.Blocking` jobs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..accounts import AccountEntry, sasl
from ..mailstore.sieve import MAX_SCRIPT_BYTES, SieveError, check_script, valid_name
from . import mailcommon
from .base import SessionContext
from .imap.syntax import LITERAL_RE, ImapSyntaxError, astring, quote, tokenize
from .lines import LineSession
from .mailcommon import MailServices

if TYPE_CHECKING:
    from ..mailstore import SieveStore

MAX_ERRORS = 10
MAX_COMMAND = MAX_SCRIPT_BYTES + 4096


def _listscripts(store: SieveStore) -> list:
    return store.list()


def _putscript(store: SieveStore, name: str, script: bytes) -> None:
    store.put(name, script)


class ManageSieveSession(mailcommon.PasswordAuth, LineSession):
    event_group = "manage-sieve"
    max_line = 8192

    def __init__(self, ctx: SessionContext, timeout_ms: int = 60000, *, services: MailServices | None = None,
                 allow_plain_auth: bool = False, max_errors: int = MAX_ERRORS):
        super().__init__(ctx)
        self._timeout_ms = timeout_ms
        self.services = services or MailServices()
        self.allow_plain_auth = allow_plain_auth
        self.max_errors = max_errors
        self.errors = 0
        self.auth_failures = 0
        self.account: AccountEntry | None = None
        self.store: SieveStore | None = None
        self._pending: bytes | None = None
        self._literals: list[bytes] = []
        self._need = 0
        self._sasl_wait = False
        self._login = ""
        self._credential: str | None = None

    # -- session interface ---------------------------------------------------------------------
    @property
    def idle_timeout_ms(self) -> int:
        return self.services.timeout_authenticated_ms if self.account is not None else self._timeout_ms

    @property
    def interruptible(self) -> bool:
        return super().interruptible and self._pending is None

    def _auth_allowed(self) -> bool:
        return self.ctx.tls_active or self.allow_plain_auth

    def capabilities(self) -> bytes:
        lines = ['"IMPLEMENTATION" "Stalwart ManageSieve"',
                 '"SIEVE" "fileinto reject envelope vacation"']
        if self.account is None:
            lines.append('"SASL" "PLAIN"' if self._auth_allowed() else '"SASL" ""')
            if self.ctx.tls_available and not self.ctx.tls_active:
                lines.append('"STARTTLS"')
        lines.append('"VERSION" "1.0"')
        return "".join(x + "\r\n" for x in lines).encode()

    def greeting(self) -> bytes:
        return self.capabilities() + b'OK "Stalwart ManageSieve at your service."\r\n'

    def tls_started(self, version: str, cipher: str) -> None:
        super().tls_started(version, cipher)
        # RFC 5804 §2.2: after the TLS handshake the server sends its capabilities again.
        self._send(self.capabilities() + b'OK "TLS negotiation successful."\r\n')

    def line_too_long(self) -> None:
        self._pending = None
        self._error(b'NO "Command line too long."\r\n')

    def timeout_reply(self) -> bytes:
        if self.commands_seen == 0:
            mailcommon.loitering(self.ctx, self.event_group)
        return b'BYE "Connection timed out."\r\n'

    def shutdown_reply(self) -> bytes:
        return b'BYE "Server shutting down."\r\n'

    def _error(self, reply: bytes) -> None:
        self.errors += 1
        if self.account is None:
            mailcommon.invalid_command(self.ctx, self.event_group)
        if self.errors >= self.max_errors:
            self._send(b'BYE "Too many invalid commands."\r\n', close=True)
        else:
            self._send(reply)

    def _no(self, text: str, code: str = "") -> None:
        self._send((f"NO ({code}) " if code else "NO ").encode() + quote(text) + b"\r\n")

    def _ok(self, text: str, before: bytes = b"") -> None:
        self._send(before + b"OK " + quote(text) + b"\r\n")

    # -- framing --------------------------------------------------------------------------------
    def handle_line(self, line: bytes) -> None:
        full = line if self._pending is None else self._pending + line
        if self._pending is None:
            self._literals = []
        self._pending = None
        if b"\x00" in line:
            self._error(b'NO "NUL in command."\r\n')
            return
        m = LITERAL_RE.search(full)
        if m is None:
            self._command(full)
            return
        n = int(m.group(1))
        if n > MAX_SCRIPT_BYTES or len(full) + n > MAX_COMMAND:
            # RFC 5804 §4: literals are non-synchronising; the bytes are coming and cannot be refused.
            self._send(b'BYE (QUOTA/MAXSIZE) "Literal too large."\r\n', close=True)
            return
        self._pending = full[:m.start()] + b"\x00%d\x00" % len(self._literals)
        self._literals.append(b"")
        self._need = n
        self._read_raw(self._read_literal)

    def _read_literal(self, buf: bytearray, start: int) -> int | None:
        take = min(self._need, len(buf) - start)
        self._literals[-1] += bytes(buf[start:start + take])
        self._need -= take
        if self._need:
            return None
        self._read_raw(None)
        return start + take

    def _command(self, line: bytes) -> None:
        if self._sasl_wait:
            self._sasl_wait = False
            try:
                toks = tokenize(line, self._literals)
                if len(toks) != 1 or not isinstance(toks[0], bytes):
                    raise ImapSyntaxError("expected a string")
                self._sasl_response(toks[0])
            except ImapSyntaxError:
                self._error(b'NO "Invalid SASL response."\r\n')
            return
        word, _, rest = line.partition(b" ")
        cmd = word.decode("ascii", "replace").upper()
        handler = self._HANDLERS.get(cmd)
        if handler is None:
            self._error(b'NO "Unknown command."\r\n' if cmd else b'NO "Missing command."\r\n')
            return
        if cmd in self._AUTHENTICATED and self.account is None:
            self._no("Not authenticated.")
            return
        if cmd in ("AUTHENTICATE", "STARTTLS") and self.account is not None:
            self._no("Already authenticated.")
            return
        try:
            handler(self, tokenize(rest, self._literals))
        except ImapSyntaxError as exc:
            self._error(b"NO " + quote(f"Syntax error: {exc}.") + b"\r\n")

    @staticmethod
    def _args(toks: list, count: int) -> list[str]:
        if len(toks) != count or not all(isinstance(t, (bytes, str)) for t in toks):
            raise ImapSyntaxError(f"expected {count} string argument{'s' if count != 1 else ''}")
        return [astring(t) for t in toks]

    # -- commands -------------------------------------------------------------------------------
    def _cmd_capability(self, toks: list) -> None:
        self._ok("Capability completed.", self.capabilities())

    def _cmd_noop(self, toks: list) -> None:
        self._ok("NOOP completed.")

    def _cmd_logout(self, toks: list) -> None:
        self._send(b'OK "Logout complete."\r\n', close=True)

    def _cmd_starttls(self, toks: list) -> None:
        if self.ctx.tls_active:
            self._no("Already in TLS mode.")
        elif not self.ctx.tls_available:
            self._no("TLS is not available.")
        else:
            self._start_tls(b'OK "Begin TLS negotiation now."\r\n')

    def _cmd_authenticate(self, toks: list) -> None:
        if not toks or len(toks) > 2 or not all(isinstance(t, (bytes, str)) for t in toks):
            raise ImapSyntaxError("AUTHENTICATE takes a mechanism and an optional response")
        if astring(toks[0]).upper() != "PLAIN":
            self._no("Unsupported mechanism.")
            return
        if not self._auth_allowed():
            self._no("Authentication requires TLS, use STARTTLS first.", "ENCRYPT-NEEDED")
            return
        if len(toks) == 2:
            self._sasl_response(toks[1] if isinstance(toks[1], bytes) else toks[1].encode())
        else:
            self._sasl_wait = True
            self._send(b'""\r\n')  # RFC 5804 §2.1: an empty server challenge

    def _sasl_response(self, response: bytes) -> None:
        try:
            login, password = sasl.decode_plain(sasl.b64decode(response))
        except sasl.SaslCancelled:
            self._no("Authentication cancelled.")
            return
        except sasl.SaslError:
            self._error(b'NO "Invalid SASL response."\r\n')
            return
        self._check_password(login, password, self._auth_result)

    def _auth_result(self, account: AccountEntry | None) -> None:
        if account is None:
            self._fail_auth(lambda: self._no("Authentication failed."),
                            lambda: self._send(b'BYE "Too many authentication failures."\r\n', close=True))
            return
        if self.services.store is None:
            self._no("No storage is configured.", "TRYLATER")
            return
        self.account = account
        self.store = self.services.store.sieve(account.name)
        self._ok("Authentication successful.")

    def _storage(self, fn, args: tuple, ok) -> None:
        """Run a script store operation; SieveError becomes NO with its response code."""
        def done(result, error):
            if isinstance(error, SieveError):
                self._no(str(error), error.code)
            elif error is not None:
                self._no("Storage failure, try again later.", "TRYLATER")
            else:
                ok(result)

        self._block(fn, args, done)

    def _cmd_listscripts(self, toks: list) -> None:
        self._args(toks, 0)

        def ok(scripts):
            lines = b"".join(quote(n) + (b" ACTIVE" if active else b"") + b"\r\n" for n, active in scripts)
            self._ok("Listscripts completed.", lines)

        self._storage(_listscripts, (self.store,), ok)

    def _cmd_putscript(self, toks: list) -> None:
        name, _ = self._args(toks, 2)
        script = toks[1] if isinstance(toks[1], bytes) else toks[1].encode()
        if not valid_name(name):
            self._no("Invalid script name.")
            return
        problem = check_script(script)  # RFC 5804 §2.6: a script that does not parse is refused
        if problem:
            self._no(problem)
            return
        self._storage(_putscript, (self.store, name, script), lambda _: self._ok("Putscript completed."))

    def _cmd_checkscript(self, toks: list) -> None:
        self._args(toks, 1)
        script = toks[0] if isinstance(toks[0], bytes) else toks[0].encode()
        problem = check_script(script)
        if problem:
            self._no(problem)
        else:
            self._ok("Script is valid.")

    def _cmd_getscript(self, toks: list) -> None:
        (name,) = self._args(toks, 1)
        self._storage(self.store.get, (name,),
                      lambda data: self._send(b"{%d}\r\n" % len(data) + data + b'\r\nOK "Getscript completed."\r\n'))

    def _cmd_setactive(self, toks: list) -> None:
        (name,) = self._args(toks, 1)
        self._storage(self.store.set_active, (name,), lambda _: self._ok("Setactive completed."))

    def _cmd_deletescript(self, toks: list) -> None:
        (name,) = self._args(toks, 1)
        self._storage(self.store.delete, (name,), lambda _: self._ok("Deletescript completed."))

    def _cmd_renamescript(self, toks: list) -> None:
        old, new = self._args(toks, 2)
        if not valid_name(new):
            self._no("Invalid script name.")
            return
        self._storage(self.store.rename, (old, new), lambda _: self._ok("Renamescript completed."))

    def _cmd_havespace(self, toks: list) -> None:
        if len(toks) != 2 or not isinstance(toks[1], str) or not toks[1].isdigit():
            raise ImapSyntaxError("HAVESPACE takes a name and a size")
        name = astring(toks[0])
        if not valid_name(name):
            self._no("Invalid script name.")
            return
        self._storage(self.store.have_space, (name, int(toks[1][:12])), lambda _: self._ok("Putscript would succeed."))

    _HANDLERS = {
        "CAPABILITY": _cmd_capability, "NOOP": _cmd_noop, "LOGOUT": _cmd_logout, "STARTTLS": _cmd_starttls,
        "AUTHENTICATE": _cmd_authenticate, "LISTSCRIPTS": _cmd_listscripts, "PUTSCRIPT": _cmd_putscript,
        "CHECKSCRIPT": _cmd_checkscript, "GETSCRIPT": _cmd_getscript, "SETACTIVE": _cmd_setactive,
        "DELETESCRIPT": _cmd_deletescript, "RENAMESCRIPT": _cmd_renamescript, "HAVESPACE": _cmd_havespace,
    }
    _AUTHENTICATED = frozenset({"LISTSCRIPTS", "PUTSCRIPT", "CHECKSCRIPT", "GETSCRIPT", "SETACTIVE",
                                "DELETESCRIPT", "RENAMESCRIPT", "HAVESPACE"})
