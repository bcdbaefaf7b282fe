"""Auto-ban across several stalwartd hosts through Redis (issue 6, "Clusters"; security.md §3, §5).

Optional: nothing here runs unless the ``Redis`` object has a ``url``, and the ``redis`` package is
imported only then.

* **Counters.** Each address-prefix event a worker counts locally is also added to a Redis sorted
  set per key (score and member: the event's wall-clock milliseconds), trimmed to the category's
  period: an exact sliding-window log shared by every node (``count`` is at most 1000 in practice,
  security.md §3 prefers an exact log there). A count over the limit bans exactly as a local one
  does. Commands run on the worker's event loop through ``redis.asyncio``, so a slow Redis delays
  only the cluster verdict, never a session; any Redis error is logged and fails open (the local
  shared-memory counter still decides), as the spec asks of a failing counter store.
* **Bans.** The master of the node that banned publishes the ban on a channel when it persists it;
  every other master applies it to its shared table and its ``access.db`` from its loop (at most
  1 s apart), so every worker of every node refuses the prefix within about a second.
  ``stalwart-cli blocked remove`` publishes the lift the same way. A node that was down misses
  what was published meanwhile (Redis pub/sub keeps no history); its own bans are unaffected.

Keys: ``<keyPrefix>c:<hex of the counter key>``. Channel: ``<keyPrefix>bans``.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from .. import events
from ..errors import ConfigError

if TYPE_CHECKING:
    from .store import AccessStore

RECONNECT_INTERVAL = 10.0  # s between attempts while Redis is unreachable
ERROR_LOG_INTERVAL = 30.0  # s: a flapping Redis is logged once per interval, not per event


class Redis(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """The ``Redis`` configuration singleton *(new)*: counters and bans shared by a cluster.

    Mirrors ``stalwart.config.model._Object`` instead of importing it (model.py imports this, so this
    module imports nothing from ``stalwart.config``)."""

    url: str | None = None  # redis://[user:password@]host:port/db, rediss://…, unix:///path; None: off
    key_prefix: str = "stalwart:"
    timeout: Annotated[int, Meta(ge=1, le=60000)] = 1000  # ms per command

    set_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.url is not None and urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("$.Redis.url", f"{self.url!r} is not a redis://, rediss:// or unix:// URL")


def _node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class _Throttled:
    """Log a failing Redis once per interval."""

    def __init__(self) -> None:
        self.next_log = 0.0

    def error(self, where: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now >= self.next_log:
            self.next_log = now + ERROR_LOG_INTERVAL
            events.emit("security.cluster-error", level="warn", Details=where, Reason=f"{type(exc).__name__}: {exc}")


class ClusterCounter:
    """Worker side: the shared sliding-window count of one key, asynchronously."""

    def __init__(self, cfg: Redis):
        self.cfg = cfg
        self.prefix = cfg.key_prefix
        self._client = None
        self._seq = 0
        self._node = _node_id()
        self._log = _Throttled()

    def _redis(self):
        if self._client is None:
            import redis.asyncio as aioredis

            t = int(self.cfg.timeout) / 1000.0
            self._client = aioredis.Redis.from_url(self.cfg.url, socket_timeout=t, socket_connect_timeout=t)
        return self._client

    def count(self, key: bytes, period_ms: int, limit: int, on_over) -> None:
        """Add one event for ``key``; call ``on_over()`` on this loop if the cluster-wide count
        inside ``period_ms`` exceeds ``limit``."""
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.create_task(self._count(key, period_ms, limit, on_over))

    async def _count(self, key: bytes, period_ms: int, limit: int, on_over) -> None:
        now = int(time.time() * 1000)
        self._seq += 1
        rkey = f"{self.prefix}c:{key.hex()}"
        try:
            pipe = self._redis().pipeline(transaction=True)
            pipe.zremrangebyscore(rkey, "-inf", now - period_ms)
            pipe.zadd(rkey, {f"{now}:{self._node}:{self._seq}": now})
            pipe.zcard(rkey)
            pipe.pexpire(rkey, period_ms)
            _, _, n, _ = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - fail open: the local counter still decides
            self._log.error("counter", exc)
            return
        if n > limit:
            on_over()


class ClusterLink:
    """Master side: publish this node's bans and lifts, apply the other nodes'."""

    def __init__(self, cfg: Redis, shared: Any):
        self.cfg = cfg
        self.shared = shared
        self.channel = f"{cfg.key_prefix}bans"
        self.node = _node_id()
        self._client = None
        self._pubsub = None
        self._retry_at = 0.0
        self._log = _Throttled()

    def _connect(self) -> bool:
        if self._pubsub is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            import redis

            t = int(self.cfg.timeout) / 1000.0
            self._client = redis.Redis.from_url(self.cfg.url, socket_timeout=t, socket_connect_timeout=t)
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
            self._pubsub = pubsub
            return True
        except Exception as exc:  # noqa: BLE001 - retried later; local auto-ban keeps working
            self._fail("connect", exc)
            return False

    def _fail(self, where: str, exc: BaseException) -> None:
        self._log.error(where, exc)
        self._retry_at = time.monotonic() + RECONNECT_INTERVAL
        try:
            if self._pubsub is not None:
                self._pubsub.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        self._pubsub = None

    def publish(self, op: str, address: str, expires: int = 0, reason: str = "") -> None:
        if not self._connect():
            return
        msg = json.dumps({"node": self.node, "op": op, "address": address, "expires": expires, "reason": reason})
        try:
            self._client.publish(self.channel, msg)
        except Exception as exc:  # noqa: BLE001
            self._fail("publish", exc)

    def poll(self, store: AccessStore, max_messages: int = 1000) -> int:
        """Apply what the other nodes published; returns how many changes were applied."""
        if not self._connect():
            return 0
        applied = 0
        try:
            for _ in range(max_messages):
                message = self._pubsub.get_message(timeout=0)
                if message is None:
                    break
                if message.get("type") == "message":
                    applied += self._apply(message.get("data"), store)
        except Exception as exc:  # noqa: BLE001
            self._fail("subscribe", exc)
        return applied

    def _apply(self, data: Any, store: AccessStore) -> int:
        from .autoban import REASON_CODE

        try:
            msg = json.loads(data)
            if msg.get("node") == self.node:
                return 0
            net = ipaddress.ip_network(str(msg["address"]), strict=False)
            op = msg.get("op")
            now = int(time.time())
            if op == "ban":
                reason = msg.get("reason")
                expires = int(msg.get("expires") or 0)
                if reason not in REASON_CODE or (expires and expires <= now):
                    return 0
                # Written here and marked persisted, so this node does not publish it back.
                store.add("blocked", str(msg["address"]), reason, expires or None)
                self.shared.bans.ban(net.network_address.packed, net.prefixlen, expires, REASON_CODE[reason], now, True)
                return 1
            if op == "unban":
                lifted = self.shared.bans.unban(net.network_address.packed, net.prefixlen, now)
                return int(store.remove("blocked", str(msg["address"])) or lifted)
        except (ValueError, KeyError, TypeError) as exc:
            self._log.error("message", exc)
        return 0

    def close(self) -> None:
        for obj in (self._pubsub, self._client):
            try:
                if obj is not None:
                    obj.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
