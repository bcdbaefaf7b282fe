"""Management API on HTTP listeners: status, allow/block lists, reload and Prometheus metrics (issue 7 item 3).

Every operation goes through the master's control socket, exactly like ``stalwart-cli``, so a block
added here has the same effect (persistent, live in every worker within the sweep interval) and the
master stays the one writer of the lists. Callers authenticate as an account named in
``Http.administrators``, with HTTP Basic (RFC 7617) or with ``Authorization: Bearer <token>``
(RFC 6750 §2.1) of one of that account's unexpired ``ApiKey`` objects; the credential check and
the control round trip run off the event loop as one
:class:`~stalwart.protocols.http.messages.Deferred` job.

=======  ===============================  ==========================================================
Method   Path                             Effect
=======  ===============================  ==========================================================
GET      ``/api/status``                  workers, generation, open connections per listener
GET      ``/api/blocked-ip``              list (``/api/allowed-ip`` alike)
POST     ``/api/blocked-ip``              add ``{"address", "reason"?, "expiresAt"?}`` → ``201``
DELETE   ``/api/blocked-ip/<address>``    remove (a CIDR's ``/`` may be written as is or ``%2F``)
POST     ``/api/reload``                  reload the configuration (same as SIGHUP)
GET      ``/api/geo/<address>``           ASN and country of an address (the ``Asn`` object's tables)
GET      ``/api/dns/<TYPE>/<name>``       a lookup through this worker's resolver, with its cache state
GET      ``/metrics``                     Prometheus text exposition format 0.0.4
=======  ===============================  ==========================================================

Credentials are taken only over TLS (implicit, or TLS terminated by a PROXY-protocol proxy), from
loopback clients, or on listeners with ``allowPlainTextAuth`` (a TLS-terminating reverse proxy in
front). A failed login (wrong password; unknown, expired or non-administrator token) is reported as
``auth.failed`` (security.md §4: counted by the auth ban category) and answered after a random
50–500 ms delay; a request without credentials is not counted.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ... import events
from ...accounts import Directory
from ...accounts.model import api_key_hash
from ...config import Config
from ...config.types import parse_utc
from ...errors import ControlError
from ...server.control import request as control_request
from ..base import SessionContext
from .messages import Deferred, Request, Response, problem
from .metrics import render_counters
from .ratelimit import RateLimits

KINDS = {"blocked-ip": "blocked", "allowed-ip": "allowed"}
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
CONTROL_TIMEOUT = 10.0
RELOAD_TIMEOUT = 120.0
DNS_TIMEOUT = 15.0  # the resolver bounds each lookup itself (timeout × attempts); this is the backstop
_CHALLENGE = ("WWW-Authenticate", 'Basic realm="stalwart", charset="UTF-8", Bearer realm="stalwart"')

Call = tuple[str, dict, float]  # control command, its arguments, timeout


def _unauthorized() -> Response:
    resp = problem(401, "Authentication required.")
    resp.headers = [*resp.headers, _CHALLENGE]
    return resp


def basic_credentials(value: bytes | None) -> tuple[str, str] | None:
    """``(user, password)`` of an ``Authorization: Basic`` header (RFC 7617 §2), None otherwise."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep and user else None


def bearer_token(value: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 §2.1), None otherwise."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or b" " in token:
        return None
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        return None


