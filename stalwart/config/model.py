"""Configuration objects as msgspec structs, with the reference names, camelCase fields and defaults.

A configuration file is one JSON object whose keys are object names: a singleton maps to one object,
a collection to a list of objects (spec/README.md). Set-typed fields accept a JSON list or the
reference map form ``{"value": true}``; the loader turns the map form into a list before decoding.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from ..services.ai.config import AiModel, SpamLlm, SpamLlmDisable, SpamLlmEnable
from ..services.cache.config import CacheSettings
from ..services.dns.config import DnsResolver, DnsResolverBase, DnsResolverSystem
from ..services.license.config import Enterprise
from ..services.geo.config import Asn, AsnBase, AsnDisabled
from ..services.acme.config import AcmeProvider
from ..services.dnsproviders.config import DnsServer, DnsServerBase
from ..errors import ConfigError
from ..security.cluster import Redis
from .secrets import PublicText, SecretText
from .types import Duration, HostName, IpMask, Rate, Size, SocketAddr, UtcDateTime, parse_hostname

PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=1, le=65535)]

Protocol = Literal["smtp", "lmtp", "http", "imap", "pop3", "manageSieve"]
TlsVersion = Literal["tls12", "tls13"]
TlsCipherSuite = Literal[
    "tls13-aes-256-gcm-sha384",
    "tls13-aes-128-gcm-sha256",
    "tls13-chacha20-poly1305-sha256",
    "tls-ecdhe-ecdsa-with-aes-256-gcm-sha384",
    "tls-ecdhe-ecdsa-with-aes-128-gcm-sha256",
    "tls-ecdhe-ecdsa-with-chacha20-poly1305-sha256",
    "tls-ecdhe-rsa-with-aes-256-gcm-sha384",
    "tls-ecdhe-rsa-with-aes-128-gcm-sha256",
    "tls-ecdhe-rsa-with-chacha20-poly1305-sha256",
]
ServiceProtocol = Literal["jmap", "imap", "pop3", "smtp", "caldav", "carddav", "webdav", "managesieve"]
BlockReason = Literal["manual", "other", "authFailure", "rcptToFailure", "loitering", "portScanning"]


class _Object(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base of every configuration object. ``set_fields`` lists fields that accept the map form."""

    set_fields: ClassVar[tuple[str, ...]] = ()


class _Member(_Object):
    """An object of a collection: carries an ``id`` (default: its 0-based position)."""

    id: str | None = None


class ServiceEntry(_Object):
    hostname: HostName | None = None
    cleartext: bool = False


class MailExchanger(_Object):
    hostname: HostName | None = None
    priority: Port = 10


def _default_services() -> dict[str, ServiceEntry]:
    return {k: ServiceEntry() for k in ("jmap", "imap", "pop3", "smtp", "caldav", "carddav", "webdav", "managesieve")}


class SystemSettings(_Object):
    default_hostname: HostName | None = None
    default_domain_id: str | None = None
    default_certificate_id: str | None = None
    thread_pool_size: PositiveInt | None = None
    max_connections: PositiveInt = 8192
    proxy_trusted_networks: list[IpMask] = []
    mail_exchangers: list[MailExchanger] = msgspec.field(default_factory=lambda: [MailExchanger()])
    services: dict[ServiceProtocol, ServiceEntry] = msgspec.field(default_factory=_default_services)
    provider_info: dict[str, str] = {}

    set_fields: ClassVar[tuple[str, ...]] = ("proxyTrustedNetworks",)


class NetworkListener(_Member, kw_only=True):
    name: str
    bind: list[SocketAddr]
    protocol: Protocol = "smtp"
    override_proxy_trusted_networks: list[IpMask] = []
    socket_backlog: PositiveInt | None = 1024
    socket_no_delay: bool = True
    socket_receive_buffer_size: PositiveInt | None = None
    socket_send_buffer_size: PositiveInt | None = None
    socket_reuse_address: bool = True
    socket_reuse_port: bool = True
    socket_tos_v4: Annotated[int, Meta(ge=1, le=255)] | None = None
    socket_ttl: Annotated[int, Meta(ge=1, le=255)] | None = None
    use_tls: bool = True
    tls_implicit: bool = False
    tls_timeout: Duration | None = Duration(60000)
    tls_disable_protocols: list[TlsVersion] = []
    tls_disable_cipher_suites: list[TlsCipherSuite] = []
    tls_ignore_client_order: bool = True
    max_connections: PositiveInt | None = 8192
    allow_plain_text_auth: bool = False  # offer AUTH/LOGIN without TLS (test rigs, internal networks)

    set_fields: ClassVar[tuple[str, ...]] = (
        "bind",
        "overrideProxyTrustedNetworks",
        "tlsDisableProtocols",
        "tlsDisableCipherSuites",
    )

    @property
    def effective_tls_timeout(self) -> int:
        return int(self.tls_timeout) if self.tls_timeout is not None else 60000


