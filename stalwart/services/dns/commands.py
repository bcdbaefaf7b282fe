"""``stalwart-cli dns lookup TYPE NAME``: one typed lookup through the configured resolver.

Runs offline from ``--config`` (the ``DnsResolver`` and ``Cache`` objects), as a worker would:
same upstreams, same typed result and TTL handling. The lookup is made twice, so the output also
shows what the result cache holds afterwards (remaining TTL, negative or not) and that the second
answer came from it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
from typing import Any

from ...errors import ConfigError


def add_dns_parser(sub, common) -> None:
    dns = sub.add_parser("dns", help="DNS lookups through the configured resolver and its caches")
    common(dns, suppress=True)
    actions = dns.add_subparsers(dest="action", required=True)
    lookup = actions.add_parser("lookup", help="resolve NAME as TYPE (A, AAAA, MX, TXT, PTR, TLSA, MTA-STS)")
    common(lookup, suppress=True)
    lookup.add_argument("type", metavar="TYPE", type=str.upper,
                        choices=["A", "AAAA", "MX", "TXT", "PTR", "TLSA", "MTA-STS"])
    lookup.add_argument("name", help="a domain name (an IP address for PTR)")
    lookup.add_argument("--json", action="store_true", help="machine-readable output")


def _plain(value: Any) -> Any:
    """JSON-friendly form of a typed result."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    slots = getattr(type(value), "__slots__", None)
    if isinstance(slots, tuple) and slots:
        return {s: _plain(getattr(value, s)) for s in slots}
    return value


async def describe(resolver, rtype: str, name: str) -> dict:
    """One lookup through ``resolver`` and its caches, as JSON-ready data with the cache state of
    the answer (for the management API; services.md §1: operators see what is cached)."""
    from .client import DnsError

    try:
        result = await resolver.lookup(rtype, name)
    except ValueError as exc:
        return {"ok": False, "status": 400, "error": str(exc)}
    except DnsError as exc:
        return {"ok": False, "status": 502, "error": str(exc)}
    return {"ok": True, "type": rtype.upper(), "name": name, "result": _plain(result),
            **resolver.cache_state(rtype, name)}


def run(args) -> int:
    from ...config import default_bytes, load, parse_bytes
    from ...events import configure
    from . import build_resolver
    from .client import DnsError

    try:
        cfg = load(args.config) if getattr(args, "config", None) else parse_bytes(default_bytes(), "<embedded default>")
    except ConfigError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 2
    configure("error")  # warnings (e.g. an unreadable resolv.conf) would mix with the answer
    resolver = build_resolver(cfg)

    async def lookup() -> tuple[Any, dict, Any]:
        first = await resolver.lookup(args.type, args.name)
        state = resolver.cache_state(args.type, args.name)
        queries = resolver.client.queries
        await resolver.lookup(args.type, args.name)
        state["servedFromCache"] = resolver.client.queries == queries
        return first, state, resolver.client.queries

    try:
        result, state, queries = asyncio.run(lookup())
    except ValueError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 2
    except DnsError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    out = {"type": args.type, "name": args.name, "result": _plain(result), "queries": queries, **state}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.type} {args.name}:")
    items = out["result"] if isinstance(out["result"], list) else [out["result"]]
    if not items or out["result"] is None:
        print("  (no records)")
    for item in items:
        print(f"  {json.dumps(item) if isinstance(item, (dict, list)) else item}")
    if state.get("cached"):
        kind = "negative" if state.get("negative") else "positive"
        print(f"cache {state['cache']}: {kind}, ttl {state.get('ttl', 'none')} s, weight {state['weight']} bytes")
    else:
        print(f"cache {state['cache']}: not cached")
    return 0
