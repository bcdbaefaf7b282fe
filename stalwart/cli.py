"""Entry points: ``stalwartd`` (the server) and ``stalwart-cli`` (talks to a running server).

Both accept ``--config FILE`` and ``--data-dir DIR`` before or after a subcommand. ``stalwart-cli``
reaches the server through the control socket in the data directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__, events
from .config import default_bytes, load, parse_bytes, to_json
from .config.types import parse_utc
from .errors import ConfigError, ControlError

DEFAULT_DATA_DIR = "./data"


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    d = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", metavar="FILE", default=d,
                        help="configuration file (JSON); default: the embedded configuration")
    parser.add_argument("--data-dir", metavar="DIR", default=d,
                        help=f"data directory (default: $STALWART_DATA_DIR or {DEFAULT_DATA_DIR})")


def _data_dir(args) -> str:
    return getattr(args, "data_dir", None) or os.environ.get("STALWART_DATA_DIR") or DEFAULT_DATA_DIR


def stalwartd_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stalwartd", description="stalwart mail server network core")
    _common(parser, suppress=False)
    parser.add_argument("--log-level", choices=list(events.LEVELS), default="info")
    parser.add_argument("--log-file", metavar="FILE", help="append log lines here instead of stderr")
    parser.add_argument("--print-default-config", action="store_true",
                        help="print the embedded default configuration and exit")
    parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long sessions may run on after shutdown or reload (default 30)")
    parser.add_argument("--heartbeat-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="a worker silent this long is killed and respawned (default 30)")
    parser.add_argument("--version", action="version", version=f"stalwartd {__version__}")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="validate the configuration and print the effective one")
    _common(check, suppress=True)
    args = parser.parse_args(argv)

    if args.print_default_config:
        sys.stdout.write(default_bytes().decode() + "\n")
        return 0
    if args.command == "check":
        try:
            cfg = load(args.config) if args.config else parse_bytes(default_bytes(), "<embedded default>")
        except ConfigError as exc:
            print(f"stalwartd: configuration error: {exc}", file=sys.stderr)
            return 2
        sys.stdout.write(to_json(cfg).decode() + "\n")
        return 0

    events.configure(args.log_level, args.log_file)
    from .server.master import Master

    master = Master(args.config, _data_dir(args), heartbeat_timeout=args.heartbeat_timeout,
                    drain_timeout=args.drain_timeout)
    return master.run()


def cli_main(argv: list[str] | None = None) -> int:
    from .server.control import request

    parser = argparse.ArgumentParser(prog="stalwart-cli", description="control a running stalwartd")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("reload", "reload the configuration (same as SIGHUP)"),
                        ("reload-certificates", "re-read certificate files and variables in every worker"),
                        ("status", "show workers and connection counts"),
                        ("stop", "graceful shutdown (same as SIGTERM)")):
        _common(sub.add_parser(name, help=help_), suppress=True)
    acct = sub.add_parser("account", help="manage accounts in the configuration file (live after a reload)")
    _common(acct, suppress=True)
    acct_actions = acct.add_subparsers(dest="action", required=True)
    acct_add = acct_actions.add_parser("add", help="add an account with a password hash to --config FILE")
    _common(acct_add, suppress=True)
    acct_add.add_argument("name")
    acct_add.add_argument("--email", action="append", required=True, metavar="ADDR",
                          help="an address the account receives (repeatable); its domain becomes local")
    acct_add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    acct_add.add_argument("--scheme", choices=["scrypt", "pbkdf2-sha256"], default="scrypt")
    keys = sub.add_parser("api-key", help="bearer tokens for the management API in --config FILE (live after a reload)")
    _common(keys, suppress=True)
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_add = key_actions.add_parser("add", help="create a token for ACCOUNT; it is printed once, only its hash is kept")
    _common(key_add, suppress=True)
    key_add.add_argument("account")
    key_add.add_argument("--description", help="what the key is for")
    key_add.add_argument("--expires", metavar="RFC3339", help='e.g. "2027-01-01T00:00:00Z"; default: never')
    _common(key_actions.add_parser("list", help="show the keys (never the tokens)"), suppress=True)
    key_rm = key_actions.add_parser("remove", help="delete a key by its id")
    _common(key_rm, suppress=True)
    key_rm.add_argument("id")
    dns = sub.add_parser("dns-records", help="print the autoconfig DNS records to publish for DOMAIN")
    _common(dns, suppress=True)
    dns.add_argument("domain")
    dns.add_argument("--publish", action="store_true",
                     help="reconcile the zone through the domain's DnsServer (dnsManagement Automatic)")
    for kind in ("blocked", "allowed"):
        p = sub.add_parser(kind, help=f"list or change the {kind} IP list (live, persistent)")
        _common(p, suppress=True)
        actions = p.add_subparsers(dest="action", required=True)
        _common(actions.add_parser("list", help=f"show the {kind} entries"), suppress=True)
        add = actions.add_parser("add", help="add an address or network (CIDR)")
        _common(add, suppress=True)
        add.add_argument("address")
        add.add_argument("--reason", help="manual (default), other, authFailure, … for blocks; free text for allows")
        when = add.add_mutually_exclusive_group()
        when.add_argument("--expires", metavar="RFC3339", help='e.g. "2026-12-01T00:00:00Z"')
        when.add_argument("--ttl", type=int, metavar="SECONDS", help="expire this many seconds from now")
        rm = actions.add_parser("remove", help="remove an address or network")
        _common(rm, suppress=True)
        rm.add_argument("address")
    # ai and license run offline from --config and --data-dir, as the server would (services.md §4, §6).
    ai = sub.add_parser("ai", help="test an AI model endpoint from the configuration file")
    _common(ai, suppress=True)
    ask = ai.add_subparsers(dest="action", required=True).add_parser("ask", help="send one prompt, print the answer")
    _common(ask, suppress=True)
    ask.add_argument("model", help='AiModel name ("" picks the only one)')
    ask.add_argument("prompt")
    ask.add_argument("--temperature", type=float, help="0..1; default: the model's temperature")
    ask.add_argument("-v", "--verbose", action="store_true", help="time taken and token counts on stderr")
    lic = sub.add_parser("license", help="the Enterprise licence")
    _common(lic, suppress=True)
    show = lic.add_subparsers(dest="action", required=True).add_parser("show", help="what the licence covers")
    _common(show, suppress=True)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    from .services.geo.commands import add_geo_parser, run as geo_run

    add_geo_parser(sub, _common)
    from .services.dns.commands import add_dns_parser, run as dns_run

    add_dns_parser(sub, _common)
    from .services.acme.commands import add_acme_parser, run as acme_run

    add_acme_parser(sub, _common)
    args = parser.parse_args(argv)
    if args.command == "geo":
        return geo_run(args, _data_dir(args))
    if args.command == "dns":
        return dns_run(args)
    if args.command == "acme":
        return acme_run(args, _data_dir(args))
    if args.command == "ai":
        from .services.ai.commands import ask as ai_ask

        return ai_ask(args.config, _data_dir(args), args.model, args.prompt, args.temperature, args.verbose)
    if args.command == "license":
        from .services.license.commands import show as license_show

        return license_show(args.config, _data_dir(args), args.json)
    payload: dict = {}
    command = args.command
    if command == "dns-records":
        return _dns_records(args)
    if command == "account":
        return _account(args)
    if command == "api-key":
        return _api_key(args)
    if command in ("blocked", "allowed"):
        command = f"{args.command}.{args.action}"
        if args.action in ("add", "remove"):
            payload["address"] = args.address
        if args.action == "add":
            if args.reason:
                payload["reason"] = args.reason
            if args.ttl is not None:
                payload["expiresAt"] = int(time.time()) + args.ttl
            elif args.expires:
                try:
                    payload["expiresAt"] = parse_utc(args.expires)
                except ValueError as exc:
                    print(f"stalwart-cli: {exc}", file=sys.stderr)
                    return 2
    try:
        reply = request(_data_dir(args), command, **payload)
    except ControlError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    if command in ("blocked.list", "allowed.list") and reply.get("ok"):
        for e in reply["entries"]:
            extra = f" expires {e['expiresAt']}" if e.get("expiresAt") else ""
            print(f"{e['address']:40} {e.get('reason') or '-':14} {e['source']}{extra}"
                  + (" (expired)" if e.get("expired") else ""))
    elif args.command == "status":
        print(json.dumps(reply, indent=2))
    elif reply.get("ok"):
        print(reply.get("message", "ok"))
    else:
        print(f"stalwart-cli: {reply.get('error', 'failed')}", file=sys.stderr)
    return 0 if reply.get("ok") else 1


def _dns_records(args) -> int:
    """http.md §9: computed from the configuration file offline; no running server needed."""
    from .config.types import parse_hostname
    from .protocols.http.dns import records, zone_lines

    try:
        domain = parse_hostname(args.domain)
        cfg = load(args.config) if getattr(args, "config", None) else parse_bytes(default_bytes(), "<embedded default>")
    except (ConfigError, ValueError) as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "publish", False):
        from .services.dnsproviders.commands import publish_command

        return publish_command(cfg, domain, _data_dir(args))
    print("\n".join(zone_lines(records(cfg, domain))))
    return 0


def _account(args) -> int:
    """``account add``: hash the password and write the account into the configuration file."""
    import getpass

    from .accounts.admin import add_account

    if not getattr(args, "config", None):
        print("stalwart-cli: account add needs --config FILE (the file the server loads)", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if password != getpass.getpass("Repeat it: "):
            print("stalwart-cli: the passwords differ", file=sys.stderr)
            return 1
    try:
        added = add_account(args.config, args.name, args.email, password, args.scheme,
                            data_dir=getattr(args, "data_dir", None) or os.environ.get("STALWART_DATA_DIR"))
    except (ConfigError, OSError) as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    for domain in added:
        print(f"added Domain {domain}")
    print(f"added Account {args.name}; send SIGHUP (or run `stalwart-cli reload`) to make it live")
    return 0


def _api_key(args) -> int:
    """``api-key add|list|remove``: offline edits of --config FILE, like ``account add``."""
    from .accounts.admin import add_api_key, list_api_keys, remove_api_key
    from .config.types import format_utc

    if not getattr(args, "config", None):
        print(f"stalwart-cli: api-key {args.action} needs --config FILE (the file the server loads)", file=sys.stderr)
        return 2
    try:
        if args.action == "add":
            try:
                expires = parse_utc(args.expires) if args.expires else None
            except ValueError as exc:
                print(f"stalwart-cli: {exc}", file=sys.stderr)
                return 2
            key_id, token = add_api_key(args.config, args.account, args.description, expires)
            print(token)  # the only time the token exists outside its owner's hands
            print(f"added ApiKey {key_id} for {args.account}; the token above is not stored and cannot be shown "
                  "again; send SIGHUP (or run `stalwart-cli reload`) to make it live", file=sys.stderr)
        elif args.action == "list":
            now = time.time()
            for key in list_api_keys(args.config):
                expires = key["expiresAt"]
                when = "never" if expires is None else format_utc(expires) + (" (expired)" if expires <= now else "")
                print(f"{key['id']:10} {key['account']:24} {when:32} {key['description'] or ''}".rstrip())
        else:
            account = remove_api_key(args.config, args.id)
            print(f"removed ApiKey {args.id} of {account}; send SIGHUP (or run `stalwart-cli reload`) to make it live")
    except (ConfigError, OSError) as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(stalwartd_main())
