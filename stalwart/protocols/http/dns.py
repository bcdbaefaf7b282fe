"""DNS records an operator publishes so clients find the autoconfiguration (http.md §9).

``stalwart-cli dns-records DOMAIN`` prints them as zone-file lines, followed by the MTA-STS pair
(mtasts.py) whose policy the HTTP listeners serve. SRV ports come from the same
listener-derived endpoints the autoconfig documents advertise, and the ``_ua-auto-config`` TXT digest
is computed over the exact PACC body this configuration serves, so the two cannot disagree.
"""
from __future__ import annotations

import base64
import hashlib
import os

from ...config import Config
from ...config import hostname as config_hostname
from .advertise import https_endpoint
from .autoconfig import Autoconfig
from .mtasts import dns_rows as mta_sts_rows

#: (service, implicit) -> SRV owner label (RFC 6186, RFC 8314, RFC 8620 §2.2, RFC 6764)
SRV_NAMES = {
    ("imap", True): "_imaps._tcp", ("imap", False): "_imap._tcp",
    ("pop3", True): "_pop3s._tcp", ("pop3", False): "_pop3._tcp",
    ("smtp", True): "_submissions._tcp", ("smtp", False): "_submission._tcp",
    ("jmap", True): "_jmap._tcp", ("caldav", True): "_caldavs._tcp", ("carddav", True): "_carddavs._tcp",
}
MAIL_SRV = ("_imap._tcp", "_imaps._tcp", "_pop3._tcp", "_pop3s._tcp", "_submission._tcp", "_submissions._tcp")
DAV_PATHS = {"caldav": ("_caldavs._tcp", "/dav/cal/"), "carddav": ("_carddavs._tcp", "/dav/card/")}


def pacc_digest(body: bytes) -> str:
    """``v=UAAC1; a=sha256; d=<standard base64 of SHA-256(body)>`` (draft-ietf-mailmaint-pacc-02)."""
    return "v=UAAC1; a=sha256; d=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


def records(cfg: Config, domain: str) -> list[tuple[str, str, str]]:
    """``(owner, type, rdata)`` for ``domain``; owners and targets are absolute (trailing dot)."""
    domain = domain.strip().rstrip(".").lower()
    hostname = config_hostname(cfg)
    ac = Autoconfig(cfg, hostname, public_url=os.environ.get("STALWART_PUBLIC_URL"))
    dh = hostname + "."
    out = [(f"autoconfig.{domain}.", "CNAME", dh), (f"autodiscover.{domain}.", "CNAME", dh),
           (f"ua-auto-config.{domain}.", "CNAME", dh),
           (f"_ua-auto-config.{domain}.", "TXT", f'"{pacc_digest(ac.pacc)}"')]
    advertised: set[str] = set()
    srv: list[tuple[str, str, str]] = []
    for service, eps in ac.endpoints.items():
        for ep in eps:
            label = SRV_NAMES.get((service, ep.implicit))
            if service == "managesieve":
                label = "_sieve._tcp"  # RFC 5804 §1.8
            if label is None or label in advertised:
                continue
            advertised.add(label)
            srv.append((f"{label}.{domain}.", "SRV", f"0 1 {ep.port} {ep.host}."))
    for label in MAIL_SRV:
        if label not in advertised:
            srv.append((f"{label}.{domain}.", "SRV", "0 0 0 ."))  # RFC 6186 §3.4: not offered
    https = https_endpoint(cfg, hostname)
    srv.append((f"_autodiscover._tcp.{domain}.", "SRV", f"0 1 {https.port} {dh}"))
    for service, (label, path) in DAV_PATHS.items():
        if service in ac.endpoints:
            srv.append((f"{label}.{domain}.", "TXT", f'"path={path}"'))  # RFC 6764 §4
    return out + srv + mta_sts_rows(cfg, domain)  # RFC 8461 §3.1: the policy is served over HTTPS too


def zone_lines(rows: list[tuple[str, str, str]]) -> list[str]:
    width = max((len(owner) for owner, _, _ in rows), default=0) + 2
    return [f"{owner:<{width}}IN {rtype:<6}{rdata}" for owner, rtype, rdata in rows]
