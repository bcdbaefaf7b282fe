"""What an HTTP listener does with one request, in the order http.md §1 "We do better" fixes.

1. attributed client address (forwarding headers from trusted proxies only, security.md §7);
2. block check on that address → ``403`` problem JSON;
3. banned-path check on the normalised path (security.md §6);
   then ``Http.allowedEndpoints`` (an expression, config/expr.py; loopback exempt);
4. routing: health, autoconfig and autodiscover (http.md §2), ``OPTIONS`` on ``/.well-known/``.

One :class:`HttpService` per listener and configuration load: it holds everything that does not
depend on the request (compiled globs, the PACC body, advertised endpoints, the trust list).
The allow/block lists change while connections stay open, so the driver hands every session a
getter for the worker's current lists in ``SessionContext.extra["access"]``.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import parse_qsl

import h11

from ... import events
from ..._fast import load as load_kernel
from ...config import Config
from ...config import hostname as config_hostname
from ...config.expr import (
    HTTP_VARIABLES,
    Conditional,
    EvalError,
    Lookup,
    compile_conditional,
)
from ...config.loader import http_status
from ...services.acme.challenges import HTTP_PREFIX as ACME_CHALLENGE_PREFIX
from ...services.acme.challenges import ChallengeStore, http01_route_active
from ..base import SessionContext
from .autoconfig import Autoconfig, parse_autodiscover
from .forwarded import ClientAddress, attribute, pack
from .management import ManagementApi
from .messages import CORS, REASONS, Deferred, Request, Response, problem
from .mtasts import POLICY_PATH as MTA_STS_PATH
from .mtasts import MtaStsRoute
from .paths import BannedPaths, decode_path, request_path
from .ratelimit import RateLimits

ipset = load_kernel("ipset")

Handler = Callable[[Request, SessionContext], Response]

HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
_DISCOVER_PREFIXES = ("/autodiscover/", "/Autodiscover/", "/AutoDiscover/")
_MOZILLA = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml", "/.well-known/mail-v1.xml")
PACC_PATH = "/.well-known/user-agent-configuration.json"
_ANONYMOUS_PREFIXES = ("/.well-known/", "/mail/config-v1.1.xml", *_DISCOVER_PREFIXES)
HEAD_CACHE = 256
#: http.md §2 related routes: RFC 8620 §2.2 (JMAP), RFC 6764 §5 (CalDAV, CardDAV)
WELL_KNOWN_REDIRECTS = {"/.well-known/jmap": "/jmap/session", "/.well-known/caldav": "/dav/cal",
                        "/.well-known/carddav": "/dav/card"}


def _health(_req: Request, _ctx: SessionContext) -> Response:
    return Response(200, b'{"status":"ok"}')


DEFAULT_ROUTES: dict[str, dict[str, Handler]] = {
    "/healthz/live": {"GET": _health, "HEAD": _health},
    "/healthz/ready": {"GET": _health, "HEAD": _health},
}


def _ip_set(networks) -> object | None:
    if not networks:
        return None
    out = ipset.IpSet()
    for net in networks:
        out.add_text(str(net))
    return out


def _is_loopback(packed: bytes) -> bool:
    return packed[0] == 127 if len(packed) == 4 else packed == b"\0" * 15 + b"\1"


def _allow(methods: str) -> Response:
    resp = problem(405)
    resp.headers = [*resp.headers, ("Allow", methods)]
    return resp


class HttpVariables:
    """The ``Http.*`` expression variables of one request (config/expr.py ``HTTP_VARIABLES``),
    computed only when an expression reads them."""

    __slots__ = ("client", "ctx", "headers", "method", "path", "target")

    def __init__(self, ctx: SessionContext, client: ClientAddress, method: str, target: str, path: str,
                 headers: list[tuple[bytes, bytes]]):
        self.ctx, self.client, self.method, self.target, self.path, self.headers = \
            ctx, client, method, target, path, headers

    def __getitem__(self, name: str):
        ctx = self.ctx
        if name in ("path", "url_path"):
            return self.path
        if name == "remote_ip":
            return self.client.ip  # the attributed address, as the block check sees it
        if name == "url":
            return self.target
        if name == "method":
            return self.method
        if name == "headers":
            return Lookup({k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers})
        if name == "remote_port":
            return ctx.remote_port
        if name == "local_port":
            return ctx.local_port
        if name == "local_ip":
            ip = ctx.extra.get("local_ip", "")
            return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip  # as remote_ip: mapped v4 is v4
        if name == "is_tls":
            return ctx.tls_active
        if name == "listener":
            return ctx.listener
        if name == "protocol":
            return ctx.protocol
        raise KeyError(name)


class HttpService:
    """Request processing for one HTTP listener under one configuration."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time,
                 routes: dict[str, dict[str, Handler]] | None = None, data_dir: str | None = None):
        hostname = config_hostname(cfg)
        self.limits = RateLimits(cfg)
        self.management = ManagementApi(cfg, data_dir, self.limits)
        self.clock = clock
        self.routes = dict(DEFAULT_ROUTES if routes is None else routes)
        self.autoconfig = Autoconfig(cfg, hostname, clock, os.environ.get("STALWART_PUBLIC_URL"))
        resp = self.autoconfig.pacc_response
        self.pacc = Response(resp.status, resp.body, resp.content_type, [*resp.headers, *CORS])
        self.banned = BannedPaths(cfg.Security.scan_ban_paths)
        self.use_x_forwarded = cfg.Http.use_x_forwarded
        # http.md §1 step 4. The default and any constant form cost one comparison per request.
        self.endpoints: Conditional | None = compile_conditional(
            cfg.Http.allowed_endpoints, HTTP_VARIABLES, "$.Http.allowedEndpoints")
        constant = http_status(self.endpoints.constant)
        self.endpoint_status = constant or 200
        if constant is not None:
            self.endpoints = None
        # The effective trust list of each listener: its override replaces the system list.
        self.trust = _ip_set(cfg.SystemSettings.proxy_trusted_networks)
        self.trust_by_listener = {lst.name: _ip_set(lst.override_proxy_trusted_networks)
                                  for lst in cfg.NetworkListener if lst.override_proxy_trusted_networks}
        http = cfg.Http
        headers = [(str(k), str(v)) for k, v in getattr(http, "response_headers", {}).items()]
        if getattr(http, "enable_hsts", False):
            headers.append(HSTS)
        self.extra_headers = headers
        self._heads: dict[tuple, object] = {}
        # HTTP-01 answers written by the ACME helper (tls.md §7.5), on every HTTP listener.
        self.acme = ChallengeStore(data_dir) if data_dir and http01_route_active(cfg) else None
        self.mta_sts = MtaStsRoute(cfg)  # RFC 8461 §3.3, on every HTTP listener like HTTP-01

    def response_head(self, status: int, headers: list[tuple[str, str]]) -> h11.Response:
        """The h11 status line and headers, validated once per distinct head.

        h11 re-validates every header against its grammar on each response, a fifth of the cost of a
        keep-alive request. A validated event's ``headers`` handed back to h11 skip that, so the same
        head (the PACC document, a 404) is validated once per worker; the cache is bounded.
        """
        key = (status, *headers)
        cached = self._heads.get(key)
        if cached is None:
            if len(self._heads) >= HEAD_CACHE:
                self._heads.clear()
            cached = self._heads[key] = h11.Response(status_code=status, headers=headers,
                                                     reason=REASONS.get(status, b"")).headers
        return h11.Response(status_code=status, headers=cached, reason=REASONS.get(status, b""))

    @classmethod
    @lru_cache(maxsize=1)
    def default(cls) -> HttpService:
        """The service of the embedded defaults, for cores built without a configuration (tests)."""
        return cls(Config())

    # -- steps 1-3 ---------------------------------------------------------------------------
    def trust_for(self, listener: str):
        return self.trust_by_listener.get(listener, self.trust)

    def client(self, headers: list[tuple[bytes, bytes]], ctx: SessionContext) -> ClientAddress:
        """The attributed address of one request (security.md §7)."""
        peer = ctx.extra.get("packed") or pack(ctx.remote_ip) or b"\0\0\0\0"
        if not self.use_x_forwarded:
            return ClientAddress(ctx.remote_ip, peer, exempt=ctx.extra.get("exempt", False))
        trust = self.trust_for(ctx.listener)
        now = int(self.clock())

        def trusted(packed: bytes) -> bool:
            return trust is not None and trust.contains(packed, now)

        # network.md §6: a connection that opened with a PROXY header has its client address from
        # it; forwarding headers are for a reverse proxy speaking HTTP itself, never both at once.
        proxied = ctx.extra.get("proxy") is not None
        if proxied or not trusted(peer):
            if any(n in (b"forwarded", b"x-forwarded-for") for n, _ in headers):
                events.emit("http.x-forwarded-ignored", level="debug", SpanId=ctx.span_id, RemoteIp=ctx.remote_ip,
                            Reason="PROXY header already applied" if proxied else "peer is not a trusted proxy")
            return ClientAddress(ctx.remote_ip, peer, exempt=ctx.extra.get("exempt", False))
        found = attribute(headers, ctx.remote_ip, peer, trusted)
        if found.missing:
            # debug: a load balancer's health checks carry no forwarding header, every few seconds
            events.emit("http.x-forwarded-missing", level="debug", SpanId=ctx.span_id, RemoteIp=ctx.remote_ip)
        return found

    def respond(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes,
                ctx: SessionContext, now: float = 0.0) -> Response | Deferred:
        client = self.client(headers, ctx)
        extra = ctx.extra
        is_blocked = extra.get("is_blocked")
        if is_blocked is not None and not client.exempt and is_blocked(client.packed):
            events.emit("security.ip-blocked", ListenerId=ctx.listener, RemoteIp=client.ip,
                        SpanId=ctx.span_id)
            return problem(403)
        raw, _, query = target.partition("?")
        raw = raw.split("#", 1)[0] if raw.startswith("/") else request_path(target)
        path = decode_path(raw)
        glob = self.banned.match(path, raw)
        if glob is not None and not client.exempt:
            is_allowed = extra.get("is_allowed")
            if is_allowed is None or not is_allowed(client.packed):
                # security.md §6: the auto-ban layer bans the address on this event and closes the
                # address's other sessions; this request still gets its 403, then the connection closes.
                events.emit("security.banned-path", level="warn", ListenerId=ctx.listener, RemoteIp=client.ip,
                            SpanId=ctx.span_id, Path=path, Details=glob)
                resp = problem(403)
                resp.close = True
                return resp
        if (self.endpoints is not None or self.endpoint_status != 200) and not _is_loopback(client.packed):
            # http.md §1 step 4: Http.allowedEndpoints, loopback judged on the attributed address.
            status = self.endpoint_status if self.endpoints is None else \
                self.endpoint_decision(HttpVariables(ctx, client, method, target, path, headers), ctx)
            if status != 200:
                return problem(status, "Access to this endpoint is not allowed.")
        req = Request(method, target, headers, body, path, dict(parse_qsl(query.split("#", 1)[0])) if query else {},
                      client.ip, client.exempt, client.packed, now)
        return self.route(req, ctx)

    def endpoint_decision(self, env: HttpVariables, ctx: SessionContext) -> int:
        """The status ``Http.allowedEndpoints`` gives one request. A branch whose evaluation fails
        does not match (an ``eval.error`` event says why); when even ``else`` yields no status the
        request is refused with 403: the expression exists to restrict access."""
        def failed(path: str, exc: EvalError) -> None:
            events.emit("eval.error", level="warn", SpanId=ctx.span_id, ListenerId=ctx.listener, Path=path,
                        Reason=str(exc))

        result = self.endpoints.evaluate(env, failed)
        status = http_status(result)
        if status is None:
            if result is not None:
                failed("$.Http.allowedEndpoints", EvalError(f"{result!r} is not an HTTP status"))
            return 403
        return status

    def _limit_anonymous(self, req: Request, ctx: SessionContext) -> Response | None:
        if req.client_exempt:
            return None
        is_allowed = ctx.extra.get("is_allowed")
        if is_allowed is not None and is_allowed(req.client_packed):
            return None
        return self.limits.check_anonymous(ctx.extra.get("counters"), req.client_packed, int(req.now * 1000))

    # -- step 4 ------------------------------------------------------------------------------
    def _acme_challenge(self, req: Request) -> Response:
        """RFC 8555 §8.3: the key authorization as ``text/plain``, 404 when the token is unknown."""
        if req.method not in ("GET", "HEAD"):
            return _allow("GET, HEAD")
        answer = self.acme.http_answer(req.path[len(ACME_CHALLENGE_PREFIX):])
        if answer is None:
            return problem(404)
        return Response(200, answer, "text/plain", [("Cache-Control", "no-store")])

    def route(self, req: Request, ctx: SessionContext) -> Response | Deferred:
        path, method = req.path, req.method
        if self.management.claims(path):
            return self.management.handle(req, ctx)
        if path.startswith(ACME_CHALLENGE_PREFIX) and self.acme is not None:
            return self._acme_challenge(req)
        by_method = self.routes.get(path)
        if by_method is not None:
            handler = by_method.get(method)
            if handler is None:
                return _allow(", ".join(sorted(by_method)))
            return handler(req, ctx)
        if path.startswith(_ANONYMOUS_PREFIXES):
            # http.md §1: autoconfig, autodiscover and well-known handlers are rate limited per
            # client; allow-listed addresses and trusted-proxy hops are not counted.
            limited = self._limit_anonymous(req, ctx)
            if limited is not None:
                return limited
        ac = self.autoconfig
        get = method in ("GET", "HEAD")
        if path == PACC_PATH:
            if method == "OPTIONS":
                return Response(204, headers=list(CORS))
            if not get:
                return _allow("GET, HEAD, OPTIONS")
            return self.pacc
        if path in _MOZILLA:
            cors = path.startswith("/.well-known/autoconfig/")
            if method == "OPTIONS" and path.startswith("/.well-known/"):
                return Response(204, headers=list(CORS))
            if not get:
                return _allow("GET, HEAD, OPTIONS" if path.startswith("/.well-known/") else "GET, HEAD")
            resp = ac.mozilla(req.query.get("emailaddress"), req.header(b"host"))
            if cors:
                resp.headers = [*resp.headers, *CORS]
            return resp
        if path.startswith("/.well-known/") and method == "OPTIONS":
            return Response(204, headers=list(CORS))
        if path == MTA_STS_PATH:
            return self.mta_sts.respond(req)
        if path in WELL_KNOWN_REDIRECTS:
            if not get:
                return _allow("GET, HEAD, OPTIONS")
            return Response(307, headers=[("Location", WELL_KNOWN_REDIRECTS[path]), ("Cache-Control", "no-store")])
        if path.startswith(_DISCOVER_PREFIXES):
            rest = path[len("/autodiscover/"):]
            name, _, tail = rest.partition("/")
            lower = name.lower()
            if lower == "autodiscover.xml" and not tail:
                if method != "POST":
                    return _allow("POST")
                email, schema = parse_autodiscover(req.body)
                return ac.autodiscover_v1(email, schema)
            if lower == "autodiscover.json":
                if not get:
                    return _allow("GET, HEAD")
                email = next((seg for seg in tail.split("/") if "@" in seg), None) if tail else None
                if email is None:
                    email = req.query.get("Email")
                return ac.autodiscover_v2(req.query.get("Protocol"), email, req.header(b"host"),
                                          ctx.extra.get("certificate_for"))
        return problem(404)
