"""``stalwart-cli account add`` and ``api-key add|list|remove``: edit accounts and API keys in a
configuration file.

The file is edited as JSON (other objects are kept as written), validated with the same loader as
the server, and replaced atomically; the running server picks it up on SIGHUP (or
``stalwart-cli reload``)."""
from __future__ import annotations

import json
import secrets
import time

from ..config import parse_bytes
from ..config.types import format_utc
from ..errors import ConfigError
from ..fileio import replace_file
from .model import api_key_hash
from .passwords import hash_password

TOKEN_PREFIX = "stw_"  # recognisable in logs and by secret scanners


def _read(config_path: str) -> tuple[bytes, dict]:
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
    return raw, doc


def _write(config_path: str, doc: dict) -> None:
    """Validate ``doc`` as the server would on SIGHUP, then replace the file atomically."""
    text = json.dumps(doc, indent=2).encode() + b"\n"
    parse_bytes(text, config_path)
    replace_file(config_path, text, keep_mode=True)  # a new file is 0600: it holds password hashes


def add_account(config_path: str, name: str, emails: list[str], password: str,
                scheme: str = "scrypt", data_dir: str | None = None) -> list[str]:
    """Add account ``name`` receiving ``emails``; returns the domains that had to be added.

    Raises :class:`ConfigError` (with the JSON path) when the result would not load, or when an
    Enterprise licence in force allows no more accounts (services.md §6.3; ``data_dir`` holds a
    renewed licence, if any)."""
    if not password:
        raise ConfigError("$.Account", "the password must not be empty")
    raw, doc = _read(config_path)
    domains = doc.setdefault("Domain", [])
    accounts = doc.setdefault("Account", [])
    if not isinstance(domains, list) or not isinstance(accounts, list):
        raise ConfigError("$", "Domain and Account must be lists")
    if any(isinstance(a, dict) and str(a.get("name", "")).lower() == name.lower() for a in accounts):
        raise ConfigError("$.Account", f"account {name!r} already exists")
    if raw.strip():
        from ..services.license.state import (
            AccountLimitExceeded,
            ensure_can_add_account,
        )

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
    _write(config_path, doc)
    return added


def _api_keys(doc: dict) -> list:
    keys = doc.setdefault("ApiKey", [])
    if not isinstance(keys, list):
        raise ConfigError("$.ApiKey", "ApiKey must be a list")
    return keys


def add_api_key(config_path: str, account: str, description: str | None = None,
                expires_at: int | None = None, now: float | None = None) -> tuple[str, str]:
    """Add a bearer token of ``account``; returns ``(id, token)``. Only the token's hash is written:
    the token is shown once, by the caller. Raises :class:`ConfigError` with the JSON path."""
    if expires_at is not None and expires_at <= (time.time() if now is None else now):
        raise ConfigError("$.ApiKey", f"the expiry {format_utc(expires_at)} is in the past")
    _raw, doc = _read(config_path)
    keys = _api_keys(doc)
    taken = {str(k.get("id")) for k in keys if isinstance(k, dict)}
    key_id = secrets.token_hex(4)
    while key_id in taken:  # 2^32 ids: a second draw is already unlikely
        key_id = secrets.token_hex(4)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entry: dict = {"id": key_id, "account": account, "secret": api_key_hash(token)}
    if description:
        entry["description"] = description
    if expires_at is not None:
        entry["expiresAt"] = format_utc(expires_at)
    keys.append(entry)
    _write(config_path, doc)  # names an existing Account, or fails with $.ApiKey[n].account
    return key_id, token


def list_api_keys(config_path: str) -> list[dict]:
    """``id``, ``account``, ``description``, ``expiresAt`` (Unix seconds) of every key, validated."""
    raw, _doc = _read(config_path)
    cfg = parse_bytes(raw, config_path)
    return [{"id": k.id, "account": k.account, "description": k.description,
             "expiresAt": None if k.expires_at is None else int(k.expires_at)} for k in cfg.ApiKey]


def remove_api_key(config_path: str, key_id: str) -> str:
    """Remove the key with ``key_id``; returns its account."""
    _raw, doc = _read(config_path)
    keys = _api_keys(doc)
    for i, key in enumerate(keys):
        # a key without an explicit id is known by its position, as the loader numbers it
        if isinstance(key, dict) and str(key.get("id", i)) == key_id:
            del keys[i]
            if not keys:
                del doc["ApiKey"]
            _write(config_path, doc)
            return str(key.get("account"))
    raise ConfigError("$.ApiKey", f"no ApiKey has id {key_id!r}")
