"""The ``DnsResolver`` configuration singleton (spec/services.md §1).

Variants by ``@type``: ``System`` (the default: nameservers and options from ``/etc/resolv.conf``),
``Cloudflare`` and ``Quad9`` (``useTls``, default true: DNS over TLS on 853 verified as
``cloudflare-dns.com`` / ``dns.quad9.net``), ``Google`` (UDP+TCP on 53) and ``Custom`` (``servers``,
at least one). Every variant carries the common fields ``preserveIntermediates``, ``concurrency``,
``timeout``, ``attempts``, ``tcpOnError`` and ``enableEdns``.

These structs mirror the options of ``stalwart.config.model._Object`` instead of importing it,
because ``stalwart/config/model.py`` imports this module.
"""
from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from ...config.types import Duration

__all__ = [
    "CLOUDFLARE", "GOOGLE", "QUAD9", "DnsCustomResolver", "DnsResolver", "DnsResolverBase",
    "DnsResolverCloudflare", "DnsResolverCustom", "DnsResolverGoogle", "DnsResolverQuad9",
    "DnsResolverSystem",
]

UnsignedInt = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Port = Annotated[int, Meta(ge=1, le=65535)]

#: Upstream addresses of the public variants and the names their DoT certificates carry (§1).
CLOUDFLARE = (("1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001"), "cloudflare-dns.com")
QUAD9 = (("9.9.9.9", "149.112.112.112", "2620:fe::fe", "2620:fe::9"), "dns.quad9.net")
GOOGLE = (("8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844"), None)


class DnsCustomResolver(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """One upstream of the ``Custom`` variant.

    ``port`` defaults to 853 for ``tls`` and 53 otherwise (services.md §1 "We do better"; the
    reference leaves a ``tls`` entry on 53). ``tlsServerName`` (new) names the server for SNI and
    certificate checks; null verifies the address against an IP SAN as the reference does.
    """

    protocol: Literal["udp", "tcp", "tls"] = "udp"
    address: str = "127.0.0.1"
    port: Port | None = None
    tls_server_name: Annotated[str, Meta(min_length=1, max_length=253)] | None = None

    def __post_init__(self) -> None:
        try:
            self.address = str(ipaddress.ip_address(self.address.strip()))
        except ValueError:
            raise ValueError(f"address: {self.address!r} is not an IP address") from None
        if self.port is None:
            self.port = 853 if self.protocol == "tls" else 53
        if self.tls_server_name is not None and self.protocol != "tls":
            raise ValueError("tlsServerName applies only to protocol \"tls\"")


class DnsResolverBase(msgspec.Struct, tag_field="@type", rename="camel", forbid_unknown_fields=True,
                      kw_only=True):
    """Fields every variant has (services.md §1 "Common fields")."""

    set_fields: ClassVar[tuple[str, ...]] = ()

    preserve_intermediates: bool = True
    concurrency: UnsignedInt = 2
    timeout: Duration = Duration(5000)
    attempts: UnsignedInt = 2
    tcp_on_error: bool = True
    enable_edns: bool = True


class DnsResolverSystem(DnsResolverBase, tag="System"):
    """Nameservers, search list and options from the OS resolver configuration."""


class DnsResolverCloudflare(DnsResolverBase, tag="Cloudflare"):
    use_tls: bool = True


class DnsResolverQuad9(DnsResolverBase, tag="Quad9"):
    use_tls: bool = True


class DnsResolverGoogle(DnsResolverBase, tag="Google"):
    """Google Public DNS over UDP+TCP."""


class DnsResolverCustom(DnsResolverBase, tag="Custom"):
    servers: Annotated[list[DnsCustomResolver], Meta(min_length=1)]


DnsResolver = (DnsResolverSystem | DnsResolverCloudflare | DnsResolverQuad9 | DnsResolverGoogle
               | DnsResolverCustom)
