"""Protocol session cores (sans-IO) and the table that picks one per listener protocol."""
from __future__ import annotations

from collections.abc import Callable

from ..config import Config
from ..config.model import NetworkListener
from .base import NEED_DATA, Send, SessionContext, SessionCore, StartTls
from .http import HttpService, HttpSession
from .imap import ImapSession
from .managesieve import ManageSieveSession
from .pop3 import Pop3Session
from .mailcommon import MailServices
from .smtp import MAX_MESSAGE_SIZE, SmtpSession

SessionFactory = Callable[[SessionContext], SessionCore]


def session_factory(protocol: str, cfg: Config, data_dir: str | None = None,
                    listener: NetworkListener | None = None) -> SessionFactory:
    """The constructor for one listener protocol, with the timeouts of ``cfg`` bound in.

    Mail protocols also get the accounts of ``cfg`` and the mail store under ``data_dir``
    (none: nothing can be delivered or read), and the listener's ``allowPlainTextAuth``."""
    smtp_timeout = int(cfg.MtaInboundSession.timeout)
    imap_timeout = int(cfg.Imap.timeout_anonymous)
    plain_auth = bool(listener is not None and listener.allow_plain_text_auth)
    if protocol in ("smtp", "lmtp"):
        mail = MailServices.build(cfg, data_dir)
        mta = cfg.MtaInboundSession
        size = min(MAX_MESSAGE_SIZE, int(mta.transfer_limit))
        return lambda ctx: SmtpSession(ctx, smtp_timeout, lmtp=protocol == "lmtp", services=mail,
                                       max_duration_ms=int(mta.max_duration), max_message_size=size,
                                       allow_plain_auth=plain_auth, transfer_limit=int(mta.transfer_limit))
    if protocol == "imap":
        mail = MailServices.build(cfg, data_dir)
        return lambda ctx: ImapSession(ctx, imap_timeout, services=mail, allow_plain_auth=plain_auth)
    if protocol == "pop3":
        mail = MailServices.build(cfg, data_dir)
        return lambda ctx: Pop3Session(ctx, imap_timeout, services=mail, allow_plain_auth=plain_auth)
    if protocol == "manageSieve":
        mail = MailServices.build(cfg, data_dir)
        return lambda ctx: ManageSieveSession(ctx, imap_timeout, services=mail, allow_plain_auth=plain_auth)
    if protocol == "http":
        http = HttpService(cfg, data_dir=data_dir)  # compiled once per listener and configuration load
        return lambda ctx: HttpSession(ctx, service=http)
    raise ValueError(f"unknown protocol {protocol!r}")


__all__ = ["NEED_DATA", "Send", "SessionContext", "SessionCore", "StartTls", "session_factory"]
