"""``AcmeProvider`` objects and ``Domain.certificateManagement`` (spec/tls.md §6, §7.1, §7.3).

Server-set fields of the reference (``accountKey``, ``accountUri``) are not configuration here:
the account lives in ``<data-dir>/acme/accounts/`` (see :mod:`.state`), so the configuration file
stays operator-written. ``eabHmacKey`` is read only to register the account.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from ...config.secrets import SecretKey

ChallengeType = Literal["TlsAlpn01", "Http01", "Dns01", "DnsPersist01"]
RenewBefore = Literal["R12", "R23", "R34", "R45"]
LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"

#: tls.md §7.3: fraction of the total validity elapsed when renewal starts
RENEW_FRACTION: dict[str, Fraction] = {"R12": Fraction(1, 2), "R23": Fraction(2, 3), "R34": Fraction(3, 4),
                                       "R45": Fraction(4, 5)}


class AcmeProvider(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """One ACME CA account (tls.md §6)."""

    set_fields: ClassVar[tuple[str, ...]] = ("contact",)

    id: str | None = None
    directory: str = LETSENCRYPT
    challenge_type: ChallengeType = "TlsAlpn01"
    contact: Annotated[list[str], Meta(min_length=1)]
    renew_before: RenewBefore = "R23"
    max_retries: Annotated[int, Meta(ge=1)] = 10
    eab_key_id: str | None = None
    eab_hmac_key: SecretKey | None = None
    preferred_chain: str | None = None
    reuse_key: bool = False
    member_tenant_id: str | None = None
    #: (new) PEM file of extra trust anchors for the directory's HTTPS (a private or test CA)
    ca_file: str | None = None


class _Management(msgspec.Struct, tag_field="@type", rename="camel", forbid_unknown_fields=True, kw_only=True):
    pass


class CertificateManual(_Management, tag="Manual"):
    """Certificates come from ``Certificate`` objects only."""


class CertificateAutomatic(_Management, tag="Automatic"):
    """Issue and renew through ``acmeProviderId`` (tls.md §7.1)."""

    acme_provider_id: str
    subject_alternative_names: list[str] = []


CertificateManagement = CertificateManual | CertificateAutomatic


def normalize_contact(value: str) -> str:
    """tls.md §6: trimmed, ``mailto:`` removed, checked, ``mailto:`` added back."""
    addr = value.strip()
    if addr.lower().startswith("mailto:"):
        addr = addr[7:].strip()
    local, at, domain = addr.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() or c in ",<>" for c in addr):
        raise ValueError(f"{value!r} is not an e-mail address")
    return f"mailto:{addr}"
