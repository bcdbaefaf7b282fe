"""Operator actions on an ACME account and its certificates (tls.md §6 "We do better"):
account key rollover (RFC 8555 §7.3.5), account deactivation (§7.3.6), certificate revocation (§7.6),
and rollback to the previous certificate of a domain (:mod:`.state`, "Why keep replaced certificates").

Each holds the provider's lock (:mod:`.lock`) for the whole operation and waits for it at most
``wait`` seconds (``on_wait(holder)`` is told once when it has to wait).

They run in ``stalwart-cli`` from ``--config`` and ``--data-dir`` (the state files of
:mod:`.state`), like the renewal helper does. Each first settles a pending key that an interrupted
rollover left behind, with the CA (:mod:`.keychange`).
"""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ... import events
from ...config.model import Config
from ...tls.certs import iso_time
from .client import AcmeClient, AcmeError
from .commands import LOCK_WAIT
from .config import normalize_contact
from .http import HttpClient
from .jws import AccountKey
from .keychange import change_account_key, load_settled_account
from .lock import ProviderLock
from .renewal import PermanentError, find_domain, find_provider
from .state import AcmeState


async def _client(cfg: Config, provider_id: str, data_dir: str) -> tuple[AcmeClient, AcmeState, object]:
    """The account's client, from the account file as it is now: call it with the lock held."""
    provider = find_provider(cfg, provider_id)
    state = AcmeState(data_dir)
    http = HttpClient(ca_file=provider.ca_file)
    key, uri, _contact = await load_settled_account(state, provider.id, provider.directory, http)
    if uri is None:
        raise PermanentError(f"AcmeProvider {provider.id!r} has no account yet (it is created by the first order)")
    client = AcmeClient(provider.directory, key, http, account_uri=uri)
    client.may_reregister = not state.has_pending_key(provider.id, provider.directory)
    client.configure_account([normalize_contact(c) for c in provider.contact])
    return client, state, provider


def _domain_provider(cfg: Config, domain_name: str):
    domain = find_domain(cfg, domain_name)
    provider_id = getattr(domain.certificate_management, "acme_provider_id", None)
    if provider_id is None:
        raise PermanentError(f"Domain {domain.name} does not use Automatic certificate management")
    return domain, find_provider(cfg, provider_id)


async def rollover(cfg: Config, provider_id: str, data_dir: str, wait: float = LOCK_WAIT, on_wait=None) -> str:
    """RFC 8555 §7.3.5, crash-safe: the new key is on disk as pending before the CA hears of it
    (:mod:`.keychange`)."""
    provider = find_provider(cfg, provider_id)
    # Held from reading the old key to saving the new one: a renewal in between would sign with a
    # key the CA no longer accepts, or write the old key back over the new one.
    async with ProviderLock(data_dir, provider.id).held(f"rollover of account {provider.id}", wait, on_wait):
        client, state, provider = await _client(cfg, provider_id, data_dir)
        new_key = await change_account_key(client, state, provider.id, provider.directory)
        uri = client.account_uri
    events.emit("acme.account-key-changed", Url=uri)
    return f"account {uri} now uses key {new_key.thumbprint}"


async def deactivate(cfg: Config, provider_id: str, data_dir: str, wait: float = LOCK_WAIT, on_wait=None) -> str:
    provider = find_provider(cfg, provider_id)
    async with ProviderLock(data_dir, provider.id).held(f"deactivation of account {provider.id}", wait, on_wait):
        client, state, provider = await _client(cfg, provider_id, data_dir)
        await client.deactivate()
        # A deactivated account cannot order again: the next order registers a fresh one.
        state.save_account(provider.id, provider.directory, AccountKey.generate(), None, [])
    return f"account {client.account_uri} deactivated; the next order registers a new account"


async def revoke(cfg: Config, domain_name: str, data_dir: str, reason: int | None = None,
                 wait: float = LOCK_WAIT, on_wait=None) -> str:
    domain, provider = _domain_provider(cfg, domain_name)
    async with ProviderLock(data_dir, provider.id).held(f"revocation of {domain.name}", wait, on_wait):
        client, state, _provider = await _client(cfg, provider.id, data_dir)
        cert = state.certificate(domain.name)
        if cert is None:
            raise AcmeError(f"no certificate installed for {domain.name}")
        leaf = x509.load_pem_x509_certificates(cert.chain_pem)[0]
        await client.revoke(leaf.public_bytes(serialization.Encoding.DER), reason)
    return f"certificate {cert.fingerprint[:16]}… of {domain.name} revoked; run `acme renew {domain.name}`"


async def rollback(cfg: Config, domain_name: str, data_dir: str, wait: float = LOCK_WAIT, on_wait=None) -> str:
    """Serve the previous certificate of a Domain again (:meth:`.state.AcmeState.rollback`): for a
    CA that issued a certificate clients reject. Under the provider's lock so that it cannot
    interleave with a renewal installing a certificate for the same domain."""
    domain, provider = _domain_provider(cfg, domain_name)
    async with ProviderLock(data_dir, provider.id).held(f"rollback of {domain.name}", wait, on_wait):
        entry, replaced = AcmeState(data_dir).rollback(domain.name)
    events.emit("acme.certificate-rolled-back", Hostname=domain.name, Details=f"serial {entry.serial}")
    took = f"; {replaced.fingerprint[:16]}… moved to rolled-back/" if replaced else ""
    return (f"{domain.name}: restored the certificate with serial {entry.serial} "
            f"(expires {iso_time(entry.cert.not_valid_after)}){took}")
