"""Master-side management of the runtime allow/block lists (security.md §2).

The master is the only writer of the runtime store. Every change bumps the shared change epoch
(``notify``) so each worker rebuilds its sets within its next 250 ms sweep; expired rows are purged
at least once a minute with their events.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from .. import events
from ..config import Config
from ..config.types import format_utc
from .store import AccessStore

BLOCK_REASONS = ("manual", "other", "authFailure", "rcptToFailure", "loitering", "portScanning")
PURGE_INTERVAL = 30.0  # s; the spec asks for at least once every 60 s


class AccessAdmin:
    def __init__(self, store: AccessStore, notify: Callable[[], object]):
        self.store = store
        self.notify = notify
        self.next_purge = 0.0

    def purge(self, now: float | None = None) -> dict[str, list[str]]:
        """Drop expired runtime entries (at most every PURGE_INTERVAL) and say which."""
        now = time.time() if now is None else now
        if now < self.next_purge:
            return {}
        self.next_purge = now + PURGE_INTERVAL
        purged = self.store.purge(now)
        for kind, addresses in purged.items():
            events.emit("security.ip-block-expired" if kind == "blocked" else "security.ip-allow-expired",
                        Details=", ".join(addresses))
        if purged:
            self.notify()
        return purged

    def command(self, kind: str, action: str, req: dict, config: Config) -> dict:
        """``<kind>.<action>`` from the control socket: list, add or remove."""
        objects = config.BlockedIp if kind == "blocked" else config.AllowedIp
        if action == "list":
            now = time.time()
            static = [{"address": str(o.address), "reason": o.reason, "source": "config",
                       "expiresAt": format_utc(o.expires_at) if o.expires_at else None} for o in objects]
            runtime = [dict(e.as_dict(), source="runtime", expired=e.expired(now)) for e in self.store.entries(kind)]
            return {"ok": True, "entries": static + runtime}
        address = req.get("address")
        if not isinstance(address, str):
            return {"ok": False, "error": "an address is required"}
        try:
            normal = AccessStore.normalise(address)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        if action == "add":
            reason = req.get("reason")
            if kind == "blocked":
                reason = reason or "manual"
                if reason not in BLOCK_REASONS:
                    return {"ok": False, "error": f"reason must be one of {', '.join(BLOCK_REASONS)}"}
            expires = req.get("expiresAt")
            if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
                return {"ok": False, "error": "expiresAt must be Unix seconds"}
            entry = self.store.add(kind, normal, reason, expires)
            self.notify()
            return {"ok": True, "message": f"{kind} {entry.address}", "entry": entry.as_dict()}
        if action == "remove":
            if not self.store.remove(kind, normal):
                if any(str(o.address) == normal for o in objects):
                    return {"ok": False, "error": f"{normal} comes from the configuration file: edit it and reload"}
                return {"ok": False, "error": f"{normal} is not in the {kind} list"}
            self.notify()
            return {"ok": True, "message": f"removed {normal} from the {kind} list"}
        return {"ok": False, "error": f"unknown action {action!r}"}
