"""What autoconfiguration advertises: hosts, ports and TLS modes from the configured listeners (http.md §3).

The reference hard-codes 993/995/465/443 whatever listens; a client then fails on a server that runs
IMAP on 10993. Here every advertised endpoint is taken from a listener of this node, and the
reference's well-known ports are only the fallback when a protocol has no listener at all.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ...config import Config
from ...config.model import NetworkListener

#: services[] key -> listener protocol that serves it
SERVICE_PROTOCOL = {
    "imap": "imap", "pop3": "pop3", "smtp": "smtp", "managesieve": "manageSieve",
    "jmap": "http", "caldav": "http", "carddav": "http", "webdav": "http",
}
#: listener protocol -> (well-known implicit-TLS port, well-known STARTTLS port)
WELL_KNOWN = {"imap": (993, 143), "pop3": (995, 110), "smtp": (465, 587), "http": (443, None),
              "manageSieve": (None, 4190)}
HTTP_PATHS = {"jmap": "/jmap/session", "caldav": "/dav/cal", "carddav": "/dav/card", "webdav": "/dav/file"}
MAIL_SERVICES = ("imap", "pop3", "smtp")
DAV_SERVICES = ("caldav", "carddav", "webdav")


@dataclass(frozen=True, slots=True)
class Endpoint:
    service: str  # services[] key: imap, pop3, smtp, jmap, caldav, carddav, webdav, managesieve
    host: str
    port: int
    implicit: bool  # implicit TLS (labelled SSL) or STARTTLS

    def https_base(self) -> str:
        """``https://host`` with ``:port`` when the port is not 443 (http.md §3)."""
        return f"https://{self.host}" if self.port == 443 else f"https://{self.host}:{self.port}"


def _is_loopback(host: str) -> bool:
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _ports(listener: NetworkListener) -> set[int]:
    return {b.port for b in listener.bind if not _is_loopback(b.host)}


def _pick(ports: set[int], well_known: int | None) -> int | None:
    if not ports:
        return None
    return well_known if well_known in ports else min(ports)


def listener_ports(listeners: list[NetworkListener], protocol: str) -> tuple[int | None, int | None, bool]:
    """(implicit port, STARTTLS port, any candidate) for one listener protocol (http.md §3 steps 1-3)."""
    implicit: set[int] = set()
    explicit: set[int] = set()
    candidate = False
    for lst in listeners:
        if lst.protocol != protocol or not lst.use_tls:
            continue
        ports = _ports(lst)
        if not ports:
            continue  # every bind address is loopback
        candidate = True
        if lst.tls_implicit:
            implicit |= ports
        elif protocol != "http":
            explicit |= ports - {25} if protocol == "smtp" else ports
    wk_implicit, wk_explicit = WELL_KNOWN[protocol]
    return _pick(implicit, wk_implicit), _pick(explicit, wk_explicit), candidate


def endpoints(cfg: Config, hostname: str) -> dict[str, list[Endpoint]]:
    """Advertised endpoints per service, in ``services`` map order, implicit TLS first (RFC 8314)."""
    out: dict[str, list[Endpoint]] = {}
    by_protocol: dict[str, tuple[int | None, int | None, bool]] = {}
    for service, entry in cfg.SystemSettings.services.items():
        protocol = SERVICE_PROTOCOL[service]
        if protocol not in by_protocol:
            by_protocol[protocol] = listener_ports(cfg.NetworkListener, protocol)
        implicit, explicit, candidate = by_protocol[protocol]
        host = entry.hostname or hostname
        if not candidate or (implicit is None and explicit is None):
            # No listener to take ports from: the reference's well-known ports (step 5).
            implicit, wk_explicit = WELL_KNOWN[protocol]
            explicit = wk_explicit if (entry.cleartext or implicit is None) else None
        elif implicit is not None and not entry.cleartext:
            explicit = None  # step 4: STARTTLS only with cleartext or without an implicit endpoint
        eps = []
        if implicit is not None:
            eps.append(Endpoint(service, host, implicit, True))
        if explicit is not None:
            eps.append(Endpoint(service, host, explicit, False))
        out[service] = eps
    return out


def https_endpoint(cfg: Config, host: str) -> Endpoint:
    """The HTTPS endpoint of this server on ``host`` (autodiscover URLs, the OAuth issuer)."""
    implicit, _, candidate = listener_ports(cfg.NetworkListener, "http")
    return Endpoint("jmap", host, implicit if candidate and implicit is not None else 443, True)
