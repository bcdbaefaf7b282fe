"""A worker process: one event loop that accepts on every listener of its generation.

Life cycle, driven by signals from the master (network.md §1, §8, §9):

* boot: register every listening socket, report ``R`` (ready) on the status pipe;
* ``SIGUSR2`` (retire, on reload): stop accepting, report ``S``, let sessions finish on their own
  for ``drain_timeout``, then drain them as on shutdown;
* ``SIGTERM`` (shutdown): stop accepting, farewell line to every session at its next safe point,
  close what is left after ``drain_timeout``; a second SIGTERM closes everything at once;
* ``SIGQUIT``: exit at once.

Workers ignore SIGHUP and SIGINT: a ``kill -HUP`` or a Ctrl-C sent to the whole process group reaches
the master, which decides.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import ssl

from .. import events
from .._fast import load as load_kernel
from ..net.driver import Connection
from ..protocols import session_factory
from ..protocols.http.metrics import MetricsTable
from ..security.access import AccessLists, load_runtime
from ..services.cache import sweep_expired
from ..services.cache.registry import CacheRegistry
from ..services.dns import build_resolver
from ..services.geo.config import AsnDisabled
from ..services.geo.service import GeoService
from ..security.autoban import AutoBan, SharedSecurity
from ..services.acme.alpn import tls_alpn_responder
from .plan import GenerationPlan, ListenerPlan

ipset = load_kernel("ipset")
ACCESS_EPOCH = 0  # epoch slots in the shared table: allow/block lists,
CERT_EPOCH = 1  # and `stalwart-cli reload-certificates`
SWEEP_INTERVAL = 0.25  # s: list changes reach every worker well within the 1 s the spec allows
CERT_CHECK_INTERVAL = 60.0  # s

EXIT_BOOT_ERROR = 3
IO_THREADS = 8  # concurrent fsyncs share journal commits and directory fsyncs (group commit)


class ListenerRuntime:
    """A listener as one worker sees it: limits, TLS mode and its session constructor."""

    __slots__ = ("name", "index", "cfg", "protocol", "limit", "implicit_tls", "starttls", "tls_timeout",
                 "factory", "sockets", "trust", "proxy_optional", "acme_alpn", "ptr_lookup")

    def __init__(self, plan: ListenerPlan, gen: GenerationPlan):
        cfg = plan.cfg
        self.name = plan.name
        self.index = plan.index
        self.cfg = cfg
        self.protocol = cfg.protocol
        self.limit = cfg.max_connections or 0  # 0: no cap of its own (network.md §7)
        self.implicit_tls = cfg.use_tls and cfg.tls_implicit
        self.starttls = cfg.use_tls and not cfg.tls_implicit and cfg.protocol != "http"
        self.tls_timeout = cfg.effective_tls_timeout / 1000.0
        self.factory = session_factory(cfg.protocol, gen.config, data_dir=gen.extra.get("data_dir"), listener=cfg)
        self.sockets = plan.sockets
        # The effective trust list: the listener's override replaces the system list (no merge).
        networks = cfg.override_proxy_trusted_networks or gen.config.SystemSettings.proxy_trusted_networks
        self.trust = None
        if networks:
            self.trust = ipset.IpSet()
            for net in networks:
                self.trust.add_text(str(net))
        self.proxy_optional = cfg.protocol == "http" and gen.config.Http.use_x_forwarded
        # SMTP puts the client's forward-confirmed PTR in Received: (services.md §3); LMTP peers are local.
        self.ptr_lookup = cfg.protocol == "smtp"
        # TLS-ALPN-01 (tls.md §7.5): implicit-TLS HTTP listeners answer acme-tls/1 ClientHellos.
        self.acme_alpn = tls_alpn_responder(gen.config, cfg, gen.extra.get("data_dir"))


class Worker:
    def __init__(self, plan: GenerationPlan, slot: int, position: int, table, status_fd: int,
                 drain_timeout: float = 30.0):
        self.plan = plan
        self.slot = slot
        self.position = position
        self.table = table
        self.status_fd = status_fd
        self.drain_timeout = drain_timeout
        self.hostname = plan.hostname
        self.server_limit = plan.config.SystemSettings.max_connections
        self.listeners = [ListenerRuntime(lp, plan) for lp in plan.listeners]
        self.sessions: set[Connection] = set()
        self.spans: dict[int, Connection] = {}  # SpanId -> connection, for the security layer
        self.access_path = plan.extra.get("access_db")
        self.access = self._load_access()
        # Per-worker result caches sized by the Cache object, and the DNS resolver on top of them
        # (services.md): built here, after fork, so no cache or socket is shared by accident.
        self.caches = CacheRegistry(plan.config.Cache)
        self.dns = build_resolver(plan.config, self.caches)
        # ASN and country of each client (services.md §3), from the tables the master maps into the
        # data directory; None when the Asn object is Disabled.
        self.geo = None
        if not isinstance(plan.config.Asn, AsnDisabled) and plan.extra.get("data_dir"):
            self.geo = GeoService.for_config(plan.config, plan.extra["data_dir"], self.caches)
        # Auto-ban consumes the sessions' security events (security.md §4); the tables are the
        # master's shared ones (a private pair when a worker is built without a master).
        self.autoban = AutoBan(self, plan.extra.get("security") or SharedSecurity(8, 16), plan.config)
        self.autoban.subscribe()
        table = plan.extra.get("metrics") or MetricsTable(max(8, max((lr.index for lr in self.listeners), default=0) + 1),
                                                           slot + 1)
        self.metrics = table.recorder(slot, {lr.name: lr.index for lr in self.listeners})
        self.metrics.subscribe()
        self.log = events.log()
        self.trace_sessions = self.log.enabled("smtp.connection-start")
        self.loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._span = 0
        self._stop: asyncio.Event | None = None
        self._mode: str | None = None  # "retire" | "shutdown"
        self._sessions_empty: asyncio.Event | None = None
        self._shutdown_signals = 0

    # -- entry point (runs in the child after fork) -------------------------------------------
    def run(self) -> int:
        try:
            self.loop = _new_loop()
            asyncio.set_event_loop(self.loop)
            return self.loop.run_until_complete(self._main())
        except BaseException as exc:  # the master must hear why a worker could not boot
            if not self._ready_sent:
                self._report(f"E {type(exc).__name__}: {exc}".replace("\n", " "))
                return EXIT_BOOT_ERROR
            raise

    _ready_sent = False

    def _report(self, msg: str) -> None:
        try:
            os.write(self.status_fd, (msg + "\n").encode())
        except OSError:
            pass

    async def _main(self) -> int:
        loop = self.loop
        self.ssl_protocol_class = _ssl_protocol_class(loop)
        # Blocking work of session cores (driver): disk I/O and password hashing in separate pools.
        self.executors = {
            "io": concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="io"),
            "cpu": concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="cpu"),
        }
        if self.plan.extra.get("data_dir"):
            # Deliveries of whole messages: C threads, no GIL handoff per syscall (mailstore/committer.py).
            from ..mailstore import committer

            committer.install(committer.Committer(loop, self.executors["io"], IO_THREADS))
        self._stop = asyncio.Event()
        self._sessions_empty = asyncio.Event()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen)
        loop.add_signal_handler(signal.SIGUSR2, self._on_retire)
        loop.add_signal_handler(signal.SIGTERM, self._on_shutdown)
        loop.add_signal_handler(signal.SIGQUIT, self._on_quit)
        for lr in self.listeners:
            backlog = lr.cfg.socket_backlog or 1024
            for sock in lr.sockets:
                # create_server() calls listen() again: pass the configured backlog so the
                # master's value is not silently replaced by asyncio's default of 100.
                server = await loop.create_server(lambda lr=lr: Connection(self, lr), sock=sock, backlog=backlog)
                self._servers.append(server)
                host, port = sock.getsockname()[:2]
                events.emit("network.listen-start", level="debug" if self.position > 1 else "info",
                            ListenerId=lr.name, LocalIp=host, LocalPort=port, Tls=lr.implicit_tls)
        self.table.beat(self.slot)
        self._report("R")
        self._ready_sent = True
        sweeper = loop.create_task(self._sweep())
        if self.plan.extra.get("data_dir"):
            # Spool files of a killed worker (mailstore/spool.py): removed once they are a day old.
            from ..mailstore.spool import sweep as sweep_spool

            loop.run_in_executor(self.executors["io"], sweep_spool, os.path.join(self.plan.extra["data_dir"], "spool"))
        expiry = loop.create_task(sweep_expired(self.caches.caches))
        renewer = loop.create_task(self._renew_licence()) if self.position == 1 else None
        await self._stop.wait()
        await self._drain()
        from ..mailstore import committer

        last = committer.install(None)
        if last is not None:
            last.close()  # deliveries still queued are finished, not dropped
        sweeper.cancel()
        expiry.cancel()
        if renewer is not None:
            renewer.cancel()
        return 0

    async def _renew_licence(self) -> None:
        """services.md §6.4: one worker per generation renews; every process reads the renewed key
        from <data-dir>/license.key. Returns at once when no Enterprise.apiKey is set."""
        from ..services.license import EnterpriseState, LicenseRenewer

        cfg = self.plan.config
        state = EnterpriseState.load(cfg.Enterprise, self.hostname, self.plan.extra.get("data_dir"),
                                     account_count=len(cfg.Account))
        await LicenseRenewer(state).run()

    # -- signals -----------------------------------------------------------------------------
    def _stop_accepting(self) -> None:
        for server in self._servers:
            server.close()  # closes this process's copy of the socket; the master keeps it open
        self._servers.clear()

    def _on_retire(self) -> None:
        if self._mode is None:
            self._mode = "retire"
            self._stop_accepting()
            self._report("S")
            self._stop.set()

    def _on_shutdown(self) -> None:
        self._shutdown_signals += 1
        if self._shutdown_signals > 1:
            self._on_quit()
            return
        already = self._mode is not None
        self._mode = "shutdown"
        self._stop_accepting()
        if not already:
            self._report("S")
            self._stop.set()
        for conn in list(self.sessions):
            conn.shutdown()

    def _on_quit(self) -> None:
        for conn in list(self.sessions):
            conn.abort()
        os._exit(0)

    # -- housekeeping --------------------------------------------------------------------------
    def next_span(self) -> int:
        # Unique across workers: the worker slot in the high bits (snowflake-like).
        self._span += 1
        return (self.slot << 40) | self._span

    def session_closed(self) -> None:
        if not self.sessions and self._sessions_empty is not None:
            self._sessions_empty.set()

    def _load_access(self) -> AccessLists:
        epoch = self.table.epoch(ACCESS_EPOCH)
        runtime = load_runtime(self.access_path) if self.access_path else []
        return AccessLists.build(self.plan.config, runtime, epoch)

    def _refresh_access(self) -> None:
        """The master changed the lists: rebuild, then close sessions that are now blocked."""
        try:
            self.access = self._load_access()
        except Exception as exc:  # noqa: BLE001 - keep the last good lists, say why
            events.emit("security.access-reload-error", level="error", Reason=str(exc))
            return
        access = self.access
        for conn in list(self.sessions):
            if not conn.exempt and access.is_blocked(conn.packed):
                events.emit("network.closed", SpanId=conn.span, Reason="address blocked")
                conn.abort()

    def tls_context(self, lr: ListenerRuntime, hello=None) -> ssl.SSLContext | None:
        """The context for a handshake on ``lr``; ``hello`` is the peeked ClientHello (SNI, ALPN)
        when the listener is implicit TLS, None for STARTTLS."""
        if hello is not None and lr.acme_alpn is not None and lr.acme_alpn.wants(hello):
            # An ALPN list of exactly ["acme-tls/1"]: the validation certificate for the SNI, or no
            # handshake at all when nothing is pending for it (tls.md §7.5: handshake failure).
            ctx = lr.acme_alpn.context_for(hello)
            if ctx is None:
                events.emit("acme.tls-alpn-error", ListenerId=lr.name, Hostname=hello.sni or "",
                            Reason="no pending TLS-ALPN-01 challenge for this name")
            return ctx
        store = self.plan.tls
        return store.context_for(lr.name) if store is not None else None

    async def _sweep(self) -> None:
        """Every 250 ms: heartbeat, allow/block list changes, idle timeouts."""
        loop = self.loop
        master = os.getppid()
        # tls.md §5: certificate files and variables are re-read at least once a minute. Workers
        # are staggered so they do not all pause for the rebuild at the same moment.
        next_cert_check = loop.time() + CERT_CHECK_INTERVAL * (1 + (self.position % 4) / 4)
        cert_epoch = self.table.epoch(CERT_EPOCH)
        while True:
            if os.getppid() != master and self._mode is None:
                # The master is gone (killed -9?): nobody supervises us; drain and exit.
                self._on_shutdown()
            self.table.beat(self.slot)
            if self.table.epoch(ACCESS_EPOCH) != self.access.epoch:
                self._refresh_access()
            self.autoban.sweep()
            now = loop.time()
            for conn in [c for c in self.sessions if c.idle_deadline() <= now]:
                conn.timed_out()
            if self.table.epoch(CERT_EPOCH) != cert_epoch and self.plan.tls is not None:
                cert_epoch = self.table.epoch(CERT_EPOCH)
                self._check_certificates(force=True)
            elif now >= next_cert_check and self.plan.tls is not None:
                next_cert_check = now + CERT_CHECK_INTERVAL
                self._check_certificates()
            await asyncio.sleep(SWEEP_INTERVAL)

    def _check_certificates(self, force: bool = False) -> None:
        """Re-read certificate sources; ``force`` rebuilds even when nothing seems to have changed."""
        try:
            store = self.plan.tls
            if force:
                store.rebuild(store.generation.config)
                changed = True
            else:
                changed = store.reload_if_changed()
            if changed:
                events.emit("tls.certificates-reloaded", level="debug" if self.position > 1 else "info",
                            Details=f"generation {self.plan.tls.generation.number}")
        except Exception as exc:  # noqa: BLE001 - keep serving the certificates we have
            events.emit("tls.certificates-reload-error", level="error", Reason=str(exc))

    async def _drain(self) -> None:
        if self._mode == "retire" and self.sessions:
            # Reload: open sessions may finish on their own first (network.md §9 step 4).
            self._sessions_empty.clear()
            try:
                await asyncio.wait_for(self._sessions_empty.wait(), self.drain_timeout)
            except asyncio.TimeoutError:
                pass
        if self.sessions:
            for conn in list(self.sessions):
                conn.shutdown()
            self._sessions_empty.clear()
            if self.sessions:
                try:
                    await asyncio.wait_for(self._sessions_empty.wait(), self.drain_timeout)
                except asyncio.TimeoutError:
                    for conn in list(self.sessions):
                        conn.force_close()
        # Let the transports flush their last lines.
        for _ in range(50):
            if not self.sessions:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0)


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> type:
    """The TLS protocol layer of this loop implementation (what ``loop.start_tls`` uses inside).

    The driver installs it synchronously (see ``Connection._begin_tls``); both asyncio's and
    uvloop's take the same constructor arguments.
    """
    if type(loop).__module__.startswith("uvloop"):
        from uvloop.loop import SSLProtocol
    else:
        from asyncio.sslproto import SSLProtocol
    return SSLProtocol


def _new_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get("STALWART_NO_UVLOOP", "") in ("", "0"):
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()
