"""Operator actions on an ACME account and its certificates (tls.md §6 "We do better"):
account key rollover (RFC 8555 §7.3.5), account deactivation (§7.3.6), certificate revocation (§7.6).

They run in ``stalwart-cli`` from ``--config`` and ``--data-dir`` (the state files of
:mod:`.state`), like the renewal helper does.
"""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ... import events
from ...config.model import Config
from .client import AcmeClient, AcmeError
from .config import normalize_contact
from .http import HttpClient
from .jws import AccountKey
from .renewal import PermanentError, find_domain, find_provider
from .state import AcmeState


def _client(cfg: Config, provider_id: str, data_dir: str) -> tuple[AcmeClient, AcmeState, object]:
    provider = find_provider(cfg, provider_id)
    state = AcmeState(data_dir)
    key, uri, _contact = state.load_account(provider.id, provider.directory)
    if uri is None:
        raise PermanentError(f"AcmeProvider {provider.id!r} has no account yet (it is created by the first order)")
    client = AcmeClient(provider.directory, key, HttpClient(ca_file=provider.ca_file), account_uri=uri)
    client.configure_account([normalize_contact(c) for c in provider.contact])
    return client, state, provider


async def rollover(cfg: Config, provider_id: str, data_dir: str) -> str:
    client, state, provider = _client(cfg, provider_id, data_dir)
    new_key = AccountKey.generate()
    await client.change_key(new_key)
    _key, uri, contact = state.load_account(provider.id, provider.directory)
    state.save_account(provider.id, provider.directory, new_key, uri, contact)
    events.emit("acme.account-key-changed", Url=uri)
    return f"account {uri} now uses key {new_key.thumbprint}"


async def deactivate(cfg: Config, provider_id: str, data_dir: str) -> str:
    client, state, provider = _client(cfg, provider_id, data_dir)
    await client.deactivate()
    # A deactivated account cannot order again: the next order registers a fresh one.
    state.save_account(provider.id, provider.directory, AccountKey.generate(), None, [])
    return f"account {client.account_uri} deactivated; the next order registers a new account"


async def revoke(cfg: Config, domain_name: str, data_dir: str, reason: int | None = None) -> str:
    domain = find_domain(cfg, domain_name)
    mgmt = domain.certificate_management
    provider_id = getattr(mgmt, "acme_provider_id", None)
    if provider_id is None:
        raise PermanentError(f"Domain {domain.name} does not use Automatic certificate management")
    client, state, _provider = _client(cfg, provider_id, data_dir)
    cert = state.certificate(domain.name)
    if cert is None:
        raise AcmeError(f"no certificate installed for {domain.name}")
    leaf = x509.load_pem_x509_certificates(cert.chain_pem)[0]
    await client.revoke(leaf.public_bytes(serialization.Encoding.DER), reason)
    return f"certificate {cert.fingerprint[:16]}… of {domain.name} revoked; run `acme renew {domain.name}`"