class _AuthFailed:
    """What a failed credential check tells the event: the account it named, if any."""

    __slots__ = ("account", "reason")

    def __init__(self, account: str, reason: str):
        self.account, self.reason = account, reason


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(status: dict, blocked: list, allowed: list, counters: list[str] = ()) -> bytes:
    """The text exposition format (Prometheus 0.0.4) of what the master knows right now."""
    lines = [
        "# HELP stalwart_connections Open connections per listener.",
        "# TYPE stalwart_connections gauge",
        *(f'stalwart_connections{{listener="{_label(name)}"}} {count}'
          for name, count in sorted(status.get("listeners", {}).items())),
        "# HELP stalwart_connections_server Open connections on the whole server.",
        "# TYPE stalwart_connections_server gauge",
        f"stalwart_connections_server {int(status.get('connections') or 0)}",
        "# HELP stalwart_workers Worker processes by readiness.",
        "# TYPE stalwart_workers gauge",
    ]
    workers = status.get("workers", [])
    ready = sum(1 for w in workers if w.get("ready") and w.get("accepting"))
    lines += [f'stalwart_workers{{state="accepting"}} {ready}',
              f'stalwart_workers{{state="other"}} {len(workers) - ready}',
              "# HELP stalwart_generation Configuration generation being served.",
              "# TYPE stalwart_generation gauge",
              f"stalwart_generation {int(status.get('generation') or 0)}",
              "# HELP stalwart_ip_list_entries Entries of the allow and block lists, by list and reason.",
              "# TYPE stalwart_ip_list_entries gauge"]
    for kind, entries in (("blocked", blocked), ("allowed", allowed)):
        counts: dict[str, int] = {}
        for e in entries:
            if not e.get("expired"):
                reason = str(e.get("reason") or "-") if kind == "blocked" else e.get("source", "-")
                counts[reason] = counts.get(reason, 0) + 1
        if not counts:
            lines.append(f'stalwart_ip_list_entries{{list="{kind}",reason=""}} 0')
        for reason, n in sorted(counts.items()):
            lines.append(f'stalwart_ip_list_entries{{list="{kind}",reason="{_label(reason)}"}} {n}')
    return ("\n".join([*lines, *counters]) + "\n").encode()


