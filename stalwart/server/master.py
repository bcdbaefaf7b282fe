"""The master (arbiter): binds, forks, supervises, reloads. It never serves a client.

Modelled on gunicorn's arbiter with its known faults fixed (anchors.md §1): signal handlers only
enqueue; the loop handles one signal at a time; liveness is a shared-memory heartbeat (no temp
files); a reload starts the new generation and waits for it to be ready before the old one stops
accepting, and the listening sockets stay open in the master throughout, so nothing queued on
them is ever reset.
"""
from __future__ import annotations

import collections
import grp
import mmap
import os
import pwd
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from setproctitle import setproctitle

from .. import config as config_mod
from .. import events
from .._fast import load as load_kernel
from ..config import Config
from ..errors import BindError, ConfigError, ControlError, StalwartError
from ..privileges import switch_to
from ..protocols.http.metrics import MetricsTable
from ..security.admin import AccessAdmin
from ..security.autoban import SharedSecurity
from ..security.store import KINDS, AccessStore
from ..services.acme.scheduler import AcmeScheduler
from ..services.geo.manager import GeoRefresher
from ..tls.store import CertificateStore
from .worker import ACCESS_EPOCH, CERT_EPOCH
from .control import ControlServer, socket_path
from .plan import GenerationPlan, ListenerPlan
from .sockets import SocketSet
from .worker import EXIT_BOOT_ERROR, Worker

conntable = load_kernel("conntable")

MAX_LISTENERS = 256
MAX_WORKERS = 256
RESPAWN_WINDOW = 10.0  # an exit within this many seconds of start counts as a failed start
BACKOFF_CAP = 30.0
ABORT_GRACE = 5.0  # SIGABRT -> SIGKILL for a hung worker (network.md §1)


@dataclass(eq=False)
class WorkerProc:
    pid: int
    slot: int
    position: int
    gen: "Generation"
    status_fd: int
    started: float
    ready: bool = False
    accepting: bool = True
    stop_sent: float = 0.0
    last_beat: int = -1
    beat_at: float = 0.0
    abort_sent: float = 0.0
    error: str | None = None
    buf: bytearray = field(default_factory=bytearray)


@dataclass(eq=False)
class Generation:
    plan: GenerationPlan
    workers: dict[int, WorkerProc] = field(default_factory=dict)  # position -> live worker
    failures: dict[int, int] = field(default_factory=dict)
    respawn_at: dict[int, float] = field(default_factory=dict)
    retiring: bool = False

    @property
    def number(self) -> int:
        return self.plan.number


