"""Protocol session cores (sans-IO) and the table that picks one per listener protocol."""
from __future__ import annotations

from collections.abc import Callable

from ..config import Config
from .base import NEED_DATA, Send, SessionContext, SessionCore, StartTls
from .http import HttpService, HttpSession
from .imap import ImapSession
from .managesieve import ManageSieveSession
from .pop3 import Pop3Session
from .smtp import SmtpSession

SessionFactory = Callable[[SessionContext], SessionCore]


def session_factory(protocol: str, cfg: Config) -> SessionFactory:
    """The constructor for one listener protocol, with the timeouts of ``cfg`` bound in."""
    smtp_timeout = int(cfg.MtaInboundSession.timeout)
    imap_timeout = int(cfg.Imap.timeout_anonymous)
    if protocol == "smtp":
        return lambda ctx: SmtpSession(ctx, smtp_timeout)
    if protocol == "lmtp":
        return lambda ctx: SmtpSession(ctx, smtp_timeout, lmtp=True)
    if protocol == "imap":
        return lambda ctx: ImapSession(ctx, imap_timeout)
    if protocol == "pop3":
        return lambda ctx: Pop3Session(ctx, imap_timeout)
    if protocol == "manageSieve":
        return lambda ctx: ManageSieveSession(ctx, imap_timeout)
    if protocol == "http":
        http = HttpService(cfg)  # compiled once per listener and configuration load
        return lambda ctx: HttpSession(ctx, service=http)
    raise ValueError(f"unknown protocol {protocol!r}")


__all__ = ["NEED_DATA", "Send", "SessionContext", "SessionCore", "StartTls", "session_factory"]
