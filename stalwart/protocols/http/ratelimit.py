"""HTTP rate limits: ``Http.rateLimitAnonymous`` and ``Http.rateLimitAuthenticated`` (http.md §1).

Sliding windows in the worker-shared counter table the auto-ban layer owns (security.md §3), so a
client spreading requests over workers is counted once. Anonymous requests are keyed by the
attributed address masked to ``ipv4BanPrefix``/``ipv6BanPrefix``; authenticated ones by the login.
Each request is one event; the one that would make ``count + 1`` is refused with ``429`` and the
headers of http.md §1 "We do better".
"""
from __future__ import annotations

import math
from typing import Any

from ...config import Config
from .messages import Response, problem

# Counter key categories, after the reference's prefixes (HTTP_AUTHENTICATED=8, HTTP_ANONYMOUS=9);
# the auto-ban categories use 1-4, so the two never share a key.
AUTHENTICATED, ANONYMOUS = 8, 9
NS_IP, NS_LOGIN = 1, 2


def _masked(packed: bytes, v4: int, v6: int) -> tuple[bytes, int]:
    prefix = v4 if len(packed) == 4 else v6
    bits = len(packed) * 8
    value = int.from_bytes(packed, "big") >> (bits - prefix) << (bits - prefix)
    return value.to_bytes(len(packed), "big"), prefix


class RateLimits:
    """Both limits of one configuration load; a disabled limit (null rate) is None."""

    __slots__ = ("anonymous", "authenticated", "v4", "v6")

    def __init__(self, cfg: Config):
        http = cfg.Http
        self.anonymous = (int(http.rate_limit_anonymous.count), int(http.rate_limit_anonymous.period)) \
            if http.rate_limit_anonymous is not None else None
        self.authenticated = (int(http.rate_limit_authenticated.count), int(http.rate_limit_authenticated.period)) \
            if http.rate_limit_authenticated is not None else None
        self.v4 = cfg.Security.ipv4_ban_prefix
        self.v6 = cfg.Security.ipv6_ban_prefix

    def check_anonymous(self, counters: Any, packed: bytes, now_ms: int) -> Response | None:
        """Count one anonymous request of ``packed``; the 429 when it is over the limit."""
        if self.anonymous is None or counters is None:
            return None
        masked, prefix = _masked(packed, self.v4, self.v6)
        return _hit(counters, bytes((ANONYMOUS, NS_IP, prefix)) + masked, now_ms, *self.anonymous, "anonymous")

    def check_authenticated(self, counters: Any, login: str, now_ms: int) -> Response | None:
        if self.authenticated is None or counters is None:
            return None
        key = bytes((AUTHENTICATED, NS_LOGIN)) + login.strip().lower().encode("utf-8", "surrogateescape")
        return _hit(counters, key, now_ms, *self.authenticated, "authenticated")


def _hit(counters: Any, key: bytes, now_ms: int, count: int, period_ms: int, policy: str) -> Response | None:
    if counters.hit(key, now_ms, period_ms) <= count:
        return None
    wait = max(1, math.ceil(counters.retry_after(key, now_ms, period_ms, count) / 1000))
    resp = problem(429, "Too many requests, try again later.")
    resp.headers = [*resp.headers, ("Retry-After", str(wait)),
                    ("RateLimit-Policy", f'"{policy}";q={count};w={max(1, period_ms // 1000)}'),
                    ("RateLimit", f'"{policy}";r=0;t={wait}')]
    return resp
