"""SMTP and LMTP session core: final delivery into local Maildirs.

RFC 5321 (commands, replies, DATA), RFC 2033 (LMTP: LHLO, one reply per recipient), RFC 3207
(STARTTLS), RFC 4954 (AUTH PLAIN/LOGIN), RFC 1870 (SIZE), RFC 2920 (PIPELINING), RFC 3463 (enhanced
status codes), RFC 6409 (submission: relaying only for authenticated sessions).

Recipients in a local ``Domain`` must belong to an ``Account`` (``550 5.1.1``); other domains are
refused to anonymous clients (``554 5.7.1 Relay access denied``) and, since this server has no
outbound queue, answered ``451`` for authenticated ones. An accepted message gets a ``Received:``
header and is stored in each recipient's Maildir, through the worker's committer (an
:class:`~.base.Awaiting` job on the C threads of ``mailstore.committer``) or, without one, a
:class:`~.base.Blocking` job; the ``250`` (or LMTP's per-recipient replies) goes out only once the
message is fsynced. A body larger than
``spool_threshold`` goes to a spool file while it arrives (``smtp_data``, ``mailstore.spool``).
"""
from __future__ import annotations

import asyncio
import errno
import re
from typing import TYPE_CHECKING

from .. import events
from ..accounts import AccountEntry, sasl
from ..mailstore import committer
from . import mailcommon
from .base import SessionContext
from .lines import LineSession
from .mailcommon import MailServices
from .smtp_data import SPOOL, SPOOL_THRESHOLD, DataReader, deliver_spool_job, spool_job

if TYPE_CHECKING:
    from ..mailstore import MailStore, Spool

#: RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per message
MAX_RECIPIENTS = 100
#: message size limit (RFC 1870 SIZE); the reference default is 100 MiB
MAX_MESSAGE_SIZE = 104857600
#: bad commands (unknown verb, bad syntax) before ``451 4.3.0 Too many errors``
MAX_ERRORS = 10
#: failed recipients before disconnecting (security.md §4 "rcpt_errors_max")
MAX_RCPT_ERRORS = 10

_PATH_RE = re.compile(rb"^<(?:@[^:<>]+:)?([^<>\s]*)>(.*)$")  # RFC 5321 §4.1.2 Path, source route dropped
_LOCAL_RE = re.compile(r"^(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~"
                       r"\x80-\U0010ffff-]+)*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\")$")
_DOMAIN_RE = re.compile(r"^(?:[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\x80-\U0010ffff-]{0,61}"
                        r"[A-Za-z0-9\x80-\U0010ffff])?\.)*[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\x80-\U0010ffff-]"
                        r"{0,61}[A-Za-z0-9\x80-\U0010ffff])?$|^\[[^\[\]\s]+\]$")
_HELO_RE = re.compile(rb"^[\x21-\x7e\x80-\xff]{1,255}$")


def parse_mailbox(text: str) -> str | None:
    """``local@domain`` when ``text`` is an RFC 5321 §4.1.2 Mailbox (UTF-8 allowed, RFC 6531)."""
    if len(text) > 254:
        return None
    local, at, domain = text.rpartition("@")
    if not at or not local or len(local) > 64 or not _LOCAL_RE.match(local) or not _DOMAIN_RE.match(domain):
        return None
    return f"{local}@{domain.lower()}"


def deliver_job(store: MailStore, header: bytes, body: bytes, accounts: list[str]) -> dict:
    """Blocking job: prepend ``Received:`` (dated here, not in the clock-free core) and store."""
    message = header + mailcommon.rfc5322_date().encode() + b"\r\n" + body
    return store.deliver(message, accounts)


async def deliver_async(store: MailStore, header: bytes, body: bytes, accounts: list[str]) -> dict:
    """:func:`deliver_job` on the event loop, through this worker's committer."""
    message = header + mailcommon.rfc5322_date().encode() + b"\r\n" + body
    current = committer.current()
    if current is None:  # uninstalled since the core chose this path (the worker is stopping)
        return await asyncio.get_running_loop().run_in_executor(None, store.deliver, message, accounts)
    return await store.deliver_async(current, message, accounts)


