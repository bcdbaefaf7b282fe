"""``Domain`` and ``Account`` configuration objects and their cross-field rules.

``Domain`` names a mail domain this server is final destination for; ``Account`` is a login with a
password hash (never a clear password: see :mod:`.passwords`) and the addresses it receives;
``ApiKey`` is a bearer token of an account for the management API, stored as its SHA-256 only::

    {"Domain": [{"name": "example.org"}],
     "Account": [{"name": "jane", "secret": "$scrypt$ln=14,r=8,p=1$...$...",
                  "emails": ["jane@example.org"]}],
     "ApiKey": [{"account": "jane", "secret": "$sha256$<64 hex digits>", "expiresAt": "2027-01-01T00:00:00Z"}]}
"""
from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Annotated, ClassVar

import msgspec
from msgspec import Meta

from ..config.model import _Member
from ..config.types import HostName, UtcDateTime
from ..services.acme.config import CertificateManagement, CertificateManual
from ..services.dnsproviders.config import DnsManagement, DnsManagementManual
from ..errors import ConfigError
from .passwords import PasswordHashError, parse_hash

if TYPE_CHECKING:
    from ..config import Config

#: account names become directory names under the data directory: no separators, no dot files
ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+@-]{0,127}$")
# RFC 5321 §4.1.2 Mailbox, restricted to what we deliver to: dot-atom local part, host domain.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
ADDRESS_RE = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*@[A-Za-z0-9](?:[A-Za-z0-9-]{{0,62}}(?<!-))?"
                        rf"(\.[A-Za-z0-9](?:[A-Za-z0-9-]{{0,62}}(?<!-))?)*$")


class Domain(_Member, kw_only=True):
    name: HostName
    # tls.md §7.1 and services.md §2.4 (issue 11: ACME and DNS providers)
    certificate_management: CertificateManagement = msgspec.field(default_factory=CertificateManual)
    dns_management: DnsManagement = msgspec.field(default_factory=DnsManagementManual)
    report_address_uri: str | None = None  # services.md §2.6: DMARC/TLS-RPT rua, CAA iodef ("mailto:postmaster")


class Account(_Member, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    secret: str
    emails: list[str] = []
    description: str | None = None

    set_fields: ClassVar[tuple[str, ...]] = ("emails",)


class ApiKey(_Member, kw_only=True):
    """(new) A bearer token of ``account``: ``Authorization: Bearer stw_...`` on the management API.

    Tokens carry 256 random bits, so a plain SHA-256 is as strong as a slow password hash here and
    lets a request be checked without a key derivation. ``stalwart-cli api-key add`` creates them."""

    account: Annotated[str, Meta(min_length=1, max_length=128)]
    secret: str
    description: str | None = None
    expires_at: UtcDateTime | None = None


API_KEY_HASH_RE = re.compile(r"^\$sha256\$[0-9a-f]{64}$")


def api_key_hash(token: str) -> str:
    """The stored form of a bearer token: ``$sha256$<hex>``."""
    return "$sha256$" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_api_keys(cfg: Config) -> None:
    """Each key names an existing account and holds a ``$sha256$`` hash; no hash is listed twice."""
    accounts = {a.name.lower() for a in cfg.Account}
    seen: dict[str, int] = {}
    for i, key in enumerate(cfg.ApiKey):
        p = f"$.ApiKey[{i}]"
        if key.account.lower() not in accounts:
            raise ConfigError(f"{p}.account", f"no Account is named {key.account!r}")
        if not API_KEY_HASH_RE.match(key.secret):
            raise ConfigError(f"{p}.secret", "expected \"$sha256$<64 lower-case hex digits>\", the hash of the "
                              "token, never the token (create one with `stalwart-cli api-key add`)")
        if key.secret in seen:
            raise ConfigError(f"{p}.secret", f"the same key is already ApiKey[{seen[key.secret]}]")
        seen[key.secret] = i


def validate_accounts(cfg: Config) -> None:
    """Cross-field rules: unique domains, names and addresses; addresses in a local domain;
    secrets that are password hashes (raises :class:`ConfigError` with the JSON path)."""
    domains: dict[str, int] = {}
    for i, dom in enumerate(cfg.Domain):
        if dom.name in domains:
            raise ConfigError(f"$.Domain[{i}].name", f"{dom.name!r} is already listed in Domain[{domains[dom.name]}]")
        domains[dom.name] = i
    names: dict[str, int] = {}
    owners: dict[str, str] = {}
    for i, acct in enumerate(cfg.Account):
        p = f"$.Account[{i}]"
        if not ACCOUNT_NAME_RE.match(acct.name):
            raise ConfigError(f"{p}.name", f"{acct.name!r} is not a valid account name "
                              "(letters, digits and . _ + @ -, not starting with a dot)")
        key = acct.name.lower()
        if key in names:
            raise ConfigError(f"{p}.name", f"duplicate account name {acct.name!r} (also Account[{names[key]}])")
        names[key] = i
        try:
            parse_hash(acct.secret)
        except PasswordHashError as exc:
            raise ConfigError(f"{p}.secret", f"{exc} (create one with `stalwart-cli account add`)") from None
        emails = []
        for j, addr in enumerate(acct.emails):
            norm = addr.strip().lower()
            if not ADDRESS_RE.match(norm) or len(norm) > 254:
                raise ConfigError(f"{p}.emails[{j}]", f"{addr!r} is not a valid e-mail address")
            domain = norm.rpartition("@")[2]
            if domain not in domains:
                raise ConfigError(f"{p}.emails[{j}]", f"{domain!r} is not a local Domain")
            if norm in owners:
                raise ConfigError(f"{p}.emails[{j}]", f"{addr!r} already belongs to account {owners[norm]!r}")
            owners[norm] = acct.name
            if norm not in emails:
                emails.append(norm)
        acct.emails = emails
