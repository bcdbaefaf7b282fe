"""HTTP/1.1 session core on h11 (RFC 9112): keep-alive, pipelining, limits, problem+json errors.

h11 is a well-kept sans-IO HTTP/1.1 implementation; wrapping it keeps this core sans-IO too. Routes
are a table of ``(method, path) -> handler``; the autoconfig and management endpoints of the HTTP
issue plug into it. Until then it serves the health endpoints and answers everything else 404.
"""
from __future__ import annotations

from collections.abc import Callable

import h11
import msgspec

from .base import SessionContext, SessionCore

MAX_HEAD = 16 * 1024  # request line + headers; over it -> 431
MAX_BODY = 1024 * 1024

_REASONS = {
    200: b"OK", 204: b"No Content", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_TITLES = {400: "Invalid parameters", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
_DETAILS = {404: "The requested resource does not exist on this server."}


class Request(msgspec.Struct):
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""


class Response(msgspec.Struct):
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = []


def problem(status: int, detail: str | None = None, title: str | None = None) -> Response:
    body = msgspec.json.encode({
        "type": "about:blank",
        "status": status,
        "title": title or _TITLES.get(status, _REASONS.get(status, b"Error").decode()),
        "detail": detail if detail is not None else _DETAILS.get(status, _TITLES.get(status, "")),
    })
    return Response(status, body, "application/problem+json")


Handler = Callable[[Request, SessionContext], Response]


def _health(_req: Request, _ctx: SessionContext) -> Response:
    return Response(200, b'{"status":"ok"}')


DEFAULT_ROUTES: dict[str, dict[str, Handler]] = {
    "/healthz/live": {"GET": _health, "HEAD": _health},
    "/healthz/ready": {"GET": _health, "HEAD": _health},
}


class HttpSession(SessionCore):
    event_group = "http"

    def __init__(self, ctx: SessionContext, timeout_ms: int = 60000,
                 routes: dict[str, dict[str, Handler]] | None = None):
        super().__init__(ctx)
        self._timeout_ms = timeout_ms
        self.routes = routes if routes is not None else DEFAULT_ROUTES
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._skip_body = False

    @property
    def idle_timeout_ms(self) -> int:
        return self._timeout_ms

    @property
    def interruptible(self) -> bool:
        return self._conn.their_state is h11.IDLE and self._conn.our_state is h11.IDLE

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._conn.receive_data(data)
            self._pump()
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint or 400)
        except h11.LocalProtocolError:
            self.closed = True
            self._send(b"", close=True)

    def _pump(self) -> None:
        conn = self._conn
        while not self.closed:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                self._request = ev
                self._body.clear()
                self._skip_body = False
                length = self._content_length(ev)
                if length is not None and length > MAX_BODY:
                    self._reply(problem(413, "The request body is too large."), close=True)
                    return
            elif isinstance(ev, h11.Data):
                if len(self._body) + len(ev.data) > MAX_BODY:
                    self._reply(problem(413, "The request body is too large."), close=True)
                    return
                self._body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                self._dispatch()
                if conn.our_state is h11.MUST_CLOSE or self.draining:
                    self._send(b"", close=True)
                    return
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                self._send(b"", close=True)
                return

    @staticmethod
    def _content_length(req: h11.Request) -> int | None:
        for name, value in req.headers:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    def _dispatch(self) -> None:
        req = self._request
        assert req is not None
        method = req.method.decode("ascii", "replace")
        target = req.target.decode("utf-8", "replace")
        path = target.split("?", 1)[0]
        by_method = self.routes.get(path)
        if by_method is None:
            resp = problem(404)
        elif method not in by_method:
            resp = problem(405)
            resp.headers = [("Allow", ", ".join(sorted(by_method)))]
        else:
            resp = by_method[method](Request(method, target, list(req.headers), bytes(self._body)), self.ctx)
        self._reply(resp, head=method == "HEAD")

    def _reply(self, resp: Response, head: bool = False, close: bool = False) -> None:
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body)))]
        headers += resp.headers
        if close or self.draining:
            headers.append(("Connection", "close"))
        out = self._conn.send(h11.Response(status_code=resp.status, headers=headers,
                                           reason=_REASONS.get(resp.status, b"")))
        if not head and resp.body:
            out += self._conn.send(h11.Data(data=resp.body))
        out += self._conn.send(h11.EndOfMessage())
        self._send(out, close=close)

    def _fail(self, status: int) -> None:
        """A malformed request: answer once if a response can still be sent, then close."""
        if self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            resp = problem(status, "The request could not be parsed." if status == 400 else None)
            try:
                self._reply(resp, close=True)
                return
            except h11.LocalProtocolError:
                pass
        self._send(b"", close=True)

    def timeout_reply(self) -> bytes:
        return b""  # network.md §8: an idle HTTP connection is closed without a response

    def shutdown_reply(self) -> bytes:
        return b""
