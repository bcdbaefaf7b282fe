"""The ``Asn`` configuration object (spec/services.md §3) and ``HttpAuth`` (spec/README.md "HttpAuth").

``Asn`` is a singleton with four variants selected by ``@type``: ``Disabled`` (the default),
``Resource`` (CSV tables fetched over HTTP or read from ``file://``), ``Dns`` (TXT lookups in a zone
such as Team Cymru's) and, beyond the reference, ``Mmdb`` (MaxMind-format ASN and country database
files). These structs mirror the options of ``stalwart.config.model._Object`` (camelCase names,
unknown fields refused) instead of importing it, because ``stalwart/config/model.py`` imports this
module.

Set-typed fields (``asnUrls``, ``geoUrls``) take a JSON list or the reference map form
``{"url": true}``; the map form is turned into a list when the object is decoded.
"""
from __future__ import annotations

import re
from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from ...config.httpauth import BasicAuth, BearerAuth, HttpAuth, Unauthenticated, authorization  # noqa: F401
from ...config.types import Duration, Size

UnsignedInt = Annotated[int, Meta(ge=0, le=2**32 - 1)]
NonEmpty = Annotated[str, Meta(min_length=1)]
UrlSet = list[str] | dict[str, bool]

USER_AGENT = "Stalwart/1.0.0"
# RFC 9110 §5.1 field-name token and §5.5 field-value characters (no CR, LF or NUL).
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VALUE_RE = re.compile(r"^[^\x00\r\n]*$")




class AsnBase(msgspec.Struct, tag_field="@type", rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base of every ``Asn`` variant; ``set_fields`` is what the loader's map-form pass reads."""

    set_fields: ClassVar[tuple[str, ...]] = ()


def _url_list(value: UrlSet) -> list[str]:
    urls = [k for k, v in value.items() if v is not False] if isinstance(value, dict) else list(value)
    seen: set[str] = set()
    out = []
    for url in (u.strip() for u in urls):
        if url and url not in seen:
            seen.add(url)
            out.append(url)
    return out


class AsnDisabled(AsnBase, tag="Disabled"):
    """No ASN or country lookups (the default)."""


class AsnResource(AsnBase, tag="Resource", kw_only=True):
    """CSV tables in the ip-location-db layout, downloaded and refreshed every ``expires``."""

    asn_urls: UrlSet = []
    geo_urls: UrlSet = []
    expires: Duration = Duration(86400000)
    timeout: Duration = Duration(300000)
    max_size: Size = Size(104857600)
    http_auth: HttpAuth  # required, as in the reference: {"@type": "Unauthenticated"} for none
    http_headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        # Checked at decode time, so the error carries the path $.Asn (msgspec adds it).
        self.asn_urls = _url_list(self.asn_urls)
        self.geo_urls = _url_list(self.geo_urls)
        for field, urls in (("asnUrls", self.asn_urls), ("geoUrls", self.geo_urls)):
            for url in urls:
                scheme = url.split(":", 1)[0].lower() if ":" in url else ""
                if scheme not in ("http", "https", "file"):
                    raise ValueError(f"{field}: {url!r} is not an http, https or file URL")
        for name, value in self.http_headers.items():
            if not _TOKEN_RE.match(name.strip()) or not _VALUE_RE.match(value.strip()):
                raise ValueError(f"httpHeaders: Invalid header {name.strip()!r}")


class AsnDns(AsnBase, tag="Dns"):
    """TXT lookups of ``<reversed address>.<zone>`` answered Team Cymru style."""

    zone_ip_v4: NonEmpty
    zone_ip_v6: NonEmpty
    separator: NonEmpty = "|"
    index_asn: UnsignedInt = 0
    index_asn_name: UnsignedInt | None = None
    index_country: UnsignedInt | None = None

    def __post_init__(self) -> None:
        for field, zone in (("zoneIpV4", self.zone_ip_v4), ("zoneIpV6", self.zone_ip_v6)):
            if not zone.strip().strip("."):
                raise ValueError(f"{field}: zone cannot be empty")


class AsnMmdb(AsnBase, tag="Mmdb"):
    """MaxMind DB files (GeoLite2-ASN / GeoLite2-Country layout), re-read when they change.

    ``asnDatabase`` records carry ``autonomous_system_number`` and
    ``autonomous_system_organization``; ``countryDatabase`` records carry ``country.iso_code``
    (``registered_country.iso_code`` when the former is absent). ``expires`` is how often the files'
    modification times are checked; a changed file is read again into the shared table."""

    asn_database: NonEmpty | None = None
    country_database: NonEmpty | None = None
    expires: Duration = Duration(60000)

    def __post_init__(self) -> None:
        if self.asn_database is None and self.country_database is None:
            raise ValueError("an Mmdb source needs asnDatabase, countryDatabase or both")


Asn = AsnDisabled | AsnResource | AsnDns | AsnMmdb


def request_headers(cfg: AsnResource, path: str = "$.Asn") -> dict[str, str]:
    """The outbound headers in assembly order (spec/README.md "HttpAuth"): ``User-Agent``, each
    ``httpHeaders`` entry trimmed, then ``Authorization`` from ``httpAuth`` replacing any given.

    Secrets are resolved here, every time the object is built, and never logged."""
    headers = {"User-Agent": USER_AGENT}
    for name, value in cfg.http_headers.items():
        n, v = name.strip(), value.strip()
        for existing in [k for k in headers if k.lower() == n.lower()]:
            del headers[existing]
        headers[n] = v
    token = authorization(cfg.http_auth, f"{path}.httpAuth")
    if token is not None:
        for existing in [k for k in headers if k.lower() == "authorization"]:
            del headers[existing]
        headers["Authorization"] = token
    return headers