class Master:
    def __init__(self, config_path: str | None, data_dir: str, heartbeat_timeout: float = 30.0,
                 drain_timeout: float = 30.0, ready_timeout: float = 30.0):
        self.config_path = config_path
        self.data_dir = os.path.abspath(data_dir)
        self.heartbeat_timeout = heartbeat_timeout
        self.drain_timeout = drain_timeout
        self.ready_timeout = ready_timeout
        self.sockets = SocketSet()
        self.listener_index: dict[str, int] = {}
        self.free_slots = list(range(MAX_WORKERS - 1, -1, -1))
        self.by_pid: dict[int, WorkerProc] = {}
        self.generation: Generation | None = None
        self.retiring: list[Generation] = []
        self.pending_close: list[tuple[list[Generation], list[socket.socket]]] = []
        self.signals: collections.deque[int] = collections.deque()
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.fatal: str | None = None
        self.first_ready = False
        self.gen_counter = 0
        self.sel = selectors.DefaultSelector()
        self.control: ControlServer | None = None
        self.table = None
        self._wake_r = self._wake_w = -1
        self.config: Config | None = None
        self.geo: GeoRefresher | None = None  # ASN/GeoIP tables: schedule and refresh helper
        self.acme: AcmeScheduler | None = None  # ACME renewals: schedule and order helper (tls.md §7)
        self.access: AccessStore | None = None
        self.access_admin: AccessAdmin | None = None
        self.security: SharedSecurity | None = None  # auto-ban tables, shared with every worker

    # -- configuration -------------------------------------------------------------------------
    def load_config(self) -> Config:
        if self.config_path is None:
            return config_mod.parse_bytes(config_mod.default_bytes(), source="<embedded default>")
        return config_mod.load(self.config_path)

    def _build_tls(self, cfg: Config) -> CertificateStore:
        """Certificates and per-listener TLS contexts, built before any worker forks, so a TLS
        setting OpenSSL refuses is a start-up or reload error, and the self-signed fallback is
        generated once for every worker."""
        return CertificateStore.build(cfg, self.data_dir, config_mod.hostname(cfg))

    def _make_plan(self, cfg: Config, sockets: dict) -> GenerationPlan:
        live = {lp.name for g in [self.generation, *self.retiring] if g for lp in g.plan.listeners}
        wanted = {lst.name for lst in cfg.NetworkListener}
        for name in [n for n in self.listener_index if n not in live and n not in wanted]:
            if self.table.listener_count(self.listener_index[name]) == 0:
                del self.listener_index[name]
        used = set(self.listener_index.values())
        listeners = []
        for lst in cfg.NetworkListener:
            if lst.name not in self.listener_index:
                free = next((i for i in range(MAX_LISTENERS) if i not in used), None)
                if free is None:
                    raise ConfigError("$.NetworkListener", f"more than {MAX_LISTENERS} listeners")
                self.listener_index[lst.name] = free
                used.add(free)
            listeners.append(ListenerPlan(lst.name, self.listener_index[lst.name], lst,
                                          [sockets[a.key()] for a in lst.bind]))
        self.gen_counter += 1
        return GenerationPlan(self.gen_counter, cfg, config_mod.hostname(cfg), config_mod.worker_count(cfg),
                              listeners, tls=self._build_tls(cfg), extra={"access_db": self.access.path, "data_dir": self.data_dir,
                                                                            "security": self.security,
                                                                            "metrics": self.metrics})

    # -- start ---------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            cfg = self.load_config()
        except ConfigError as exc:
            print(f"stalwartd: configuration error: {exc}", file=sys.stderr)
            return 2
        os.makedirs(self.data_dir, exist_ok=True)
        try:
            self.control = ControlServer(socket_path(self.data_dir))
        except (ControlError, OSError) as exc:
            print(f"stalwartd: {exc}", file=sys.stderr)
            return 1
        try:
            return self._run(cfg)
        finally:
            self._cleanup()

    def _run(self, cfg: Config) -> int:
        try:
            sockets, _ = self.sockets.plan(cfg)
        except BindError as exc:
            events.emit("network.listen-error", ListenerId=exc.listener, LocalIp=exc.address, Reason=exc.reason)
            print(f"stalwartd: {exc}", file=sys.stderr)
            return 1
        self.sockets.commit(cfg, sockets)
        self._drop_privileges()
        self.access = AccessStore(os.path.join(self.data_dir, "access.db"))
        self.access_admin = AccessAdmin(self.access, lambda: self.table.bump_epoch(ACCESS_EPOCH))
        size = conntable.size_for(MAX_LISTENERS, MAX_WORKERS)
        self._shm = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        self.table = conntable.ConnectionTable(self._shm, MAX_LISTENERS, MAX_WORKERS)
        # Auto-ban tables, mapped before any fork; persisted bans go back in (security.md §5).
        self.security = SharedSecurity(cfg.Security.ban_table_capacity, cfg.Security.rate_counter_capacity)
        self.security.load(self.access)
        self.security.join_cluster(cfg.Redis)  # Redis set: bans shared with the other nodes
        # GET /metrics counters: one row per worker slot, shared like the tables above.
        self.metrics = MetricsTable(MAX_LISTENERS, MAX_WORKERS)
        try:
            plan = self._make_plan(cfg, sockets)
        except StalwartError as exc:
            print(f"stalwartd: {exc}", file=sys.stderr)
            return 1
        self.config = cfg
        # Last good ASN/GeoIP tables serve at once; due ones are rebuilt by a helper process.
        self.geo = GeoRefresher(self.data_dir)
        self.geo.configure(cfg)
        # Issued certificates go live through the same path as `stalwart-cli reload-certificates`.
        self.acme = AcmeScheduler(self.data_dir, self.reload_certificates)
        self.acme.configure(cfg)
        self._install_signals()
        self.sel.register(self.control.sock, selectors.EVENT_READ, "control")
        with open(os.path.join(self.data_dir, "stalwartd.pid"), "w") as fh:
            fh.write(f"{os.getpid()}\n")
        setproctitle("stalwartd: master")
        self.generation = Generation(plan)
        for pos in range(1, plan.workers + 1):
            self._spawn(self.generation, pos)
        events.emit("server.starting", Details=f"generation {plan.number}, {plan.workers} workers",
                    Hostname=plan.hostname)
        return self._loop()

    def _drop_privileges(self) -> None:
        user, group = os.environ.get("RUN_AS_USER"), os.environ.get("RUN_AS_GROUP")
        if not user and not group:
            return
        uid = pwd.getpwnam(user).pw_uid if user else None
        gid = grp.getgrnam(group).gr_gid if group else (pwd.getpwnam(user).pw_gid if user else None)
        for path in (self.data_dir, self.control.path):
            os.chown(path, uid if uid is not None else -1, gid if gid is not None else -1)
        switch_to(uid, gid)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, self._enqueue)

    def _enqueue(self, signum, _frame) -> None:
        # Handlers only enqueue (the wakeup fd makes select() return); the loop does the work.
        self.signals.append(signum)

    # -- workers -------------------------------------------------------------------------------
    def _spawn(self, gen: Generation, position: int) -> WorkerProc | None:
        if not self.free_slots:
            events.emit("server.worker-exit", level="error", Details="no free worker slot")
            return None
        slot = self.free_slots.pop()
        self.table.reclaim(slot)
        self.table.reset_worker(slot)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = EXIT_BOOT_ERROR
            try:
                os.close(r)
                self._child_cleanup(gen)
                setproctitle(f"stalwartd: worker {position}")
                code = Worker(gen.plan, slot, position, self.table, w, self.drain_timeout).run()
            except BaseException as exc:  # noqa: BLE001 - the child must never return into the master
                try:
                    os.write(w, f"E {type(exc).__name__}: {exc}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        os.set_blocking(r, False)
        proc = WorkerProc(pid, slot, position, gen, r, time.monotonic())
        proc.beat_at = proc.started
        gen.workers[position] = proc
        self.by_pid[pid] = proc
        self.sel.register(r, selectors.EVENT_READ, proc)
        return proc

    def _child_cleanup(self, gen: Generation) -> None:
        """In a new worker: drop every descriptor that belongs to the master or another generation."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        self.sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        for proc in self.by_pid.values():
            os.close(proc.status_fd)
        mine = {s.fileno() for s in gen.plan.all_sockets()}
        for sock in self.sockets.sockets.values():
            if sock.fileno() not in mine:
                sock.close()
        for _gens, socks in self.pending_close:
            for sock in socks:
                if sock.fileno() not in mine and sock.fileno() >= 0:
                    sock.close()
        if self.control is not None:
            for conn in list(self.control.clients):
                conn.close()
            self.control.sock.close()
        events.log().reopen()

    def _read_status(self, proc: WorkerProc) -> None:
        try:
            data = os.read(proc.status_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._unregister(proc.status_fd)
            return
        proc.buf += data
        while b"\n" in proc.buf:
            line, _, rest = bytes(proc.buf).partition(b"\n")
            proc.buf = bytearray(rest)
            if line == b"R":
                proc.ready = True
            elif line == b"S":
                proc.accepting = False
            elif line.startswith(b"E "):
                proc.error = line[2:].decode("utf-8", "replace")

    def _reap(self) -> None:
        # Wait for our workers by PID, never waitpid(-1): the master also runs helper processes
        # (GeoIP and ACME work) whose owners must collect their own exit status.
        for pid in list(self.by_pid):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            proc = self.by_pid.pop(pid)
            self._read_status(proc)  # a boot error line may still be in the pipe
            self._unregister(proc.status_fd)
            os.close(proc.status_fd)
            reclaimed = self.table.reclaim(proc.slot)
            self.free_slots.append(proc.slot)
            gen = proc.gen
            if gen.workers.get(proc.position) is proc:
                del gen.workers[proc.position]
            code = os.waitstatus_to_exitcode(status)
            expected = proc.stop_sent or gen.retiring or self.stopping
            if expected and not proc.abort_sent:
                continue
            events.emit("server.worker-exit", Details=f"pid={pid} worker={proc.position} status={code}"
                        + (f" reclaimed={reclaimed}" if reclaimed else "") + (f" error={proc.error}" if proc.error else ""))
            if not self.first_ready and gen is self.generation and not proc.ready:
                # network.md §1: a first-generation worker that fails before ready stops the master.
                self.fatal = proc.error or f"worker {proc.position} exited with status {code} before it was ready"
                return
            if gen is self.generation and not self.stopping:
                fast = time.monotonic() - proc.started < RESPAWN_WINDOW
                fails = gen.failures.get(proc.position, 0) + 1 if fast else 0
                gen.failures[proc.position] = fails
                delay = 0.0 if fails == 0 else min(2 ** (fails - 1), BACKOFF_CAP)
                gen.respawn_at[proc.position] = time.monotonic() + delay

    def _maintain(self) -> None:
        gen = self.generation
        now = time.monotonic()
        if gen is not None and not self.stopping and not gen.retiring:
            for pos in range(1, gen.plan.workers + 1):
                if pos not in gen.workers and gen.respawn_at.get(pos, 0.0) <= now:
                    gen.respawn_at.pop(pos, None)
                    self._spawn(gen, pos)
            if not self.first_ready and len(gen.workers) == gen.plan.workers and all(
                    p.ready for p in gen.workers.values()):
                self.first_ready = True
                _sd_notify("READY=1")
                events.emit("server.ready", Details=f"generation {gen.number}, {gen.plan.workers} workers",
                            Hostname=gen.plan.hostname)
        for gen_ in list(self.retiring):
            if not gen_.workers:
                self.retiring.remove(gen_)
        still = []
        for gens, socks in self.pending_close:
            if all(not p.accepting or p.pid not in self.by_pid for g in gens for p in g.workers.values()):
                for sock in socks:
                    sock.close()
            else:
                still.append((gens, socks))
        self.pending_close = still

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for proc in list(self.by_pid.values()):
            if proc.abort_sent:
                if now - proc.abort_sent > ABORT_GRACE:
                    _kill(proc.pid, signal.SIGKILL)
                continue
            if proc.stop_sent and now - proc.stop_sent > 2 * self.drain_timeout + 10:
                _kill(proc.pid, signal.SIGKILL)  # a drain that overran every deadline
                continue
            if not proc.ready:
                if now - proc.started > self.ready_timeout + self.heartbeat_timeout:
                    proc.abort_sent = now
                    _kill(proc.pid, signal.SIGKILL)
                continue
            beat = self.table.heartbeat(proc.slot)
            if beat != proc.last_beat:
                proc.last_beat, proc.beat_at = beat, now
            elif now - proc.beat_at > self.heartbeat_timeout:
                events.emit("server.worker-hung", Details=f"pid={proc.pid} worker={proc.position} "
                            f"silent for {now - proc.beat_at:.0f} s")
                proc.abort_sent = now
                _kill(proc.pid, signal.SIGABRT)

    # -- main loop -----------------------------------------------------------------------------
    def _poll(self, timeout: float, allow_control: bool = True) -> None:
        for key, _ in self.sel.select(timeout):
            tag = key.data
            if tag == "wake":
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            elif tag == "control":
                if allow_control:
                    conn = self.control.accept()
                    if conn is not None:
                        self.sel.register(conn, selectors.EVENT_READ, ("client", conn))
            elif isinstance(tag, tuple):
                conn = tag[1]
                if not allow_control:
                    continue
                req = self.control.read(conn)
                if conn not in self.control.clients:
                    self._unregister(conn)
                elif req is not None:
                    self._unregister(conn)
                    self._handle_control(conn, req)
            else:
                self._read_status(tag)
        self._reap()

    def _unregister(self, conn) -> None:
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass

    def _loop(self) -> int:
        while True:
            self._poll(1.0)
            self._dispatch_signals()
            if self.fatal:
                print(f"stalwartd: a worker failed to start: {self.fatal}", file=sys.stderr)
                events.emit("server.startup-error", Reason=self.fatal)
                self._signal_all(signal.SIGKILL)
                self._wait_children(5.0)
                return 1
            self._check_heartbeats()
            self._maintain()
            self.geo.tick()
            self.acme.tick()
            self.access_admin.purge()
            if self.security.persist(self.access):
                self.table.bump_epoch(ACCESS_EPOCH)  # HTTP per-request checks read the lists
            for conn in self.control.expire():
                self._unregister(conn)
            if self.stopping:
                if not self.by_pid:
                    events.emit("server.stopped", Details=f"exit {self.exit_code}")
                    return self.exit_code
                if time.monotonic() > self.stop_deadline:
                    self._signal_all(signal.SIGKILL)

    def _dispatch_signals(self) -> None:
        reload_pending = False
        while self.signals:
            sig = self.signals.popleft()
            if sig == signal.SIGHUP:
                reload_pending = True  # several SIGHUPs in a row coalesce into one reload
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self.begin_shutdown()
            elif sig == signal.SIGQUIT:
                self.stopping = True
                self.stop_deadline = time.monotonic() + 5
                self._signal_all(signal.SIGQUIT)
            elif sig == signal.SIGUSR1:
                events.log().reopen()
                self._signal_all(signal.SIGUSR1)
        if reload_pending and not self.stopping:
            self.reload()
            # A SIGHUP that arrived during the reload is coalesced into exactly one follow-up.
            if signal.SIGHUP in self.signals:
                self.signals = collections.deque(s for s in self.signals if s != signal.SIGHUP)
                self.signals.append(signal.SIGHUP)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.by_pid):
            _kill(pid, sig)

    def _wait_children(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.by_pid and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)

    def begin_shutdown(self) -> None:
        if self.stopping:
            # A second SIGTERM/SIGINT: close every session at once.
            self._signal_all(signal.SIGTERM)
            return
        self.stopping = True
        _sd_notify("STOPPING=1")
        self.stop_deadline = time.monotonic() + self.drain_timeout + 10
        now = time.monotonic()
        for proc in self.by_pid.values():
            proc.stop_sent = proc.stop_sent or now
        self._signal_all(signal.SIGTERM)
        for lst in (self.config.NetworkListener if self.config else []):
            for addr in lst.bind:
                events.emit("network.listen-stop", ListenerId=lst.name, LocalIp=addr.host,
                            LocalPort=addr.port, Tls=lst.use_tls and lst.tls_implicit)

    # -- reload --------------------------------------------------------------------------------
    def reload(self) -> tuple[bool, str]:
        """Full reload (network.md §9). Any failure leaves the running generation untouched."""
        _sd_notify("RELOADING=1")
        try:
            return self._reload()
        finally:
            _sd_notify("READY=1")

    def _reload(self) -> tuple[bool, str]:
        try:
            cfg = self.load_config()
        except ConfigError as exc:
            return self._reload_failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - a loader bug must not take the master (and its workers) down
            return self._reload_failed(f"internal error while loading the configuration: {exc!r}")
        try:
            sockets, created = self.sockets.plan(cfg)
        except BindError as exc:
            return self._reload_failed(str(exc))
        try:
            plan = self._make_plan(cfg, sockets)
        except Exception as exc:  # noqa: BLE001 - likewise for a planning bug
            for key in created:
                sockets[key].close()
            reason = str(exc) if isinstance(exc, StalwartError) else f"internal error while planning: {exc!r}"
            return self._reload_failed(reason)
        new = Generation(plan)
        for pos in range(1, plan.workers + 1):
            self._spawn(new, pos)
        deadline = time.monotonic() + self.ready_timeout
        failure = None
        while True:
            if len(new.workers) == plan.workers and all(p.ready for p in new.workers.values()):
                break
            broken = [p for p in new.workers.values() if p.error]
            if broken or len(new.workers) < plan.workers:
                failure = broken[0].error if broken else "a new worker exited before it was ready"
                break
            if time.monotonic() > deadline:
                failure = f"new workers not ready within {self.ready_timeout:.0f} s"
                break
            self._poll(0.05, allow_control=False)
            self._check_heartbeats()
        if failure:
            new.retiring = True
            for proc in new.workers.values():
                proc.stop_sent = time.monotonic()
                _kill(proc.pid, signal.SIGKILL)
            self._wait_for(new, 5.0)
            for key in created:
                sockets[key].close()
            return self._reload_failed(f"generation {plan.number}: {failure}")
        old = self.generation
        removed = self.sockets.commit(cfg, sockets)
        self.generation = new
        before, after = self.config.Security, cfg.Security
        if (before.ban_table_capacity, before.rate_counter_capacity) != (after.ban_table_capacity,
                                                                         after.rate_counter_capacity):
            events.emit("server.reload-warning", level="warn",
                        Details="Security.banTableCapacity/rateCounterCapacity change at the next restart")
        self.config = cfg
        self.geo.configure(cfg)
        self.acme.configure(cfg)
        old.retiring = True
        now = time.monotonic()
        for proc in old.workers.values():
            proc.stop_sent = now
            _kill(proc.pid, signal.SIGUSR2)
        self.retiring.append(old)
        if removed:
            # Removed addresses close once the old workers stopped accepting on them.
            self.pending_close.append(([old], removed))
            for lst in old.plan.config.NetworkListener:
                for addr in lst.bind:
                    if addr.key() not in sockets:
                        events.emit("network.listen-stop", ListenerId=lst.name, LocalIp=addr.host,
                                    LocalPort=addr.port, Tls=lst.use_tls and lst.tls_implicit)
        events.emit("server.reload-complete", Details=f"generation {plan.number}, {plan.workers} workers")
        return True, f"generation {plan.number} running with {plan.workers} workers"

    def _wait_for(self, gen: Generation, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while gen.workers and time.monotonic() < deadline:
            self._poll(0.05, allow_control=False)

    def reload_certificates(self) -> dict:
        """``ReloadTlsCertificates``: every worker re-reads certificate files and variables and
        swaps its SNI index; sessions and the rest of the configuration are untouched."""
        try:
            store = self._build_tls(self.config)  # validates; certificate problems are only logged
        except StalwartError as exc:
            return {"ok": False, "error": str(exc)}
        self.generation.plan.tls = store  # workers spawned from now on start with it
        self.table.bump_epoch(CERT_EPOCH)
        gen = store.generation
        return {"ok": True, "message": f"{len(gen.certificates)} certificates loaded, {len(gen.failed)} failed, "
                                       f"{len(gen.expired)} expired; workers switch within 1 s"}

    def _reload_failed(self, reason: str) -> tuple[bool, str]:
        events.emit("server.reload-error", Reason=reason)
        return False, reason

    # -- control socket ------------------------------------------------------------------------
    def _handle_control(self, conn, req: dict) -> None:
        cmd = req["command"]
        kind, _, action = cmd.partition(".")
        if kind in KINDS and action:
            lifted = kind == "blocked" and action == "remove" and self.security.unban(str(req.get("address")))
            reply = self.access_admin.command(kind, action, req, self.config)
            if lifted and not reply.get("ok"):  # a ban the master had not written yet
                reply = {"ok": True, "message": f"lifted the ban of {req.get('address')}"}
            self.control.reply(conn, reply)
        elif kind == "geo" and action:
            self.control.reply(conn, self.geo.command(action, req))
        elif kind == "acme" and action:
            self.control.reply(conn, self.acme.command(action, req))
        elif cmd == "reload":
            ok, message = self.reload()
            self.control.reply(conn, {"ok": ok, "message" if ok else "error": message})
        elif cmd == "reload-certificates":
            self.control.reply(conn, self.reload_certificates())
        elif cmd == "status":
            self.control.reply(conn, {"ok": True, **self.status()})
        elif cmd == "stop":
            self.control.reply(conn, {"ok": True, "message": "shutting down"})
            self.begin_shutdown()
        else:
            self.control.reply(conn, {"ok": False, "error": f"unknown command {cmd!r}"})

    def status(self) -> dict:
        gen = self.generation
        return {
            "pid": os.getpid(),
            "generation": gen.number if gen else None,
            "hostname": gen.plan.hostname if gen else None,
            "workers": [
                {"pid": p.pid, "worker": p.position, "generation": p.gen.number, "ready": p.ready,
                 "accepting": p.accepting, "heartbeat": self.table.heartbeat(p.slot)}
                for p in sorted(self.by_pid.values(), key=lambda p: (p.gen.number, p.position))
            ],
            "connections": self.table.server_count(),
            "enterprise": self._enterprise_status(gen),
            "listeners": {name: self.table.listener_count(i) for name, i in sorted(self.listener_index.items())},
        }

    def _enterprise_status(self, gen) -> dict | None:
        """services.md §6: the licence in force, as the workers see it (signature checked offline)."""
        if gen is None:
            return None
        from ..services.license import EnterpriseState

        cfg = gen.plan.config
        return EnterpriseState.load(cfg.Enterprise, gen.plan.hostname, self.data_dir,
                                    account_count=len(cfg.Account)).status()

    def _cleanup(self) -> None:
        if self.by_pid:
            # Leaving with workers alive (an unexpected error in the master): never orphan them.
            self._signal_all(signal.SIGTERM)
            self._wait_children(self.drain_timeout + 5)
            self._signal_all(signal.SIGKILL)
        self.sockets.close_all()
        for _gens, socks in self.pending_close:
            for sock in socks:
                sock.close()
        if self.control is not None:
            self.control.close()
        if self.geo is not None:
            self.geo.close()
        if self.acme is not None:
            self.acme.close()
        if self.access is not None:
            self.access.close()
        try:
            os.unlink(os.path.join(self.data_dir, "stalwartd.pid"))
        except OSError:
            pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _sd_notify(state: str) -> None:
    """systemd readiness protocol (sd_notify(3)), without a libsystemd dependency."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError:
        pass