class ManagementApi:
    """The management routes of one configuration load."""

    def __init__(self, cfg: Config, data_dir: str | None, limits: RateLimits | None = None):
        self.limits = limits if limits is not None else RateLimits(cfg)
        self.directory = Directory.from_config(cfg)
        self.protocols = [(lst.name, lst.protocol) for lst in cfg.NetworkListener]
        self.plaintext_ok = {lst.name for lst in cfg.NetworkListener if lst.allow_plain_text_auth}
        self.admins = {n.lower() for n in cfg.Http.administrators}
        # (hash, account, expiry): every key of an account; the administrator check is per request
        self.api_keys = [(k.secret, k.account, k.expires_at) for k in cfg.ApiKey]
        self.data_dir = data_dir
        self.enabled = bool(self.admins) and data_dir is not None

    @staticmethod
    def claims(path: str) -> bool:
        return path == "/metrics" or path == "/api" or path.startswith("/api/")

    def handle(self, req: Request, ctx: SessionContext) -> Response | Deferred:
        if not self.enabled:
            return problem(404)
        plan = self._plan(req, ctx)
        if isinstance(plan, Response):
            return plan
        calls, render = plan
        if not (ctx.tls_active or ctx.listener in self.plaintext_ok or _is_loopback(req.client_packed)):
            # An administrator password must not cross the network in clear. Behind a reverse
            # proxy that terminates TLS, set allowPlainTextAuth on the listener it connects to.
            return problem(403, "The management API needs TLS on this listener.")
        header = req.header(b"authorization")
        creds = basic_credentials(header)
        if creds is not None:
            credential: tuple[str, str, str] = ("basic", *creds)
        else:
            token = bearer_token(header)
            if token is None:
                return _unauthorized()  # no credentials: not a failed login (security.md §4)
            credential = ("bearer", "", token)
        secret = credential[2]

        def finish(result: Any, error: BaseException | None) -> Response:
            if error is not None:
                reason = str(error) if isinstance(error, ControlError) else type(error).__name__
                events.emit("http.management-error", level="warn", SpanId=ctx.span_id, Reason=reason)
                return problem(503, "The server's control socket did not answer.")
            if isinstance(result, _AuthFailed):
                # The password or token goes to the auto-ban layer's stale-password rule
                # (security.md §3) wrapped, so no log line can show it.
                events.emit("auth.failed", SpanId=ctx.span_id, ListenerId=ctx.listener, RemoteIp=req.client_ip,
                            AccountName=result.account, Protocol="http", Reason=result.reason,
                            Credential=events.Sensitive(secret))
                is_blocked = ctx.extra.get("is_blocked")
                if not req.client_exempt and is_blocked is not None and is_blocked(req.client_packed):
                    # That failure banned the address (security.md §4: HTTP answers 429).
                    return problem(429, "", "Too Many Authentication Attempts")
                return _unauthorized()
            if isinstance(result, Response):
                return result
            return render(result)

        return Deferred(self._run, (credential, calls, ctx.extra.get("counters"), ctx.extra.get("dns_lookup")),
                        finish)

    def administrator(self, credential: tuple[str, str, str], now: float) -> str | _AuthFailed:
        """The administrator's account name for ``(scheme, user, secret)``, or why not.

        Blocking for ``basic`` (a key derivation). A bearer token is hashed and compared with every
        key's hash in constant time, so no key is found faster than another."""
        scheme, user, secret = credential
        if scheme == "basic":
            acct = self.directory.authenticate(user, secret)
            if acct is None:
                return _AuthFailed(user, "wrong password")
            name = acct.name
        else:
            digest = api_key_hash(secret)
            match = None
            for key_hash, account, expires in self.api_keys:
                if hmac.compare_digest(key_hash, digest):
                    match = (account, expires)
            if match is None:
                return _AuthFailed("", "unknown API key")
            name, expires = match
            if expires is not None and now >= expires:
                return _AuthFailed(name, "expired API key")
        if name.lower() not in self.admins:
            return _AuthFailed(user if scheme == "basic" else name, "not an administrator")  # Basic: as sent
        return name

    def _run(self, credential: tuple[str, str, str], calls: list[Call], counters: Any,
             dns_lookup: Callable[[str, str, float], dict] | None = None) -> Any:
        """In a thread: the credential check, the authenticated rate limit, then the control round trips."""
        name = self.administrator(credential, time.time())
        if isinstance(name, _AuthFailed):
            time.sleep(random.uniform(0.05, 0.5))  # security.md §4: failures answered after 50-500 ms
            return name
        # CLOCK_MONOTONIC is system-wide on Linux: the same clock every worker counts with.
        limited = self.limits.check_authenticated(counters, name, int(time.monotonic() * 1000))
        if limited is not None:
            return limited
        out = []
        for cmd, args, timeout in calls:
            if cmd == "dns.lookup":  # answered by this worker's resolver, not the master
                out.append(dns_lookup(args["type"], args["name"], timeout) if dns_lookup is not None
                           else {"ok": False, "status": 503, "error": "no resolver in this process"})
            else:
                out.append(control_request(self.data_dir, cmd, timeout=timeout, **args))
        return out

    # -- routes ------------------------------------------------------------------------------
    def _plan(self, req: Request, ctx: SessionContext) -> tuple[list[Call], Callable[[list[dict]], Response]] | Response:
        path, method = req.path, req.method
        if path == "/metrics":
            if method != "GET":
                return _allow("GET, HEAD")
            calls = [("status", {}, CONTROL_TIMEOUT), ("blocked.list", {}, CONTROL_TIMEOUT),
                     ("allowed.list", {}, CONTROL_TIMEOUT)]
            table = ctx.extra.get("metrics")

            def render(r: list[dict]) -> Response:
                counters = render_counters(*table.snapshot(), self.protocols) if table is not None else []
                body = prometheus(r[0], r[1].get("entries", []), r[2].get("entries", []), counters)
                return Response(200, body, PROMETHEUS, [("Cache-Control", "no-store")])

            return calls, render
        if path == "/api/status":
            if method != "GET":
                return _allow("GET, HEAD")
            return [("status", {}, CONTROL_TIMEOUT)], _status
        if path == "/api/reload":
            if method != "POST":
                return _allow("POST")
            return [("reload", {}, RELOAD_TIMEOUT)], _reloaded
        segment, _, rest = path[len("/api/"):].partition("/")
        if segment == "dns" and rest:
            # services.md §1: a lookup through this worker's resolver and caches, with cache state
            if method != "GET":
                return _allow("GET, HEAD")
            rtype, _, name = rest.partition("/")
            if not rtype or not name:
                return problem(400, "use /api/dns/<TYPE>/<name>")
            return [("dns.lookup", {"type": rtype, "name": name}, DNS_TIMEOUT)], _dns
        if segment == "geo" and rest:
            # services.md §3: the ASN and country the master's tables give for an address
            if method != "GET":
                return _allow("GET, HEAD")
            return [("geo.lookup", {"address": rest}, CONTROL_TIMEOUT)], _geo
        kind = KINDS.get(segment)
        if kind is None:
            return problem(404)
        if not rest:
            if method == "GET":
                return [(f"{kind}.list", {}, CONTROL_TIMEOUT)], _listing
            if method != "POST":
                return _allow("GET, HEAD, POST")
            args = _entry(req.body, kind)
            if isinstance(args, Response):
                return args
            return [(f"{kind}.add", args, CONTROL_TIMEOUT)], _added
        if method != "DELETE":
            return _allow("DELETE")
        return [(f"{kind}.remove", {"address": rest}, CONTROL_TIMEOUT)], _removed


