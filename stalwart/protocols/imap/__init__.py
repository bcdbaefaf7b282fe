"""IMAP4rev1 (RFC 3501 subset) over the account's Maildir INBOX."""
from .session import ImapSession

__all__ = ["ImapSession"]
