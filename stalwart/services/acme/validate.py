"""Cross-object rules for ``AcmeProvider``, ``DnsServer`` and the Domain management fields
(tls.md §6, §7.1; services.md §2). Errors carry the JSON path of the field."""
from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ... import events
from ...config.secrets import resolve
from ...errors import ConfigError
from ..dnsproviders.config import DnsManagementAutomatic
from .config import CertificateAutomatic, normalize_contact
from .jws import b64u_decode

if TYPE_CHECKING:
    from ...config import Config


def validate_acme(cfg: Config) -> None:
    """Normalises contacts; checks ids, URLs, the EAB key and provider/DNS combinations."""
    providers: dict[str, object] = {}
    for i, prov in enumerate(cfg.AcmeProvider):
        p = f"$.AcmeProvider[{i}]"
        providers[prov.id] = prov
        parts = urlsplit(prov.directory)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"{p}.directory", f"{prov.directory!r} is not an https URL")
        contacts = []
        for j, contact in enumerate(prov.contact):
            try:
                norm = normalize_contact(contact)
            except ValueError as exc:
                raise ConfigError(f"{p}.contact[{j}]", str(exc)) from None
            if norm not in contacts:
                contacts.append(norm)
        prov.contact = contacts
        if (prov.eab_key_id is None) != (prov.eab_hmac_key is None):
            raise ConfigError(f"{p}.eabHmacKey", "eabKeyId and eabHmacKey go together")
        if prov.eab_hmac_key is not None:
            try:
                b64u_decode(resolve(prov.eab_hmac_key, f"{p}.eabHmacKey") or "")
            except ValueError as exc:
                raise ConfigError(f"{p}.eabHmacKey", f"not base64url without padding: {exc}") from None
    servers = {s.id for s in cfg.DnsServer}
    for i, srv in enumerate(cfg.DnsServer):
        if getattr(srv, "tsig_algorithm", None) == "gss":
            raise ConfigError(f"$.DnsServer[{i}].tsigAlgorithm", "gss (GSS-TSIG) is not supported for updates")
    http_port_80 = any(lst.protocol == "http" and any(a.port == 80 for a in lst.bind) for lst in cfg.NetworkListener)
    for i, dom in enumerate(cfg.Domain):
        p = f"$.Domain[{i}]"
        dns = dom.dns_management
        if isinstance(dns, DnsManagementAutomatic) and dns.dns_server_id not in servers:
            raise ConfigError(f"{p}.dnsManagement.dnsServerId", f"no DnsServer has id {dns.dns_server_id!r}")
        mgmt = dom.certificate_management
        if not isinstance(mgmt, CertificateAutomatic):
            continue
        prov = providers.get(mgmt.acme_provider_id)
        if prov is None:
            raise ConfigError(f"{p}.certificateManagement.acmeProviderId",
                              f"no AcmeProvider has id {mgmt.acme_provider_id!r}")
        if prov.challenge_type in ("Dns01", "DnsPersist01") and not isinstance(dns, DnsManagementAutomatic):
            raise ConfigError(f"{p}.certificateManagement.acmeProviderId",
                              f"AcmeProvider {prov.id!r} uses {prov.challenge_type}, which needs dnsManagement Automatic")
        if prov.challenge_type == "Http01" and not http_port_80:
            # tls.md §7.1 "We do better": CAs validate HTTP-01 on port 80 only.
            events.emit("config.build-warning", level="warn", Path="$.AcmeProvider",
                        Details=f"AcmeProvider {prov.id!r} uses Http01 but no HTTP listener is bound to port 80")
