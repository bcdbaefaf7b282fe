"""The ``Enterprise`` singleton (spec/services.md §6.1), plus the renewal endpoint.

``licenseKey`` and ``apiKey`` are optional secrets (``None``, ``Value``, ``EnvironmentVariable``,
``File``). ``renewalUrl`` is new: the base of the renewal endpoint, to which ``/<domain>`` is
appended, as in the reference's ``GET https://license.stalw.art/api/license/<domain>`` (§6.4).
"""
from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from ...config.secrets import NoSecret, SecretKeyOptional

DEFAULT_RENEWAL_URL = "https://license.stalw.art/api/license"


class Enterprise(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    license_key: SecretKeyOptional = msgspec.field(default_factory=NoSecret)
    api_key: SecretKeyOptional = msgspec.field(default_factory=NoSecret)
    logo_url: str | None = None
    renewal_url: Annotated[str, Meta(pattern=r"^https?://[^\s/]+")] = DEFAULT_RENEWAL_URL

    set_fields: ClassVar[tuple[str, ...]] = ()
