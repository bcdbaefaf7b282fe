"""Drive the sans-IO HTTP core and parse what it writes with an h11 client."""
from __future__ import annotations

import json

import h11

from stalwart.config import parse_bytes
from stalwart.protocols import NEED_DATA, SessionContext
from stalwart.protocols.http import HttpService, HttpSession


def config(doc: dict):
    return parse_bytes(json.dumps(doc).encode(), source="<test>")


def session(service: HttpService | None = None, remote_ip: str = "192.0.2.9", tls: bool = False,
            **extra) -> HttpSession:
    ctx = SessionContext(hostname="mail.example.com", listener="http", protocol="http",
                         remote_ip=remote_ip, remote_port=4000, local_port=443, tls_active=tls)
    ctx.extra.update(extra)
    return HttpSession(ctx, service=service)


def wire(core: HttpSession, data: bytes) -> tuple[bytes, bool]:
    core.receive_data(data)
    out, closed = b"", False
    while (ev := core.next_event()) is not NEED_DATA:
        out += ev.data
        closed = closed or ev.close
    return out, closed


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def parse(data: bytes, methods: list[str]) -> list[Reply]:
    """Responses in ``data``, one per request method (HEAD responses have no body)."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    out = []
    for method in methods:
        client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        resp, body = None, b""
        while True:
            ev = client.next_event()
            if isinstance(ev, (h11.Response, h11.InformationalResponse)):
                resp = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"incomplete response: {ev!r}")  # noqa: TRY004 - a test failure
        out.append(Reply(resp.status_code, {k.decode().lower(): v.decode() for k, v in resp.headers}, body))
        if client.our_state is h11.MUST_CLOSE:
            break
        client.start_next_cycle()
    return out


def request(service: HttpService | None, method: str, target: str, body: bytes = b"",
            headers: dict[str, str] | None = None, **extra) -> Reply:
    hdrs = {"Host": "mail.example.com", **(headers or {})}
    if body or method == "POST":
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    out, _ = wire(session(service, **extra), head.encode() + body)
    return parse(out, [method])[0]