DEFAULT_SCAN_BAN_PATHS = [
    "*.php*", "*.cgi*", "*.asp*", "*/wp-*", "*/php*", "*/cgi-bin*",
    "*xmlrpc*", "*../*", "*/..*", "*joomla*", "*wordpress*", "*drupal*",
]


class Security(_Object):
    auth_ban_rate: Rate | None = Rate(count=100, period=Duration(86400000))
    auth_ban_period: Duration | None = None
    abuse_ban_rate: Rate | None = Rate(count=35, period=Duration(86400000))
    abuse_ban_period: Duration | None = None
    loiter_ban_rate: Rate | None = Rate(count=150, period=Duration(86400000))
    loiter_ban_period: Duration | None = None
    scan_ban_rate: Rate | None = Rate(count=30, period=Duration(86400000))
    scan_ban_period: Duration | None = None
    scan_ban_paths: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SCAN_BAN_PATHS))
    ipv4_ban_prefix: Annotated[int, Meta(ge=8, le=32)] = 32
    ipv6_ban_prefix: Annotated[int, Meta(ge=8, le=128)] = 64
    # (new) sizes of the shared-memory auto-ban tables; the master maps them once, so a change
    # takes effect at the next restart. When full, the entry expiring soonest (bans) or the least
    # recently used key (counters) goes, and an event says so.
    ban_table_capacity: Annotated[int, Meta(ge=64, le=16_777_216)] = 65536
    rate_counter_capacity: Annotated[int, Meta(ge=64, le=4_194_304)] = 32768

    set_fields: ClassVar[tuple[str, ...]] = ("scanBanPaths",)


class BlockedIp(_Member, kw_only=True):
    address: IpMask
    reason: BlockReason = "manual"
    created_at: UtcDateTime | None = None
    expires_at: UtcDateTime | None = None


class AllowedIp(_Member, kw_only=True):
    address: IpMask
    reason: Annotated[str, Meta(min_length=1)] | None = None
    created_at: UtcDateTime | None = None
    expires_at: UtcDateTime | None = None


class Certificate(_Member, kw_only=True):
    certificate: PublicText
    private_key: SecretText


class Http(_Object):
    use_x_forwarded: bool = False
    rate_limit_authenticated: Rate | None = Rate(count=1000, period=Duration(60000))
    rate_limit_anonymous: Rate | None = Rate(count=100, period=Duration(60000))
    allowed_endpoints: dict[str, Any] = msgspec.field(default_factory=lambda: {"else": "200"})
    response_headers: dict[str, str] = {}  # set on every response, replacing same-named ones (http.md §1)
    enable_hsts: bool = False
    administrators: list[str] = []  # (new) Account names allowed to use the management API

    set_fields: ClassVar[tuple[str, ...]] = ("administrators",)


class Imap(_Object):
    timeout_anonymous: Duration = Duration(60000)
    timeout_authenticated: Duration = Duration(1800000)
    max_auth_failures: PositiveInt = 3


class MtaInboundSession(_Object):
    timeout: Duration = Duration(300000)
    max_duration: Duration = Duration(600000)
    transfer_limit: Size = Size(262144000)


PolicyEnforcement = Literal["enforce", "testing", "disable"]
MTA_STS_MAX_AGE_MS = 31557600 * 1000  # RFC 8461 §3.2: max_age is at most 31557600 s


