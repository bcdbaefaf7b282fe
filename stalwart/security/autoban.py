"""Auto-ban: the four abuse categories over shared counters and a shared ban table (security.md §3-§5, §8).

Sessions report what happened as events; this layer subscribes (``stalwart.events.subscribe``) and
decides, so a session never reaches into the ban table (STYLE.md). Per worker, :class:`AutoBan`
maps each event to its category, skips allowed addresses and trusted-proxy hops, counts the
attributed address masked to ``ipv4BanPrefix``/``ipv6BanPrefix`` in the shared sliding-window
counters, and bans the prefix when the category's rate is exceeded.

A ban, in order:

1. goes into the shared :class:`~stalwart._fast.bantable.BanTable` at once, so every worker refuses
   the prefix's next connection (the driver checks it next to the allow/block lists);
2. closes the prefix's open sessions in this worker at once (the triggering session first writes
   its "on ban" reply where §4 asks for one); other workers see the table's change epoch move in
   their 250 ms sweep and close theirs;
3. is persisted by the master, the only writer of ``access.db``: the table entry carries a
   "persisted" bit, and the master's loop (at most 1 s apart) writes every entry without it as a
   BlockedIp row and sets the bit. Why not a request over the control socket or a pipe: a worker
   would block on, or buffer for, a master that may be busy with a reload, and a worker killed right
   after a ban would lose it; the shared entry is already the durable hand-off, it needs no
   descriptor per worker, and bursts of bans are written in one batch.

The master reloads the persisted bans into the table at start (:meth:`SharedSecurity.load`), so
bans survive restarts; ``stalwart-cli blocked remove`` lifts the table entry as well as the row.

Events consumed (emitted by the driver and the protocol cores, see ``protocols/mailcommon.py``):

=====================================================  ==========  ==================================
event                                                  category    keys used
=====================================================  ==========  ==================================
``auth.failed``, ``security.ip-unauthorized``          auth        SpanId, AccountName, Credential?
``smtp.mailbox-does-not-exist``, ``smtp.relay-not-allowed``  rcpt  SpanId, To
``smtp.time-limit-exceeded``, ``<group>.loitering``    loiter      SpanId
``tls.handshake-error`` Reason ``timeout``             loiter      RemoteIp, RemotePort
``<group>.invalid-command``                            scan        SpanId, Reason
``tls.handshake-error`` Reason ``not-tls``             scan        RemoteIp, RemotePort
``network.proxy-untrusted``                            scan        RemoteIp, RemotePort
``http.invalid-request``                               scan        SpanId
``security.banned-path``                               scan (ban)  RemoteIp, SpanId, Path
=====================================================  ==========  ==================================

``Credential`` (bytes or str, the password/token/SASL response of a failed login) feeds the
stale-password rule (§3); it is removed from the event before the event is logged, and only its
keyed hash is kept.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import mmap
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .. import events
from .._fast import load as load_kernel

if TYPE_CHECKING:
    from ..config import Config
    from ..net.driver import Connection
    from .store import AccessStore

bantable = load_kernel("bantable")
ratecounter = load_kernel("ratecounter")

BAN_CAPACITY = 65536  # bans (32 bytes each: 2 MiB)
COUNTER_CAPACITY = 32768  # counter keys (512 bytes each: 16 MiB, touched only as used)

# BlockReason <-> the table's reason byte
REASONS = ("manual", "other", "authFailure", "rcptToFailure", "loitering", "portScanning")
AUTO_REASONS = ("authFailure", "rcptToFailure", "loitering", "portScanning")
REASON_CODE = {name: i for i, name in enumerate(REASONS)}

AUTH, RCPT, LOITER, SCAN = 1, 2, 3, 4  # counter categories (first key byte)
NS_IP, NS_LOGIN, NS_RCPT = 1, 2, 3  # namespaces (second key byte): a login never meets an address

_CATEGORY = {
    AUTH: ("auth_ban_rate", "auth_ban_period", "authFailure", "security.authentication-ban"),
    RCPT: ("abuse_ban_rate", "abuse_ban_period", "rcptToFailure", "security.abuse-ban"),
    LOITER: ("loiter_ban_rate", "loiter_ban_period", "loitering", "security.loiter-ban"),
    SCAN: ("scan_ban_rate", "scan_ban_period", "portScanning", "security.scan-ban"),
}
THROTTLE_STEPS = (2, 4, 8, 15)  # s: Dovecot's authentication penalty (anvil), capped at 15 s
STALE_HASHES = 10  # distinct failed credentials remembered per address (security.md §3)
STALE_ADDRESSES = 4096  # addresses whose recent credentials a worker remembers (LRU)
GROUPS = ("smtp", "imap", "pop3", "manage-sieve", "http")
PERSIST_INTERVAL = 0.25  # s: the master's loop may spin faster; the ban table scan need not


def mask(packed: bytes, v4_prefix: int, v6_prefix: int) -> tuple[bytes, int]:
    """The ban subject of an address: host bits cleared to the configured prefix."""
    prefix = v4_prefix if len(packed) == 4 else v6_prefix
    bits = len(packed) * 8
    value = int.from_bytes(packed, "big") >> (bits - prefix) << (bits - prefix) if prefix else 0
    return value.to_bytes(len(packed), "big"), prefix


def subject_text(packed: bytes, prefix: int) -> str:
    """``192.0.2.7`` for a full-length prefix, else ``2001:db8:1:2::/64`` (the IpMask normal form)."""
    addr = ipaddress.ip_address(packed)
    return str(addr) if prefix == len(packed) * 8 else f"{addr}/{prefix}"


def pack(text: str) -> bytes | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except (ValueError, AttributeError):
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.packed


class SharedSecurity:
    """The shared-memory tables and the stale-password key, created by the master before it forks
    (like the connection table) and inherited by every worker of every generation."""

    def __init__(self, ban_capacity: int = BAN_CAPACITY, counter_capacity: int = COUNTER_CAPACITY):
        self._ban_buf = mmap.mmap(-1, bantable.size_for(ban_capacity), flags=mmap.MAP_SHARED)
        self._counter_buf = mmap.mmap(-1, ratecounter.size_for(counter_capacity), flags=mmap.MAP_SHARED)
        self.bans = bantable.BanTable(self._ban_buf, ban_capacity)
        self.counters = ratecounter.RateCounter(self._counter_buf, counter_capacity)
        # security.md §3: HMAC-SHA-256 key for credential hashes, random per master start.
        self.credential_key = os.urandom(32)
        self._evictions = 0
        self._next_persist = 0.0
        self.cluster = None  # ClusterLink when the Redis object has a url

    def join_cluster(self, cfg: Any) -> None:
        """Share bans with the other nodes through Redis (master side; see ``cluster.py``)."""
        if cfg is not None and cfg.url:
            from .cluster import ClusterLink

            self.cluster = ClusterLink(cfg, self)

    # -- master side -------------------------------------------------------------------------
    def load(self, store: AccessStore, now: float | None = None) -> int:
        """Put the persisted, unexpired auto-bans of ``store`` into the table (start-up)."""
        now_s = int(time.time() if now is None else now)
        loaded = 0
        for entry in store.entries("blocked"):
            if entry.reason not in AUTO_REASONS or entry.expired(now_s):
                continue
            net = ipaddress.ip_network(entry.address, strict=False)
            self.bans.ban(net.network_address.packed, net.prefixlen, entry.expires_at or 0,
                          REASON_CODE[entry.reason], now_s, True)
            loaded += 1
        return loaded

    def persist(self, store: AccessStore, now: float | None = None) -> int:
        """Write every ban not yet persisted as a BlockedIp row (upsert); returns how many."""
        if now is None:
            mono = time.monotonic()
            if mono < self._next_persist:
                return 0
            self._next_persist = mono + PERSIST_INTERVAL
        now_s = int(time.time() if now is None else now)
        written = 0
        for index, packed, prefix, expires, reason, _persisted, state in self.bans.entries(now_s, True):
            name = REASONS[reason] if reason < len(REASONS) else "other"
            text = subject_text(packed, prefix)
            store.add("blocked", text, name, expires or None)
            self.bans.mark_persisted(index, state)
            written += 1
            if self.cluster is not None:
                self.cluster.publish("ban", text, expires, name)
        if self.cluster is not None:
            written += self.cluster.poll(store)
        evictions = self.counters.evictions()
        if evictions != self._evictions:
            events.emit("security.rate-counter-evicted", level="warn",
                        Details=f"{evictions - self._evictions} counters evicted: the table is full",
                        Limit=self.counters.capacity)
            self._evictions = evictions
        return written

    def unban(self, address: str, now: float | None = None) -> bool:
        """Lift the table entry of ``address`` (``stalwart-cli blocked remove``)."""
        try:
            net = ipaddress.ip_network(address, strict=False)
        except ValueError:
            return False
        if self.cluster is not None:
            self.cluster.publish("unban", str(net))
        return self.bans.unban(net.network_address.packed, net.prefixlen, int(time.time() if now is None else now))


class AutoBan:
    """One worker's auto-ban layer: event subscriptions, counting, banning, closing sessions."""

    def __init__(self, worker: Any, shared: SharedSecurity, cfg: Config):
        self.worker = worker
        self.shared = shared
        self.bans = shared.bans
        self.counters = shared.counters
        sec = cfg.Security
        self.v4_prefix = sec.ipv4_ban_prefix
        self.v6_prefix = sec.ipv6_ban_prefix
        # category -> (count, period ms, ban period ms or None, reason, ban event), None: disabled
        self.rules: dict[int, tuple[int, int, int | None, str, str] | None] = {}
        for cat, (rate_f, period_f, reason, event) in _CATEGORY.items():
            rate = getattr(sec, rate_f)
            period = getattr(sec, period_f)
            self.rules[cat] = None if rate is None else (
                int(rate.count), max(1, int(rate.period)), None if period is None else int(period), reason, event)
        self._stale: OrderedDict[bytes, list[tuple[bytes, float]]] = OrderedDict()
        self._epoch = self.bans.epoch()
        self._handlers = self._subscriptions()
        redis_cfg = getattr(cfg, "Redis", None)
        self.cluster = None
        if redis_cfg is not None and redis_cfg.url:
            from .cluster import ClusterCounter

            self.cluster = ClusterCounter(redis_cfg)

    # -- wiring ------------------------------------------------------------------------------
    def _subscriptions(self) -> dict[str, Any]:
        handlers: dict[str, Any] = {
            "auth.failed": self._on_auth,
            "security.ip-unauthorized": self._on_auth,
            "smtp.mailbox-does-not-exist": self._on_rcpt,
            "smtp.relay-not-allowed": self._on_rcpt,
            "smtp.time-limit-exceeded": self._on_loiter,
            "tls.handshake-error": self._on_tls_error,
            "network.proxy-untrusted": self._on_untrusted_proxy,
            "http.invalid-request": self._on_scan,
            "security.banned-path": self._on_banned_path,
        }
        for group in GROUPS:
            handlers[f"{group}.loitering"] = self._on_loiter
            handlers[f"{group}.invalid-command"] = self._on_scan
        return handlers

    def subscribe(self) -> None:
        for event, handler in self._handlers.items():
            events.subscribe(event, handler)

    def unsubscribe(self) -> None:
        log = events.log()
        for event, handler in self._handlers.items():
            log.unsubscribe(event, handler)

    # -- checks used by the driver -----------------------------------------------------------
    def is_banned(self, packed: bytes) -> bool:
        """The attributed address is in a live ban and not on the allow list (which always wins)."""
        if self.bans.lookup(packed, int(time.time())) < 0:
            return False
        return not self.worker.access.is_allowed(packed)

    def sweep(self) -> None:
        """From the worker's 250 ms sweep: a ban raised elsewhere closes this worker's sessions."""
        epoch = self.bans.epoch()
        if epoch != self._epoch:
            self._epoch = epoch
            self._close_banned(None)

    # -- resolving the attributed address ----------------------------------------------------
    def _by_span(self, span: Any) -> Connection | None:
        # The driver keeps this index as connections take and release their slot: O(1) per event,
        # so a flood of bad commands cannot make every event scan every session.
        return self.worker.spans.get(span)

    def _subject(self, conn: Connection | None, ip: Any = None) -> bytes | None:
        """Packed attributed address to count, or None when it must not be counted."""
        if conn is not None:
            if conn.exempt:
                return None  # a trusted proxy speaking for itself (security.md §2)
            packed = conn.packed
        else:
            packed = pack(ip) if isinstance(ip, str) else None
            if packed is None:
                return None
        if self.worker.access.is_allowed(packed):
            return None
        return packed

    # -- categories --------------------------------------------------------------------------
    def _count(self, cat: int, packed: bytes, conn: Connection | None, keys: dict, **ban_keys: Any) -> bool:
        """Count one event against the address prefix; ban when over. True when banned."""
        rule = self.rules[cat]
        if rule is None:
            return False
        count, period, *_ = rule
        masked, prefix = mask(packed, self.v4_prefix, self.v6_prefix)
        key = bytes((cat, NS_IP, prefix)) + masked
        n = self.counters.hit(key, _mono_ms(), period)
        if n > count:
            self._ban(cat, packed, conn, keys, **ban_keys)
            return True
        if self.cluster is not None:
            # The cluster-wide window decides a moment later; a ban then is the same ban.
            def over() -> None:
                if self.bans.lookup(packed, int(time.time())) < 0:
                    self._ban(cat, packed, conn, keys, **ban_keys)

            self.cluster.count(key, period, count, over)
        return False

    def _on_auth(self, _event: str, keys: dict) -> None:
        credential = keys.pop("Credential", None)  # never logged, never stored in clear
        rule = self.rules[AUTH]
        if rule is None:
            return
        conn = self._by_span(keys.get("SpanId"))
        packed = self._subject(conn, keys.get("RemoteIp"))
        if packed is None:
            return
        login = str(keys.get("AccountName") or "").strip().lower()
        if credential is not None and self._stale_credential(packed, login, credential, rule[1]):
            return  # a client stuck on a stale password does not ban itself (security.md §3)
        if self._count(AUTH, packed, conn, keys, AccountName=login):
            return
        if login:
            self._throttle(AUTH, NS_LOGIN, login, conn, keys, "security.login-throttled", AccountName=login)

    def _on_rcpt(self, _event: str, keys: dict) -> None:
        if self.rules[RCPT] is None:
            return
        conn = self._by_span(keys.get("SpanId"))
        packed = self._subject(conn, keys.get("RemoteIp"))
        if packed is None:
            return
        rcpt = str(keys.get("To") or "").strip().lower()
        if self._count(RCPT, packed, conn, keys, To=rcpt):
            return
        if rcpt:
            self._throttle(RCPT, NS_RCPT, rcpt, conn, keys, "security.recipient-throttled", To=rcpt)

    def _on_loiter(self, _event: str, keys: dict) -> None:
        if self.rules[LOITER] is None:
            return
        conn = self._by_span(keys.get("SpanId"))
        packed = self._subject(conn, keys.get("RemoteIp"))
        if packed is not None:
            self._count(LOITER, packed, conn, keys)

    def _on_scan(self, event: str, keys: dict) -> None:
        if self.rules[SCAN] is None:
            return
        conn = self._by_span(keys.get("SpanId"))
        packed = self._subject(conn, keys.get("RemoteIp"))
        if packed is not None:
            self._count(SCAN, packed, conn, keys, Reason=keys.get("Reason") or _scan_reason(event))

    def _on_tls_error(self, _event: str, keys: dict) -> None:
        reason = keys.get("Reason")
        if reason == "timeout":
            cat = LOITER  # a handshake never finished within tlsTimeout (security.md §4)
        elif reason == "not-tls":
            cat = SCAN  # TLS garbage; client alerts and version/cipher mismatches are not counted
        else:
            return
        if self.rules[cat] is None:
            return
        conn = self._by_span(keys.get("SpanId"))
        packed = self._subject(conn, keys.get("RemoteIp"))
        if packed is not None:
            self._count(cat, packed, conn, keys, **({"Reason": "Invalid TLS handshake"} if cat == SCAN else {}))

    def _on_untrusted_proxy(self, _event: str, keys: dict) -> None:
        if self.rules[SCAN] is None:
            return
        conn = self._by_span(keys.get("SpanId"))
        packed = self._subject(conn, keys.get("RemoteIp"))
        if packed is not None:
            self._count(SCAN, packed, conn, keys, Reason="Untrusted PROXY header")

    def _on_banned_path(self, _event: str, keys: dict) -> None:
        """security.md §6: a ``scanBanPaths`` match bans the request's client address at once,
        with no counter. The emitter already skipped allowed addresses and trusted-proxy hops."""
        packed = pack(keys.get("RemoteIp"))
        if packed is None or self.worker.access.is_allowed(packed):
            return
        conn = self._by_span(keys.get("SpanId"))
        if conn is not None and conn.packed != packed:
            conn = None  # a forwarded client behind a proxy: never close the proxy's connection
        self._ban(SCAN, packed, conn, keys, Path=keys.get("Path", ""))

    # -- login and recipient throttling, stale passwords ---------------------------------------
    def _throttle(self, cat: int, ns: int, subject: str, conn: Connection | None, keys: dict, event: str,
                  **event_keys: Any) -> None:
        """security.md §3: a login or recipient over its limit is delayed, never banned. The delay
        for the session's next failure reply goes into its context as ``failure_delay`` seconds."""
        count, period, *_ = self.rules[cat]
        n = self.counters.hit(bytes((cat, ns)) + subject.encode("utf-8", "surrogateescape"), _mono_ms(), period)
        if n <= count:
            return
        delay = THROTTLE_STEPS[min(n - count - 1, len(THROTTLE_STEPS) - 1)]
        if conn is not None and conn.core is not None:
            conn.core.ctx.extra["failure_delay"] = delay
        events.emit(event, SpanId=keys.get("SpanId", 0), RemoteIp=keys.get("RemoteIp", ""), **event_keys)

    def _stale_credential(self, packed: bytes, login: str, credential: Any, period_ms: int) -> bool:
        """True when this address already failed with this very login and credential within the
        auth period: the repeat is not counted again (after Dovecot's authentication penalty)."""
        if isinstance(credential, str):
            credential = credential.encode("utf-8", "surrogateescape")
        elif not isinstance(credential, (bytes, bytearray)):
            credential = str(getattr(credential, "value", credential)).encode("utf-8", "surrogateescape")
        digest = hmac.new(self.shared.credential_key, login.encode("utf-8", "surrogateescape") + b"\0" + credential,
                          hashlib.sha256).digest()[:8]
        now = time.monotonic()
        seen = self._stale.get(packed)
        if seen is None:
            seen = self._stale[packed] = []
            if len(self._stale) > STALE_ADDRESSES:
                self._stale.popitem(last=False)
        else:
            self._stale.move_to_end(packed)
        fresh = [(h, t) for h, t in seen if now - t < period_ms / 1000.0]
        repeated = any(h == digest for h, _ in fresh)
        if not repeated:
            fresh.append((digest, now))
            del fresh[:-STALE_HASHES]
        self._stale[packed] = fresh
        return repeated

    # -- banning -----------------------------------------------------------------------------
    def _ban(self, cat: int, packed: bytes, conn: Connection | None, keys: dict, **event_keys: Any) -> None:
        _count, _period, ban_period, reason, event = self.rules[cat] or (0, 0, None, *_CATEGORY[cat][2:])
        now = time.time()
        # security.md §1: expiresAt is rounded up to the next whole second.
        expires = 0 if ban_period is None else math.ceil(now + ban_period / 1000.0)
        masked, prefix = mask(packed, self.v4_prefix, self.v6_prefix)
        rc = self.bans.ban(masked, prefix, expires, REASON_CODE[reason], int(now))
        banned = subject_text(masked, prefix)
        if rc & bantable.FULL:
            events.emit("security.ban-table-full", level="error", RemoteIp=banned, Limit=self.bans.capacity)
        elif rc & bantable.EVICTED:
            ev = self.bans.last_evicted
            events.emit("security.ban-evicted", level="warn", Limit=self.bans.capacity,
                        Details=f"{subject_text(ev[0], ev[1])} made room for {banned}" if ev else banned)
        span = keys.get("SpanId", conn.span if conn is not None else 0)
        events.emit(event, SpanId=span, RemoteIp=keys.get("RemoteIp") or _ip_text(packed), **event_keys,
                    Details=f"banned {banned}" + (f" until {int(expires)}" if expires else ""))
        if conn is not None:
            events.emit("network.closed", SpanId=conn.span, Reason="Address banned")
            http = getattr(conn.core, "event_group", "") == "http"
            if (cat == SCAN and not keys.get("Path")) or (cat == AUTH and not http):
                conn.abort()  # §4: close, no reply
            else:
                # §4: the 550 / 421 / 403 / 429 of the triggering request is written first.
                self.worker.loop.call_soon(conn.close)
        self._epoch = self.bans.epoch()
        self._close_banned(conn)

    def _close_banned(self, trigger: Connection | None) -> None:
        """§5: open sessions whose attributed address is in a banned range are closed, nothing
        more written; addresses on the allow list are unaffected."""
        now = int(time.time())
        lookup, allowed = self.bans.lookup, self.worker.access.is_allowed
        for conn in list(self.worker.sessions):
            if conn is trigger or conn.exempt or getattr(conn, "_closing", False):
                continue
            if lookup(conn.packed, now) >= 0 and not allowed(conn.packed):
                events.emit("network.closed", SpanId=conn.span, Reason="Address banned")
                conn.abort()


def _mono_ms() -> int:
    # CLOCK_MONOTONIC is system-wide on Linux, so every worker counts on the same clock.
    return int(time.monotonic() * 1000)


def _ip_text(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def _scan_reason(event: str) -> str:
    group = event.partition(".")[0]
    return {"smtp": "Invalid SMTP command", "imap": "Invalid IMAP command", "pop3": "Invalid POP3 command",
            "manage-sieve": "Invalid ManageSieve command", "http": "Invalid HTTP request"}.get(group, "Invalid command")
