"""HTTP/1.1 session core on h11 (RFC 9112): keep-alive, pipelining, limits, problem+json errors.

h11 is a well-kept sans-IO HTTP/1.1 implementation; wrapping it keeps this core sans-IO too. The
core owns the wire (limits, ``HEAD``, ``Connection: close``, malformed requests); what a request
means is decided by the listener's :class:`~stalwart.protocols.http.service.HttpService`.
"""
from __future__ import annotations

from typing import Any

import h11

from ... import events
from ...config import Config
from ..base import Blocking, SessionContext, SessionCore
from .messages import Deferred, Response, problem
from .service import Handler, HttpService

MAX_HEAD = 16 * 1024  # request line + headers; over it -> 431
MAX_BODY = 1024 * 1024


class HttpSession(SessionCore):
    event_group = "http"

    def __init__(self, ctx: SessionContext, timeout_ms: int = 60000,
                 routes: dict[str, dict[str, Handler]] | None = None, service: HttpService | None = None):
        super().__init__(ctx)
        self._timeout_ms = timeout_ms
        if service is None:
            service = HttpService.default() if routes is None else HttpService(Config(), routes=routes)
        self.service = service
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._pending: tuple | None = None  # (finish, head) of a Deferred response being worked on

    @property
    def idle_timeout_ms(self) -> int:
        return self._timeout_ms

    @property
    def interruptible(self) -> bool:
        return self._conn.their_state is h11.IDLE and self._conn.our_state is h11.IDLE

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        if self._pending is not None:
            # Kept for after the pending response (EOF included); h11 refuses bytes after an EOF
            # with RuntimeError, and such bytes can only be dropped.
            try:
                self._conn.receive_data(data)
            except RuntimeError:
                pass
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
                if self._pending is not None or not self._next_cycle():
                    return
            elif isinstance(ev, h11.ConnectionClosed):
                self._send(b"", close=True)
                return

    def _next_cycle(self) -> bool:
        """After a response: close, or get ready for the next pipelined request. False: stop."""
        conn = self._conn
        if self.closed:
            return False
        if conn.our_state is h11.MUST_CLOSE or self.draining:
            self._send(b"", close=True)
            return False
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        return True

    def blocking_done(self, result: Any, error: BaseException | None) -> None:
        """The off-loop work of a :class:`Deferred` response is done: answer, then read on."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        finish, head = pending
        try:
            resp = finish(result, error)
            self._reply(resp, head=head, close=resp.close)
            if self._next_cycle():
                self._pump()
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint or 400)
        except h11.LocalProtocolError:
            self.closed = True
            self._send(b"", close=True)

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
        head = method == "HEAD"
        # http.md §1: HEAD is answered on every route that answers GET, with GET's headers.
        resp = self.service.respond("GET" if head else method, target, req.headers, bytes(self._body), self.ctx,
                                    self.now)
        if isinstance(resp, Deferred):
            # Reading stops here (the driver pauses the socket and pipelined requests wait in h11)
            # until blocking_done() brings the result.
            self._pending = (resp.finish, head)
            self._events.append(Blocking(resp.fn, resp.args))
            return
        self._reply(resp, head=head, close=resp.close)

    def _reply(self, resp: Response, head: bool = False, close: bool = False) -> None:
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body)))] \
            if resp.status != 204 else []
        headers += resp.headers
        extra = self.service.extra_headers
        if extra:
            names = {k.lower() for k, _ in extra}
            headers = [h for h in headers if h[0].lower() not in names] + extra
        if close or self.draining:
            headers.append(("Connection", "close"))
        out = self._conn.send(self.service.response_head(resp.status, headers))
        if not head and resp.body:
            out += self._conn.send(h11.Data(data=resp.body))
        out += self._conn.send(h11.EndOfMessage())
        self._send(out, close=close)

    def _fail(self, status: int) -> None:
        """A malformed request: answer once if a response can still be sent, then close.

        An unparseable request line or header counts as scanning against the connection's
        attributed address, whatever ``useXForwarded`` says (security.md §4, §7)."""
        if status == 400:
            events.emit("http.invalid-request", SpanId=self.ctx.span_id, RemoteIp=self.ctx.remote_ip,
                        Reason="Invalid HTTP request")
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
