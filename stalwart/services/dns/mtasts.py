"""MTA-STS policies (RFC 8461) and the ``dnsMtaSts`` cache (spec/services.md §1 "Result caches").

:class:`MtaStsPolicies` answers "which policy applies to mail for this domain":

1. the ``_mta-sts.<domain>`` TXT record (RFC 8461 §3.1) is looked up through the ``dnsTxt`` cache;
2. a cached policy whose ``id`` equals the record's is returned as it is: a policy is fetched again
   only when the id changes (§3.1, §5.1);
3. otherwise ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` is fetched (§3.3: HTTPS with a
   certificate valid for that host, status 200 only, no redirects, ``text/plain``, at most 64 KiB)
   and parsed (§3.2); concurrent callers share one fetch;
4. the policy is cached for its ``max_age`` when ``3600 <= max_age < 31557600``, else for 86400 s
   (the reference's rule);
5. when the TXT lookup fails, there is no valid record, or the fetch fails, a still-valid cached
   policy is returned (§5.1: a missing record does not remove a policy), else None.
"""
from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import StalwartError
from .client import DnsError

if TYPE_CHECKING:
    from .lookups import Resolver

__all__ = ["MtaStsError", "MtaStsPolicies", "MtaStsPolicy", "parse_policy", "policy_ttl"]

MAX_POLICY_BYTES = 65536  # RFC 8461 §3.3: senders may limit the body; 64 KiB is its example
MAX_AGE_LIMIT = 31557600  # RFC 8461 §3.2: max_age is at most one year
FETCH_TIMEOUT = 60.0  # RFC 8461 §3.3 suggests a timeout of a minute or more for the whole fetch
_MAX_AGE_RE = re.compile(r"^[0-9]{1,10}$")


class MtaStsError(StalwartError):
    """The policy could not be fetched or is not a valid STSv1 policy."""


@dataclass(frozen=True, slots=True)
class MtaStsPolicy:
    """A parsed policy (RFC 8461 §3.2) with the TXT ``id`` it was fetched for."""

    id: str
    mode: str  # "enforce" | "testing" | "none"
    max_age: int
    mx: tuple[str, ...]

    def matches(self, host: str) -> bool:
        """Whether an MX host name is allowed (RFC 8461 §4.1: ``*.`` matches one left label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_policy(body: bytes, policy_id: str) -> MtaStsPolicy:
    """RFC 8461 §3.2: ``key: value`` lines (CRLF, LF accepted); ``version: STSv1``, ``mode``,
    ``max_age`` and, unless the mode is ``none``, at least one ``mx``. Unknown keys are ignored."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MtaStsError("the policy is not UTF-8 text") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise MtaStsError(f"policy line without a colon: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            if value.lower().rstrip(".") not in mx:
                mx.append(value.lower().rstrip("."))
        elif key not in fields:  # §3.2: the first occurrence of a field counts
            fields[key] = value
    if fields.get("version") != "STSv1":
        raise MtaStsError("the policy's version is not STSv1")
    mode = fields.get("mode")
    if mode not in ("enforce", "testing", "none"):
        raise MtaStsError(f"invalid policy mode {mode!r}")
    max_age = fields.get("max_age", "")
    if not _MAX_AGE_RE.match(max_age) or int(max_age) > MAX_AGE_LIMIT:
        raise MtaStsError(f"invalid max_age {max_age!r}")
    if mode != "none" and not mx:
        raise MtaStsError("the policy names no mx")
    return MtaStsPolicy(policy_id, mode, int(max_age), tuple(mx))


def policy_ttl(policy: MtaStsPolicy) -> int:
    """Seconds a policy is cached: ``max_age`` within [3600, 31557600), else 86400 (§1)."""
    return policy.max_age if 3600 <= policy.max_age < MAX_AGE_LIMIT else 86400


Fetcher = Callable[[str], Awaitable[bytes]]


