"""Requests and responses as the HTTP core hands them to handlers, and problem+json errors (RFC 9457)."""
from __future__ import annotations

from typing import Any

import msgspec

REASONS = {
    200: b"OK", 204: b"No Content", 302: b"Found", 307: b"Temporary Redirect", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 413: b"Content Too Large",
    431: b"Request Header Fields Too Large", 429: b"Too Many Requests", 500: b"Internal Server Error",
    502: b"Bad Gateway", 503: b"Service Unavailable",
}
_TITLES = {400: "Invalid parameters", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
           503: "Service Unavailable"}
_DETAILS = {404: "The requested resource does not exist on this server.", 403: "Forbidden"}

JSON = "application/json"
JSON_UTF8 = "application/json; charset=utf-8"
XML_UTF8 = "application/xml; charset=utf-8"
PROBLEM = "application/problem+json"

#: "Unrestricted CORS" (http.md §1)
CORS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Accept, X-Requested-With"),
    ("Access-Control-Allow-Methods", "POST, GET, PATCH, PUT, DELETE, HEAD, OPTIONS"),
]
NO_STORE = ("Cache-Control", "no-store")


class Request(msgspec.Struct):
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    #: the decoded, slash-collapsed path (paths.decode_path) and the parsed query (last key wins)
    path: str = ""
    query: dict[str, str] = {}
    #: the attributed client address (security.md §7) and whether it is a trusted proxy hop
    client_ip: str = ""
    client_exempt: bool = False
    client_packed: bytes = b""
    now: float = 0.0  # the driver's monotonic clock, seconds (SessionCore.now)

    def header(self, name: bytes) -> bytes | None:
        """The last value of a header (names are lower-case, as h11 gives them)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class Response(msgspec.Struct):
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = []
    close: bool = False


def problem(status: int, detail: str | None = None, title: str | None = None) -> Response:
    """A problem+json error with the four members in the spec's order (http.md §1), not cacheable."""
    body = msgspec.json.encode({
        "type": "about:blank",
        "status": status,
        "title": title or _TITLES.get(status, REASONS.get(status, b"Error").decode()),
        "detail": detail if detail is not None else _DETAILS.get(status, _TITLES.get(status, "")),
    })
    return Response(status, body, PROBLEM, [NO_STORE])


class Deferred(msgspec.Struct):
    """A response that needs work off the event loop (a password check, the master's control socket).

    The session hands ``fn(*args)`` to the driver as a :class:`~stalwart.protocols.base.Blocking`
    job, reads no further request until it is done, then answers ``finish(result, error)``.
    """

    fn: Any
    args: tuple
    finish: Any
