"""DNS-01 (RFC 8555 §8.4) through a ``DnsServer`` (tls.md §7.5 "We do better").

The TXT value ``base64url(SHA-256(keyAuthorization))`` is **added** at ``_acme-challenge.<name>``
(other values survive, so concurrent orders and the ``*.d`` / ``d`` pair do not clobber each
other), the challenge is posted only once the zone's authoritative servers show it, and the value
is **removed** when the authorization is no longer pending, whatever its outcome.
"""
from __future__ import annotations

import hashlib

from ..acme.client import AcmeError, ChallengeSolver
from ..acme.jws import b64u
from .propagation import wait_for_txt
from .records import DnsProviderError, DnsUpdater


class DnsError(AcmeError):
    kind, temporary = "Dns", True


def challenge_name(identifier: str) -> str:
    return "_acme-challenge." + identifier.removeprefix("*.").rstrip(".").lower()


def challenge_value(key_authorization: str) -> str:
    return b64u(hashlib.sha256(key_authorization.encode("ascii")).digest())


class Dns01Solver(ChallengeSolver):
    type = "dns-01"

    def __init__(self, updater: DnsUpdater, zone: str):
        self.updater = updater
        self.zone = zone

    async def prepare(self, identifier: str, token: str, key_authorization: str) -> None:
        name, value = challenge_name(identifier), challenge_value(key_authorization)
        u = self.updater
        try:
            await u.add_to_rrset(self.zone, name, "TXT", [value])
            await wait_for_txt(u, self.zone, name, value, delay=u.propagation_delay, interval=u.polling_interval,
                               timeout=u.propagation_timeout)
        except DnsProviderError as exc:
            err = DnsError(str(exc))
            err.temporary = exc.temporary
            raise err from None

    async def cleanup(self, identifier: str, token: str, key_authorization: str) -> None:
        await self.updater.remove_from_rrset(self.zone, challenge_name(identifier), "TXT",
                                             [challenge_value(key_authorization)])


def persist_value(issuer: str, account_uri: str, wildcard: bool) -> str:
    """tls.md §7.5: ``<issuer-domain>; accounturi=<uri>[; policy=wildcard]``."""
    return f"{issuer}; accounturi={account_uri}" + ("; policy=wildcard" if wildcard else "")


class DnsPersist01Solver(ChallengeSolver):
    """DNS-PERSIST-01: nothing per order; the standing ``_validation-persist.<domain>`` TXT record
    names the CA and the account. It is published with the managed record set (``caa`` kind); here
    it is made sure to exist and be visible before the challenge is posted."""

    type = "dns-persist-01"

    def __init__(self, updater: DnsUpdater, zone: str, issuer: str, account_uri: str, wildcard: bool):
        self.updater = updater
        self.zone = zone
        self.value = persist_value(issuer, account_uri, wildcard)

    async def prepare(self, identifier: str, token: str, key_authorization: str) -> None:
        name = "_validation-persist." + identifier.removeprefix("*.").rstrip(".").lower()
        u = self.updater
        try:
            if self.value not in await u.list_rrset(self.zone, name, "TXT"):
                await u.add_to_rrset(self.zone, name, "TXT", [self.value])
            await wait_for_txt(u, self.zone, name, self.value, delay=u.propagation_delay,
                               interval=u.polling_interval, timeout=u.propagation_timeout)
        except DnsProviderError as exc:
            err = DnsError(str(exc))
            err.temporary = exc.temporary
            raise err from None
