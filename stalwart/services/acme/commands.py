"""``stalwart-cli acme …``: the running server's ACME renewals (tls.md §7).

* ``acme status [--json]`` — per Domain with Automatic certificates: state, next renewal, installed
  certificate (control command ``acme.status``);
* ``acme renew DOMAIN`` — order a new certificate now, even when the current one is not due
  (``acme.renew``); the server installs it live when the order completes;
* ``acme rollover PROVIDER``, ``acme deactivate PROVIDER``, ``acme revoke DOMAIN [--reason N]`` —
  account key rollover, account deactivation and revocation at the CA (:mod:`.actions`), run from
  ``--config`` and ``--data-dir``.
"""
from __future__ import annotations

import json
import sys

from ...errors import ControlError


def add_acme_parser(sub, common) -> None:
    """Register ``acme`` on ``stalwart-cli``'s subparsers; ``common`` adds --config/--data-dir."""
    acme = sub.add_parser("acme", help="ACME certificate renewals")
    common(acme, suppress=True)
    actions = acme.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="renewal state of every Automatic domain")
    common(status, suppress=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    renew = actions.add_parser("renew", help="order a new certificate for DOMAIN now")
    common(renew, suppress=True)
    renew.add_argument("domain")
    for name, target, help_ in (("rollover", "provider", "replace the account key of an AcmeProvider (RFC 8555 §7.3.5)"),
                                ("deactivate", "provider", "deactivate the account of an AcmeProvider (§7.3.6)"),
                                ("revoke", "domain", "revoke the installed certificate of DOMAIN (§7.6)")):
        p = actions.add_parser(name, help=help_)
        common(p, suppress=True)
        p.add_argument(target)
        if name == "revoke":
            p.add_argument("--reason", type=int, choices=[0, 1, 3, 4, 5], help="RFC 5280 reason code")


def _when(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def offline(args, data_dir: str) -> int:
    """rollover, deactivate and revoke: from --config and --data-dir, no running server needed."""
    import asyncio

    from ...config import load
    from ...errors import StalwartError
    from . import actions

    if not getattr(args, "config", None):
        print(f"stalwart-cli: acme {args.action} needs --config FILE", file=sys.stderr)
        return 2
    try:
        cfg = load(args.config)
        if args.action == "rollover":
            message = asyncio.run(actions.rollover(cfg, args.provider, data_dir))
        elif args.action == "deactivate":
            message = asyncio.run(actions.deactivate(cfg, args.provider, data_dir))
        else:
            message = asyncio.run(actions.revoke(cfg, args.domain, data_dir, args.reason))
    except StalwartError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def run(args, data_dir: str) -> int:
    from ...server.control import request

    if args.action in ("rollover", "deactivate", "revoke"):
        return offline(args, data_dir)
    from ...tls.certs import iso_time

    payload = {"domain": args.domain} if args.action == "renew" else {}
    try:
        reply = request(data_dir, f"acme.{args.action}", **payload)
    except ControlError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"stalwart-cli: {reply.get('error', 'failed')}", file=sys.stderr)
        return 1
    if args.action == "renew":
        print(reply.get("message", "ok"))
        return 0
    domains = reply.get("domains", {})
    if getattr(args, "json", False):
        print(json.dumps(domains, indent=2))
        return 0
    if not domains:
        print("no Domain uses Automatic certificate management")
    for name, e in domains.items():
        cert = f"expires {iso_time(e['notAfter'])}" if e.get("notAfter") else "no certificate yet"
        line = f"{name:32} {e.get('status') or '-':9} next in {_when(e['dueIn']):8} {cert}"
        if e.get("attempts"):
            line += f"  ({e['attempts']} failed: {e.get('lastError')})"
        print(line)
    return 0
