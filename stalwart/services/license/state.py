"""The Enterprise state of one process: which licence is in force, and the gate AI features call.

spec/services.md §6.3 with its "We do better":

* the configured ``licenseKey`` is never rewritten; a renewed key is server-managed state in
  ``<data-dir>/license.key`` and is used instead of the configured key while it is valid for this
  host and lasts longer;
* ``active()`` is evaluated against the clock at every call, so expiry switches Enterprise features
  off at the expiry moment without a restart, and a renewed key written by whichever process runs
  the renewal is picked up by every worker within :data:`STATE_CHECK_INTERVAL`;
* more accounts than the licence allows turns Enterprise off; adding one more is refused.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

from ... import events
from ...config.secrets import resolve
from ...errors import ConfigError, StalwartError
from .config import Enterprise
from .key import LicenseError, LicenseKey, validate

STATE_FILE = "license.key"
STATE_CHECK_INTERVAL = 1.0  # s between stat() calls on the state file
TRIAL_URL = "https://license.stalw.art/trial"
ENTERPRISE_ONLY = (f"This feature is only available in the Enterprise edition. "
                   f"Obtain your trial license at {TRIAL_URL}.")


class EnterpriseRequired(StalwartError):
    """A gated feature was called without a licence in force. ``reason`` says why."""

    def __init__(self, reason: str | None):
        self.reason = reason
        super().__init__(ENTERPRISE_ONLY + (f" ({reason})" if reason else ""))


class AccountLimitExceeded(StalwartError):
    def __init__(self, allowed: int, found: int):
        self.allowed = allowed
        self.found = found
        super().__init__(f"License key is valid but only allows {allowed} accounts, found {found}.")


class EnterpriseState:
    """Licence in force for ``hostname``; ``clock`` returns Unix seconds (tests pass their own).

    Build it with :meth:`load` at start and on every reload. It never raises for a bad licence:
    the reason is kept in ``error`` and reported by ``status()`` and the gate.
    """

    def __init__(self, hostname: str, data_dir: str | None = None, clock: Callable[[], float] = time.time):
        self.hostname = hostname
        self.data_dir = data_dir
        self.clock = clock
        self.configured: LicenseKey | None = None
        self.renewed: LicenseKey | None = None
        self.api_key: str | None = None
        self.renewal_url: str | None = None
        self.error: str | None = None
        self.account_count: int | None = None
        self._state_mtime: int | None = None
        self._next_state_check = 0.0

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: Enterprise, hostname: str, data_dir: str | None = None,
             clock: Callable[[], float] = time.time, account_count: int | None = None,
             path: str = "$.Enterprise") -> "EnterpriseState":
        """Resolve the secrets and pick the licence in force (§6.3), without network access.

        Renewal (rows 2, 4 and 6 of the table) is the renewer's job; it writes the state file that
        this object reads.
        """
        state = cls(hostname, data_dir, clock)
        state.renewal_url = settings.renewal_url
        state.account_count = account_count
        try:
            text = resolve(settings.license_key, f"{path}.licenseKey")
            state.api_key = resolve(settings.api_key, f"{path}.apiKey")
        except ConfigError as exc:
            state.error = str(exc)
            events.emit("server.licensing", level="warn", Reason="Enterprise licence secret", Details=str(exc))
            return state
        if text is not None:
            try:
                state.configured = validate(text, hostname, clock())
            except LicenseError as exc:
                state.error = str(exc)
        state._read_state_file(force=True)
        if state.current() is None and state.error is None and text is None and state.api_key is None:
            return state  # Community edition: nothing configured, nothing to say
        state._check_accounts()
        lic = state.current()
        if lic is not None:
            events.emit("server.licensing", Details=f"Enterprise licence for {lic.domain}",
                        Limit=lic.accounts, Expires=lic.describe()["validTo"])
        elif state.error:
            events.emit("server.licensing", level="warn", Reason="Enterprise edition is off", Details=state.error)
        return state

    def _check_accounts(self) -> None:
        lic = self.current()
        if lic is not None and self.account_count is not None and self.account_count > lic.accounts:
            self.error = str(AccountLimitExceeded(lic.accounts, self.account_count))
            self.configured = self.renewed = None

    # -- the server-managed renewed key --------------------------------------------------------

    def state_path(self) -> str | None:
        return os.path.join(self.data_dir, STATE_FILE) if self.data_dir else None

    def _read_state_file(self, force: bool = False) -> None:
        path = self.state_path()
        if path is None:
            return
        mono = time.monotonic()
        if not force and mono < self._next_state_check:
            return
        self._next_state_check = mono + STATE_CHECK_INTERVAL
        try:
            st = os.stat(path)
        except OSError:
            if self._state_mtime is not None:  # the file went away: so does what was read from it
                self._state_mtime = None
                self.renewed = None
            return
        if st.st_mtime_ns == self._state_mtime and not force:
            return
        self._state_mtime = st.st_mtime_ns
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read()
            lic = validate(text, self.hostname, self.clock())
        except (OSError, UnicodeDecodeError, LicenseError) as exc:
            # A stale or foreign state file is ignored, never fatal: the configured key still counts.
            events.emit("server.licensing", level="debug", Reason="renewed licence not used", Details=str(exc))
            self.renewed = None
            return
        self.renewed = lic
        self._check_accounts()

    def install(self, lic: LicenseKey) -> None:
        """Persist a renewed, fully validated licence (atomic rename, mode 0600) and use it."""
        path = self.state_path()
        if path is not None:
            tmp = f"{path}.{os.getpid()}.tmp"
            try:
                os.makedirs(self.data_dir, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write(lic.text + "\n")
                os.replace(tmp, path)
                self._state_mtime = os.stat(path).st_mtime_ns
            except OSError as exc:
                # Still used by this process; other workers and the next start keep the old key.
                events.emit("server.licensing", level="error", Reason="renewed licence not persisted",
                            Path=path, Details=str(exc))
        self.renewed = lic
        self.error = None
        self._check_accounts()

    # -- the gate ------------------------------------------------------------------------------

    def current(self) -> LicenseKey | None:
        """The licence in force: the renewed one when it lasts longer than the configured one."""
        self._read_state_file()
        cfg, new = self.configured, self.renewed
        if new is not None and (cfg is None or new.valid_to > cfg.valid_to):
            return new
        return cfg if cfg is not None else new

    def active(self) -> bool:
        """``is_enterprise_edition()``: a licence exists and ``valid_from <= now < valid_to``."""
        lic = self.current()
        return lic is not None and lic.is_active(self.clock())

    def reason(self) -> str | None:
        """Why Enterprise is off right now, or None when it is on."""
        lic = self.current()
        if lic is None:
            return self.error or "no licence key is configured"
        now = self.clock()
        try:
            lic.check_time(now)
        except LicenseError as exc:
            return str(exc)
        return None

    def require(self) -> None:
        """Raise :class:`EnterpriseRequired` unless a licence is in force now (§4 "We do better")."""
        if not self.active():
            raise EnterpriseRequired(self.reason())

    def ensure_can_add_account(self, total: int) -> None:
        """Refuse creating one more account when ``total + 1`` exceeds the licence (§6.3)."""
        lic = self.current()
        if lic is not None and total + 1 > lic.accounts:
            raise AccountLimitExceeded(lic.accounts, total + 1)

    def status(self) -> dict:
        """For ``stalwart-cli license show`` and the server status."""
        lic = self.current()
        now = self.clock()
        out: dict = {"edition": "enterprise" if self.active() else "community", "hostname": self.hostname,
                     "renewal": bool(self.api_key)}
        if lic is not None:
            out["license"] = {**lic.describe(), "source": "renewed" if lic is self.renewed else "configured",
                              "secondsLeft": max(0, int(lic.valid_to - now))}
        reason = self.reason()
        if reason and (lic is not None or self.error):
            out["reason"] = reason
        return out


def ensure_can_add_account(cfg, data_dir: str | None = None) -> None:
    """Account creation (``stalwart-cli account add``) under the licence of ``cfg`` (§6.3).

    ``cfg`` is the configuration before the new account is added. Raises
    :class:`AccountLimitExceeded` when a licence is in force and ``len(Account) + 1`` exceeds it;
    without a licence in force nothing is limited.
    """
    from ...config import hostname

    accounts = len(getattr(cfg, "Account", ()))
    state = EnterpriseState.load(cfg.Enterprise, hostname(cfg), data_dir)
    if state.active():
        state.ensure_can_add_account(accounts)
