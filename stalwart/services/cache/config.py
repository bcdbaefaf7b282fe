"""The ``Cache`` configuration singleton (services.md §5.1 and "We do better").

Every size field of :data:`CACHE_SIZE_DEFAULTS` is a ``Size``: a JSON integer of bytes or a suffix
string (``"50mb"``, ``"512KB"``, powers of 1024, case-insensitive), stored and printed as an
integer, at least :data:`MIN_CACHE_SIZE` bytes after conversion. ``negativeTtl`` is a ``Duration``
(ms) and is the lifetime of every entry of ``domainNamesNegative`` and ``emailAddressesNegative``.

The struct is written out field by field rather than generated from :data:`CACHE_SIZE_DEFAULTS`:
``stalwart.config.model`` imports this module while ``stalwart.services.cache`` may itself be half
imported (it imports ``stalwart.config.types``, which loads the configuration package), so nothing
here may need the package at import time. ``tests/test_cache_config.py`` checks that both tables
agree. It mirrors the options of ``stalwart.config.model._Object`` (camelCase, unknown fields
refused) instead of importing it, because ``stalwart/config/model.py`` imports this module.

Errors carry the JSON path of the field: a malformed value (``"12 parsecs"``) is reported by the
decoder at ``$.Cache.<field>``; a value below the minimum raises :class:`ConfigError` at the same
path from ``__post_init__`` (a ConfigError is not a ValueError, so msgspec passes it through
unchanged instead of folding it into an error at ``$.Cache``).
"""
from __future__ import annotations

from typing import ClassVar

import msgspec

from ...config.types import Duration, Size

__all__ = ["CacheSettings", "SIZE_FIELDS"]

#: The JSON path of the singleton; sizes are reported as ``$.Cache.<field>``.
PATH = "$.Cache"


MiB = 1048576


class _CacheBase(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    set_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        from . import parse_cache_size  # see the module docstring: not at import time

        # Size values arrive as integers already (the decoder ran parse_size); what is left is
        # the minimum, checked here so that the error names the field.
        for camel, attr in SIZE_FIELDS.items():
            setattr(self, attr, Size(parse_cache_size(int(getattr(self, attr)), f"{PATH}.{camel}")))

    def size(self, name: str) -> int:
        """Bytes of the cache field ``name`` (camelCase, e.g. ``"dnsTxt"``)."""
        try:
            return int(getattr(self, SIZE_FIELDS[name]))
        except KeyError:
            raise KeyError(f"no cache field {name!r}") from None

    def sizes(self) -> dict[str, int]:
        """Every size field by its camelCase name."""
        return {camel: int(getattr(self, attr)) for camel, attr in SIZE_FIELDS.items()}

    @property
    def negative_ttl_seconds(self) -> float:
        return int(self.negative_ttl) / 1000.0


class CacheSettings(_CacheBase):
    """The ``Cache`` singleton: one Size per cache (bytes; suffix strings accepted; >= 2048) and
    ``negativeTtl`` (services.md §5.1, reference defaults)."""

    access_tokens: Size = Size(10 * MiB)
    contacts: Size = Size(10 * MiB)
    events: Size = Size(10 * MiB)
    scheduling: Size = Size(1 * MiB)
    files: Size = Size(10 * MiB)
    messages: Size = Size(50 * MiB)
    http_auth: Size = Size(1 * MiB)
    domains: Size = Size(5 * MiB)
    domain_names: Size = Size(10 * MiB)
    domain_names_negative: Size = Size(1 * MiB)
    email_addresses: Size = Size(10 * MiB)
    email_addresses_negative: Size = Size(2 * MiB)
    accounts: Size = Size(20 * MiB)
    roles: Size = Size(5 * MiB)
    tenants: Size = Size(5 * MiB)
    mailing_lists: Size = Size(2 * MiB)
    dkim_signatures: Size = Size(10 * MiB)
    dns_txt: Size = Size(5 * MiB)
    dns_mx: Size = Size(5 * MiB)
    dns_ptr: Size = Size(1 * MiB)
    dns_ipv4: Size = Size(5 * MiB)
    dns_ipv6: Size = Size(5 * MiB)
    dns_tlsa: Size = Size(1 * MiB)
    dns_mta_sts: Size = Size(1 * MiB)
    dns_rbl: Size = Size(5 * MiB)
    negative_ttl: Duration = Duration(3600000)


#: camelCase field name -> attribute name, in the reference order.
SIZE_FIELDS: dict[str, str] = {
    camel: attr for attr, camel in zip(CacheSettings.__struct_fields__, CacheSettings.__struct_encode_fields__)
    if attr != "negative_ttl"}
