"""Licence renewal with an ``apiKey`` (spec/services.md §6.4 and its "We do better").

Request: ``GET <renewalUrl>/<domain>`` with ``Authorization: Bearer <apiKey>`` and a
``User-Agent``, 60 s time limit, at most 1024 bytes of answer. A 2xx body is the new licence; it is
validated fully (signature, validity window, this host's domain) and installed only when it lasts
longer than the licence in force, so a bad answer never replaces a good licence.

Schedule (:func:`next_attempt`): the first attempt at ``valid_to − 4 days``; after a failed attempt,
the next one 24 h later but never past the start of the last day, then every hour through the
last day and after expiry. The loop never stops while ``apiKey`` is set. The reference stops
rescheduling after a failed rebuild; it also lets a 24 h retry step over the whole last day when
the first attempt falls exactly 4 days before expiry.
"""
from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable

from ... import __version__, events
from ..ai.http import HttpClient, HttpError
from .key import LicenseError, LicenseKey, registrable_domain, validate
from .state import EnterpriseState

RENEW_THRESHOLD = 4 * 86400  # s before valid_to when renewal starts (§6.4)
RETRY_DAILY = 86400
RETRY_HOURLY = 3600
FETCH_TIMEOUT = 60.0
MAX_ANSWER = 1024  # bytes


class RenewalError(LicenseError):
    """The renewal endpoint could not be reached or answered with something unusable."""


def next_attempt(now: float, lic: LicenseKey | None, failed: bool) -> float:
    """Unix time of the next renewal attempt.

    ``failed`` is whether the attempt just made (if any) did not yield a licence that is out of the
    renewal window. With no usable licence at all the answer is one hour from now.
    """
    if lic is None:
        return now + RETRY_HOURLY
    start = lic.valid_to - RENEW_THRESHOLD
    if not failed and now < start:
        return start
    remaining = lic.valid_to - now
    if remaining <= RETRY_DAILY:
        return now + RETRY_HOURLY
    return min(now + RETRY_DAILY, lic.valid_to - RETRY_DAILY)


def renewal_url(base: str, domain: str) -> str:
    return base.rstrip("/") + "/" + urllib.parse.quote(domain, safe="*.")


class LicenseRenewer:
    """Runs renewal for one :class:`EnterpriseState`; one per server (the process that owns it).

    ``clock`` and ``sleep`` are injectable so tests drive the schedule without waiting.
    """

    def __init__(self, state: EnterpriseState, http: HttpClient | None = None,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.state = state
        self.http = http or HttpClient(verify=True)
        self.clock = clock or state.clock
        self.sleep = sleep
        self.due: float | None = None
        self.attempts = 0
        self.last_error: str | None = None

    def schedule(self) -> float | None:
        """Set and return the next due time; None when there is no ``apiKey`` (nothing to do)."""
        if not self.state.api_key:
            self.due = None
        elif self.due is None:
            now, lic = self.clock(), self.state.current()
            # §6.3 rows 2, 4 and 6: no usable licence, or one inside the window: renew at once.
            near = lic is None or lic.valid_to - now <= RENEW_THRESHOLD
            self.due = now if near else lic.valid_to - RENEW_THRESHOLD
        return self.due

    async def fetch(self, domain: str) -> LicenseKey:
        """One renewal request; raises :class:`RenewalError` or a :class:`LicenseError`."""
        url = renewal_url(self.state.renewal_url or "", domain)
        events.emit("server.licensing", Details=f"Attempting to renew Enterprise license for {domain}")
        headers = [("Authorization", f"Bearer {self.state.api_key}"), ("User-Agent", f"Stalwart/{__version__}")]
        try:
            resp = await self.http.request("GET", url, headers, timeout=FETCH_TIMEOUT, max_body=MAX_ANSWER)
        except HttpError as exc:
            raise RenewalError(f"Failed to renew license: Failed to fetch {url}: {exc}") from None
        body = resp.body.decode("utf-8", "replace")
        if not 200 <= resp.status <= 299:
            raise RenewalError(f"Failed to renew license: Failed to fetch {url}: "
                               f"Code: {resp.status} {resp.reason}, Details: {body[:MAX_ANSWER]}")
        try:
            return validate(resp.body, self.state.hostname, self.clock())
        except LicenseError as exc:
            raise RenewalError(f"Failed to decode license renewal: {exc}") from None

    async def attempt(self) -> bool:
        """Try once now; install a better licence; reschedule. True when a licence was installed."""
        self.attempts += 1
        current = self.state.current()
        installed = False
        try:
            domain = current.domain if current else registrable_domain(self.state.hostname,
                                                                       "SystemSettings.defaultHostname")
            new = await self.fetch(domain)
            if current is not None and new.valid_to <= current.valid_to:
                raise RenewalError("Failed to renew license: the answer does not extend the current licence")
            self.state.install(new)
            installed = True
            self.last_error = None
            events.emit("server.licensing", Details=f"Renewed Enterprise license for {new.domain}",
                        Expires=new.describe()["validTo"])
        except LicenseError as exc:
            self.last_error = str(exc)
            events.emit("server.licensing", level="warn", Reason="Failed to renew license", Details=str(exc))
        now = self.clock()
        lic = self.state.current()
        still_due = lic is None or lic.valid_to - now <= RENEW_THRESHOLD
        self.due = next_attempt(now, lic, failed=still_due)
        return installed

    async def step(self) -> bool:
        """Attempt when due (by ``clock``); False when nothing was due or the attempt failed."""
        due = self.schedule()
        if due is None or self.clock() < due:
            return False
        return await self.attempt()

    async def run(self) -> None:
        """Forever: sleep until due, attempt. Returns at once when no ``apiKey`` is configured."""
        while self.schedule() is not None:
            wait = self.due - self.clock()
            if wait > 0:
                # Sleep in bounded slices: a wall-clock jump (suspend, NTP step) is noticed within
                # an hour instead of after a full day.
                await self.sleep(min(wait, RETRY_HOURLY))
                continue
            try:
                await self.attempt()
            except Exception as exc:  # noqa: BLE001 — the loop must outlive any one failure
                events.emit("server.licensing", level="error", Reason="renewal attempt failed",
                            Details=f"{type(exc).__name__}: {exc}")
                self.due = self.clock() + RETRY_HOURLY
