"""The asyncio driver of one connection: limits, socket options, TLS, then the protocol core.

One :class:`Connection` per accepted socket. It owns the connection slot from ``connection_made``
until ``connection_lost`` (network.md §7: PROXY reads and TLS handshakes hold a slot), feeds bytes
to the sans-IO core and writes what the core returns. Timeouts are enforced by the worker's
once-a-second sweep rather than a timer per connection, so a busy connection costs no timer
re-arming on every read.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from typing import TYPE_CHECKING

from .. import events
from .._fast import load as load_kernel
from .._fast import clienthello_errors, proxy_errors
from ..protocols.base import NEED_DATA, Awaiting, Blocking, Delay, Send, SessionContext, StartTls, Timer

if TYPE_CHECKING:
    from ..protocols import SessionCore
    from ..server.worker import ListenerRuntime, Worker


_NONE, _HANDSHAKING, _ACTIVE, _FAILED = range(4)  # tls_state
PTR_LOOKUP_BOUND = 2.0  # s: the longest an SMTP greeting waits for the client's PTR
_SESSION, _PROXY, _GUARD_TLS = range(3)  # stage: where incoming bytes go

proxy = load_kernel("proxy")
clienthello = load_kernel("clienthello")
_MAPPED = b"\x00" * 10 + b"\xff\xff"


def pack_address(ip: str) -> bytes:
    """The packed form of a peer address as ``getpeername`` gives it (zone id dropped)."""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
    return socket.inet_pton(socket.AF_INET, ip)


def _normalise_packed(packed: bytes) -> bytes:
    return packed[12:] if len(packed) == 16 and packed[:12] == _MAPPED else packed


class Connection(asyncio.Protocol):
    __slots__ = (
        "worker", "lr", "transport", "core", "remote_ip", "remote_port", "local_ip", "local_port", "packed",
        "exempt", "held", "last_active", "started", "span", "shutting_down", "tls_state", "stage",
        "buf", "guard_pending", "proxy_header", "hello_want", "_closing",
    )

    def __init__(self, worker: Worker, lr: ListenerRuntime):
        self.worker = worker
        self.lr = lr
        self.transport: asyncio.Transport | None = None
        self.core: SessionCore | None = None
        self.held = False
        self.shutting_down = False
        self.tls_state = _NONE
        self.stage = _SESSION
        self.guard_pending = False
        self.exempt = False  # a trusted proxy speaking for itself: never blocked (security.md §2)
        self.proxy_header = None
        self.buf = b""
        self._closing = False
        self.span = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Steps 1-5 of the pipeline (network.md §5): normalise, trust, block check, slot."""
        if self.tls_state == _HANDSHAKING:
            self._tls_established(transport)  # the TLS layer hands us its application transport
            return
        self.transport = transport  # type: ignore[assignment]
        worker, lr = self.worker, self.lr
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        ip = peer[0]
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]  # step 2: IPv4-mapped IPv6 is handled as IPv4
        self.remote_ip = ip
        self.remote_port = peer[1]
        local = transport.get_extra_info("sockname")
        self.local_ip, self.local_port = (local[0], local[1]) if local else ("", 0)
        self.packed = packed = pack_address(ip)
        self.last_active = self.started = worker.loop.time()
        if lr.trust is not None and lr.trust.contains(packed, int(time.time())):
            # Step 3: a trusted proxy. It holds a slot while its header is read under tlsTimeout.
            if self._take_slot():
                self.stage = _PROXY
                self.buf = bytearray()
            return
        if worker.access.is_blocked(packed) or worker.autoban.is_banned(packed):
            self._blocked()
            return
        if self._take_slot():
            self._admitted(b"", guard=True)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        stage = self.stage
        if stage == _SESSION:
            core = self.core
            if core is None:
                return
            self.last_active = self.worker.loop.time()
            if self.guard_pending:
                data = self._guard(data)
                if not data:
                    return
            core.now = self.last_active
            core.receive_data(data)
            self._pump()
        elif stage == _PROXY:
            self._proxy_data(data)
        else:  # _GUARD_TLS: the first bytes on an implicit-TLS listener, before the handshake
            self._peek_tls(data)

    def eof_received(self) -> bool:
        if self.stage == _PROXY and not self._closing:
            self._proxy_failed(proxy_errors.EOF)
        elif self.core is not None and not self._closing:
            self.core.now = self.worker.loop.time()
            self.core.receive_data(b"")
            self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._release()

    # -- admission -------------------------------------------------------------------------------
    def _take_slot(self) -> bool:
        worker, lr = self.worker, self.lr
        rc = worker.table.acquire(lr.index, worker.slot, lr.limit, worker.server_limit)
        if rc:
            events.emit("limit.concurrent-connection", ListenerId=lr.name, LocalPort=self.local_port,
                        RemoteIp=self.remote_ip, RemotePort=self.remote_port,
                        Limit=lr.limit if rc == 1 else worker.server_limit,
                        Details="listener" if rc == 1 else "server")
            self._closing = True
            self.transport.close()  # closed without a reply
            return False
        self.held = True
        worker.sessions.add(self)
        self.span = worker.next_span()
        worker.spans[self.span] = self
        worker.metrics.accepted(lr.index)
        return True

    def _blocked(self) -> None:
        events.emit("security.ip-blocked", ListenerId=self.lr.name, LocalPort=self.local_port,
                    RemoteIp=self.remote_ip, RemotePort=self.remote_port)
        self._closing = True
        self.transport.close()  # nothing written

    def _admitted(self, pending: bytes, guard: bool) -> None:
        """Steps 6-9: socket options, first-bytes guard, implicit TLS, session start."""
        self._apply_socket_options(self.transport)
        if self.lr.implicit_tls:
            self.stage = _GUARD_TLS
            self.guard_pending = guard
            self.buf = bytearray()
            self.hello_want = 1
            if pending:
                self._peek_tls(pending)
            return
        self.guard_pending = guard
        self._open_session(None, pending)

    def _guard(self, data: bytes) -> bytes:
        """First bytes from an untrusted client (step 7): a PROXY signature closes the connection
        before any byte reaches the protocol. Returns the bytes to hand on (b"": wait or closed)."""
        buf = self.buf + data if self.buf else data
        verdict = proxy.looks_like_proxy(bytes(buf[:12]))
        if verdict is None:
            self.buf = bytes(buf)
            return b""
        self.guard_pending = False
        self.buf = b""
        if verdict:
            self._untrusted_proxy()
            return b""
        return bytes(buf)

    def _peek_tls(self, data: bytes) -> None:
        """Implicit TLS, before the handshake: the first-bytes guard (untrusted peers), then the
        ClientHello is read whole so non-TLS bytes end with a clear event (tls.md §2) and the
        SNI/ALPN are known before OpenSSL sees anything; the bytes are then replayed into TLS."""
        self.buf += data
        if self.guard_pending:
            verdict = proxy.looks_like_proxy(bytes(self.buf[:12]))
            if verdict is None:
                return
            if verdict:
                self._untrusted_proxy()
                return
            self.guard_pending = False
        if len(self.buf) < self.hello_want:
            return  # the kernel said nothing can change before this many bytes
        try:
            hello, self.hello_want = clienthello.peek_with_hint(self.buf)
        except clienthello_errors.ClientHelloError as exc:
            events.emit("tls.handshake-error", ListenerId=self.lr.name, SpanId=self.span, LocalPort=self.local_port,
                        RemoteIp=self.remote_ip, RemotePort=self.remote_port, Reason="not-tls",
                        Details=f"{exc.reason}; sent {clienthello.classify(bytes(self.buf[:64]))}")
            self.close()
            return
        if hello is None:
            return
        pending = bytes(self.buf)
        self.buf = bytearray()
        self.stage = _SESSION
        self._begin_tls(pending, hello)

    def _untrusted_proxy(self) -> None:
        events.emit("network.proxy-untrusted", ListenerId=self.lr.name, SpanId=self.span, LocalPort=self.local_port,
                    RemoteIp=self.remote_ip, RemotePort=self.remote_port)
        self.close()

    def _proxy_data(self, data: bytes) -> None:
        """Step 3.2: the PROXY header from a trusted peer (network.md §6)."""
        self.buf += data
        buf = bytes(self.buf)
        if self.lr.proxy_optional:
            # HTTP behind a reverse proxy with useXForwarded: the first bytes decide whether a
            # header is there; without one the proxy speaks for itself (network.md §6).
            verdict = proxy.looks_like_proxy(buf[:12])
            if verdict is None:
                return
            if not verdict:
                self.exempt = True
                self.stage = _SESSION
                self.buf = bytearray()
                self._admitted(buf, guard=False)
                return
        try:
            header = proxy.parse(buf)
        except proxy_errors.ProxyError as exc:
            self._proxy_failed(exc.reason)
            return
        if header is None:
            return
        self.stage = _SESSION
        self.buf = bytearray()
        self.proxy_header = header
        rest = buf[header.consumed:]
        if header.proxied:
            self.packed = _normalise_packed(header.src_addr)
            self.remote_ip = socket.inet_ntop(socket.AF_INET if len(self.packed) == 4 else socket.AF_INET6,
                                              self.packed)
            self.remote_port = header.src_port
            if self.worker.access.is_blocked(self.packed) or self.worker.autoban.is_banned(self.packed):
                self._blocked()
                return
        else:
            self.exempt = True  # LOCAL, UNKNOWN, UNSPEC: the proxy itself (health checks)
        self._admitted(rest, guard=False)

    def _proxy_failed(self, reason: str) -> None:
        lr = self.lr
        local = self.transport.get_extra_info("sockname") if self.transport is not None else None
        events.emit("network.proxy-error", ListenerId=lr.name, LocalIp=local[0] if local else "",
                    LocalPort=self.local_port, Tls=lr.implicit_tls, Reason=reason, RemoteIp=self.remote_ip)
        self.close()

    def _release(self) -> None:
        if self.held:
            self.held = False
            self.worker.table.release(self.lr.index, self.worker.slot)
            self.worker.sessions.discard(self)
            self.worker.spans.pop(self.span, None)
            self.worker.session_closed()
            if self.core is not None:
                try:
                    self.core.connection_closed()
                except Exception as exc:  # noqa: BLE001 - a core's cleanup must never take the worker down
                    events.emit("network.session-cleanup-error", level="warn", SpanId=self.span, Reason=repr(exc))
            if self.core is not None and self.worker.trace_sessions:
                events.emit(f"{self.core.event_group}.connection-end", SpanId=self.span,
                            Elapsed=int((self.worker.loop.time() - self.started) * 1000))

    # -- TLS --------------------------------------------------------------------------------------
    def _begin_tls(self, pending: bytes = b"", hello=None) -> None:
        """Put a TLS layer between the socket and this protocol, synchronously.

        ``loop.start_tls()`` would do the same from a task, but uvloop starts reading a new
        transport as soon as ``connection_made`` returns, so a ClientHello could reach this
        protocol before the task ran. Swapping the protocol here leaves no such window. The TLS
        layer calls ``connection_made`` again with its application transport once the handshake
        is done; ``tlsTimeout`` bounds the handshake (network.md §3).
        """
        lr = self.lr
        ctx: ssl.SSLContext | None = self.worker.tls_context(lr, hello)
        if ctx is None:
            events.emit("tls.not-configured", ListenerId=lr.name, SpanId=self.span)
            self.close()
            return
        loop = self.worker.loop
        waiter = loop.create_future()
        layer = self.worker.ssl_protocol_class(loop, self, ctx, waiter, server_side=True,
                                               call_connection_made=True, ssl_handshake_timeout=lr.tls_timeout)
        self.tls_state = _HANDSHAKING
        self.last_active = loop.time()
        raw = self.transport
        raw.set_protocol(layer)
        layer.connection_made(raw)
        waiter.add_done_callback(self._tls_finished)
        if pending:
            # Bytes already read (after a PROXY header, or by the first-bytes guard) are the start
            # of the ClientHello: hand them to the TLS layer through its protocol interface.
            _feed(layer, pending)

    def _tls_finished(self, waiter: asyncio.Future) -> None:
        exc = None if waiter.cancelled() else waiter.exception()
        if exc is None and not waiter.cancelled():
            return  # success: _tls_established() runs from connection_made()
        reason = "timeout" if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) else \
            (str(exc) or type(exc).__name__ if exc else "cancelled")
        events.emit("tls.handshake-error", ListenerId=self.lr.name, SpanId=self.span, LocalPort=self.local_port,
                    RemoteIp=self.remote_ip, RemotePort=self.remote_port, Reason=reason)
        self.tls_state = _FAILED
        self._closing = True
        # The TLS layer closes the socket itself and, the handshake having failed, never reports
        # connection_lost to us: give the slot back here.
        self._release()

    def _tls_established(self, transport: asyncio.BaseTransport) -> None:
        self.tls_state = _ACTIVE
        self.transport = transport  # type: ignore[assignment]
        self.last_active = self.worker.loop.time()
        obj = transport.get_extra_info("ssl_object")
        version = obj.version() if obj else "unknown"
        cipher = (obj.cipher() or ("unknown",))[0] if obj else "unknown"
        store = self.worker.plan.tls
        chosen = store.selection(obj) if store is not None and obj is not None else None
        sni = chosen.server_name if chosen is not None else None
        events.emit("tls.handshake", level="debug", ListenerId=self.lr.name, SpanId=self.span,
                    Version=version, Details=cipher, Hostname=sni or "")
        if obj is not None and obj.selected_alpn_protocol() == "acme-tls/1":
            self.close()  # TLS-ALPN-01 validation (RFC 8737 §3): the handshake is the whole exchange
            return
        if self.core is None:
            self._open_session(sni, b"")
        else:
            self.core.ctx.extra["sni"] = sni
            self.core.ctx.extra["tls_source"] = "handshake"
            self.core.tls_started(version, cipher)
            self._pump()

    # -- pipeline ---------------------------------------------------------------------------
    def _apply_socket_options(self, transport: asyncio.BaseTransport) -> None:
        cfg = self.lr.cfg
        if cfg.socket_no_delay and cfg.socket_ttl is None:
            return  # asyncio already sets TCP_NODELAY on TCP transports
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            if not cfg.socket_no_delay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            if cfg.socket_ttl is not None:
                if sock.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, cfg.socket_ttl)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, cfg.socket_ttl)
        except OSError as exc:
            events.emit("network.set-opt-error", Reason=exc.strerror or str(exc), Details=self.lr.name)

    def _open_session(self, sni: str | None, pending: bytes) -> None:
        """Start the session, after the client's forward-confirmed PTR on SMTP listeners.

        The lookup (services.md: through the worker's resolver and its dnsPtr cache) runs only for
        globally routable clients and is bounded by PTR_LOOKUP_BOUND, so the greeting is never held
        longer; reading is paused meanwhile and early bytes wait in ``pending``."""
        worker = self.worker
        if (self.lr.ptr_lookup and not self.exempt and worker.dns is not None
                and ipaddress.ip_address(self.packed).is_global):
            self.transport.pause_reading()
            worker.loop.create_task(self._ptr_then_session(sni, pending))
            return
        self._start_session(sni)
        if pending and not self._closing:
            self.data_received(pending)

    async def _ptr_then_session(self, sni: str | None, pending: bytes) -> None:
        try:
            ptr = await asyncio.wait_for(self.worker.dns.verified_ptr(self.remote_ip), PTR_LOOKUP_BOUND)
        except (asyncio.TimeoutError, OSError, ValueError):
            ptr = None  # unknown: the Received: header says so, the session goes on
        except Exception as exc:  # noqa: BLE001 - a resolver fault must not cost the client its session
            events.emit("dns.ptr-error", level="warn", RemoteIp=self.remote_ip, Reason=repr(exc))
            ptr = None
        if self._closing or self.transport is None:
            return
        self.transport.resume_reading()
        self._start_session(sni, ptr)
        if pending and not self._closing:
            self.data_received(pending)

    def _start_session(self, sni: str | None = None, ptr: str | None = None) -> None:
        lr = self.lr
        ctx = SessionContext(
            hostname=self.worker.hostname, listener=lr.name, protocol=lr.protocol,
            remote_ip=self.remote_ip, remote_port=self.remote_port, local_port=self.local_port,
            tls_available=lr.starttls, tls_active=lr.implicit_tls, span_id=self.span, started=self.started,
        )
        ctx.extra["local_ip"] = self.local_ip  # the `local_ip` expression variable
        if lr.implicit_tls and self.transport is not None:
            obj = self.transport.get_extra_info("ssl_object")
            if obj is not None:
                ctx.tls_version = obj.version()
                ctx.tls_cipher = (obj.cipher() or ("unknown",))[0]
                ctx.extra["tls_source"] = "handshake"
                ctx.extra["sni"] = sni
        header = self.proxy_header
        if header is not None:
            ctx.extra["proxy"] = header
            if header.tls:
                # The proxy terminated TLS (SSL TLV client bit, network.md §6): the session is TLS.
                ctx.tls_active = True
                ctx.tls_version = header.ssl_version or "unknown"
                ctx.tls_cipher = header.ssl_cipher or "unknown"
                ctx.extra["tls_source"] = "proxy"
            if header.authority:
                ctx.extra["sni"] = header.authority
        if lr.protocol == "http":
            # HTTP re-runs the block check on every request, on the forwarded client address
            # (security.md §7), through these callables: the worker swaps in new lists when they
            # change, and the core must not hold them or know the worker.
            ctx.extra.update(is_blocked=self._client_blocked, is_allowed=self._client_allowed,
                             dns_lookup=self._dns_lookup,
                             packed=self.packed, exempt=self.exempt, counters=self.worker.autoban.counters,
                             metrics=self.worker.metrics.table,
                             certificate_for=getattr(self.worker.plan.tls, "resolve_certificate", None))
        if ptr:
            ctx.extra["ptr"] = ptr.rstrip(".")  # services.md §3: the PTR name without its trailing dot
        geo = self.worker.geo
        info = geo.lookup(self.packed) if geo is not None and not self.exempt else None
        if info is not None:
            ctx.extra["geo"] = info  # the SMTP Received: header and the session events carry it
        core = lr.factory(ctx)
        self.core = core
        self.worker.metrics.session(lr.index)
        if self.worker.trace_sessions:
            events.emit(f"{core.event_group}.connection-start", ListenerId=lr.name, LocalPort=self.local_port,
                        RemoteIp=self.remote_ip, RemotePort=self.remote_port, SpanId=self.span,
                        **(info.event_keys() if info is not None else {}))
        greeting = core.greeting()
        if greeting:
            self.transport.write(greeting)
        if self.shutting_down:
            self.shutdown()

    def _client_blocked(self, packed: bytes) -> bool:
        """A request's client address is on the block list or under a live ban, and not allowed."""
        worker = self.worker
        return worker.access.is_blocked(packed) or worker.autoban.is_banned(packed)

    def _dns_lookup(self, rtype: str, name: str, timeout: float) -> dict:
        """From a pool thread (the management API): run a lookup on this worker's loop, through its
        resolver and caches, and wait for it."""
        from ..services.dns.commands import describe

        future = asyncio.run_coroutine_threadsafe(describe(self.worker.dns, rtype, name), self.worker.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            return {"ok": False, "status": 504, "error": "the lookup did not finish in time"}

    def _client_allowed(self, packed: bytes) -> bool:
        return self.worker.access.is_allowed(packed)

    def _pump(self) -> None:
        core = self.core
        transport = self.transport
        while True:
            ev = core.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, Send):
                if ev.data:
                    transport.write(ev.data)
                if ev.close:
                    self.close()
                    return
            elif isinstance(ev, StartTls):
                transport.write(ev.reply)  # in clear, ahead of the TLS layer
                self._begin_tls()
                return
            elif isinstance(ev, Blocking):
                self._run_blocking(ev)
                return
            elif isinstance(ev, Awaiting):
                self.transport.pause_reading()
                task = self.worker.loop.create_task(ev.fn(*ev.args))
                task.add_done_callback(self._blocking_finished)
                return
            elif isinstance(ev, Delay):
                self.transport.pause_reading()
                self.worker.loop.call_later(ev.seconds, self._delay_finished)
                return
            elif isinstance(ev, Timer):
                self.worker.loop.call_later(ev.seconds, self._timer_fired)
        if core.closed:
            self.close()
        elif self.shutting_down and core.interruptible:
            self.shutdown()

    def _run_blocking(self, job: Blocking) -> None:
        """A core asked for work off the loop (fsync, password hashing): run it in the loop's
        default thread pool with reading paused, so the core sees no bytes until it has the result."""
        self.transport.pause_reading()
        executor = getattr(self.worker, "executors", {}).get(job.pool)  # None: the loop's default pool
        fut = self.worker.loop.run_in_executor(executor, job.fn, *job.args)
        fut.add_done_callback(self._blocking_finished)

    def _blocking_finished(self, fut: asyncio.Future) -> None:
        if self._closing:
            return  # the connection went away (or was force-closed) while the job ran
        if fut.cancelled():
            result, error = None, asyncio.CancelledError()
        else:
            error = fut.exception()
            result = None if error is not None else fut.result()
        self.last_active = self.worker.loop.time()
        self.core.now = self.last_active
        self.core.blocking_done(result, error)
        self.transport.resume_reading()
        self._pump()

    def _delay_finished(self) -> None:
        if self._closing:
            return
        self.last_active = self.worker.loop.time()
        self.core.now = self.last_active
        self.core.blocking_done(None, None)
        self.transport.resume_reading()
        self._pump()

    def _timer_fired(self) -> None:
        # Not activity from the peer, so last_active is left alone.
        if self._closing or self.core is None:
            return
        self.core.now = self.worker.loop.time()
        self.core.timer_fired()
        self._pump()

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self._closing = True
            self.transport.abort()

    def timed_out(self) -> None:
        """Idle timeout reached (the worker's sweep decides): protocol line, then close."""
        if self._closing:
            return
        if self.stage == _PROXY:
            self._proxy_failed(proxy_errors.TIMEOUT)
            return
        if self.stage == _GUARD_TLS:
            events.emit("tls.handshake-error", ListenerId=self.lr.name, SpanId=self.span, LocalPort=self.local_port,
                        RemoteIp=self.remote_ip, RemotePort=self.remote_port, Reason="timeout")
            self.abort()
            return
        events.emit("network.timeout", SpanId=self.span)
        if self.core is None or self.tls_state == _HANDSHAKING:
            self.abort()  # a TLS handshake or a PROXY read that never finished
            self._release()
            return
        line = self.core.timeout_reply()
        if line:
            self.transport.write(line)
        self.close()

    def shutdown(self) -> None:
        """Server shutdown or drain: the farewell line at the next point the protocol allows."""
        self.shutting_down = True
        core = self.core
        if self.stage != _SESSION:
            self.close()  # nothing was said to this client yet: close without a line
            return
        if self._closing or core is None or self.tls_state == _HANDSHAKING:
            return  # the line goes out once the session (or its TLS layer) is up
        core.draining = True
        if core.interruptible:
            events.emit("network.closed", SpanId=self.span, Reason="Server shutting down")
            line = core.shutdown_reply()
            if line:
                self.transport.write(line)
            self.close()

    def force_close(self) -> None:
        """The drain deadline passed: write the line even mid-command, then close."""
        if self._closing:
            return
        if self.tls_state == _HANDSHAKING or self.stage != _SESSION:
            self.abort()
            self._release()
            return
        if self.core is not None:
            line = self.core.shutdown_reply()
            if line:
                self.transport.write(line)
        self.close()

    def idle_deadline(self) -> float:
        if self.stage != _SESSION:
            # PROXY header and the bytes before an implicit-TLS handshake: tlsTimeout from accept.
            return self.started + self.lr.tls_timeout
        if self.tls_state == _HANDSHAKING:
            # The TLS layer enforces tlsTimeout itself; this is the backstop if it did not.
            return self.last_active + self.lr.tls_timeout + 5.0
        if self.core is None:
            return self.last_active + PTR_LOOKUP_BOUND + 5.0  # the PTR lookup's backstop
        return self.last_active + self.core.idle_timeout_ms / 1000.0


def _feed(layer: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver ``data`` to a protocol as if the transport had read it."""
    if isinstance(layer, asyncio.BufferedProtocol) or hasattr(layer, "get_buffer"):
        view = memoryview(data)
        while view:
            buf = layer.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            layer.buffer_updated(n)
            view = view[n:]
    else:
        layer.data_received(data)
