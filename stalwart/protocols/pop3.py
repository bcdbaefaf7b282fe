"""POP3 session core over the account's Maildir.

RFC 1939 (USER/PASS, STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP, QUIT; deletions are applied in
the UPDATE state at QUIT only), RFC 2449 (CAPA, RESP-CODES, PIPELINING), RFC 2595 (STLS), RFC 5034
(AUTH PLAIN/LOGIN), RFC 3206 (AUTH-RESP-CODE). Credentials are accepted only over TLS unless the
listener sets ``allowPlainTextAuth``. Disk work (the maildrop lock and listing, reading a message,
the deletions) runs in :class:`~.base.Blocking` jobs.

Maildrop lock (RFC 1939 §4, §8): a successful login takes an exclusive lock on the account's
maildrop (:class:`~stalwart.mailstore.maildir.MaildropLock`, a flock(2) shared by every worker
process) without waiting for it. If another POP3 session holds it, the reply is
``-ERR [IN-USE]`` (RFC 2449 §8.1.1) and the session stays in the AUTHORIZATION state: RFC 1939 §4
lets the server keep the connection, and a client whose other session is just quitting can try
again without reconnecting, while the credentials it sent were right and count as no failure. The
lock is released after the deletions at QUIT, before the farewell (so a client's next login never
races our close), and on every other end of the connection through :meth:`connection_closed`.

IMAP sessions do not take this lock: they may expunge or deliveries may arrive meanwhile. The POP3
session keeps the listing it took at login (message numbers are stable for the session, RFC 1939
§7), and a message that vanished under it answers ``-ERR`` for RETR/TOP of that message only.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..accounts import AccountEntry, sasl
from ..mailstore.maildir import MessageGone
from . import mailcommon
from .base import SessionContext
from .lines import LineSession
from .mailcommon import MailServices

if TYPE_CHECKING:
    from ..mailstore import Maildir, Message
    from ..mailstore.maildir import MaildropLock

MAX_ERRORS = 10
_NEWLINE = re.compile(rb"\r?\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _open_maildrop(maildir: Maildir, lock: MaildropLock) -> tuple[int, list[Message]] | None:
    """Take the maildrop lock without waiting, then list the maildrop; None if the lock is held."""
    maildir.ensure()
    if not lock.acquire():
        return None
    try:
        validity, _next, msgs = maildir.snapshot()
    except BaseException:
        lock.release()  # RFC 1939 §4: release the lock before answering with a negative status
        raise
    return validity, msgs


def _quit_job(maildir: Maildir | None, msgs: list[Message], lock: MaildropLock | None) -> int:
    """RFC 1939 §6 UPDATE state: remove the deleted messages, then release the lock."""
    try:
        return maildir.remove(msgs) if msgs else 0
    finally:
        if lock is not None:
            lock.release()


def multiline(data: bytes) -> bytes:
    """RFC 1939 §3: CRLF line endings, a "." doubled at the start of a line, then CRLF "." CRLF."""
    data = _LEADING_DOT.sub(b"..", _NEWLINE.sub(b"\r\n", data))
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class Pop3Session(mailcommon.PasswordAuth, LineSession):
    event_group = "pop3"
    max_line = 255  # RFC 2449 §4: commands are at most 255 octets including CRLF
    SASL_CONTINUE = b"+ "
    SASL_CANCELLED = b"-ERR Authentication cancelled.\r\n"
    SASL_INVALID = b"-ERR Invalid SASL response.\r\n"

    def __init__(self, ctx: SessionContext, timeout_ms: int = 60000, *, services: MailServices | None = None,
                 allow_plain_auth: bool = False, max_errors: int = MAX_ERRORS):
        super().__init__(ctx)
        self._timeout_ms = timeout_ms
        self.services = services or MailServices()
        self.allow_plain_auth = allow_plain_auth
        self.max_errors = max_errors
        self.errors = 0
        self.auth_failures = 0
        self.user: str | None = None
        self.account: AccountEntry | None = None
        self._sasl: sasl.SaslExchange | None = None
        self._login = ""
        self._credential: str | None = None
        self.maildir: Maildir | None = None
        self.lock: MaildropLock | None = None
        self.messages: list[Message] = []
        self.validity = 0
        self.deleted: set[int] = set()

    @property
    def idle_timeout_ms(self) -> int:
        return self.services.timeout_authenticated_ms if self.account is not None else self._timeout_ms

    def greeting(self) -> bytes:
        return b"+OK Stalwart POP3 at your service.\r\n"

    def line_too_long(self) -> None:
        self._sasl = None
        self._error(b"-ERR Command line too long.\r\n")

    def timeout_reply(self) -> bytes:
        if self.commands_seen == 0:
            mailcommon.loitering(self.ctx, self.event_group)
        return b"-ERR Connection timed out.\r\n"

    def shutdown_reply(self) -> bytes:
        return b"-ERR Server shutting down.\r\n"

    def tls_started(self, version: str, cipher: str) -> None:
        super().tls_started(version, cipher)
        self.user = None

    def connection_closed(self) -> None:
        """Peer gone, timeout, shutdown or after QUIT: the maildrop lock must not outlive us."""
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.release()

    def _auth_allowed(self) -> bool:
        return self.ctx.tls_active or self.allow_plain_auth

    def _error(self, reply: bytes) -> None:
        """A bad command: reported before authentication (security.md §4), limited per session."""
        self.errors += 1
        if self.account is None:
            mailcommon.invalid_command(self.ctx, self.event_group)
        if self.errors >= self.max_errors:
            self._send(b"-ERR Too many bad commands, closing connection.\r\n", close=True)
        else:
            self._send(reply)

    # -- dispatch -------------------------------------------------------------------------------
    def handle_line(self, line: bytes) -> None:
        if self._sasl is not None:
            self._sasl_response(line)
            return
        verb, arg = self.split_command(line)
        try:
            text = arg.decode("utf-8")
        except UnicodeDecodeError:
            self._error(b"-ERR Invalid UTF-8 in command.\r\n")
            return
        if verb in ("QUIT", "NOOP", "CAPA"):
            getattr(self, "_cmd_" + verb.lower())(text)
        elif self.account is None and verb in ("USER", "PASS", "AUTH", "STLS", "APOP"):
            getattr(self, "_cmd_" + verb.lower())(text)
        elif self.account is not None and verb in ("STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET"):
            getattr(self, "_cmd_" + verb.lower())(text)
        elif verb in ("STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET"):
            self._send(b"-ERR Not authenticated.\r\n")
        elif verb in ("USER", "PASS", "AUTH", "STLS", "APOP"):
            self._send(b"-ERR Already authenticated.\r\n")
        else:
            self._error(b"-ERR Unknown command.\r\n")

    # -- any state ------------------------------------------------------------------------------
    def _cmd_quit(self, arg: str) -> None:
        doomed = [m for i, m in enumerate(self.messages, 1) if i in self.deleted]
        if self.lock is None:
            self._send(b"+OK Stalwart POP3 bids you farewell.\r\n", close=True)
            return
        self._block(_quit_job, (self.maildir, doomed, self.lock), self._quit_done)

    def _quit_done(self, removed: int | None, error: BaseException | None) -> None:
        if error is not None:
            self._send(b"-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n", close=True)
        else:
            self._send(b"+OK Stalwart POP3 bids you farewell.\r\n", close=True)

    def _cmd_noop(self, arg: str) -> None:
        self._send(b"+OK\r\n")

    def _cmd_capa(self, arg: str) -> None:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.account is None and self._auth_allowed():
            caps += ["USER", "SASL " + " ".join(sasl.MECHANISMS)]
        if self.ctx.tls_available and not self.ctx.tls_active:
            caps.append("STLS")
        caps.append("IMPLEMENTATION Stalwart")
        self._send(("+OK Capability list follows\r\n" + "".join(c + "\r\n" for c in caps) + ".\r\n").encode())

    # -- AUTHORIZATION --------------------------------------------------------------------------
    def _cmd_stls(self, arg: str) -> None:
        if self.ctx.tls_active:
            self._send(b"-ERR Already in TLS mode.\r\n")
        elif not self.ctx.tls_available:
            self._send(b"-ERR TLS is not available.\r\n")
        else:
            self._start_tls(b"+OK Begin TLS negotiation now.\r\n")

    def _cmd_apop(self, arg: str) -> None:
        self._send(b"-ERR APOP is not supported.\r\n")  # it needs clear-text passwords on the server

    def _cmd_user(self, arg: str) -> None:
        if not self._auth_allowed():
            self._send(b"-ERR [AUTH] Plain-text authentication is disabled, use STLS first.\r\n")
        elif not arg.strip():
            self._error(b"-ERR Missing user name.\r\n")
        else:
            self.user = arg.strip()
            self._send(b"+OK\r\n")

    def _cmd_pass(self, arg: str) -> None:
        if self.user is None:
            self._send(b"-ERR USER first.\r\n")
            return
        user, self.user = self.user, None
        self._authenticate(user, arg)  # RFC 1939 §7: the password may contain spaces

    def _cmd_auth(self, arg: str) -> None:
        mech, _, initial = arg.strip().partition(" ")
        if not mech:
            self._send(("+OK\r\n" + "".join(m + "\r\n" for m in sasl.MECHANISMS) + ".\r\n").encode())
            return
        if not self._auth_allowed():
            self._send(b"-ERR [AUTH] Authentication requires TLS, use STLS first.\r\n")
            return
        mech = mech.upper()
        if mech not in sasl.MECHANISMS:
            self._error(b"-ERR Unsupported mechanism.\r\n")
            return
        self._sasl_start(mech, initial.encode())

    def _authenticate(self, login: str, password: str) -> None:
        self._check_password(login, password, self._auth_result)

    _sasl_done = _authenticate  # AUTH PLAIN/LOGIN end where USER/PASS does

    def _auth_result(self, account: AccountEntry | None) -> None:
        if account is None:
            self._fail_auth(lambda: self._send(b"-ERR [AUTH] Authentication failed.\r\n"),
                            lambda: self._send(b"-ERR [AUTH] Too many authentication failures.\r\n", close=True))
            return
        if self.services.store is None:
            self._send(b"-ERR [SYS/TEMP] No mail store is configured.\r\n")
            return
        maildir = self.services.store.maildir(account.name)
        # Held by the session from now on, so the close hook releases it even if the connection
        # ends while the job runs (the lock then refuses to be taken, or is dropped at once).
        self.lock = lock = maildir.maildrop_lock()
        self._block(_open_maildrop, (maildir, lock),
                    lambda res, err: self._maildrop_loaded(account, maildir, res, err))

    def _maildrop_loaded(self, account: AccountEntry, maildir: Maildir, res, error: BaseException | None) -> None:
        if error is not None or res is None:
            self.lock = None  # not taken, or already released by the job
            if error is None:
                self._send(b"-ERR [IN-USE] Maildrop already locked by another session.\r\n")
            else:
                self._send(b"-ERR [SYS/TEMP] Cannot open the maildrop.\r\n")
            return
        self.account, self.maildir = account, maildir
        self.validity, self.messages = res
        self._send(f"+OK {account.name} has {len(self.messages)} messages.\r\n".encode())

    # -- TRANSACTION ----------------------------------------------------------------------------
    def _message(self, arg: str) -> tuple[int, Message] | None:
        """Message ``arg`` (1-based) that is not marked deleted; replies ``-ERR`` otherwise."""
        if not arg.isdigit() or len(arg) > 9:
            self._send(b"-ERR Invalid message number.\r\n")
            return None
        n = int(arg)
        if not 1 <= n <= len(self.messages):
            self._send(b"-ERR No such message.\r\n")
            return None
        if n in self.deleted:
            self._send(b"-ERR Message is deleted.\r\n")
            return None
        return n, self.messages[n - 1]

    def _live(self):
        return ((i, m) for i, m in enumerate(self.messages, 1) if i not in self.deleted)

    def _uidl(self, msg: Message) -> str:
        # RFC 1939 §7: unique and persistent; UIDVALIDITY changes only with a new UID epoch.
        return f"{self.validity}.{msg.uid}"

    def _cmd_stat(self, arg: str) -> None:
        live = list(self._live())
        self._send(f"+OK {len(live)} {sum(m.size for _, m in live)}\r\n".encode())

    def _cmd_list(self, arg: str) -> None:
        if arg.strip():
            found = self._message(arg.strip())
            if found:
                self._send(f"+OK {found[0]} {found[1].size}\r\n".encode())
            return
        self._send(("+OK\r\n" + "".join(f"{i} {m.size}\r\n" for i, m in self._live()) + ".\r\n").encode())

    def _cmd_uidl(self, arg: str) -> None:
        if arg.strip():
            found = self._message(arg.strip())
            if found:
                self._send(f"+OK {found[0]} {self._uidl(found[1])}\r\n".encode())
            return
        self._send(("+OK\r\n" + "".join(f"{i} {self._uidl(m)}\r\n" for i, m in self._live()) + ".\r\n").encode())

    def _cmd_retr(self, arg: str) -> None:
        found = self._message(arg.strip())
        if found:
            n, msg = found
            self._block(self.maildir.read, (msg,), lambda data, err: self._send_message(n, msg, data, err, None))

    def _cmd_top(self, arg: str) -> None:
        parts = arg.split()
        if len(parts) != 2 or not parts[1].isdigit():
            self._send(b"-ERR Usage: TOP message lines\r\n")
            return
        found = self._message(parts[0])
        if found:
            (n, msg), lines = found, int(parts[1][:9])
            self._block(self.maildir.read, (msg,), lambda data, err: self._send_message(n, msg, data, err, lines))

    def _send_message(self, n: int, msg: Message, data: bytes | None, error: BaseException | None,
                      lines: int | None) -> None:
        if isinstance(error, MessageGone):  # expunged through IMAP since our listing
            self._send(f"-ERR Message {n} is no longer available.\r\n".encode())
            return
        if error is not None or data is None:
            self._send(b"-ERR [SYS/TEMP] The message cannot be read.\r\n")
            return
        if lines is not None:
            # RFC 1939 §7 TOP: the header, the blank line, then that many body lines.
            sep = re.search(rb"\r?\n\r?\n", data)
            if sep is not None:
                body = data[sep.end():].splitlines(keepends=True)
                data = data[:sep.end()] + b"".join(body[:lines])
        self._send(f"+OK {msg.size} octets\r\n".encode() + multiline(data))

    def _cmd_dele(self, arg: str) -> None:
        found = self._message(arg.strip())
        if found:
            self.deleted.add(found[0])
            self._send(f"+OK Message {found[0]} deleted.\r\n".encode())

    def _cmd_rset(self, arg: str) -> None:
        self.deleted.clear()
        self._send(f"+OK {len(self.messages)} messages.\r\n".encode())
