"""Where every account's mail lives under the data directory, and delivery to several of them."""
from __future__ import annotations

import asyncio
import os

from .maildir import Maildir, MailstoreError
from .sieve import SieveStore
from .spool import Spool


class MailStore:
    """``<data-dir>/mail/<account name, lower-cased>/`` holds one Maildir and its Sieve scripts."""

    def __init__(self, data_dir: str):
        self.root = os.path.join(os.path.abspath(data_dir), "mail")
        #: messages being received that outgrew memory (same filesystem as ``mail/``: hard links)
        self.spool_dir = os.path.join(os.path.abspath(data_dir), "spool")

    def _account_dir(self, account: str) -> str:
        # Account names are validated (model.ACCOUNT_NAME_RE): no separators, no leading dot.
        return os.path.join(self.root, account.lower())

    def maildir(self, account: str) -> Maildir:
        return Maildir(self._account_dir(account))

    def sieve(self, account: str) -> SieveStore:
        return SieveStore(os.path.join(self._account_dir(account), "sieve"))

    def new_spool(self) -> Spool:
        """An empty spool for one message (no I/O until its first write)."""
        return Spool(self.spool_dir)

    def deliver_file(self, source: str, size: int, accounts: list[str]) -> dict[str, BaseException | None]:
        """Like :meth:`deliver` for a fsynced file (a spooled message): linked, not rewritten."""
        done: dict[str, BaseException | None] = {}
        for account in accounts:
            key = account.lower()
            if key not in done:
                try:
                    self.maildir(account).deliver_link(source, size)
                    done[key] = None
                except (OSError, MailstoreError) as exc:
                    done[key] = exc
        return {account: done[account.lower()] for account in accounts}

    def deliver(self, message: bytes, accounts: list[str]) -> dict[str, BaseException | None]:
        """Deliver one copy per account (each atomic and durable, see :meth:`Maildir.deliver`).

        Returns, per account, ``None`` on success or the error it met, so LMTP can answer each
        recipient on its own (RFC 2033 §4.2) and SMTP can refuse the whole message."""
        done: dict[str, BaseException | None] = {}  # one copy per mailbox, however it was named
        for account in accounts:
            key = account.lower()
            if key not in done:
                try:
                    self.maildir(account).deliver(message)
                    done[key] = None
                except OSError as exc:
                    done[key] = exc
        return {account: done[account.lower()] for account in accounts}

    async def deliver_async(self, committer, message: bytes, accounts: list[str]) -> dict[str, BaseException | None]:
        """:meth:`deliver` from the event loop through ``committer`` (a
        :class:`~stalwart.mailstore.committer.Committer`): every mailbox written at once."""
        keys: dict[str, Maildir] = {}
        for account in accounts:
            keys.setdefault(account.lower(), self.maildir(account))
        results = await asyncio.gather(*(committer.deliver(md, message) for md in keys.values()),
                                       return_exceptions=True)
        done: dict[str, BaseException | None] = {}
        for key, result in zip(keys, results):
            if isinstance(result, BaseException) and not isinstance(result, (OSError, MailstoreError)):
                raise result
            done[key] = result if isinstance(result, BaseException) else None
        return {account: done[account.lower()] for account in accounts}
