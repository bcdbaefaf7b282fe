"""``stalwart-cli account add``: write an account with a password hash into a configuration file.

The file is edited as JSON (other objects are kept as written), validated with the same loader as
the server, and replaced atomically; the running server picks it up on SIGHUP (or
``stalwart-cli reload``)."""
from __future__ import annotations

import json
import os
import tempfile

from ..config import parse_bytes
from ..errors import ConfigError
from .passwords import hash_password


def add_account(config_path: str, name: str, emails: list[str], password: str,
                scheme: str = "scrypt", data_dir: str | None = None) -> list[str]:
    """Add account ``name`` receiving ``emails``; returns the domains that had to be added.

    Raises :class:`ConfigError` (with the JSON path) when the result would not load, or when an
    Enterprise licence in force allows no more accounts (services.md §6.3; ``data_dir`` holds a
    renewed licence, if any)."""
    if not password:
        raise ConfigError("$.Account", "the password must not be empty")
    try:
        with open(config_path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raw = b"{}"
    try:
        doc = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise ConfigError("$", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError("$", "the configuration must be a JSON object")
    domains = doc.setdefault("Domain", [])
    accounts = doc.setdefault("Account", [])
    if not isinstance(domains, list) or not isinstance(accounts, list):
        raise ConfigError("$", "Domain and Account must be lists")
    if any(isinstance(a, dict) and str(a.get("name", "")).lower() == name.lower() for a in accounts):
        raise ConfigError("$.Account", f"account {name!r} already exists")
    if raw.strip():
        from ..services.license.state import AccountLimitExceeded, ensure_can_add_account

        try:
            ensure_can_add_account(parse_bytes(raw, config_path), data_dir)
        except AccountLimitExceeded as exc:
            raise ConfigError("$.Account", str(exc)) from None
    known = {str(d.get("name", "")).lower().rstrip(".") for d in domains if isinstance(d, dict)}
    added = []
    for addr in emails:
        domain = addr.rpartition("@")[2].lower().rstrip(".")
        if domain and domain not in known:
            domains.append({"name": domain})
            known.add(domain)
            added.append(domain)
    accounts.append({"name": name, "secret": hash_password(password, scheme), "emails": list(emails)})
    text = json.dumps(doc, indent=2).encode() + b"\n"
    parse_bytes(text, config_path)  # the same validation the server applies on SIGHUP
    directory = os.path.dirname(os.path.abspath(config_path))
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, os.stat(config_path).st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o600)  # it holds password hashes
        os.replace(tmp, config_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return added