def _is_loopback(packed: bytes) -> bool:
    return (len(packed) == 4 and packed[0] == 127) or packed == b"\0" * 15 + b"\1"


def _allow(methods: str) -> Response:
    resp = problem(405)
    resp.headers = [*resp.headers, ("Allow", methods)]
    return resp


def _json(status: int, doc: Any) -> Response:
    return Response(status, msgspec.json.encode(doc), "application/json", [("Cache-Control", "no-store")])


def _failed(reply: dict) -> Response:
    error = str(reply.get("error", "failed"))
    if "is not in the" in error:
        return problem(404, error)
    if "comes from the configuration file" in error:
        return problem(409, error)
    return problem(400, error)


def _dns(replies: list[dict]) -> Response:
    reply = replies[0]
    if not reply.get("ok"):
        return problem(reply.get("status", 502), reply.get("error", "lookup failed"))
    return _json(200, {k: v for k, v in reply.items() if k != "ok"})


def _geo(replies: list[dict]) -> Response:
    reply = replies[0]
    if not reply.get("ok"):
        return problem(400, reply.get("error", "lookup failed"))
    doc = {k: v for k, v in reply.items() if k != "ok"}
    return _json(200 if doc.get("found") else 404, doc)


def _status(replies: list[dict]) -> Response:
    reply = replies[0]
    return _json(200, {k: v for k, v in reply.items() if k != "ok"}) if reply.get("ok") else _failed(reply)


def _listing(replies: list[dict]) -> Response:
    reply = replies[0]
    return _json(200, {"entries": reply.get("entries", [])}) if reply.get("ok") else _failed(reply)


def _added(replies: list[dict]) -> Response:
    reply = replies[0]
    return _json(201, {"entry": reply.get("entry")}) if reply.get("ok") else _failed(reply)


def _removed(replies: list[dict]) -> Response:
    reply = replies[0]
    return _json(200, {"message": reply.get("message")}) if reply.get("ok") else _failed(reply)


def _reloaded(replies: list[dict]) -> Response:
    reply = replies[0]
    return _json(200, {"message": reply.get("message")}) if reply.get("ok") else _failed(reply)


def _entry(body: bytes, kind: str) -> dict | Response:
    """The control arguments of a create request: ``address``, optional ``reason`` and ``expiresAt``
    (RFC 3339 UTC or Unix seconds)."""
    try:
        doc = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        return problem(400, "The request body is not JSON.")
    if not isinstance(doc, dict) or not isinstance(doc.get("address"), str):
        return problem(400, 'Expected a JSON object with an "address".')
    args: dict = {"address": doc["address"]}
    reason = doc.get("reason")
    if reason is not None:
        if not isinstance(reason, str) or not reason:
            return problem(400, '"reason" must be a non-empty string.')
        args["reason"] = reason
    expires = doc.get("expiresAt")
    if expires is not None:
        if isinstance(expires, str):
            try:
                expires = parse_utc(expires)
            except ValueError as exc:
                return problem(400, str(exc))
        if not isinstance(expires, int) or isinstance(expires, bool):
            return problem(400, '"expiresAt" must be an RFC 3339 UTC time or Unix seconds.')
        args["expiresAt"] = expires
    return args