class MtaSts(_Object):
    """This server's inbound MTA-STS policy (RFC 8461), served at ``https://mta-sts.<domain>/.well-known/
    mta-sts.txt`` for every local Domain and announced by the ``mtaSts`` managed records.

    ``mode: disable`` publishes nothing. ``mxHosts`` are host names or ``*.`` patterns (§4.1); empty
    means the MX hosts the ``mx`` records name (``SystemSettings.mailExchangers``, else the default
    host name). An absent object is the reference's default: mode ``testing``, ``maxAge`` 7 days.
    """

    max_age: Duration = Duration(7 * 86400 * 1000)
    mode: PolicyEnforcement = "testing"
    mx_hosts: list[str] = []

    def __post_init__(self) -> None:
        # ConfigError is not a ValueError: msgspec passes it through with the field's own path.
        ms = int(self.max_age)
        if ms % 1000 or ms > MTA_STS_MAX_AGE_MS:
            raise ConfigError("$.MtaSts.maxAge", f"{ms} ms is not a whole number of seconds between 1 s and "
                              f"31557600 s (RFC 8461 §3.2 max_age)")
        hosts: list[str] = []
        for i, raw in enumerate(self.mx_hosts):
            wildcard = raw.strip().startswith("*.")
            try:
                name = parse_hostname(raw.strip()[2:] if wildcard else raw)
                if name.replace(".", "").isdigit() or ":" in name:
                    raise ValueError("an IP address")  # §4.1 matches MX host names: never an address
            except ValueError:
                raise ConfigError(f"$.MtaSts.mxHosts[{i}]", f"{raw!r} is neither a host name nor a '*.' pattern "
                                  "(RFC 8461 §4.1)") from None
            name = f"*.{name}" if wildcard else name
            if name not in hosts:
                hosts.append(name)
        self.mx_hosts = hosts


from ..accounts.model import Account, ApiKey, Domain  # noqa: E402 - they derive from _Member above

# Top-level object name -> (struct, is_collection). Order is the order of `check` output.
OBJECTS: dict[str, tuple[type[_Object], bool]] = {
    "SystemSettings": (SystemSettings, False),
    "NetworkListener": (NetworkListener, True),
    "Security": (Security, False),
    "Http": (Http, False),
    "Imap": (Imap, False),
    "MtaInboundSession": (MtaInboundSession, False),
    "BlockedIp": (BlockedIp, True),
    "AllowedIp": (AllowedIp, True),
    "Certificate": (Certificate, True),
    "Domain": (Domain, True),
    "Account": (Account, True),
    "ApiKey": (ApiKey, True),
    "AiModel": (AiModel, True),
    "SpamLlm": (SpamLlmEnable, False),  # a tagged union; the Enable variant names its set fields
    "Enterprise": (Enterprise, False),
    "Asn": (AsnBase, False),  # a tagged union; the map form of its URL sets is handled by the variant
    "Cache": (CacheSettings, False),
    "DnsResolver": (DnsResolverBase, False),  # a tagged union
    "AcmeProvider": (AcmeProvider, True),
    "DnsServer": (DnsServerBase, True),  # a tagged union
    "Redis": (Redis, False),
    "MtaSts": (MtaSts, False),
}


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration file. Field names are the reference object names."""

    SystemSettings: SystemSettings = msgspec.field(default_factory=lambda: SystemSettings())
    NetworkListener: list[NetworkListener] = []
    Security: Security = msgspec.field(default_factory=lambda: Security())
    Http: Http = msgspec.field(default_factory=lambda: Http())
    Imap: Imap = msgspec.field(default_factory=lambda: Imap())
    MtaInboundSession: MtaInboundSession = msgspec.field(default_factory=lambda: MtaInboundSession())
    BlockedIp: list[BlockedIp] = []
    AllowedIp: list[AllowedIp] = []
    Certificate: list[Certificate] = []
    Domain: list[Domain] = []
    Account: list[Account] = []
    ApiKey: list[ApiKey] = []
    AiModel: list[AiModel] = []
    SpamLlm: SpamLlm = msgspec.field(default_factory=SpamLlmDisable)
    Enterprise: Enterprise = msgspec.field(default_factory=lambda: Enterprise())
    Asn: Asn = msgspec.field(default_factory=AsnDisabled)
    Cache: CacheSettings = msgspec.field(default_factory=lambda: CacheSettings())
    DnsResolver: DnsResolver = msgspec.field(default_factory=DnsResolverSystem)
    AcmeProvider: list[AcmeProvider] = []
    DnsServer: list[DnsServer] = []
    Redis: Redis = msgspec.field(default_factory=lambda: Redis())
    MtaSts: MtaSts = msgspec.field(default_factory=lambda: MtaSts())
