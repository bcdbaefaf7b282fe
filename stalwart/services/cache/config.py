"""The ``Cache`` configuration singleton (services.md §5.1 and "We do better").

Every size field of :data:`CACHE_SIZE_DEFAULTS` is a ``Size``: a JSON integer of bytes or a suffix
string (``"50mb"``, ``"512KB"``, powers of 1024, case-insensitive), stored and printed as an
integer, at least :data:`MIN_CACHE_SIZE` bytes after conversion. ``negativeTtl`` is a ``Duration``
(ms) and is the lifetime of every entry of ``domainNamesNegative`` and ``emailAddressesNegative``.

The struct is generated from :data:`CACHE_SIZE_DEFAULTS`, so the table of fields and defaults has
one source. It mirrors the options of ``stalwart.config.model._Object`` (camelCase, unknown fields
refused) instead of importing it, because ``stalwart/config/model.py`` imports this module.

Errors carry the JSON path of the field: a malformed value (``"12 parsecs"``) is reported by the
decoder at ``$.Cache.<field>``; a value below the minimum raises :class:`ConfigError` at the same
path from ``__post_init__`` (a ConfigError is not a ValueError, so msgspec passes it through
unchanged instead of folding it into an error at ``$.Cache``).
"""
from __future__ import annotations

import re
from typing import Any, ClassVar

import msgspec

from ...config.types import Duration, Size
from . import CACHE_SIZE_DEFAULTS, NEGATIVE_TTL_DEFAULT_MS, parse_cache_size

__all__ = ["CacheSettings", "SIZE_FIELDS", "snake_name"]

#: The JSON path of the singleton; sizes are reported as ``$.Cache.<field>``.
PATH = "$.Cache"


def snake_name(camel: str) -> str:
    """``dnsIpv4`` -> ``dns_ipv4``: the attribute name msgspec's camel renaming maps back to."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


#: camelCase field name -> attribute name, in the reference order.
SIZE_FIELDS: dict[str, str] = {name: snake_name(name) for name in CACHE_SIZE_DEFAULTS}


class _CacheBase(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    set_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
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


def _fields() -> list[tuple[str, Any, Any]]:
    fields: list[tuple[str, Any, Any]] = [
        (attr, Size, Size(CACHE_SIZE_DEFAULTS[camel])) for camel, attr in SIZE_FIELDS.items()]
    fields.append(("negative_ttl", Duration, Duration(NEGATIVE_TTL_DEFAULT_MS)))
    return fields


#: The ``Cache`` object (``cfg.Cache``); see the module docstring for the fields.
CacheSettings = msgspec.defstruct("CacheSettings", _fields(), bases=(_CacheBase,),
                                  module=__name__, rename="camel", forbid_unknown_fields=True,
                                  kw_only=True)
CacheSettings.__doc__ = ("The ``Cache`` singleton: one Size per cache (bytes, suffix strings "
                         "accepted, >= 2048) and negativeTtl (services.md §5.1).")
