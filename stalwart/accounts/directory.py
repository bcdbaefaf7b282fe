"""The account directory a worker consults: local domains, recipients and authentication."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .passwords import HashSpec, decoy_like, parse_hash, verify_password

if TYPE_CHECKING:
    from ..config import Config


@dataclass(frozen=True, slots=True)
class AccountEntry:
    """One account as sessions see it: ``name`` is also its mail directory name."""

    name: str
    emails: tuple[str, ...]
    spec: HashSpec


class Directory:
    """Lookups over the ``Domain`` and ``Account`` objects of one configuration generation."""

    def __init__(self, domains: set[str], accounts: list[AccountEntry]):
        self.domains = frozenset(d.lower() for d in domains)
        self.accounts = {a.name.lower(): a for a in accounts}
        self._by_address = {e: a for a in accounts for e in a.emails}
        self._by_login = dict(self._by_address)
        self._by_login.update(self.accounts)
        # Unknown logins are checked against a decoy with the cost most accounts have, so that
        # "no such user" and "wrong password" take the same time (issue 5, RFC 4954 §9).
        costs = Counter(a.spec.cost_key for a in accounts)
        common = next((a.spec for a in accounts if costs and a.spec.cost_key == costs.most_common(1)[0][0]), None)
        self._decoy = decoy_like(common)

    @classmethod
    def from_config(cls, cfg: Config) -> Directory:
        accounts = [AccountEntry(a.name, tuple(e.lower() for e in a.emails), parse_hash(a.secret))
                    for a in cfg.Account]
        return cls({str(d.name) for d in cfg.Domain}, accounts)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def recipient(self, address: str) -> AccountEntry | None:
        """The account receiving ``address`` (case-insensitive); ``user+detail@dom`` falls back to
        ``user@dom`` (RFC 5233 subaddressing) when no account claims the full address."""
        addr = address.lower()
        acct = self._by_address.get(addr)
        if acct is None and "+" in addr:
            local, _, domain = addr.rpartition("@")
            acct = self._by_address.get(local.split("+", 1)[0] + "@" + domain)
        return acct

    def authenticate(self, login: str, password: str) -> AccountEntry | None:
        """The account when ``login`` (account name or one of its addresses) and ``password`` match.

        Blocking (a key derivation costing tens of milliseconds): cores run it through
        :class:`~stalwart.protocols.base.Blocking`. An unknown login costs one derivation too."""
        acct = self._by_login.get(login.lower()) if login else None
        ok = verify_password(password, acct.spec if acct is not None else self._decoy)
        return acct if ok and acct is not None else None
