"""Mail storage under the data directory: Maildir delivery, UID maps, POP3/IMAP views, Sieve scripts."""
from .maildir import Maildir, MailstoreError, Message
from .sieve import SieveError, SieveStore
from .spool import Spool
from .store import MailStore

__all__ = ["MailStore", "Maildir", "MailstoreError", "Message", "SieveError", "SieveStore", "Spool"]