class SmtpSession(mailcommon.PasswordAuth, LineSession):
    event_group = "smtp"
    max_line = 4096  # RFC 5321 §4.5.3.1.4 asks for at least 512; RFC 4954 §4 AUTH lines run longer
    SASL_CONTINUE = b"334 "
    SASL_CANCELLED = b"501 5.7.0 Authentication cancelled.\r\n"
    SASL_INVALID = b"501 5.5.2 Cannot decode the response.\r\n"

    def __init__(self, ctx: SessionContext, timeout_ms: int = 300000, lmtp: bool = False, *,
                 services: MailServices | None = None, max_duration_ms: int = 600000,
                 max_message_size: int = MAX_MESSAGE_SIZE, max_recipients: int = MAX_RECIPIENTS,
                 max_errors: int = MAX_ERRORS, max_rcpt_errors: int = MAX_RCPT_ERRORS,
                 allow_plain_auth: bool = False, transfer_limit: int = 262144000,
                 spool_threshold: int = SPOOL_THRESHOLD):
        super().__init__(ctx)
        self.lmtp = lmtp
        self._timeout_ms = timeout_ms
        self.services = services or MailServices()
        self.max_duration = max_duration_ms / 1000.0
        self.max_message_size = max_message_size
        self.max_recipients = max_recipients
        self.max_errors = max_errors
        self.max_rcpt_errors = max_rcpt_errors
        self.allow_plain_auth = allow_plain_auth
        self.transfer_limit = transfer_limit  # MtaInboundSession.transferLimit: bytes per session
        self.spool_threshold = spool_threshold  # DATA bytes held in memory before spooling to disk
        self._spool: Spool | None = None  # set while a DATA body goes to disk, with the two below
        self._spool_error: BaseException | None = None  # a spool write failed: drain, then 451
        self._head = b""  # a spooled message's first bytes, for the classifier
        self.received = 0
        self.helo: str | None = None
        self.account: AccountEntry | None = None
        self.errors = 0
        self.rcpt_errors = 0
        self.auth_failures = 0
        self._sasl: sasl.SaslExchange | None = None
        self._login = ""
        self._credential: str | None = None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.mail_from: str | None = None
        self.rcpts: list[tuple[str, AccountEntry]] = []
        self._data: DataReader | None = None
        if self._spool is not None:
            self._spool.discard()  # a no-op once delivered; otherwise the file must not outlive DATA
            self._spool = None
            self._head = b""

    # -- session interface ---------------------------------------------------------------------
    @property
    def idle_timeout_ms(self) -> int:
        return self._timeout_ms

    def greeting(self) -> bytes:
        kind = "LMTP" if self.lmtp else "ESMTP"
        return f"220 {self.ctx.hostname} Stalwart {kind} at your service\r\n".encode()

    def receive_data(self, data: bytes) -> None:
        # security.md §4 loitering: data read after start + maxDuration ends the session.
        if data and not self.closed and self.now - self.ctx.started > self.max_duration:
            events.emit("smtp.time-limit-exceeded", SpanId=self.ctx.span_id, RemoteIp=self.ctx.remote_ip)
            self._send(f"421 4.3.2 {self.ctx.hostname} Session open for too long.\r\n".encode(), close=True)
            return
        self.received += len(data)
        if self.received > self.transfer_limit and not self.closed:
            # network.md §8: the session's transfer quota; not counted as loitering (security.md §4)
            self._send(f"452 4.7.28 {self.ctx.hostname} Session exceeded transfer quota.\r\n".encode(), close=True)
            return
        super().receive_data(data)

    def tls_started(self, version: str, cipher: str) -> None:
        super().tls_started(version, cipher)
        # RFC 3207 §4.2: discard everything learnt from the client; it must EHLO again.
        self.helo = None
        self.account = None
        self._sasl = None
        self._reset_transaction()

    def line_too_long(self) -> None:
        self._sasl = None  # an overlong SASL response ends the exchange
        self._error(b"500 5.5.2 Line too long.\r\n")

    def timeout_reply(self) -> bytes:
        if self.commands_seen == 0:
            mailcommon.loitering(self.ctx, self.event_group)
        return f"421 4.4.2 {self.ctx.hostname} Disconnecting inactive client.\r\n".encode()

    def shutdown_reply(self) -> bytes:
        return f"421 4.3.0 {self.ctx.hostname} Server shutting down.\r\n".encode()

    # -- capability -----------------------------------------------------------------------------
    def auth_offered(self) -> bool:
        """RFC 4954 §4 and issue 5: AUTH only over TLS (ours or a PROXY header's), or when the
        listener allows plain-text authentication; never on LMTP; never twice."""
        return (not self.lmtp and self.account is None
                and (self.ctx.tls_active or self.allow_plain_auth))

    def _ehlo_reply(self) -> bytes:
        lines = [self.ctx.hostname, "PIPELINING", f"SIZE {self.max_message_size}", "8BITMIME",
                 "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self.auth_offered():
            lines.append("AUTH " + " ".join(sasl.MECHANISMS))
        if self.ctx.tls_available and not self.ctx.tls_active:
            lines.append("STARTTLS")
        out = [f"250-{x}\r\n" for x in lines[:-1]] + [f"250 {lines[-1]}\r\n"]
        return "".join(out).encode()

    # -- errors ---------------------------------------------------------------------------------
    def _error(self, reply: bytes) -> None:
        """A command that does not parse: counted for scanning before authentication
        (security.md §4), and the session ends after ``max_errors``."""
        self.errors += 1
        if self.account is None:
            mailcommon.invalid_command(self.ctx, self.event_group)
        if self.errors >= self.max_errors:
            self._send(b"451 4.3.0 Too many errors, disconnecting.\r\n", close=True)
        else:
            self._send(reply)

    # -- commands -------------------------------------------------------------------------------
    def handle_line(self, line: bytes) -> None:
        if self._sasl is not None:
            self._sasl_response(line)
            return
        verb, arg = self.split_command(line)
        handler = self._HANDLERS.get(verb)
        if handler is None or (self.lmtp and verb in ("EHLO", "HELO", "AUTH")) or (not self.lmtp and verb == "LHLO"):
            self._error(b"500 5.5.1 Invalid command.\r\n")
            return
        handler(self, arg)

    def _cmd_ehlo(self, arg: bytes) -> None:
        name = arg.strip()
        if not _HELO_RE.match(name):
            self._error(b"501 5.5.4 Invalid domain name.\r\n")
            return
        self.helo = name.decode("utf-8", "replace")
        self._reset_transaction()  # RFC 5321 §4.1.4: EHLO implies RSET
        self._send(self._ehlo_reply())

    def _cmd_helo(self, arg: bytes) -> None:
        name = arg.strip()
        if not _HELO_RE.match(name):
            self._error(b"501 5.5.4 Invalid domain name.\r\n")
            return
        self.helo = name.decode("utf-8", "replace")
        self._reset_transaction()
        self._send(f"250 {self.ctx.hostname} says hello\r\n".encode())

    def _cmd_quit(self, arg: bytes) -> None:
        self._send(b"221 2.0.0 Bye.\r\n", close=True)

    def _cmd_noop(self, arg: bytes) -> None:
        self._send(b"250 2.0.0 OK\r\n")

    def _cmd_rset(self, arg: bytes) -> None:
        self._reset_transaction()
        self._send(b"250 2.0.0 OK\r\n")

    def _cmd_help(self, arg: bytes) -> None:
        self._send(b"250 2.0.0 Help can be found at https://stalw.art/docs/\r\n")

    def _cmd_vrfy(self, arg: bytes) -> None:
        # RFC 5321 §3.5.3: 252 when the server will not verify; address harvesting gets nothing.
        self._send(b"252 2.5.1 VRFY is disabled.\r\n")

    def _cmd_expn(self, arg: bytes) -> None:
        self._send(b"252 2.5.1 EXPN is disabled.\r\n")

    def _cmd_unsupported(self, arg: bytes) -> None:
        self._send(b"502 5.5.1 Command not implemented.\r\n")

    def _cmd_starttls(self, arg: bytes) -> None:
        if self.ctx.tls_active:
            self._send(b"504 5.7.4 Already in TLS mode.\r\n")
        elif not self.ctx.tls_available:
            self._send(b"502 5.7.0 TLS not available.\r\n")
        else:
            self._start_tls(b"220 2.0.0 Ready to start TLS.\r\n")

    def _cmd_mail(self, arg: bytes) -> None:
        if self.helo is None:
            self._send(b"503 5.5.1 Polite people say EHLO first.\r\n")
            return
        if self.mail_from is not None:
            self._send(b"503 5.5.1 Multiple MAIL commands not allowed.\r\n")
            return
        if arg[:5].upper() != b"FROM:":
            self._error(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
            return
        m = _PATH_RE.match(arg[5:].lstrip(b" "))
        if m is None:
            self._error(b"501 5.1.7 Bad sender address syntax.\r\n")
            return
        try:
            path = m.group(1).decode("utf-8")
        except UnicodeDecodeError:
            self._error(b"501 5.1.7 Bad sender address syntax.\r\n")
            return
        sender = "" if path == "" else parse_mailbox(path)
        if sender is None:
            self._error(b"501 5.1.7 Bad sender address syntax.\r\n")
            return
        for param in m.group(2).split():
            key, _, value = param.partition(b"=")
            key = key.upper()
            if key == b"SIZE" and value.isdigit() and len(value) <= 20:
                if int(value) > self.max_message_size:
                    self._send(b"552 5.3.4 Message too big for system.\r\n")
                    return
            elif key == b"BODY" and value.upper() in (b"7BIT", b"8BITMIME"):
                pass
            elif key == b"SMTPUTF8" and not value:
                pass
            elif key == b"AUTH" and value:
                pass  # RFC 4954 §5: the submitter's identity, informational only here
            else:
                self._send(b"555 5.5.4 Unsupported parameter.\r\n")
                return
        self.mail_from = sender
        self._send(b"250 2.1.0 OK\r\n")

    def _cmd_rcpt(self, arg: bytes) -> None:
        if self.mail_from is None:
            self._send(b"503 5.5.1 MAIL is required first.\r\n")
            return
        if arg[:3].upper() != b"TO:":
            self._error(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")
            return
        m = _PATH_RE.match(arg[3:].lstrip(b" "))
        try:
            path = m.group(1).decode("utf-8") if m is not None else ""
        except UnicodeDecodeError:
            path = ""
        directory = self.services.directory
        if path.lower() == "postmaster" and directory.domains:
            path = "postmaster@" + min(directory.domains)  # RFC 5321 §4.5.1: always accepted
        rcpt = parse_mailbox(path) if path else None
        if rcpt is None or (m is not None and m.group(2).strip()):
            self._error(b"501 5.1.3 Bad recipient address syntax.\r\n")
            return
        if len(self.rcpts) >= self.max_recipients:
            self._send(b"452 4.5.3 Too many recipients.\r\n")
            return
        domain = rcpt.rpartition("@")[2]
        if directory.is_local_domain(domain):
            account = directory.recipient(rcpt)
            if account is not None:
                self.rcpts.append((rcpt, account))
                self._send(b"250 2.1.5 OK\r\n")
                return
            events.emit("smtp.mailbox-does-not-exist", SpanId=self.ctx.span_id, RemoteIp=self.ctx.remote_ip, To=rcpt)
            self._rcpt_failed(b"550 5.1.1 Mailbox does not exist.\r\n")
        elif self.account is not None:
            # Authenticated submission may relay (RFC 6409), but there is no outbound queue here:
            # say so with a temporary failure rather than accept mail nobody will deliver.
            self._send(b"451 4.4.0 Relaying is not available on this server.\r\n")
        else:
            events.emit("smtp.relay-not-allowed", SpanId=self.ctx.span_id, RemoteIp=self.ctx.remote_ip, To=rcpt)
            self._rcpt_failed(b"554 5.7.1 Relay access denied.\r\n")

    def _rcpt_failed(self, reply: bytes) -> None:
        self.rcpt_errors += 1
        self._send(reply)
        if self.rcpt_errors >= self.max_rcpt_errors:
            self._send(b"451 4.3.0 Too many errors, disconnecting.\r\n", close=True)

    def _cmd_data(self, arg: bytes) -> None:
        if arg.strip():
            self._error(b"501 5.5.4 DATA takes no arguments.\r\n")
        elif self.mail_from is None:
            self._send(b"503 5.5.1 MAIL is required first.\r\n")
        elif not self.rcpts:
            self._send(b"554 5.5.1 No valid recipients.\r\n")
        elif self.services.store is None:
            self._send(b"451 4.3.0 No mail store is configured.\r\n")
        else:
            self._send(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
            # The CRLF that ended the DATA line starts the first body line: the terminator is
            # always CRLF "." CRLF, also for an empty body (RFC 5321 §4.1.1.4). Bare LF "." LF
            # never ends the message (SMTP smuggling).
            self._data = DataReader(self.max_message_size, self.spool_threshold)
            self._read_raw(self._read_data)

    # -- DATA -----------------------------------------------------------------------------------
    def _read_data(self, buf: bytearray, start: int) -> int | None:
        reader = self._data
        consumed = reader.feed(buf, start)
        if consumed < 0:
            if consumed == SPOOL:
                self._spool_chunk(reader)
            elif self._spool is not None and reader.oversize:
                self._drop_spool()
            return None
        self._read_raw(None)
        body = reader.finish()
        if reader.oversize:
            # Drained to the end and answered once (STYLE.md); the spool, if any, is removed first.
            spool, self._spool = self._spool, None
            self._reset_transaction()
            if spool is None:
                self._send(b"552 5.3.4 Message too big for system.\r\n")
            else:
                self._block(spool.discard, (), lambda result, error: self._send(
                    b"552 5.3.4 Message too big for system.\r\n"))
            return consumed
        if self._spool is not None and self._spool_error is not None:
            self._delivered(None, self._spool_error)  # a spool write failed (disk full): drained, 451/452
            return consumed
        classifier = self.services.classifier
        if classifier is None:
            self._deliver(body, b"")
        else:
            # services.md §4.2: after the message is received, before the reply; classify()
            # returns within min(model timeout, 30 s) and fails open, so DATA is never stalled.
            # A spooled message is judged by its first bytes, all that classify() parses anyway.
            from ..services.ai.classification import classify

            self._await(classify, (self._head + body if self._spool is not None else body, classifier),
                        lambda result, error: self._deliver(body, b"" if error else result.header()))
        return consumed

    def _spool_chunk(self, reader: DataReader) -> None:
        """Hand what is pending to the spool file: one job at a time (reading waits for it), so
        the writes of a session never reorder and memory stays near ``spool_threshold``."""
        chunk = reader.take()
        if reader.oversize:
            self._drop_spool()
            return
        if self._spool is not None and self._spool_error is not None:
            return  # a write failed: drain to the end, then answer
        received = None
        if self._spool is None:
            self._spool = self.services.store.new_spool()
            self._spool_error = None
            self._head = b""
            received = self._received_header()
            if self.services.classifier is not None:
                from ..services.ai.classification import PARSE_LIMIT

                self._head = bytes(chunk[:PARSE_LIMIT])
        self._block(spool_job, (self._spool, received, chunk), self._spooled)

    def _spooled(self, result: None, error: BaseException | None) -> None:
        if error is not None:
            self._spool_error = error  # the job removed the file; keep draining

    def _drop_spool(self) -> None:
        """Oversized: stop storing, and remove the file in a job (the session goes on draining)."""
        spool, self._spool = self._spool, None
        if spool is not None:
            self._block(spool.discard, (), lambda result, error: None)

    def connection_closed(self) -> None:
        # Mid-DATA or during delivery: the spool file goes (at once, or by the job holding it).
        if self._spool is not None:
            self._spool.discard()

    def _deliver(self, body: bytes, extra_headers: bytes) -> None:
        accounts = [acct.name for _, acct in self.rcpts]
        if self._spool is not None:
            self._block(deliver_spool_job, (self.services.store, self._spool, body, extra_headers, accounts),
                        self._delivered)
            return
        args = (self.services.store, self._received_header(), extra_headers + body, accounts)
        if committer.current() is not None:
            self._await(deliver_async, args, self._delivered)  # C threads, no GIL handoffs
        else:
            self._block(deliver_job, args, self._delivered)

    def _received_header(self) -> bytes:
        """RFC 5321 §4.4 trace header, with the RFC 3848 protocol keyword; dated by the job."""
        ctx = self.ctx
        proto = "LMTP" if self.lmtp else "ESMTP"
        if ctx.tls_active:
            proto += "S"
        if self.account is not None:
            proto += "A"
        tls = f"\r\n\t(using {ctx.tls_version} with cipher {ctx.tls_cipher})" if ctx.tls_active else ""
        helo = re.sub(r"[^\x21-\x7e]", "?", self.helo or "unknown")[:255]
        for_ = f"\r\n\tfor <{self.rcpts[0][0]}>" if len(self.rcpts) == 1 else ""
        geo = ctx.extra.get("geo")
        asn = geo.received_comment() if geo is not None else ""
        asn = f" ({asn})" if asn else ""  # services.md §3: "[ip] (AS64500 EXAMPLE-NET, US)"
        ptr = ctx.extra.get("ptr") or "unknown"  # forward-confirmed, looked up by the driver
        return (f"Received: from {helo} ({ptr} [{ctx.remote_ip}]{asn}){tls}\r\n\tby {ctx.hostname} (Stalwart) "
                f"with {proto}{for_};\r\n\t").encode("utf-8", "replace")

    def _delivered(self, outcome: dict | None, error: BaseException | None) -> None:
        rcpts = self.rcpts
        self._reset_transaction()
        if error is not None or outcome is None:
            outcome = {acct.name: error or OSError("delivery failed") for _, acct in rcpts}
        if not self.lmtp:
            if all(v is None for v in outcome.values()):
                self._send(b"250 2.0.0 Message accepted for delivery.\r\n")
            else:
                self._send(b"451 4.3.0 Could not store the message, try again later.\r\n")
            return
        # RFC 2033 §4.2: one reply per successful RCPT, in RCPT order.
        out = []
        for addr, acct in rcpts:
            err = outcome.get(acct.name)
            if err is None:
                out.append(f"250 2.1.5 <{addr}> delivered.\r\n")
            elif isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                out.append(f"452 4.2.2 <{addr}> mailbox is full.\r\n")
            else:
                out.append(f"451 4.3.0 <{addr}> temporary failure, try again later.\r\n")
        self._send("".join(out).encode())

    # -- AUTH (RFC 4954) ------------------------------------------------------------------------
    def _cmd_auth(self, arg: bytes) -> None:
        if self.account is not None:
            self._send(b"503 5.5.1 Already authenticated.\r\n")
            return
        if self.helo is None:
            self._send(b"503 5.5.1 Polite people say EHLO first.\r\n")
            return
        if self.mail_from is not None:
            self._send(b"503 5.5.1 AUTH is not allowed during a mail transaction.\r\n")
            return
        if not self.auth_offered():
            self._send(b"538 5.7.11 Encryption required for requested authentication mechanism.\r\n")
            return
        mech, _, initial = arg.strip().partition(b" ")
        mech = mech.upper().decode("ascii", "replace")
        if mech not in sasl.MECHANISMS:
            self._error(b"504 5.5.4 Mechanism not supported.\r\n")
            return
        self._sasl_start(mech, initial)

    def _sasl_done(self, login: str, password: str) -> None:
        self._check_password(login, password, self._auth_result)

    def _auth_result(self, account: AccountEntry | None) -> None:
        if account is not None:
            self.account = account
            self._send(b"235 2.7.0 Authentication succeeded.\r\n")
            return
        self._fail_auth(lambda: self._send(b"535 5.7.8 Authentication credentials invalid.\r\n"),
                        lambda: self._send(b"421 4.7.0 Too many authentication errors, disconnecting.\r\n", close=True))

    _HANDLERS = {
        "EHLO": _cmd_ehlo, "LHLO": _cmd_ehlo, "HELO": _cmd_helo, "QUIT": _cmd_quit, "NOOP": _cmd_noop,
        "RSET": _cmd_rset, "HELP": _cmd_help, "VRFY": _cmd_vrfy, "EXPN": _cmd_expn, "STARTTLS": _cmd_starttls,
        "MAIL": _cmd_mail, "RCPT": _cmd_rcpt, "DATA": _cmd_data, "AUTH": _cmd_auth,
        "BDAT": _cmd_unsupported, "ETRN": _cmd_unsupported, "BURL": _cmd_unsupported,
    }
