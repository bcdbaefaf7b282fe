"""``stalwart-cli geo …``: ask the running server about ASN and GeoIP data.

* ``geo lookup IP [--json]`` — ASN, organisation and country of an address, as the server's
  sessions see them (control command ``geo.lookup``). When the server is not running, the tables
  left in the data directory answer instead (said on stderr).
* ``geo status`` — what each table holds and when it is refreshed next (``geo.status``).
* ``geo refresh`` — rebuild the tables now (``geo.refresh``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys

from ...errors import ControlError


def add_geo_parser(sub, common) -> None:
    """Register ``geo`` on ``stalwart-cli``'s subparsers; ``common`` adds --config/--data-dir."""
    geo = sub.add_parser("geo", help="ASN and country lookups (Asn object)")
    common(geo, suppress=True)
    actions = geo.add_subparsers(dest="action", required=True)
    lookup = actions.add_parser("lookup", help="ASN and country of an IP address")
    common(lookup, suppress=True)
    lookup.add_argument("address")
    lookup.add_argument("--json", action="store_true", help="machine-readable output")
    for name, help_ in (("status", "what the tables hold and when they refresh"),
                        ("refresh", "download or re-read the tables now")):
        common(actions.add_parser(name, help=help_), suppress=True)


def format_answer(reply: dict) -> str:
    if not reply.get("found"):
        return f"{reply['address']}  not found"
    parts = [reply["address"]]
    if reply.get("asn") is not None:
        parts.append(f"AS{reply['asn']}" + (f" {reply['asnName']}" if reply.get("asnName") else ""))
    if reply.get("country"):
        parts.append(reply["country"])
    return "  ".join(parts)


def run(args, data_dir: str) -> int:
    """Carry out ``stalwart-cli geo <action>``; returns the exit code."""
    from ...server.control import request

    payload = {"address": args.address} if args.action == "lookup" else {}
    try:
        reply = request(data_dir, f"geo.{args.action}", **payload)
    except ControlError as exc:
        if args.action != "lookup":
            print(f"stalwart-cli: {exc}", file=sys.stderr)
            return 1
        reply = offline_lookup(data_dir, args.address)
        if reply is None:
            print(f"stalwart-cli: {exc}", file=sys.stderr)
            return 1
        print(f"stalwart-cli: server not reachable; answered from the tables in {data_dir}", file=sys.stderr)
    if not reply.get("ok"):
        print(f"stalwart-cli: {reply.get('error', 'failed')}", file=sys.stderr)
        return 1
    if args.action == "lookup":
        print(json.dumps(reply) if args.json else format_answer(reply))
    elif args.action == "status":
        print(json.dumps(reply, indent=2))
    else:
        print(reply.get("message", "ok"))
    return 0


def offline_lookup(data_dir: str, address: str) -> dict | None:
    """Answer from ``<data-dir>/geo/*.table`` without the server; None when there are no tables."""
    from .config import AsnResource, Unauthenticated
    from .refresh import KINDS, table_path
    from .service import GeoService

    if not any(os.path.exists(table_path(data_dir, k)) for k in KINDS):
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return {"ok": False, "error": f"{address!r} is not an IP address"}
    service = GeoService(AsnResource(http_auth=Unauthenticated()), data_dir)
    try:
        info = service.lookup(ip.packed)
    finally:
        service.close()
    return {"ok": True, "address": str(ip), "source": "tables", "found": info is not None,
            **(info.as_dict() if info else {})}
