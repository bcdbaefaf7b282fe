"""A small asyncio HTTP/1.1 client on h11 for the ACME directory and hosted DNS APIs.

One connection per request (ACME and DNS-provider calls are a handful a day), TLS verified against
the system store plus an optional extra CA file, every exchange bounded by ``timeout`` seconds
(tls.md §7.4: 30 s). Responses are read whole, up to :data:`MAX_BODY` bytes.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from ...errors import StalwartError

USER_AGENT = "Stalwart/1.0.0"
MAX_BODY = 4 * 1024 * 1024


class HttpError(StalwartError):
    """Transport failure: connection, TLS, timeout, malformed response."""


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


class HttpClient:
    """``await client.request("POST", url, body, headers)`` → :class:`HttpResponse`."""

    def __init__(self, *, ca_file: str | None = None, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None):
        self.timeout = timeout
        self._ssl = ssl_context
        self._ca_file = ca_file

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = client_context(self._ca_file)
        return self._ssl

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> HttpResponse:
        try:
            return await asyncio.wait_for(self._request(method, url, body, headers or []), self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise HttpError(f"{method} {url}: no response within {self.timeout:g} s") from None
        except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
            raise HttpError(f"{method} {url}: {exc}") from None

    async def _request(self, method: str, url: str, body: bytes, headers: list[tuple[str, str]]) -> HttpResponse:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"unsupported URL {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        reader, writer = await asyncio.open_connection(
            parts.hostname, port, ssl=self._context() if tls else None,
            server_hostname=parts.hostname if tls else None)
        try:
            conn = h11.Connection(h11.CLIENT)
            hdrs = [("Host", host_header), ("User-Agent", USER_AGENT), ("Connection", "close"), *headers]
            if body or method in ("POST", "PUT", "PATCH"):
                hdrs.append(("Content-Length", str(len(body))))
            data = conn.send(h11.Request(method=method, target=target, headers=hdrs))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            writer.write(data)
            await writer.drain()
            resp: HttpResponse | None = None
            chunks: list[bytes] = []
            size = 0
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    got = await reader.read(65536)
                    conn.receive_data(got)
                    continue
                if isinstance(ev, h11.Response):
                    resp = HttpResponse(ev.status_code, [(k.decode("latin-1").lower(), v.decode("latin-1"))
                                                          for k, v in ev.headers])
                elif isinstance(ev, h11.Data):
                    size += len(ev.data)
                    if size > MAX_BODY:
                        raise HttpError(f"{method} {url}: response body over {MAX_BODY} bytes")
                    chunks.append(bytes(ev.data))
                elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            if resp is None:
                raise HttpError(f"{method} {url}: connection closed before a response")
            resp.body = b"".join(chunks)
            return resp
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
