"""One renewal of one Domain's certificate (tls.md §7.1-§7.3, §7.2 steps 1-11).

:func:`renew` runs the whole task in the ACME helper process: names, not-due check, solver, order,
checks of the issued leaf, install into ``<data-dir>/acme/certs`` (the TLS store serves it once the
master bumps the certificate epoch). A certificate that is not due yet is a success that reports
its ``renewAt`` (tls.md §7.2 "We do better").
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

from cryptography import x509

from ... import events
from ...config.model import Config
from ...config.secrets import resolve
from ...tls.certs import ParsedCertificate, parse_certificate
from ..dnsproviders.config import DnsManagementAutomatic
from .challenges import ChallengeStore, Http01Solver, TlsAlpn01Solver
from .client import AcmeClient, AcmeError, ChallengeSolver, ari_cert_id
from .config import RENEW_FRACTION, AcmeProvider, CertificateAutomatic, normalize_contact
from .http import HttpClient
from .jws import AccountKey
from .keychange import load_settled_account
from .lock import ProviderLock
from .state import AcmeState

MIN_VALIDITY = 3600.0  # s: tls.md §7.2 step 7
# s: how long a renewal waits for the provider lock (a CLI action); then a temporary failure that
# the scheduler retries with its backoff, so the lock is never held or waited for across retries.
LOCK_WAIT = 120.0


class PermanentError(AcmeError):
    """Configuration problems: retrying cannot help until the configuration changes."""

    kind = "Invalid"


def renew_at(cert: ParsedCertificate, renew_before: str) -> float:
    """tls.md §7.3: ``notBefore + floor((notAfter - notBefore) * n / d)``."""
    frac = RENEW_FRACTION[renew_before]
    span = cert.not_valid_after - cert.not_valid_before
    return cert.not_valid_before + math.floor(span * frac.numerator / frac.denominator)


def requested_names(cfg: Config, domain_name: str, mgmt: CertificateAutomatic, provider: AcmeProvider) -> list[str]:
    """tls.md §7.1 ``build_domains``: explicit SANs relative to the domain, else a per-challenge set."""
    d = domain_name.lower()
    if mgmt.subject_alternative_names:
        names = {n.lower() if "." in n else f"{n.lower()}.{d}" for n in mgmt.subject_alternative_names}
        return sorted(names)
    if provider.challenge_type in ("Dns01", "DnsPersist01"):
        return [f"*.{d}", d]
    names = {f"mta-sts.{d}", f"ua-auto-config.{d}", f"autoconfig.{d}", f"autodiscover.{d}"}
    host = (cfg.SystemSettings.default_hostname or "").lower()
    if host and (host == d or host.endswith(f".{d}")):
        names.add(host)
    for mx in cfg.SystemSettings.mail_exchangers:
        if mx.hostname and mx.hostname.endswith(f".{d}"):
            names.add(mx.hostname)
    for entry in cfg.SystemSettings.services.values():
        if entry.hostname and entry.hostname.endswith(f".{d}"):
            names.add(entry.hostname)
    return sorted(names)


def find_domain(cfg: Config, name: str):
    name = name.lower().rstrip(".")
    for dom in cfg.Domain:
        if dom.name == name:
            return dom
    raise PermanentError(f"no Domain named {name!r}")


def find_provider(cfg: Config, provider_id: str) -> AcmeProvider:
    for prov in cfg.AcmeProvider:
        if prov.id == provider_id:
            return prov
    raise PermanentError(f"no AcmeProvider with id {provider_id!r}")


def solver_for(cfg: Config, domain, provider: AcmeProvider, data_dir: str, account_uri: str | None = None,
               names: Sequence[str] = ()) -> ChallengeSolver:
    store = ChallengeStore(data_dir)
    if provider.challenge_type == "Http01":
        return Http01Solver(store)
    if provider.challenge_type == "TlsAlpn01":
        return TlsAlpn01Solver(store)
    dns = domain.dns_management
    if not isinstance(dns, DnsManagementAutomatic):
        raise PermanentError(f"Domain {domain.name}: {provider.challenge_type} needs dnsManagement Automatic")
    from ..dnsproviders import build_updater
    from ..dnsproviders.dns01 import Dns01Solver

    server = next((s for s in cfg.DnsServer if s.id == dns.dns_server_id), None)
    if server is None:
        raise PermanentError(f"Domain {domain.name}: no DnsServer with id {dns.dns_server_id!r}")
    if provider.challenge_type == "DnsPersist01":
        from ..dnsproviders.dns01 import DnsPersist01Solver
        from ..dnsproviders.managed import issuer_domain

        issuer = issuer_domain(provider.directory)
        if issuer is None or account_uri is None:
            raise PermanentError(f"AcmeProvider {provider.id}: no issuer domain or account for DNS-PERSIST-01")
        return DnsPersist01Solver(build_updater(server), dns.origin or domain.name, issuer, account_uri,
                                  any(n.startswith("*.") for n in names))
    return Dns01Solver(build_updater(server), dns.origin or domain.name)


def _leaf(cert: ParsedCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificates(cert.chain_pem)[0]


def _cert_id(cert: ParsedCertificate) -> str | None:
    try:
        return ari_cert_id(_leaf(cert))
    except (ValueError, x509.ExtensionNotFound):
        return None  # no Authority Key Identifier: nothing to name in "replaces"


async def _ari_due(client: AcmeClient, cert: ParsedCertificate, rng: random.Random) -> float | None:
    """tls.md §7.3 "We do better": a random time inside the CA's suggested window, or the re-check
    time the CA asked for when sooner; None without ARI (or when asking failed: renewBefore applies)."""
    try:
        window = await client.renewal_window(_leaf(cert))
    except (AcmeError, ValueError, x509.ExtensionNotFound) as exc:
        events.emit("acme.renewal-info-error", level="debug", Reason=str(exc))
        return None
    if window is None:
        return None
    start, end, recheck = window
    at = start + rng.random() * (end - start)
    if recheck is not None:
        at = min(at, client.clock() + recheck)
    return at


def _matches(cert: ParsedCertificate | None, names: Sequence[str], now: float) -> bool:
    """Whether ``cert`` is the one to renew: the requested names, valid now."""
    return cert is not None and cert.subject_alternative_names == tuple(sorted(names)) and cert.usable_at(now)


async def renew(cfg: Config, domain_name: str, data_dir: str, *, force: bool = False,
                clock=time.time, http: HttpClient | None = None, rng: random.Random | None = None,
                lock_wait: float = LOCK_WAIT) -> dict:
    """Run one renewal. Returns ``{"status": "issued"|"not-due", "renewAt", "notAfter", "names"}``;
    raises :class:`AcmeError` (``temporary`` tells the scheduler whether to retry).

    The "is it due" check needs no lock (ARI is an unauthenticated GET); the order, from the account
    to the installed certificate, runs under the provider's lock (:mod:`.lock`) and starts by
    re-reading the account, so a rollover or deactivation done meanwhile by ``stalwart-cli`` is used."""
    domain = find_domain(cfg, domain_name)
    mgmt = domain.certificate_management
    if not isinstance(mgmt, CertificateAutomatic):
        raise PermanentError(f"Domain {domain.name} does not use Automatic certificate management")
    provider = find_provider(cfg, mgmt.acme_provider_id)
    names = requested_names(cfg, domain.name, mgmt, provider)
    state = AcmeState(data_dir)
    http = http or HttpClient(ca_file=provider.ca_file)

    current = state.certificate(domain.name)
    ari_used = False
    if _matches(current, names, clock()) and not force:
        account = state.read_account(provider.id, provider.directory)
        # Without an account yet, any key will do: renewalInfo is fetched unsigned (RFC 9773 §4.1).
        probe = AcmeClient(provider.directory, account[0] if account else AccountKey.generate(), http, clock=clock)
        due_at = await _ari_due(probe, current, rng or random.Random())
        if due_at is None:
            due_at = renew_at(current, provider.renew_before)
        else:
            ari_used = True
        if clock() < due_at:
            return {"status": "not-due", "renewAt": due_at, "notAfter": current.not_valid_after, "names": names}
    async with ProviderLock(data_dir, provider.id).held(f"renewal of {domain.name}", lock_wait):
        return await _order(cfg, domain, provider, names, data_dir, http, clock, force or ari_used)


async def _order(cfg: Config, domain, provider: AcmeProvider, names: list[str], data_dir: str, http: HttpClient,
                 clock, replacing: bool) -> dict:
    """The locked part of :func:`renew`: everything is read again, a rollback or rollover may have
    happened while the lock was waited for. ``replacing``: name the current certificate in the
    order's ``replaces`` (RFC 9773 §5) when it still matches."""
    state = AcmeState(data_dir)
    current = state.certificate(domain.name)
    replaces = _cert_id(current) if replacing and _matches(current, names, clock()) else None
    contact = [normalize_contact(c) for c in provider.contact]
    key, uri, registered = await load_settled_account(state, provider.id, provider.directory, http)
    client = AcmeClient(provider.directory, key, http, account_uri=uri, clock=clock)
    client.may_reregister = not state.has_pending_key(provider.id, provider.directory)
    eab = None
    if provider.eab_key_id and provider.eab_hmac_key is not None:
        eab = (provider.eab_key_id, resolve(provider.eab_hmac_key, "eabHmacKey") or "")
    client.configure_account(contact, eab)
    if uri is None:
        await client.register()
    elif sorted(registered) != sorted(contact):
        await client.update_contact(contact)  # tls.md §6 "We do better": edited contacts reach the CA
    if client.account_uri != uri or sorted(registered) != sorted(contact):
        state.save_account(provider.id, provider.directory, key, client.account_uri, contact)
    solver = solver_for(cfg, domain, provider, data_dir, client.account_uri, names)
    reuse = None
    if provider.reuse_key and current is not None and current.subject_alternative_names == tuple(sorted(names)):
        from cryptography.hazmat.primitives import serialization

        reuse = serialization.load_pem_private_key(current.key_pem, password=None)
    try:
        issued = await client.issue(names, solver, key=reuse, preferred_chain=provider.preferred_chain,
                                    replaces=replaces)
    finally:
        if client.account_uri != uri:  # re-registered on accountDoesNotExist
            state.save_account(provider.id, provider.directory, key, client.account_uri, contact)
    leaf = parse_certificate(issued.chain_pem, issued.key_pem)  # checked before anything is replaced
    if leaf.not_valid_after - clock() < MIN_VALIDITY:
        raise PermanentError(f"issued certificate is valid for less than {MIN_VALIDITY:.0f} s")
    cert = state.install(domain.name, issued.chain_pem, issued.key_pem)  # archives the one it replaces
    state.save_order(domain.name, {"url": issued.order_url, "names": names, "finishedAt": clock(),
                                   "fingerprint": cert.fingerprint})
    return {"status": "issued", "renewAt": renew_at(cert, provider.renew_before), "notAfter": cert.not_valid_after,
            "names": names, "fingerprint": cert.fingerprint}


def automatic_domains(cfg: Config) -> Sequence[str]:
    return [d.name for d in cfg.Domain if isinstance(d.certificate_management, CertificateAutomatic)]
