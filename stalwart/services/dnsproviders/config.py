"""``DnsServer`` objects (collection) and ``Domain.dnsManagement`` (spec/services.md §2.1-§2.4).

The shared timing fields sit on every variant. Variants implemented: ``Tsig`` (RFC 2136 dynamic
update signed with TSIG, RFC 8945) and the hosted APIs ``Cloudflare``, ``DeSEC`` and
``DigitalOcean`` (each a bearer-style API ``secret``). These structs mirror the options of
``stalwart.config.model._Object`` instead of importing it: ``stalwart/config/model.py`` imports
this module.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from ...config.secrets import SecretKey
from ...config.types import Duration

TsigAlgorithm = Literal["hmac-md5", "gss", "hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha256-128",
                        "hmac-sha384", "hmac-sha384-192", "hmac-sha512", "hmac-sha512-256"]
IpProtocol = Literal["udp", "tcp"]
DnsRecordType = Literal["dkim", "tlsa", "spf", "mx", "dmarc", "srv", "mtaSts", "tlsRpt", "caa", "autoConfig",
                        "autoConfigLegacy", "autoDiscover"]
#: services.md §2.4: what ``publishRecords`` holds when not given (``tlsa`` is off)
DEFAULT_PUBLISH: tuple[str, ...] = ("autoConfig", "autoConfigLegacy", "autoDiscover", "caa", "dkim", "dmarc",
                                    "mtaSts", "mx", "spf", "srv", "tlsRpt")
Port = Annotated[int, Meta(ge=1, le=65535)]


class DnsServerBase(msgspec.Struct, tag_field="@type", rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Fields every provider has (services.md §2.1). Durations are milliseconds."""

    set_fields: ClassVar[tuple[str, ...]] = ()

    id: str | None = None
    description: str = ""
    member_tenant_id: str | None = None
    timeout: Duration = Duration(30000)
    ttl: Duration = Duration(300000)
    polling_interval: Duration = Duration(15000)
    propagation_timeout: Duration = Duration(60000)
    propagation_delay: Duration | None = None

    @property
    def ttl_seconds(self) -> int:
        return max(1, int(self.ttl) // 1000)


class Tsig(DnsServerBase, tag="Tsig"):
    """RFC 2136 dynamic updates to ``host:port``, TSIG-signed (services.md §2.3)."""

    host: str
    key_name: str
    key: SecretKey
    port: Port = 53
    protocol: IpProtocol = "udp"
    tsig_algorithm: TsigAlgorithm = "hmac-sha512"


class Cloudflare(DnsServerBase, tag="Cloudflare"):
    """Cloudflare API v4 with an API token (``Authorization: Bearer``)."""

    secret: SecretKey
    base_url: str = "https://api.cloudflare.com/client/v4"  # (new) for private endpoints and tests


class DeSEC(DnsServerBase, tag="DeSEC"):
    """deSEC REST API (``Authorization: Token``)."""

    secret: SecretKey
    base_url: str = "https://desec.io/api/v1"  # (new)


class DigitalOcean(DnsServerBase, tag="DigitalOcean"):
    """DigitalOcean API v2 domain records (``Authorization: Bearer``)."""

    secret: SecretKey
    base_url: str = "https://api.digitalocean.com/v2"  # (new)


class Hetzner(DnsServerBase, tag="Hetzner"):
    """Hetzner DNS API v1 (``Auth-API-Token``)."""

    secret: SecretKey
    base_url: str = "https://dns.hetzner.com/api/v1"  # (new)


class Linode(DnsServerBase, tag="Linode"):
    """Linode API v4 domains (``Authorization: Bearer``)."""

    secret: SecretKey
    base_url: str = "https://api.linode.com/v4"  # (new)


class Vultr(DnsServerBase, tag="Vultr"):
    """Vultr API v2 DNS (``Authorization: Bearer``)."""

    secret: SecretKey
    base_url: str = "https://api.vultr.com/v2"  # (new)


class Porkbun(DnsServerBase, tag="Porkbun"):
    """Porkbun API v3: credentials travel in every JSON body (``apikey``, ``secretapikey``)."""

    api_key: str
    secret_api_key: SecretKey
    base_url: str = "https://api.porkbun.com/api/json/v3"  # (new)


class Deprecated1(DnsServerBase, tag="Deprecated1"):
    """The slot of the removed ``Sig0`` variant: it loads, but building it fails (services.md §2.2)."""


DnsServer = Tsig | Cloudflare | DeSEC | DigitalOcean | Hetzner | Linode | Vultr | Porkbun | Deprecated1


class _Management(msgspec.Struct, tag_field="@type", rename="camel", forbid_unknown_fields=True, kw_only=True):
    pass


class DnsManagementManual(_Management, tag="Manual"):
    """Records are the operator's business; no updater is built (services.md §2.4)."""


class DnsManagementAutomatic(_Management, tag="Automatic"):
    """The server publishes the domain's records through ``dnsServerId`` (services.md §2.4)."""

    dns_server_id: str
    origin: str | None = None  # zone apex; default the domain name
    publish_records: list[DnsRecordType] = msgspec.field(default_factory=lambda: list(DEFAULT_PUBLISH))


DnsManagement = DnsManagementManual | DnsManagementAutomatic
