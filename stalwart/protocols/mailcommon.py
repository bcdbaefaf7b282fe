"""What the mail protocol cores share: the account directory and mail store they serve, the
security events they report (security.md §4, §8), and the blocking jobs they hand to the driver.

Events reported by the cores, for the auto-ban layer (keys are PascalCase):

* ``auth.failed`` {SpanId, ListenerId, RemoteIp, AccountName, Protocol, Credential} — a failed login
  (``Credential`` wraps the password for the stale-credential rule and prints as ``***``);
* ``smtp.mailbox-does-not-exist`` / ``smtp.relay-not-allowed`` {SpanId, RemoteIp, To} — a failed RCPT;
* ``<group>.invalid-command`` {SpanId, RemoteIp, Reason} — a command that does not parse, sent
  before authentication (Reason ``Invalid SMTP command``, ``Invalid IMAP command``, …);
* ``smtp.time-limit-exceeded`` {SpanId, RemoteIp} — data after ``MtaInboundSession.maxDuration``;
* ``<group>.loitering`` {SpanId, RemoteIp} — the idle timeout hit a session that never completed a
  command line.
"""
from __future__ import annotations

import email.utils
from collections.abc import Callable
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import events
from ..accounts import AccountEntry, Directory, sasl

if TYPE_CHECKING:
    from ..config import Config
    from ..services.ai.classification import Classifier
    from ..mailstore import MailStore
    from .base import SessionContext

SCAN_REASONS = {"smtp": "Invalid SMTP command", "imap": "Invalid IMAP command", "pop3": "Invalid POP3 command",
                "manage-sieve": "Invalid ManageSieve command"}


@dataclass(slots=True)
class MailServices:
    """One configuration generation's accounts and storage, shared by a worker's sessions."""

    directory: Directory = field(default_factory=lambda: Directory(set(), []))
    store: MailStore | None = None
    max_auth_failures: int = 3  # Imap.maxAuthFailures: then the session is closed (security.md §4)
    timeout_authenticated_ms: int = 1800000  # Imap.timeoutAuthenticated
    classifier: Classifier | None = None  # SpamLlm bound to its model (services.md §4.2)

    @classmethod
    def build(cls, cfg: Config, data_dir: str | None) -> MailServices:
        from ..config import hostname
        from ..mailstore import MailStore
        from ..services.ai.models import AiModels
        from ..services.license.state import EnterpriseState

        # Clients hold no socket and no loop until their first call, so building here is fork-safe.
        enterprise = EnterpriseState.load(cfg.Enterprise, hostname(cfg), data_dir, account_count=len(cfg.Account))
        ai = AiModels.build(cfg, enterprise)
        return cls(Directory.from_config(cfg), MailStore(data_dir) if data_dir else None,
                   cfg.Imap.max_auth_failures, int(cfg.Imap.timeout_authenticated), ai.classifier)


def authenticate(directory: Directory, login: str, password: str) -> AccountEntry | None:
    """Blocking job: the key derivation runs in a thread (tens of milliseconds)."""
    return directory.authenticate(login, password)


#: security.md §4: a failed login is answered after a random pause in this range (seconds)
AUTH_FAILURE_DELAY = (0.05, 0.5)


def failure_delay(ctx: SessionContext | None = None) -> float:
    """The pause before an authentication failure reply (security.md §4): random in
    AUTH_FAILURE_DELAY, which slows guessing and hides the timing of the check itself, unless the
    auto-ban layer throttles this login (security.md §3: 2, 4, 8, then 15 s). It decides while
    ``auth.failed`` is emitted and leaves the delay in ``ctx.extra["failure_delay"]``."""
    throttled = ctx.extra.pop("failure_delay", None) if ctx is not None else None
    if isinstance(throttled, (int, float)) and throttled > 0:
        return float(throttled)
    return random.uniform(*AUTH_FAILURE_DELAY)


