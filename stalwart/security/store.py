"""The runtime allow/block store: ``<data-dir>/access.db`` (SQLite, WAL).

Entries added with ``stalwart-cli blocked|allowed add`` (and, later, bans raised by auto-ban) live
here, so they survive restarts; entries of the configuration file are not copied here and stay
governed by the file. Only the master writes; workers read a snapshot when the shared change epoch
moves (security.md §2: changes reach every worker within 1 s without a reload).
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from ..config.types import IpMask, format_utc

KINDS = ("blocked", "allowed")


@dataclass(frozen=True, slots=True)
class AccessEntry:
    kind: str
    address: str  # normal form: host bits cleared, /32 and /128 without suffix
    reason: str | None
    created_at: int
    expires_at: int | None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def as_dict(self) -> dict:
        return {
            "address": self.address,
            "reason": self.reason,
            "createdAt": format_utc(self.created_at),
            "expiresAt": format_utc(self.expires_at) if self.expires_at is not None else None,
        }


class AccessStore:
    def __init__(self, path: str):
        self.path = path
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for kind in KINDS:
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {kind} (address TEXT PRIMARY KEY, reason TEXT,"
                " created_at INTEGER NOT NULL, expires_at INTEGER)"
            )

    @staticmethod
    def normalise(address: str) -> str:
        """The IpMask normal form; raises ValueError with the spec's message for bad input."""
        return str(IpMask.parse(address))

    def entries(self, kind: str) -> list[AccessEntry]:
        rows = self._db.execute(f"SELECT address, reason, created_at, expires_at FROM {_kind(kind)} ORDER BY address")
        return [AccessEntry(kind, *row) for row in rows]

    def add(self, kind: str, address: str, reason: str | None = None, expires_at: int | None = None,
            now: float | None = None) -> AccessEntry:
        """Insert or replace the entry for ``address`` (one network can be written only one way)."""
        entry = AccessEntry(kind, self.normalise(address), reason, int(now if now is not None else time.time()),
                            expires_at)
        self._db.execute(
            f"INSERT OR REPLACE INTO {_kind(kind)} (address, reason, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (entry.address, entry.reason, entry.created_at, entry.expires_at),
        )
        return entry

    def remove(self, kind: str, address: str) -> bool:
        cur = self._db.execute(f"DELETE FROM {_kind(kind)} WHERE address = ?", (self.normalise(address),))
        return cur.rowcount > 0

    def purge(self, now: float) -> dict[str, list[str]]:
        """Delete expired rows; returns the purged addresses per kind."""
        out: dict[str, list[str]] = {}
        for kind in KINDS:
            rows = self._db.execute(
                f"SELECT address FROM {kind} WHERE expires_at IS NOT NULL AND expires_at <= ?", (int(now),)
            ).fetchall()
            if rows:
                self._db.execute(f"DELETE FROM {kind} WHERE expires_at IS NOT NULL AND expires_at <= ?", (int(now),))
                out[kind] = [r[0] for r in rows]
        return out

    def close(self) -> None:
        self._db.close()


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown list {kind!r}")
    return kind
