"""A small asyncio HTTP/1.1 client on h11 with keep-alive connection reuse.

Used for the AI model endpoints (spec/services.md §4.1) and licence renewal (§6.4): one JSON POST
or one small GET at a time per connection, bodies of a few kilobytes. h11 (already a dependency for
the HTTP listener) does the RFC 9112 framing; this module adds connections, TLS and time limits.

A full client library (httpx, aiohttp) would add HTTP/2 and proxies, neither of which a
request-response exchange with an inference endpoint needs, and three to six more runtime
dependencies.
"""
from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from collections.abc import Iterable

import h11

from ...errors import StalwartError

READ_CHUNK = 65536
DEFAULT_MAX_BODY = 16 * 1024 * 1024  # an answer larger than this is not a completion
MAX_IDLE = 8  # idle connections kept per origin
IDLE_TTL = 30.0  # s: servers commonly close idle keep-alive connections after 60 s or less


class HttpError(StalwartError):
    """A request could not be completed: connection, TLS, framing, size or time limit."""

    def __init__(self, message: str, *, timeout: bool = False, sent: bool = True):
        super().__init__(message)
        self.timeout = timeout
        self.sent = sent  # False: the request never left, so it is safe to try again at once


class HttpResponse:
    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def __repr__(self) -> str:
        return f"HttpResponse({self.status} {self.reason!r}, {len(self.body)} bytes)"


class Origin:
    """Scheme, host and port of a URL plus the request target (path and query)."""

    __slots__ = ("scheme", "host", "port", "target", "host_header")

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        default = 443 if self.scheme == "https" else 80
        self.port = port or default
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default else f"{host}:{self.port}"

    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def tls_context(verify: bool) -> ssl.SSLContext:
    """A client context; ``verify=False`` is ``allowInvalidCerts`` (no chain or name check)."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _Connection:
    __slots__ = ("reader", "writer", "h11", "idle_since", "loop")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.loop = asyncio.get_running_loop()

    def usable(self, now: float) -> bool:
        # A connection belongs to the event loop that opened it (``stalwart-cli`` and tests run
        # one loop per call); one from another loop is dropped, not reused.
        return (self.loop is asyncio.get_running_loop() and not self.writer.is_closing()
                and not self.reader.at_eof() and now - self.idle_since < IDLE_TTL)

    def close(self) -> None:
        try:
            self.writer.close()
        except RuntimeError:
            pass  # its event loop is already closed: the socket went with it


class HttpClient:
    """Connection pool for one TLS policy. Not thread-safe; one per event loop.

    ``request`` runs the whole exchange (connect, TLS, send, receive) inside the caller's time
    limit and raises :class:`HttpError` for every failure. A connection is reused only after a
    complete exchange that both sides agreed to keep alive (RFC 9112 §9.3).
    """

    def __init__(self, verify: bool = True):
        self.verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.connections_opened = 0

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = tls_context(self.verify)
        return self._ssl

    async def _connect(self, origin: Origin) -> _Connection:
        tls = self._context() if origin.scheme == "https" else None
        try:
            reader, writer = await asyncio.open_connection(
                origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None,
                limit=READ_CHUNK)
        except ssl.SSLError as exc:
            raise HttpError(f"TLS handshake with {origin.host}:{origin.port} failed: {exc.reason or exc}",
                            sent=False) from None
        except OSError as exc:
            raise HttpError(f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}",
                            sent=False) from None
        except (UnicodeError, ValueError) as exc:  # getaddrinfo's IDNA step on a malformed host name
            raise HttpError(f"cannot connect to {origin.host}:{origin.port}: {exc}", sent=False) from None
        self.connections_opened += 1
        return _Connection(reader, writer)

    def _take_idle(self, origin: Origin) -> _Connection | None:
        pool = self._idle.get(origin.key())
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    def _give_back(self, origin: Origin, conn: _Connection) -> None:
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                conn.close()
                return
            pool = self._idle.setdefault(origin.key(), [])
            if len(pool) < MAX_IDLE:
                conn.idle_since = time.monotonic()
                pool.append(conn)
                return
        conn.close()

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]] = (),
                      body: bytes = b"", timeout: float = 60.0,
                      max_body: int = DEFAULT_MAX_BODY) -> HttpResponse:
        """Send one request and return the whole response; ``timeout`` covers everything."""
        try:
            origin = Origin(url)
        except ValueError as exc:
            raise HttpError(str(exc), sent=False) from None
        hdrs = [("Host", origin.host_header), *headers]
        if body or method in ("POST", "PUT"):
            hdrs.append(("Content-Length", str(len(body))))
        try:
            async with asyncio.timeout(timeout):
                # A pooled connection the server closed meanwhile fails before any answer byte;
                # then, and only then, the request goes once more on a fresh connection.
                conn = self._take_idle(origin)
                if conn is not None:
                    try:
                        return await self._exchange(origin, conn, method, hdrs, body, max_body, reused=True)
                    except HttpError as exc:
                        if exc.sent:
                            raise
                conn = await self._connect(origin)
                return await self._exchange(origin, conn, method, hdrs, body, max_body, reused=False)
        except TimeoutError:
            raise HttpError(f"no complete answer from {origin.host_header} within {timeout:g} s",
                            timeout=True) from None

    async def _exchange(self, origin: Origin, conn: _Connection, method: str, headers: list,
                        body: bytes, max_body: int, reused: bool) -> HttpResponse:
        ok = False
        got_bytes = False
        try:
            out = conn.h11.send(h11.Request(method=method, target=origin.target, headers=headers))
            if body:
                out += conn.h11.send(h11.Data(data=body))
            out += conn.h11.send(h11.EndOfMessage())
            conn.writer.write(out)
            await conn.writer.drain()
            status, reason, rheaders = 0, "", []
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    data = await conn.reader.read(READ_CHUNK)
                    if data:
                        got_bytes = True
                    conn.h11.receive_data(data)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    reason = event.reason.decode("latin-1", "replace")
                    rheaders = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers]
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > max_body:
                        raise HttpError(f"answer from {origin.host_header} exceeds {max_body} bytes")
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    ok = True
                    return HttpResponse(status, reason, rheaders, b"".join(chunks))
                elif isinstance(event, h11.ConnectionClosed):
                    raise HttpError(f"{origin.host_header} closed the connection before answering",
                                    sent=got_bytes or not reused)
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            # Headers h11 cannot send (callers validate them; this keeps a slip from escaping).
            raise HttpError(f"request to {origin.host_header} could not be encoded: {exc}", sent=False) from None
        except h11.RemoteProtocolError as exc:
            if not got_bytes and reused:
                raise HttpError(f"{origin.host_header} closed the connection", sent=False) from None
            raise HttpError(f"malformed HTTP answer from {origin.host_header}: {exc}") from None
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            raise HttpError(f"connection to {origin.host_header} failed: {exc}",
                            sent=got_bytes or not reused) from None
        finally:
            if ok:
                self._give_back(origin, conn)
            else:
                conn.close()

    def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()