class Credential:
    """A failed password handed to the auth-ban layer for its stale-credential rule (security.md
    §3). It prints as ``***``, so a log line never shows it even if no subscriber removed it."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


def auth_failed(ctx: SessionContext, group: str, login: str, password: str | None = None) -> None:
    keys = {"Credential": Credential(password)} if password is not None else {}
    events.emit("auth.failed", SpanId=ctx.span_id, ListenerId=ctx.listener, RemoteIp=ctx.remote_ip,
                AccountName=login, Protocol=group, **keys)


class PasswordAuth:
    """The password check every mail core shares: off the event loop, then the failure path of
    security.md §4 (``auth.failed`` with the masked credential, the failure count, the pause before
    the reply — random, or the auto-ban layer's throttle — and the close at ``maxAuthFailures``).

    Mixed into :class:`~stalwart.protocols.lines.LineSession` cores, which provide ``ctx``,
    ``services``, ``event_group``, ``_block`` and ``_delay``.
    """

    auth_failures = 0
    _login = ""
    _credential: str | None = None
    _sasl: sasl.SaslExchange | None = None
    #: the protocol's SASL replies (RFC 4954 §4 / RFC 5034 §4): continuation prefix, cancelled, undecodable
    SASL_CONTINUE: bytes
    SASL_CANCELLED: bytes
    SASL_INVALID: bytes
    #: what a core does with the credentials a finished exchange gave
    _sasl_done: Callable[[str, str], None]

    def _sasl_start(self, mech: str, initial: bytes) -> None:
        """Begin ``mech`` (one of :data:`sasl.MECHANISMS`), with the client's initial response if any."""
        self._sasl = sasl.SaslExchange(mech)
        if initial:
            self._sasl_response(initial)
        else:
            self._send(self.SASL_CONTINUE + self._sasl.first_challenge.encode() + b"\r\n")

    def _sasl_response(self, line: bytes) -> None:
        try:
            step = self._sasl.step(line)
        except sasl.SaslCancelled:
            self._sasl = None
            self._send(self.SASL_CANCELLED)
            return
        except sasl.SaslError:
            self._sasl = None
            self._error(self.SASL_INVALID)
            return
        if isinstance(step, str):  # LOGIN asks for the password next
            self._send(self.SASL_CONTINUE + step.encode() + b"\r\n")
            return
        self._sasl = None
        self._sasl_done(*step)

    def _check_password(self, login: str, password: str, done: Callable[[AccountEntry | None], None]) -> None:
        self._login = login
        self._credential = password  # for the auth.failed event only, then dropped
        self._block(authenticate, (self.services.directory, login, password),
                    lambda account, error: self._password_checked(account, error, done), pool="cpu")

    def _password_checked(self, account: AccountEntry | None, error: BaseException | None,
                          done: Callable[[AccountEntry | None], None]) -> None:
        credential, self._credential = self._credential, None
        if account is not None and error is None:
            done(account)
            return
        auth_failed(self.ctx, self.event_group, self._login, credential)
        self.auth_failures += 1
        done(None)

    def _fail_auth(self, reply: Callable[[], None], last_reply: Callable[[], None]) -> None:
        """Answer a failed login after the pause; ``last_reply`` (which closes) once the session
        has used up ``maxAuthFailures``."""
        final = self.auth_failures >= self.services.max_auth_failures
        self._delay(failure_delay(self.ctx), last_reply if final else reply)


def invalid_command(ctx: SessionContext, group: str) -> None:
    events.emit(f"{group}.invalid-command", SpanId=ctx.span_id, RemoteIp=ctx.remote_ip, Reason=SCAN_REASONS[group])


def loitering(ctx: SessionContext, group: str) -> None:
    events.emit(f"{group}.loitering", SpanId=ctx.span_id, RemoteIp=ctx.remote_ip)


def rfc5322_date() -> str:
    """The current local time as an RFC 5322 §3.3 date (runs inside blocking jobs, not in a core)."""
    return email.utils.formatdate(localtime=True)
