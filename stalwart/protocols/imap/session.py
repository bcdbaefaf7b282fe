"""IMAP4rev1 session core (RFC 3501 subset) over the account's Maildir INBOX.

Commands: CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE PLAIN (with SASL-IR, RFC 4959),
ID (RFC 2971), ENABLE (nothing to enable), LIST/LSUB, SELECT/EXAMINE, STATUS, FETCH, STORE, SEARCH
(each also as UID …), EXPUNGE, CLOSE, UNSELECT (RFC 3691), CHECK, IDLE (RFC 2177). Literals,
synchronising and LITERAL+ (RFC 7888), are read by a raw reader. Only INBOX exists; commands that
would create or change other mailboxes answer ``NO`` with a reason. Everything that touches the disk
(authentication, listing, reading, flag renames, expunge) runs as a :class:`~..base.Blocking` job;
IDLE re-reads the mailbox on a driver :class:`~..base.Timer` and pushes what changed.
"""
from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from ...accounts import AccountEntry, sasl
from .. import mailcommon
from ..base import SessionContext, Timer
from ..lines import LineSession
from ..mailcommon import MailServices
from . import fetch as fetchmod
from .jobs import claim_job, expunge_job, fetch_job, render_flags, search_job, store_job
from .search import parse_search
from .syntax import LITERAL_RE, TAG_RE, ImapSyntaxError, SequenceSet, astring, tokenize

if TYPE_CHECKING:
    from ...mailstore import Maildir, Message

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_FLAG_CASE = {f.lower(): f for f in SYSTEM_FLAGS}
MAX_LITERAL = 65536  # no APPEND here: literals carry only names and credentials
MAX_COMMAND = 262144
MAX_ERRORS = 10
IDLE_POLL_SECONDS = 5.0  # how soon an idling client hears of new mail
FETCH_BATCH_BYTES = 8 << 20  # message bytes read per FETCH job (one larger message is read alone)
_STORE_ACTIONS = frozenset(p + "FLAGS" + s for p in ("", "+", "-") for s in ("", ".SILENT"))
_NOT_AUTH, _AUTH, _SELECTED = range(3)


