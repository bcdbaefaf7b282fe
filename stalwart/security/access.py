"""Allow and block matching on packed addresses (security.md §2), built on the ``ipset`` kernel.

One :class:`AccessLists` per worker, rebuilt from the configuration file's BlockedIp/AllowedIp, the
runtime store and the loopback allow entries whenever the shared change epoch moves. Matching is two
probes of prefix-indexed sets; the allow list always wins.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

from .._fast import load as load_kernel
from ..config import Config
from .store import AccessEntry, AccessStore

ipset = load_kernel("ipset")

LOOPBACK_ALLOWED = ("127.0.0.0/8", "::1")


def _merge(target, text: str, expires: int | None, value) -> None:
    """Add ``text``; when two sources cover the same network, the longer-lasting entry wins."""
    packed, prefix = ipset.parse_mask(text)
    exp = 0 if expires is None else int(expires)
    old = target.get(packed, prefix)
    if old is not None:
        if old.expires == 0 or (exp != 0 and old.expires >= exp):
            return
    target.add(packed, prefix, exp, value)


class AccessLists:
    __slots__ = ("blocked", "allowed", "epoch")

    def __init__(self) -> None:
        self.blocked = ipset.IpSet()
        self.allowed = ipset.IpSet()
        self.epoch = -1

    @classmethod
    def build(cls, cfg: Config, runtime: Iterable[AccessEntry] = (), epoch: int = 0) -> "AccessLists":
        lists = cls()
        for text in LOOPBACK_ALLOWED:
            _merge(lists.allowed, text, None, "loopback")
        for entry in cfg.AllowedIp:
            _merge(lists.allowed, str(entry.address), entry.expires_at, entry.reason or "config")
        for entry in cfg.BlockedIp:
            _merge(lists.blocked, str(entry.address), entry.expires_at, entry.reason)
        for entry in runtime:
            target = lists.blocked if entry.kind == "blocked" else lists.allowed
            _merge(target, entry.address, entry.expires_at, entry.reason or entry.kind)
        lists.epoch = epoch
        return lists

    def is_blocked(self, packed: bytes, now: int | None = None) -> bool:
        """Blocked and not allowed (the allow list always wins); expired entries never match."""
        if now is None:
            now = int(time.time())
        return self.blocked.contains(packed, now) and not self.allowed.contains(packed, now)

    def is_allowed(self, packed: bytes, now: int | None = None) -> bool:
        return self.allowed.contains(packed, int(time.time()) if now is None else now)


def load_runtime(path: str) -> list[AccessEntry]:
    store = AccessStore(path)
    try:
        return store.entries("blocked") + store.entries("allowed")
    finally:
        store.close()
