"""Account key rollover (RFC 8555 §7.3.5) that survives a crash at any point.

The CA switches the account to the new key the moment it accepts the keyChange request; from then
on it refuses the old key. A process killed (or a machine losing power) after that and before the
new key is on disk would leave only the refused key behind, and the account (its URI, CAA
``accounturi`` bindings, DNS-PERSIST-01 records) would be lost. So:

1. the new key is written durably as the account's *pending* key before the CA hears of it
   (:meth:`.state.AcmeState.stage_pending_key`);
2. once the CA accepted, it is promoted to the account key and the pending entry dropped, in one
   atomic replace of the account file;
3. whoever next loads the account with a pending key still there (a renewal, any ``stalwart-cli
   acme`` action) asks the CA which key it knows before using either: ``newAccount`` with
   ``onlyReturnExisting`` signed by the pending key (RFC 8555 §7.3.1). The account URL in the
   answer → promote; ``accountDoesNotExist`` → discard it, the old key stays; anything else (CA
   unreachable, rate limited, an unexpected answer) → keep both and use the old key for now, the
   next load asks again. Only the CA's answer moves the file, never a guess.

Every function here is called with the provider's lock held (:mod:`.lock`), so no second process
can stage, promote or discard at the same time.
"""
from __future__ import annotations

import enum

from ... import events
from .client import AcmeClient, AcmeError
from .http import HttpClient
from .jws import AccountKey
from .state import AcmeState


class KeyChangeUnresolved(AcmeError):
    """The keyChange request failed and the CA could not be asked whether it applied it."""

    kind, temporary = "Http", True


class Settled(enum.Enum):
    NOTHING = "nothing pending"
    PROMOTED = "the CA uses the pending key: promoted"
    DISCARDED = "the CA does not know the pending key: discarded"
    UNRESOLVED = "the CA did not say which key it knows: both kept, the old key is used"


async def settle_pending_key(state: AcmeState, provider_id: str, directory: str, http: HttpClient) -> Settled:
    """Resolve a pending key left by an interrupted rollover (step 3 above)."""
    try:
        pending = state.pending_key(provider_id, directory)
    except ValueError as exc:  # not written by a rollover (writes are atomic): it cannot be the CA's key
        state.discard_pending_key(provider_id, directory)
        events.emit("acme.account-key-pending-discarded", level="warn", Id=provider_id, Reason=str(exc))
        return Settled.DISCARDED
    if pending is None:
        return Settled.NOTHING
    key, uri, _contact = state.load_account(provider_id, directory)
    if uri is None:
        state.discard_pending_key(provider_id, directory)
        return Settled.DISCARDED
    try:
        found = await AcmeClient(directory, pending, http).existing_account()
    except AcmeError as exc:
        events.emit("acme.account-key-unresolved", level="warn", Id=provider_id, Url=uri,
                    Details=f"old key {key.thumbprint} used, pending key {pending.thumbprint} kept", Reason=str(exc))
        return Settled.UNRESOLVED
    if found == uri:
        state.promote_pending_key(provider_id, directory)
        events.emit("acme.account-key-recovered", level="warn", Id=provider_id, Url=uri,
                    Details=f"an interrupted rollover had switched the account to key {pending.thumbprint}")
        return Settled.PROMOTED
    if found is None:
        state.discard_pending_key(provider_id, directory)
        events.emit("acme.account-key-pending-discarded", Id=provider_id, Url=uri,
                    Details=f"the CA never switched to key {pending.thumbprint}; key {key.thumbprint} stays")
        return Settled.DISCARDED
    # A key generated for this rollover belongs to another account: nothing we wrote explains it.
    events.emit("acme.account-key-unresolved", level="warn", Id=provider_id, Url=uri,
                Details=f"old key {key.thumbprint} used, pending key {pending.thumbprint} kept",
                Reason=f"the CA has the pending key on another account, {found}")
    return Settled.UNRESOLVED


async def load_settled_account(state: AcmeState, provider_id: str, directory: str,
                               http: HttpClient) -> tuple[AccountKey, str | None, list[str]]:
    """:meth:`.state.AcmeState.load_account` after :func:`settle_pending_key`."""
    await settle_pending_key(state, provider_id, directory, http)
    return state.load_account(provider_id, directory)


async def change_account_key(client: AcmeClient, state: AcmeState, provider_id: str, directory: str) -> AccountKey:
    """Roll ``client``'s account over to a new key (steps 1-2 above) and return it. The account
    file must hold no pending key (load it with :func:`load_settled_account`).

    When the keyChange request fails, the CA is asked which key it now knows (the request may
    have been applied with its answer lost): a switch it confirms counts as done; otherwise the
    error is raised, the new key dropped or, when the CA could not be asked, kept pending."""
    new_key = AccountKey.generate()
    state.stage_pending_key(provider_id, directory, new_key)
    try:
        await client.change_key(new_key)
    except AcmeError as exc:
        outcome = await settle_pending_key(state, provider_id, directory, client.http)
        if outcome is Settled.UNRESOLVED:
            raise KeyChangeUnresolved(f"{exc}; {outcome.value}, and the next use of the account asks "
                                      "the CA again", retry_after=exc.retry_after) from exc
        if outcome is not Settled.PROMOTED:
            raise
        client.key = new_key
        return new_key
    state.promote_pending_key(provider_id, directory)
    return new_key
