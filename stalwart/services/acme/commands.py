"""``stalwart-cli acme …``: the running server's ACME renewals (tls.md §7).

* ``acme status [--json]`` — per Domain with Automatic certificates: state, next renewal, installed
  certificate (control command ``acme.status``);
* ``acme renew DOMAIN`` — order a new certificate now, even when the current one is not due
  (``acme.renew``); the server installs it live when the order completes;
* ``acme rollover PROVIDER``, ``acme deactivate PROVIDER``, ``acme revoke DOMAIN [--reason N]`` —
  account key rollover, account deactivation and revocation at the CA (:mod:`.actions`), run from
  ``--config`` and ``--data-dir``;
* ``acme rollback DOMAIN`` — serve the certificate a renewal replaced again (a CA issued one that
  clients reject), then ask the running server to reload certificates.

Run as root, the offline actions first become the owner of the data directory (the user the server
runs as, :mod:`stalwart.privileges`), or refuse when they cannot. They take the provider's lock
(:mod:`.lock`) and wait for a running renewal at most ``--wait`` seconds (default 30), then fail
naming the holder. ``acme status`` shows each domain's replaced certificates and who holds its
provider's lock.
"""
from __future__ import annotations

import argparse
import json
import sys

from ...errors import ControlError

LOCK_WAIT = 30.0  # s: default of --wait (and of the functions in .actions)
OFFLINE = ("rollover", "deactivate", "revoke", "rollback")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 3600")
    return value


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
                                ("revoke", "domain", "revoke the installed certificate of DOMAIN (§7.6)"),
                                ("rollback", "domain", "serve the previous certificate of DOMAIN again")):
        p = actions.add_parser(name, help=help_)
        common(p, suppress=True)
        p.add_argument(target)
        p.add_argument("--wait", type=_seconds, default=LOCK_WAIT, metavar="SECONDS",
                       help=f"how long to wait for a running renewal to finish (default {LOCK_WAIT:g})")
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
    """rollover, deactivate, revoke and rollback: from --config and --data-dir, no running server needed."""
    import asyncio

    from ...config import load
    from ...errors import StalwartError
    from ...privileges import become_owner_of
    from . import actions
    from .lock import describe

    if not getattr(args, "config", None):
        print(f"stalwart-cli: acme {args.action} needs --config FILE", file=sys.stderr)
        return 2

    def waiting(info) -> None:
        print(f"stalwart-cli: waiting up to {args.wait:g} s for {describe(info)}", file=sys.stderr, flush=True)

    lock = {"wait": args.wait, "on_wait": waiting}
    try:
        cfg = load(args.config)
        # Run as root (sudo), become the server's user before the first file is touched: root-owned
        # locks/ or account files would make every later renewal fail (stalwart.privileges).
        notice = become_owner_of(data_dir)
        if notice:
            print(f"stalwart-cli: {notice}", file=sys.stderr, flush=True)
        if args.action == "rollover":
            message = asyncio.run(actions.rollover(cfg, args.provider, data_dir, **lock))
        elif args.action == "deactivate":
            message = asyncio.run(actions.deactivate(cfg, args.provider, data_dir, **lock))
        elif args.action == "revoke":
            message = asyncio.run(actions.revoke(cfg, args.domain, data_dir, args.reason, **lock))
        else:
            message = asyncio.run(actions.rollback(cfg, args.domain, data_dir, **lock))
    except StalwartError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    print(message)
    if args.action == "rollback":
        return _reload_certificates(data_dir)
    return 0


def _reload_certificates(data_dir: str) -> int:
    """The restored file is in place; make the running server serve it now (without a server, it
    is served from the next start)."""
    from ...server.control import request

    try:
        reply = request(data_dir, "reload-certificates")
    except ControlError as exc:
        print(f"no running server to reload ({exc}); it serves the restored certificate when it starts")
        return 0
    if not reply.get("ok"):
        print(f"stalwart-cli: reload-certificates: {reply.get('error', 'failed')}", file=sys.stderr)
        return 1
    print(f"reload-certificates: {reply.get('message', 'ok')}")
    return 0


def run(args, data_dir: str) -> int:
    from ...server.control import request

    if args.action in OFFLINE:
        return offline(args, data_dir)
    from ...tls.certs import iso_time
    from .lock import describe

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
        if e.get("lockedBy"):
            print(f"    locked by {describe(e['lockedBy'])}")
        if e.get("pendingKeySince") is not None:
            print(f"    account key rollover unresolved since {iso_time(e['pendingKeySince'])}: the next use of "
                  "the account asks the CA which key it knows")
        for h in e.get("history") or ():
            when = f"expires {iso_time(h['notAfter'])}" if h.get("notAfter") else "unreadable"
            print(f"    previous: serial {h['serial']}, {when}, replaced {iso_time(h['archivedAt'])}")
    return 0