class MtaStsPolicies:
    """Policies per domain over a :class:`~.lookups.Resolver` and its ``dnsMtaSts`` cache.

    ``fetch(domain) -> body`` replaces the HTTPS fetch (tests, tools); ``tls_context`` and
    ``port`` configure the built-in one (default: system trust store, 443).
    """

    def __init__(self, resolver: Resolver, *, fetch: Fetcher | None = None,
                 tls_context: ssl.SSLContext | None = None, port: int = 443,
                 timeout: float = FETCH_TIMEOUT):
        self.resolver = resolver
        self._fetch = fetch if fetch is not None else self.fetch_https
        self.tls_context = tls_context
        self.port = port
        self.timeout = timeout
        self._fetches: dict[tuple[str, str], asyncio.Task] = {}
        self.fetched = 0

    async def policy(self, domain: str) -> MtaStsPolicy | None:
        """The policy that applies to ``domain`` now, or None (see the module docstring)."""
        from .lookups import MtaStsRecord, normalise

        key = normalise(domain)
        cache = self.resolver.caches.cache("dnsMtaSts")
        cached = cache.get(key)
        try:
            record = await self.resolver.mta_sts(key)
        except DnsError:
            return cached
        if not isinstance(record, MtaStsRecord):
            return cached
        if cached is not None and cached.id == record.id:
            return cached
        flight = (key, record.id)
        task = self._fetches.get(flight)
        if task is None:
            task = asyncio.ensure_future(self._load(key, record.id))
            self._fetches[flight] = task
            task.add_done_callback(lambda _t, f=flight: self._fetches.pop(f, None))
        try:
            # shielded: a caller that goes away does not cancel the fetch the others wait for
            return await asyncio.shield(task)
        except (MtaStsError, OSError, TimeoutError, DnsError):
            return cache.get(key)

    async def _load(self, key: str, policy_id: str) -> MtaStsPolicy:
        body = await asyncio.wait_for(self._fetch(key.rstrip(".")), self.timeout)
        policy = parse_policy(body, policy_id)
        self.fetched += 1
        self.resolver.caches.cache("dnsMtaSts").put(key, policy, ttl=policy_ttl(policy))
        return policy

    async def fetch_https(self, domain: str) -> bytes:
        """GET ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (RFC 8461 §3.3): the host's
        addresses through the resolver's caches, a certificate valid for the host, HTTP/1.0 so
        the body ends with the connection, status 200 only, ``text/plain``, 64 KiB at most."""
        host = f"mta-sts.{domain}"
        addresses = await self.resolver.ips(host)
        if not addresses:
            raise MtaStsError(f"{host} has no address")
        ctx = self.tls_context or ssl.create_default_context()
        last: Exception | None = None
        for address in addresses:
            try:
                reader, writer = await asyncio.open_connection(str(address), self.port, ssl=ctx,
                                                               server_hostname=host)
            except OSError as exc:
                last = exc
                continue
            try:
                writer.write(f"GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\n"
                             "Accept: text/plain\r\nConnection: close\r\n\r\n".encode("ascii"))
                data = await reader.read(MAX_POLICY_BYTES + 8192)
                while data and len(data) <= MAX_POLICY_BYTES + 8192:
                    more = await reader.read(MAX_POLICY_BYTES + 8192)
                    if not more:
                        break
                    data += more
            finally:
                writer.close()
            return _http_body(data, host)
        raise MtaStsError(f"cannot connect to {host}: {last}")


def _http_body(data: bytes, host: str) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise MtaStsError(f"{host}: incomplete HTTP response")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"200":
        # redirects included: RFC 8461 §3.3 forbids following them
        raise MtaStsError(f"{host}: HTTP status {lines[0][:60].decode('latin-1')!r}")
    content_type = b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
    if content_type != b"text/plain":
        raise MtaStsError(f"{host}: content type {content_type.decode('latin-1')!r} is not text/plain")
    if len(body) > MAX_POLICY_BYTES:
        raise MtaStsError(f"{host}: policy larger than {MAX_POLICY_BYTES} bytes")
    return body
