"""Managed record sets: what a Domain with ``dnsManagement: Automatic`` publishes, and the
reconciliation of its zone with that set (services.md §2.4-§2.6, tls.md §7.1).

:func:`managed_records` computes ``(owner, type, value, kind)`` rows from the configuration (owners
and targets absolute with a trailing dot, services.md "We do better"); ``kind`` is the
``publishRecords`` entry a row belongs to. Generated kinds: ``mx``, ``spf``, ``dmarc`` and
``tlsRpt`` (with the domain's report address), ``srv``, ``autoConfig``, ``autoConfigLegacy``,
``autoDiscover`` (the rows of http.md §9, so SRV ports follow the listeners), ``mtaSts`` (the
``MtaSts`` policy the HTTP listeners serve, protocols/http/mtasts.py), ``caa`` (with the ACME
account URI when certificates are Automatic) and ``tlsa`` (from the installed ACME certificate).
``dkim`` has no signing keys in this configuration yet and produces nothing. Rows come out in the
zone-file order of services.md §2.6 (:data:`ZONE_ORDER`).

:func:`reconcile` adds what is missing, replaces what is stale and leaves foreign records alone:

* CNAME and TLSA groups, and TXT at names the server owns (``_dmarc.``, ``_smtp._tls.``,
  ``_mta-sts.``, ``_ua-auto-config.``, ``_validation-persist.``, ``._domainkey.``), are replaced;
* MX and SRV groups lose only the values this server published before (remembered per domain in
  ``<data-dir>/dns/published/<domain>.json``) and gain the new ones; hand-made records stay;
* a group it published before and no longer generates loses the values it published (nothing else);
* TXT and CAA at shared names keep every record not of the same family as a new one (TXT family:
  the ``v=`` token; CAA: same ``issue``/``issuewild`` issuer or ``iodef``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ...config import Config
from ...config import hostname as config_hostname
from ..acme.challenges import write_private
from .config import DnsManagementAutomatic
from .records import DnsUpdater, fqdn

OWNED_TXT = ("_dmarc.", "_smtp._tls.", "_mta-sts.", "_ua-auto-config.", "_validation-persist.", "._domainkey.")
Row = tuple[str, str, str, str]  # owner, type, value, kind
#: services.md §2.6 zone-file order of the kinds
ZONE_ORDER = ("dkim", "tlsa", "spf", "mx", "dmarc", "srv", "mtaSts", "tlsRpt", "caa", "autoConfig",
              "autoConfigLegacy", "autoDiscover")
#: http.md §9: HTTPS hosts under the domain that get ``_443._tcp`` TLSA when their CNAME is published
TLSA_HTTPS_LABELS = ("mta-sts", "autoconfig", "autodiscover", "ua-auto-config")


def _dot(name: str) -> str:
    return fqdn(name) + "."


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def issuer_domain(directory: str) -> str | None:
    """Registrable domain of the ACME directory host (``letsencrypt.org``), as CAA names issuers."""
    host = urlsplit(directory).hostname or ""
    if not host or host.replace(".", "").isdigit() or ":" in host:
        return host or None  # an IP literal (a private or test CA) names itself
    try:
        from publicsuffixlist import PublicSuffixList

        return PublicSuffixList().privatesuffix(host) or host or None
    except ImportError:
        return host or None


def _autoconfig_rows(cfg: Config, domain: str) -> list[Row]:
    from ...protocols.http.dns import records as http_records

    rows = []
    for owner, rtype, value in http_records(cfg, domain):
        if owner.startswith(("mta-sts.", "_mta-sts.")):
            kind = "mtaSts"
        elif owner.startswith("autoconfig."):
            kind = "autoConfigLegacy"
        elif owner.startswith(("ua-auto-config.", "_ua-auto-config.")):
            kind = "autoConfig"
        elif owner.startswith(("autodiscover.", "_autodiscover.")):
            kind = "autoDiscover"
        else:
            kind = "srv"
        rows.append((owner, rtype, _unquote(value) if rtype == "TXT" else value, kind))
    return rows


def _tlsa_rows(domain: str, hosts: dict[str, int], data_dir: str | None) -> list[Row]:
    if data_dir is None:
        return []
    from ..acme.state import AcmeState

    cert = AcmeState(data_dir).certificate(domain)
    if cert is None:
        return []
    chain = x509.load_pem_x509_certificates(cert.chain_pem)
    rows = []
    for host, port in sorted(hosts.items()):
        covered = host in cert.dns_names or any(n.startswith("*.") and host.split(".", 1)[-1] == n[2:]
                                                for n in cert.dns_names)
        if not covered:
            continue
        for i, c in enumerate(chain):
            spki = c.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
            usage = 3 if i == 0 else 2
            rows.append((f"_{port}._tcp.{host}.", "TLSA", f"{usage} 1 1 {hashlib.sha256(spki).hexdigest()}", "tlsa"))
    return rows


def managed_records(cfg: Config, domain_name: str, data_dir: str | None = None,
                    publish: Sequence[str] | None = None) -> list[Row]:
    """The record set of ``domain_name`` (services.md §2.6), restricted to ``publish`` kinds (default:
    the domain's ``publishRecords``, or every default kind when DNS is Manual)."""
    d = fqdn(domain_name)
    dom = next((x for x in cfg.Domain if x.name == d), None)
    mgmt = dom.dns_management if dom is not None else None
    if publish is None:
        from .config import DEFAULT_PUBLISH

        publish = mgmt.publish_records if isinstance(mgmt, DnsManagementAutomatic) else DEFAULT_PUBLISH
    wanted = set(publish)
    host = config_hostname(cfg)
    rows: list[Row] = []
    mx_hosts = []
    for mx in cfg.SystemSettings.mail_exchangers:
        target = fqdn(mx.hostname or host)
        mx_hosts.append(target)
        rows.append((f"{d}.", "MX", f"{mx.priority} {target}.", "mx"))
    for target in dict.fromkeys(mx_hosts):
        if target.endswith(f".{d}"):
            rows.append((f"{target}.", "TXT", "v=spf1 a -all", "spf"))
    rows.append((f"{d}.", "TXT", "v=spf1 mx -all", "spf"))
    report = getattr(dom, "report_address_uri", None) if dom is not None else None
    if report:
        uri = report if "@" in report or not report.startswith("mailto:") else f"{report}@{d}"
        rows.append((f"_dmarc.{d}.", "TXT", f"v=DMARC1; p=reject; rua={uri}", "dmarc"))
        rows.append((f"_smtp._tls.{d}.", "TXT", f"v=TLSRPTv1; rua={uri}", "tlsRpt"))
    rows.extend(_autoconfig_rows(cfg, d))
    rows.extend(_caa_rows(cfg, dom, d, data_dir, report))
    if "tlsa" in wanted:
        hosts = {h: 25 for h in mx_hosts if h == d or h.endswith(f".{d}")}
        named = {r[0] for r in rows if r[1] == "CNAME" and r[3] in wanted}
        for label in TLSA_HTTPS_LABELS:
            if f"{label}.{d}." in named:  # no TLSA for a host name this set does not publish
                hosts.setdefault(f"{label}.{d}", 443)
        rows.extend(_tlsa_rows(d, hosts, data_dir))
    return sorted((r for r in rows if r[3] in wanted), key=lambda r: ZONE_ORDER.index(r[3]))


def _caa_rows(cfg: Config, dom, d: str, data_dir: str | None, report: str | None) -> list[Row]:
    from ..acme.config import CertificateAutomatic

    if dom is None or not isinstance(dom.certificate_management, CertificateAutomatic):
        return []
    provider = next((p for p in cfg.AcmeProvider if p.id == dom.certificate_management.acme_provider_id), None)
    issuer = issuer_domain(provider.directory) if provider is not None else None
    if issuer is None:
        return []
    uri = None
    if data_dir is not None:
        from ..acme.state import AcmeState

        uri = AcmeState(data_dir).account_uri(provider.id)
    params = f"; accounturi={uri}" if uri else ""
    rows = [(f"{d}.", "CAA", f'0 issue "{issuer}{params}"', "caa")]
    if report and report.startswith("mailto:"):
        rows.append((f"{d}.", "CAA", f'0 iodef "{report if "@" in report else report + "@" + d}"', "caa"))
    from ..acme.renewal import requested_names

    names = requested_names(cfg, d, dom.certificate_management, provider)
    wildcard = "; policy=wildcard" if any(n.startswith("*.") for n in names) else ""
    if uri:
        rows.append((f"_validation-persist.{d}.", "TXT", f"{issuer}{params}{wildcard}", "caa"))
    return rows


# -- reconciliation -----------------------------------------------------------------------------

_V_TOKEN = re.compile(r"^\s*v=([^;\s]+)", re.I)


def txt_family(value: str) -> str | None:
    m = _V_TOKEN.match(value)
    return m.group(1).lower() if m else None


def caa_family(value: str) -> tuple[str, str] | None:
    parts = value.split(None, 2)
    if len(parts) != 3:
        return None
    tag, val = parts[1].lower(), _unquote(parts[2])
    if tag in ("issue", "issuewild"):
        return tag, val.split(";", 1)[0].strip().lower()
    if tag == "iodef":
        return tag, val
    return None


def owned_txt(owner: str) -> bool:
    return any(marker in owner if marker.startswith(".") else owner.startswith(marker) for marker in OWNED_TXT)


class PublishedState:
    """Which values this server published per (owner, type), per domain."""

    def __init__(self, data_dir: str | None, domain: str):
        self.path = os.path.join(data_dir, "dns", "published", f"{fqdn(domain)}.json") if data_dir else None

    def load(self) -> dict[str, list[str]]:
        if self.path is None:
            return {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def save(self, groups: dict[str, list[str]]) -> None:
        if self.path is not None:
            write_private(self.path, json.dumps(groups, indent=1, sort_keys=True).encode())


async def reconcile(updater: DnsUpdater, zone: str, rows: Sequence[Row], data_dir: str | None,
                    domain: str) -> list[str]:
    """Bring the zone in line with ``rows``; returns one line per change made."""
    groups: dict[tuple[str, str], list[str]] = {}
    for owner, rtype, value, _kind in rows:
        groups.setdefault((owner, rtype), [])
        if value not in groups[(owner, rtype)]:
            groups[(owner, rtype)].append(value)
    state = PublishedState(data_dir, domain)
    published = state.load()
    changes: list[str] = []
    for (owner, rtype), values in groups.items():
        key = f"{owner} {rtype}"
        current = await updater.list_rrset(zone, owner, rtype)
        if rtype in ("CNAME", "TLSA") or (rtype == "TXT" and owned_txt(owner)):
            target = values
        elif rtype in ("MX", "SRV"):
            ours = set(published.get(key, []))
            target = [v for v in current if v not in ours and v not in values] + values
        elif rtype == "TXT":
            families = {txt_family(v) for v in values} - {None}
            target = [v for v in current if txt_family(v) is None or txt_family(v) not in families] + values
        else:  # CAA
            families = {caa_family(v) for v in values} - {None}
            target = [v for v in current if caa_family(v) not in families] + values
        target = list(dict.fromkeys(target))
        if _normalised(current, rtype) != _normalised(target, rtype):
            await updater.set_rrset(zone, owner, rtype, target)
            changes.append(f"{owner} {rtype}: {sorted(current)} -> {sorted(target)}")
        published[key] = values
    # Groups this server published before and no longer generates (a type taken out of
    # publishRecords, an MTA-STS policy set to disable, a listener gone): its own values are
    # withdrawn, whatever else stands at that name stays.
    for key in [k for k in published if tuple(k.split(" ", 1)) not in groups]:
        owner, rtype = key.split(" ", 1)
        ours = set(_normalised(published[key], rtype))
        current = await updater.list_rrset(zone, owner, rtype)
        present = [v for v in current if _normalised([v], rtype)[0] in ours]
        if present:
            await updater.remove_from_rrset(zone, owner, rtype, present)
            changes.append(f"{owner} {rtype}: withdrawn {sorted(present)}")
        del published[key]
    state.save(published)
    return changes


def _normalised(values: Sequence[str], rtype: str) -> list[str]:
    if rtype in ("TXT",):
        return sorted(values)
    return sorted(v.lower().rstrip(".") for v in values)


async def publish(cfg: Config, domain_name: str, data_dir: str | None) -> list[str]:
    """``stalwart-cli dns-records DOMAIN --publish``: compute and reconcile through the domain's provider."""
    from . import build_updater
    from .records import DnsProviderError

    d = fqdn(domain_name)
    dom = next((x for x in cfg.Domain if x.name == d), None)
    if dom is None or not isinstance(dom.dns_management, DnsManagementAutomatic):
        raise DnsProviderError(f"Domain {d} does not use Automatic DNS management")
    server = next((s for s in cfg.DnsServer if s.id == dom.dns_management.dns_server_id), None)
    if server is None:
        raise DnsProviderError(f"Domain {d}: no DnsServer with id {dom.dns_management.dns_server_id!r}")
    updater = build_updater(server)
    zone = dom.dns_management.origin or d
    return await reconcile(updater, zone, managed_records(cfg, d, data_dir), data_dir, d)