class ImapSession(mailcommon.PasswordAuth, LineSession):
    event_group = "imap"
    max_line = 8192

    def __init__(self, ctx: SessionContext, timeout_ms: int = 60000, *, services: MailServices | None = None,
                 allow_plain_auth: bool = False, max_errors: int = MAX_ERRORS):
        super().__init__(ctx)
        self._timeout_ms = timeout_ms
        self.services = services or MailServices()
        self.allow_plain_auth = allow_plain_auth
        self.max_errors = max_errors
        self.state = _NOT_AUTH
        self.account: AccountEntry | None = None
        self.errors = 0
        self.auth_failures = 0
        self._pending: bytes | None = None  # a command line continued after a literal
        self._literals: list[bytes] = []
        self._need = 0
        self._sasl_tag: str | None = None
        self._idle_tag: str | None = None
        self._login = ""
        self._credential: str | None = None
        self.maildir: Maildir | None = None
        self.readonly = False
        self.msgs: list[Message] = []
        self.validity = 0
        self.uidnext = 1
        self.recent: set[int] = set()  # UIDs this session is the first to see (RFC 3501 §2.3.2)
        self._idle_since = 0.0
        self._timer_armed = False

    # -- session interface ---------------------------------------------------------------------
    @property
    def idle_timeout_ms(self) -> int:
        return self.services.timeout_authenticated_ms if self.account is not None else self._timeout_ms

    def _auth_allowed(self) -> bool:
        return self.ctx.tls_active or self.allow_plain_auth

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE", "UNSELECT"]
        if self.account is None:
            if self.ctx.tls_available and not self.ctx.tls_active:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self._auth_allowed() else "LOGINDISABLED")
        return " ".join(caps)

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self.capabilities()}] Stalwart IMAP4rev1 at your service.\r\n".encode()

    def line_too_long(self) -> None:
        self._pending = None
        tag = self._sasl_tag or self._idle_tag
        self._sasl_tag = self._idle_tag = None  # an overlong response ends the exchange or the IDLE
        self._error(f"{tag} BAD Line too long.\r\n".encode() if tag else b"* BAD Command line too long.\r\n")

    def timeout_reply(self) -> bytes:
        if self.commands_seen == 0:
            mailcommon.loitering(self.ctx, self.event_group)
        return b"* BYE Connection timed out.\r\n"

    def shutdown_reply(self) -> bytes:
        return b"* BYE Server shutting down.\r\n"

    @property
    def interruptible(self) -> bool:
        return super().interruptible and self._pending is None

    def _error(self, reply: bytes) -> None:
        """A command that does not parse: reported before authentication (security.md §4)."""
        self.errors += 1
        if self.account is None:
            mailcommon.invalid_command(self.ctx, self.event_group)
        if self.errors >= self.max_errors:
            self._send(reply + b"* BYE Too many invalid commands.\r\n", close=True)
        else:
            self._send(reply)

    # -- framing: lines and literals -------------------------------------------------------------
    def handle_line(self, line: bytes) -> None:
        if self._idle_tag is not None:
            self._idle_line(line)
            return
        if self._sasl_tag is not None:
            self._sasl_line(line)
            return
        if self._pending is None:
            self._literals = []
            tag = line.split(b" ", 1)[0]
            if not TAG_RE.match(tag):
                self._error(b"* BAD Invalid tag.\r\n")
                return
            full = line
        else:
            full = self._pending + line
            self._pending = None
        if b"\x00" in line:
            self._error(self._tag_of(full) + b" BAD NUL in command.\r\n")
            return
        m = LITERAL_RE.search(full)
        if m is None:
            self._command(full)
            return
        n, plus = int(m.group(1)), bool(m.group(2))
        if n > MAX_LITERAL or len(full) + n > MAX_COMMAND:
            if plus:  # RFC 7888 §4: the bytes are on their way and cannot be refused
                self._send(b"* BYE Literal too large.\r\n", close=True)
            else:
                self._send(self._tag_of(full) + b" NO [TOOBIG] Literal too large.\r\n")
            return
        self._pending = full[:m.start()] + b"\x00%d\x00" % len(self._literals)
        self._literals.append(b"")
        self._need = n
        if not plus:
            self._send(b"+ Ready for literal data\r\n")
        self._read_raw(self._read_literal)

    def _read_literal(self, buf: bytearray, start: int) -> int | None:
        take = min(self._need, len(buf) - start)
        self._literals[-1] += bytes(buf[start:start + take])
        self._need -= take
        if self._need:
            return None
        self._read_raw(None)
        return start + take

    @staticmethod
    def _tag_of(line: bytes) -> bytes:
        return line.split(b" ", 1)[0]

    # -- dispatch -------------------------------------------------------------------------------
    def _command(self, line: bytes) -> None:
        tag_b, _, rest = line.partition(b" ")
        tag = tag_b.decode("ascii")
        word, _, args = rest.partition(b" ")
        cmd = word.decode("ascii", "replace").upper()
        uid = False
        if cmd == "UID":
            word, _, args = args.partition(b" ")
            cmd = word.decode("ascii", "replace").upper()
            uid = True
            if cmd not in ("FETCH", "STORE", "SEARCH"):
                self._error(f"{tag} BAD Unknown UID command.\r\n".encode())
                return
        handler = self._HANDLERS.get(cmd)
        if handler is None:
            self._error(f"{tag} BAD {'Unknown' if cmd else 'Missing'} command.\r\n".encode())
            return
        needs = self._STATES.get(cmd, _NOT_AUTH)
        if needs == _AUTH and self.state == _NOT_AUTH:
            self._send(f"{tag} NO Not authenticated.\r\n".encode())
            return
        if needs == _SELECTED and self.state != _SELECTED:
            self._send(f"{tag} NO No mailbox selected.\r\n".encode())
            return
        if needs == -1 and self.state != _NOT_AUTH:
            self._send(f"{tag} BAD Already authenticated.\r\n".encode())
            return
        try:
            tokens = tokenize(args, self._literals)
            if uid:
                handler(self, tag, tokens, True)
            else:
                handler(self, tag, tokens)
        except ImapSyntaxError as exc:
            self._error(f"{tag} BAD {exc}.\r\n".encode())

    def _ok(self, tag: str, text: str, untagged: bytes = b"") -> None:
        self._send(untagged + f"{tag} OK {text}\r\n".encode())

    # -- any state ------------------------------------------------------------------------------
    def _cmd_capability(self, tag: str, toks: list) -> None:
        self._ok(tag, "CAPABILITY completed.", f"* CAPABILITY {self.capabilities()}\r\n".encode())

    def _cmd_noop(self, tag: str, toks: list) -> None:
        if self.state == _SELECTED:
            self._refresh(lambda untagged: self._ok(tag, "NOOP completed.", untagged))
        else:
            self._ok(tag, "NOOP completed.")

    def _cmd_logout(self, tag: str, toks: list) -> None:
        self._send(f"* BYE Stalwart IMAP4rev1 bids you farewell.\r\n{tag} OK LOGOUT completed.\r\n".encode(),
                   close=True)

    def _cmd_id(self, tag: str, toks: list) -> None:
        # RFC 2971: the client's parameters are informational; ours name the server.
        self._ok(tag, "ID completed.", b'* ID ("name" "Stalwart")\r\n')

    def _cmd_enable(self, tag: str, toks: list) -> None:
        self._ok(tag, "ENABLE completed.", b"* ENABLED\r\n")  # RFC 5161: nothing we can enable

    # -- not authenticated ------------------------------------------------------------------------
    def _cmd_starttls(self, tag: str, toks: list) -> None:
        if self.ctx.tls_active:
            self._send(f"{tag} BAD Already in TLS mode.\r\n".encode())
        elif not self.ctx.tls_available:
            self._send(f"{tag} BAD TLS is not available.\r\n".encode())
        else:
            self._start_tls(f"{tag} OK Begin TLS negotiation now.\r\n".encode())

    def _cmd_login(self, tag: str, toks: list) -> None:
        if len(toks) != 2:
            raise ImapSyntaxError("LOGIN takes a user name and a password")
        if not self._auth_allowed():
            self._send(f"{tag} NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS.\r\n".encode())
            return
        self._authenticate(tag, astring(toks[0]), astring(toks[1]))

    def _cmd_authenticate(self, tag: str, toks: list) -> None:
        if not toks or not isinstance(toks[0], str) or len(toks) > 2:
            raise ImapSyntaxError("AUTHENTICATE takes a mechanism")
        if toks[0].upper() != "PLAIN":
            self._send(f"{tag} NO [CANNOT] Unsupported mechanism.\r\n".encode())
            return
        if not self._auth_allowed():
            self._send(f"{tag} NO [PRIVACYREQUIRED] Authentication is disabled before STARTTLS.\r\n".encode())
            return
        if len(toks) == 2:
            self._sasl_tag = tag
            self._sasl_line(toks[1].encode() if isinstance(toks[1], str) else bytes(toks[1]))
        else:
            self._sasl_tag = tag
            self._send(b"+ \r\n")

    def _sasl_line(self, line: bytes) -> None:
        tag, self._sasl_tag = self._sasl_tag, None
        try:
            login, password = sasl.decode_plain(sasl.b64decode(line))
        except sasl.SaslCancelled:
            self._send(f"{tag} BAD Authentication cancelled.\r\n".encode())
            return
        except sasl.SaslError:
            self._error(f"{tag} BAD Invalid SASL response.\r\n".encode())
            return
        self._authenticate(tag, login, password)

    def _authenticate(self, tag: str, login: str, password: str) -> None:
        self._check_password(login, password, lambda account: self._auth_result(tag, account))

    def _auth_result(self, tag: str, account: AccountEntry | None) -> None:
        if account is None:
            line = f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n".encode()
            self._fail_auth(lambda: self._send(line),
                            lambda: self._send(line + b"* BYE Too many authentication failures.\r\n", close=True))
            return
        if self.services.store is None:
            self._send(f"{tag} NO [UNAVAILABLE] No mail store is configured.\r\n".encode())
            return
        self.account = account
        self.state = _AUTH
        self.maildir = self.services.store.maildir(account.name)
        self._ok(tag, f"[CAPABILITY {self.capabilities()}] Authentication successful.")

    # -- authenticated ---------------------------------------------------------------------------
    def _cmd_list(self, tag: str, toks: list, cmd: str = "LIST") -> None:
        if len(toks) != 2:
            raise ImapSyntaxError(f"{cmd} takes a reference and a pattern")
        ref, pattern = astring(toks[0]), astring(toks[1])
        if pattern == "":
            self._ok(tag, f"{cmd} completed.", f'* {cmd} (\\Noselect) "/" ""\r\n'.encode())
            return
        full = (ref + pattern).replace("%", "*")
        hit = fnmatch.fnmatchcase("INBOX", full.upper() if full.upper().startswith("INBOX") else full)
        self._ok(tag, f"{cmd} completed.", f'* {cmd} (\\HasNoChildren) "/" INBOX\r\n'.encode() if hit else b"")

    def _cmd_lsub(self, tag: str, toks: list) -> None:
        self._cmd_list(tag, toks, "LSUB")

    @staticmethod
    def _mailbox(tok) -> str | None:
        name = astring(tok)
        return "INBOX" if name.upper() == "INBOX" else None

    def _cmd_select(self, tag: str, toks: list, readonly: bool = False) -> None:
        if len(toks) != 1:
            raise ImapSyntaxError("SELECT takes a mailbox name")
        self.state = _AUTH  # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected
        self.msgs = []
        if self._mailbox(toks[0]) is None:
            self._send(f"{tag} NO [NONEXISTENT] Only INBOX exists.\r\n".encode())
            return
        self._block(claim_job, (self.maildir, readonly), lambda res, err: self._selected(tag, readonly, res, err))

    def _cmd_examine(self, tag: str, toks: list) -> None:
        self._cmd_select(tag, toks, readonly=True)

    def _selected(self, tag: str, readonly: bool, res, error: BaseException | None) -> None:
        if error is not None:
            self._send(f"{tag} NO [SERVERBUG] Cannot open the mailbox.\r\n".encode())
            return
        self.validity, self.uidnext, self.msgs, self.recent = res
        self.readonly = readonly
        self.state = _SELECTED
        flags = " ".join(SYSTEM_FLAGS)
        out = [f"* FLAGS ({flags})", f"* OK [PERMANENTFLAGS ({flags})] Limited", f"* {len(self.msgs)} EXISTS",
               f"* {len(self.recent)} RECENT"]
        unseen = next((i for i, m in enumerate(self.msgs, 1) if "\\Seen" not in m.flags), None)
        if unseen:
            out.append(f"* OK [UNSEEN {unseen}] First unseen.")
        out += [f"* OK [UIDVALIDITY {self.validity}] UIDs valid.", f"* OK [UIDNEXT {self.uidnext}] Predicted next UID."]
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        done = f"{tag} OK [{mode}] {'EXAMINE' if readonly else 'SELECT'} completed."
        self._send(("\r\n".join(out) + "\r\n" + done + "\r\n").encode())

    def _cmd_status(self, tag: str, toks: list) -> None:
        if len(toks) != 2 or not isinstance(toks[1], list):
            raise ImapSyntaxError("STATUS takes a mailbox and a list of items")
        items = [str(t).upper() for t in toks[1]]
        if any(i not in ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN") for i in items):
            raise ImapSyntaxError("unknown STATUS item")
        if self._mailbox(toks[0]) is None:
            self._send(f"{tag} NO [NONEXISTENT] Only INBOX exists.\r\n".encode())
            return

        def done(res, error):
            if error is not None:
                self._send(f"{tag} NO [SERVERBUG] Cannot read the mailbox.\r\n".encode())
                return
            validity, uidnext, msgs = res
            values = {"MESSAGES": len(msgs), "RECENT": sum(m.subdir == "new" for m in msgs), "UIDNEXT": uidnext,
                      "UIDVALIDITY": validity, "UNSEEN": sum("\\Seen" not in m.flags for m in msgs)}
            body = " ".join(f"{i} {values[i]}" for i in items)
            self._ok(tag, "STATUS completed.", f"* STATUS INBOX ({body})\r\n".encode())

        self._block(self.maildir.snapshot, (), done)

    def _cmd_no_mailboxes(self, tag: str, toks: list) -> None:
        self._send(f"{tag} NO [CANNOT] Only INBOX is available on this server.\r\n".encode())

    def _cmd_append(self, tag: str, toks: list) -> None:
        self._send(f"{tag} NO [CANNOT] APPEND is not supported; mail arrives through SMTP and LMTP.\r\n".encode())

    def _cmd_subscribe(self, tag: str, toks: list) -> None:
        if len(toks) == 1 and self._mailbox(toks[0]) is not None:
            self._ok(tag, "SUBSCRIBE completed.")
        else:
            self._cmd_no_mailboxes(tag, toks)

    # -- selected -------------------------------------------------------------------------------
    def _select_msgs(self, text, uid: bool) -> list[tuple[int, Message]]:
        if not isinstance(text, str):
            raise ImapSyntaxError("invalid sequence set")
        seq = SequenceSet(text)
        if uid:
            largest = self.msgs[-1].uid if self.msgs else 0
            # RFC 3501 §6.4.8: "*" means the largest UID in use, and n:* always matches it
            return [(i, m) for i, m in enumerate(self.msgs, 1) if seq.contains(m.uid, largest)]
        largest = len(self.msgs)
        return [(i, m) for i, m in enumerate(self.msgs, 1) if seq.contains(i, largest)]

    def _cmd_fetch(self, tag: str, toks: list, uid: bool = False) -> None:
        if len(toks) < 2:
            raise ImapSyntaxError("FETCH takes a sequence set and data items")
        items = fetchmod.parse_items(toks[1:])
        if uid and not any(i.name == "UID" for i in items):
            items.append(fetchmod.Item("UID"))  # RFC 3501 §6.4.8
        chosen = self._select_msgs(toks[0], uid)
        content = any(i.needs_content for i in items)
        seen = not self.readonly and any(i.sets_seen for i in items)
        if not chosen:
            self._ok(tag, f"{'UID ' if uid else ''}FETCH completed.")
            return
        if not content and not seen:
            self._fetched(tag, uid, items, [i for i, _ in chosen], [(m, None) for _, m in chosen], None, True, [0])
            return
        self._fetch_batch(tag, uid, items, chosen, content, seen, [0])

    def _fetch_batch(self, tag: str, uid: bool, items: list, chosen: list, content: bool, seen: bool,
                     gone: list[int]) -> None:
        """Read and answer at most FETCH_BATCH_BYTES of messages per job: ``FETCH 1:* BODY[]`` on a
        big mailbox streams in slices instead of holding every message in memory at once."""
        n, size = 0, 0
        while n < len(chosen) and (n == 0 or size + chosen[n][1].size <= FETCH_BATCH_BYTES):
            size += chosen[n][1].size
            n += 1
        batch, rest = chosen[:n], chosen[n:]

        def done(res, err):
            if self._fetched(tag, uid, items, [i for i, _ in batch], res, err, not rest, gone) and rest:
                self._fetch_batch(tag, uid, items, rest, content, seen, gone)

        self._block(fetch_job, (self.maildir, [m for _, m in batch], content, seen), done)

    def _fetched(self, tag: str, uid: bool, items: list, seqs: list[int], res, error, last: bool,
                 gone: list[int]) -> bool:
        """Send the FETCH responses of one batch (and the tagged reply after the last); False on failure.

        A message another session expunged meanwhile gets no FETCH response (and no untagged
        EXPUNGE here: RFC 3501 §7.4.1 forbids it during FETCH); the tagged reply is then
        ``NO [EXPUNGEISSUED]`` (RFC 5530 §3, RFC 2180 §4.1.2) and the next NOOP reports it."""
        if error is not None:
            self._send(f"{tag} NO [SERVERBUG] Cannot read messages.\r\n".encode())
            return False
        out = []
        for seq, (msg, data) in zip(seqs, res):
            if msg is None:
                gone[0] += 1
                continue
            flags_changed = self.msgs[seq - 1].flags != msg.flags
            self.msgs[seq - 1] = msg
            try:
                parts = [self._render(item, msg, data, msg.uid in self.recent) for item in items]
            except Exception:  # noqa: BLE001 - the email parser on arbitrary stored bytes; never crash the session
                self._send(b"".join(out) + f"{tag} NO [SERVERBUG] Message {seq} cannot be parsed.\r\n".encode())
                return False
            if flags_changed and not any(i.name == "FLAGS" for i in items):
                parts.append(b"FLAGS " + render_flags(msg, msg.uid in self.recent))
            out.append(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
        if last and gone[0]:
            out.append(f"{tag} NO [EXPUNGEISSUED] Some of the requested messages no longer exist.\r\n".encode())
        elif last:
            out.append(f"{tag} OK {'UID ' if uid else ''}FETCH completed.\r\n".encode())
        self._send(b"".join(out))
        return True

    @staticmethod
    def _render(item: fetchmod.Item, msg: Message, data: bytes | None, recent: bool) -> bytes:
        name = item.name
        if name == "FLAGS":
            return b"FLAGS " + render_flags(msg, recent)
        if name == "UID":
            return b"UID %d" % msg.uid
        if name == "RFC822.SIZE":
            return b"RFC822.SIZE %d" % msg.size
        if name == "INTERNALDATE":
            return b"INTERNALDATE " + fetchmod.internaldate(msg.mtime)
        if name == "ENVELOPE":
            return b"ENVELOPE " + fetchmod.envelope(data)
        if name in ("BODY", "BODYSTRUCTURE") and item.section is None:
            return name.encode() + b" " + fetchmod.bodystructure(data)
        if name == "RFC822":
            return b"RFC822 {%d}\r\n" % len(data) + data
        if name == "RFC822.HEADER":
            hdr = fetchmod.split_message(data)[0]
            return b"RFC822.HEADER {%d}\r\n" % len(hdr) + hdr
        if name == "RFC822.TEXT":
            text = fetchmod.split_message(data)[1]
            return b"RFC822.TEXT {%d}\r\n" % len(text) + text
        body = fetchmod.section_bytes(data, item.section)
        label = f"BODY[{item.section}]"
        if item.partial is not None:
            start, count = item.partial
            body = body[start:start + count]
            label += f"<{start}>"
        return label.encode() + b" {%d}\r\n" % len(body) + body

    def _cmd_store(self, tag: str, toks: list, uid: bool = False) -> None:
        if len(toks) != 3 or not isinstance(toks[1], str):
            raise ImapSyntaxError("STORE takes a sequence set, an action and flags")
        action = toks[1].upper()
        if action not in _STORE_ACTIONS:
            raise ImapSyntaxError("STORE action must be [+-]FLAGS[.SILENT]")
        raw = toks[2] if isinstance(toks[2], list) else [toks[2]]
        flags = set()
        for f in raw:
            if not isinstance(f, str):
                raise ImapSyntaxError("flags must be atoms")
            if f.startswith("\\"):
                if f.lower() not in _FLAG_CASE:
                    raise ImapSyntaxError(f"unknown system flag {f[:20]}")
                flags.add(_FLAG_CASE[f.lower()])
            # keywords are not kept (PERMANENTFLAGS lists no \*): RFC 3501 §6.4.6 allows ignoring them
        if self.readonly:
            self._send(f"{tag} NO [READ-ONLY] The mailbox is read-only.\r\n".encode())
            return
        chosen = self._select_msgs(toks[0], uid)
        silent = action.endswith(".SILENT")

        def done(res, error):
            if error is not None:
                self._send(f"{tag} NO [SERVERBUG] Cannot store flags.\r\n".encode())
                return
            out = []
            for (seq, old), msg in zip(chosen, res):
                if msg is None:
                    continue  # expunged by another session: the next NOOP reports it
                self.msgs[seq - 1] = msg
                # .SILENT still reports flags another session changed meanwhile (RFC 3501 §6.4.6)
                if not silent or self._expected_flags(action, old.flags, flags) != msg.flags:
                    extra = b" UID %d" % msg.uid if uid else b""
                    out.append(b"* %d FETCH (FLAGS " % seq + render_flags(msg, msg.uid in self.recent) + extra
                               + b")\r\n")
            if any(msg is None for msg in res):
                self._send(b"".join(out) + f"{tag} NO [EXPUNGEISSUED] Some of the messages no longer exist; "
                           f"the others were updated.\r\n".encode())
                return
            self._ok(tag, f"{'UID ' if uid else ''}STORE completed.", b"".join(out))

        self._block(store_job, (self.maildir, [m for _, m in chosen], action, frozenset(flags)), done)

    @staticmethod
    def _expected_flags(action: str, old: frozenset[str], flags: frozenset[str]) -> frozenset[str]:
        if action.startswith("+"):
            return old | flags
        if action.startswith("-"):
            return old - flags
        return frozenset(flags)

    def _cmd_search(self, tag: str, toks: list, uid: bool = False) -> None:
        if len(toks) >= 2 and isinstance(toks[0], str) and toks[0].upper() == "CHARSET":
            charset = astring(toks[1]).upper()
            if charset not in ("US-ASCII", "UTF-8"):
                self._send(f"{tag} NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset.\r\n".encode())
                return
            toks = toks[2:]
        search = parse_search(toks)
        search.recent = frozenset(self.recent)
        msgs = list(self.msgs)

        def done(hits, error):
            if error is not None:
                self._send(f"{tag} NO [SERVERBUG] Cannot read messages.\r\n".encode())
                return
            line = b"* SEARCH" + b"".join(b" %d" % (m.uid if uid else i) for i, m in hits) + b"\r\n"
            self._ok(tag, f"{'UID ' if uid else ''}SEARCH completed.", line)

        if search.needs_content and msgs:
            self._block(search_job, (self.maildir, msgs, search), done)
        else:
            done(search_job(None, msgs, search), None)

    def _cmd_expunge(self, tag: str, toks: list, close: bool = False) -> None:
        if self.readonly:
            if close:
                self._deselect()
                self._ok(tag, "CLOSE completed.")
            else:
                self._send(f"{tag} NO [READ-ONLY] The mailbox is read-only.\r\n".encode())
            return
        # Every message of the view is looked at, not only those this session knows as \Deleted:
        # another session may have set or cleared the flag since (Maildir.expunge reads the disk).

        def done(removed, error):
            if error is not None:
                self._send(f"{tag} NO [SERVERBUG] Cannot expunge.\r\n".encode())
                return
            if close:
                self._deselect()  # RFC 3501 §6.4.2: no untagged EXPUNGE for CLOSE
                self._ok(tag, "CLOSE completed.")
                return
            removed = set(removed)
            out = []
            for seq in range(len(self.msgs), 0, -1):  # highest first: each EXPUNGE renumbers the rest
                if self.msgs[seq - 1].uid in removed:
                    del self.msgs[seq - 1]
                    out.append(b"* %d EXPUNGE\r\n" % seq)
            self._ok(tag, "EXPUNGE completed.", b"".join(out))

        if not self.msgs:
            done([], None)
            return
        self._block(expunge_job, (self.maildir, list(self.msgs)), done)

    def _cmd_close(self, tag: str, toks: list) -> None:
        self._cmd_expunge(tag, toks, close=True)

    def _cmd_unselect(self, tag: str, toks: list) -> None:
        self._deselect()
        self._ok(tag, "UNSELECT completed.")

    def _deselect(self) -> None:
        self.state = _AUTH
        self.msgs = []
        self.recent = set()

    def _cmd_check(self, tag: str, toks: list) -> None:
        self._refresh(lambda untagged: self._ok(tag, "CHECK completed.", untagged))

    def _cmd_idle(self, tag: str, toks: list) -> None:
        # RFC 2177: while idling, the mailbox is re-read every IDLE_POLL_SECONDS (a driver Timer;
        # the core owns no clock) and changes are pushed as untagged responses.
        self._idle_tag = tag
        self._idle_since = self.now
        self._send(b"+ idling\r\n")
        if self.state == _SELECTED and not self._timer_armed:
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        self._timer_armed = True
        self._events.append(Timer(IDLE_POLL_SECONDS))

    def timer_fired(self) -> None:
        self._timer_armed = False
        if self._idle_tag is None or self.state != _SELECTED or self.closed:
            return  # IDLE ended before the timer: nothing to look at
        if self._waiting is not None or self._reader is not None:
            self._arm_idle_timer()  # busy (a refresh is running): look again later
            return
        if self.now - self._idle_since > self.services.timeout_authenticated_ms / 1000.0:
            # Polling keeps the connection busy, so the idle timeout is enforced here (RFC 2177 §3).
            self._send(b"* BYE IDLE for too long.\r\n", close=True)
            return

        def pushed(untagged: bytes) -> None:
            if untagged:
                self._send(untagged)
            if self._idle_tag is not None and not self._timer_armed:
                self._arm_idle_timer()

        self._refresh(pushed)

    def _idle_line(self, line: bytes) -> None:
        tag, self._idle_tag = self._idle_tag, None
        if line.strip().upper() != b"DONE":
            self._error(f"{tag} BAD Expected DONE.\r\n".encode())
            return
        if self.state == _SELECTED:
            self._refresh(lambda untagged: self._ok(tag, "IDLE terminated.", untagged))
        else:
            self._ok(tag, "IDLE terminated.")

    def _refresh(self, then) -> None:
        """Re-read the mailbox and report what changed: EXPUNGE, EXISTS, RECENT and FLAGS."""
        def done(res, error):
            if error is not None:
                then(b"")
                return
            _validity, self.uidnext, fresh, arrived = res
            self.recent |= arrived
            by_uid = {m.uid: m for m in fresh}
            out = []
            for seq in range(len(self.msgs), 0, -1):
                if self.msgs[seq - 1].uid not in by_uid:
                    del self.msgs[seq - 1]
                    out.append(b"* %d EXPUNGE\r\n" % seq)
            for seq, old in enumerate(self.msgs, 1):
                new = by_uid[old.uid]
                if new.flags != old.flags:
                    out.append(b"* %d FETCH (FLAGS " % seq + render_flags(new, new.uid in self.recent) + b")\r\n")
                self.msgs[seq - 1] = new
            known = self.msgs[-1].uid if self.msgs else 0
            added = [m for m in fresh if m.uid > known]
            if added:
                self.msgs.extend(added)
                recent = sum(m.uid in self.recent for m in self.msgs)
                out.append(b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(self.msgs), recent))
            then(b"".join(out))

        self._block(claim_job, (self.maildir, self.readonly), done)

    # Commands and the state they need (-1: only before authentication).
    _HANDLERS = {
        "CAPABILITY": _cmd_capability, "NOOP": _cmd_noop, "LOGOUT": _cmd_logout, "ID": _cmd_id,
        "STARTTLS": _cmd_starttls, "LOGIN": _cmd_login, "AUTHENTICATE": _cmd_authenticate,
        "ENABLE": _cmd_enable, "LIST": _cmd_list, "LSUB": _cmd_lsub, "SELECT": _cmd_select, "EXAMINE": _cmd_examine,
        "STATUS": _cmd_status, "CREATE": _cmd_no_mailboxes, "DELETE": _cmd_no_mailboxes, "RENAME": _cmd_no_mailboxes,
        "APPEND": _cmd_append, "SUBSCRIBE": _cmd_subscribe, "UNSUBSCRIBE": _cmd_subscribe,
        "COPY": _cmd_no_mailboxes, "MOVE": _cmd_no_mailboxes,
        "FETCH": _cmd_fetch, "STORE": _cmd_store, "SEARCH": _cmd_search, "EXPUNGE": _cmd_expunge,
        "CLOSE": _cmd_close, "UNSELECT": _cmd_unselect, "CHECK": _cmd_check, "IDLE": _cmd_idle,
    }
    _STATES = {
        "STARTTLS": -1, "LOGIN": -1, "AUTHENTICATE": -1,
        "ENABLE": _AUTH, "LIST": _AUTH, "LSUB": _AUTH, "SELECT": _AUTH, "EXAMINE": _AUTH, "STATUS": _AUTH,
        "CREATE": _AUTH, "DELETE": _AUTH, "RENAME": _AUTH, "APPEND": _AUTH, "SUBSCRIBE": _AUTH,
        "UNSUBSCRIBE": _AUTH, "IDLE": _AUTH,
        "COPY": _SELECTED, "MOVE": _SELECTED, "FETCH": _SELECTED, "STORE": _SELECTED, "SEARCH": _SELECTED,
        "EXPUNGE": _SELECTED, "CLOSE": _SELECTED, "UNSELECT": _SELECTED, "CHECK": _SELECTED,
    }
