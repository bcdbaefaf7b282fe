"""Load, validate and normalise a configuration file.

Every error is a :class:`ConfigError` naming the JSON path of the field, e.g.
``$.NetworkListener[2].bind[0]: "[::]:99999" is not a valid socket address``.
"""
from __future__ import annotations

import os
import re
import socket
from typing import Any

import msgspec

from ..errors import ConfigError
from .model import OBJECTS, Config
from .secrets import resolve
from .types import dec_hook, enc_hook


def _line_col(text: bytes, pos: int) -> tuple[int, int]:
    line = text.count(b"\n", 0, pos) + 1
    col = pos - (text.rfind(b"\n", 0, pos) + 1) + 1
    return line, col


def _set_to_list(value: Any) -> Any:
    """Reference map form ``{"x": true}`` -> ``["x"]`` (entries mapped to false are dropped)."""
    if isinstance(value, dict):
        return [k for k, v in value.items() if v is not False]
    return value


def _normalise_sets(raw: dict[str, Any]) -> None:
    for name, (cls, is_collection) in OBJECTS.items():
        if name not in raw or not cls.set_fields:
            continue
        items = raw[name] if is_collection else [raw[name]]
        if not isinstance(items, list):
            continue
        for obj in items:
            if isinstance(obj, dict):
                for field in cls.set_fields:
                    if field in obj:
                        obj[field] = _set_to_list(obj[field])


def _dedupe(items: list) -> list:
    seen: set = set()
    out = []
    for it in items:
        if it not in seen:
            seen.add(it)
            out.append(it)
    return out


def parse_bytes(data: bytes, source: str = "<config>") -> Config:
    """Decode and validate one configuration document."""
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        msg = str(exc)
        pos = None
        if "(byte " in msg:
            try:
                pos = int(msg.rsplit("(byte ", 1)[1].rstrip(")"))
            except ValueError:
                pos = None
        where = f" at line {_line_col(data, pos)[0]}, column {_line_col(data, pos)[1]}" if pos is not None else ""
        raise ConfigError("$", f"{source} is not valid JSON{where}: {msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError("$", "the configuration must be a JSON object whose keys are object names")
    for key in raw:
        if key not in OBJECTS:
            raise ConfigError(f"$.{key}", f"unknown object {key!r} (known: {', '.join(OBJECTS)})")
    _normalise_sets(raw)
    try:
        cfg = msgspec.convert(raw, Config, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        path = "$"
        if " - at `" in msg:
            msg, path = msg.rsplit(" - at `", 1)
            path = path.rstrip("`")
        raise ConfigError(path, msg) from None
    validate(cfg)
    return cfg


def load(path: str) -> Config:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read configuration file {path!r}: {exc.strerror or exc}") from None
    return parse_bytes(data, source=path)


def _assign_ids(items: list, name: str) -> None:
    seen: dict[str, int] = {}
    for i, obj in enumerate(items):
        if obj.id is None:
            obj.id = str(i)
        if obj.id in seen:
            raise ConfigError(f"$.{name}[{i}].id", f"duplicate id {obj.id!r} (also used by {name}[{seen[obj.id]}])")
        seen[obj.id] = i


_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE = re.compile(r"^(?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?$")


def http_status(value: Any) -> int | None:
    """An expression result as an HTTP status: 200 (allowed) or 400-599 (refused with a problem
    body), as an integer or its decimal text; else None. 1xx, 204 and 304 cannot carry the body and
    3xx would need a Location, so they are not statuses an access rule may give."""
    if isinstance(value, str):
        text = value.strip()
        if not (len(text) == 3 and text.isascii() and text.isdigit()):  # isdigit() alone takes '²'
            return None
        value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and (value == 200 or 400 <= value <= 599):
        return value
    return None


def _allowed_endpoints(expr: dict) -> None:
    """``{"match": [{"if", "then"}...], "else"}`` (http.md §1), compiled here so that a mistake is a
    load error naming the field and the column; :class:`HttpService` compiles it again per load.
    A ``then`` or ``else`` that is a literal must be an HTTP status."""
    from .expr import HTTP_VARIABLES, compile_conditional

    path = "$.Http.allowedEndpoints"
    expr.setdefault("else", "200")
    cond = compile_conditional(expr, HTTP_VARIABLES, path)
    values = [(then, f"{path}.match[{i}].then") for i, (_if, then, _p) in enumerate(cond.branches)]
    for value, p in [*values, (cond.otherwise, f"{path}.else")]:
        if value is not None and value.is_literal and http_status(value.literal) is None:
            raise ConfigError(p, f"{value.text!r} is not an HTTP status for an access rule (200, or 400-599)")


def validate(cfg: Config) -> None:
    """Cross-field rules that a schema cannot express. Mutates ``cfg`` to its normal form."""
    for name, (_cls, is_collection) in OBJECTS.items():
        if is_collection:
            _assign_ids(getattr(cfg, name), name)

    ss = cfg.SystemSettings
    ss.proxy_trusted_networks = _dedupe(ss.proxy_trusted_networks)

    names: dict[str, int] = {}
    addrs: dict[tuple, str] = {}
    for i, lst in enumerate(cfg.NetworkListener):
        p = f"$.NetworkListener[{i}]"
        if not lst.name.strip():
            raise ConfigError(f"{p}.name", "listener name cannot be empty")
        if lst.name in names:
            raise ConfigError(f"{p}.name", f"duplicate listener name {lst.name!r} (also NetworkListener[{names[lst.name]}])")
        names[lst.name] = i
        lst.bind = _dedupe(lst.bind)
        if not lst.bind:
            raise ConfigError(f"{p}.bind", "at least one bind address is required")
        for j, addr in enumerate(lst.bind):
            if addr.port == 0:
                raise ConfigError(f"{p}.bind[{j}]", f'"{addr}" is not a valid socket address: port 0 is not allowed')
            if addr.key() in addrs:
                raise ConfigError(f"{p}.bind[{j}]", f'"{addr}" is already bound by listener {addrs[addr.key()]!r}')
            addrs[addr.key()] = lst.name
        lst.override_proxy_trusted_networks = _dedupe(lst.override_proxy_trusted_networks)
        lst.tls_disable_protocols = _dedupe(lst.tls_disable_protocols)
        lst.tls_disable_cipher_suites = _dedupe(lst.tls_disable_cipher_suites)
        if lst.tls_implicit and not lst.use_tls:
            raise ConfigError(f"{p}.tlsImplicit", "implicit TLS needs useTls: true")
        # One definition of the TLS rules (tls.md §1): the policy builder the TLS store uses.
        from ..tls.context import TlsPolicy

        TlsPolicy.from_listener(lst, p)

    # Dual stack: "[::]:p" and "0.0.0.0:p" may coexist (the v6 socket then gets IPV6_V6ONLY=1).
    cfg.Security.scan_ban_paths = _dedupe(cfg.Security.scan_ban_paths)

    from ..accounts.model import validate_accounts, validate_api_keys

    validate_accounts(cfg)
    validate_api_keys(cfg)
    from ..services.acme.validate import validate_acme

    validate_acme(cfg)
    account_names = {a.name.lower() for a in cfg.Account}
    for i, name in enumerate(cfg.Http.administrators):
        if name.lower() not in account_names:
            raise ConfigError(f"$.Http.administrators[{i}]", f"no Account is named {name!r}")
    _allowed_endpoints(cfg.Http.allowed_endpoints)
    for name, value in cfg.Http.response_headers.items():
        # Checked here with the grammar h11 enforces when sending (RFC 9110 §5.1, §5.5), so a bad
        # header is a configuration error instead of every response on the listener failing.
        p = f"$.Http.responseHeaders.{name}"
        if not _HEADER_NAME.match(name):
            raise ConfigError(p, f"{name!r} is not a valid header name")
        if name.lower() in ("content-length", "transfer-encoding", "connection"):
            raise ConfigError(p, f"{name} is set by the server and cannot be overridden")
        if not _HEADER_VALUE.match(value):
            raise ConfigError(p, "header values cannot contain control characters or surrounding spaces")

    cert_ids = {c.id for c in cfg.Certificate}
    if ss.default_certificate_id is not None and ss.default_certificate_id not in cert_ids:
        raise ConfigError("$.SystemSettings.defaultCertificateId", f"no Certificate has id {ss.default_certificate_id!r}")
    for i, cert in enumerate(cfg.Certificate):
        resolve(cert.certificate, f"$.Certificate[{i}].certificate")
        resolve(cert.private_key, f"$.Certificate[{i}].privateKey")

    for name in ("BlockedIp", "AllowedIp"):
        seen: dict = {}
        for i, entry in enumerate(getattr(cfg, name)):
            if entry.address in seen:
                raise ConfigError(f"$.{name}[{i}].address", f"{entry.address} is already listed in {name}[{seen[entry.address]}]")
            seen[entry.address] = i

    from ..services.ai.config import validate as validate_ai

    validate_ai(cfg)  # unique AiModel names, http(s) URLs, SpamLlm.modelId (services.md §4)


def os_hostname() -> str:
    """The OS host name, fully qualified when the resolver knows a better name than localhost."""
    name = socket.gethostname() or "localhost"
    if "." not in name:
        fqdn = socket.getfqdn(name)
        if "." in fqdn and not fqdn.startswith("localhost"):
            name = fqdn
    try:
        from .types import parse_hostname

        return parse_hostname(name)
    except ValueError:
        return "localhost"


def hostname(cfg: Config) -> str:
    return str(cfg.SystemSettings.default_hostname) if cfg.SystemSettings.default_hostname else os_hostname()


def worker_count(cfg: Config) -> int:
    n = cfg.SystemSettings.thread_pool_size
    if n:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def to_json(cfg: Config) -> bytes:
    """The effective configuration, defaults filled in, secrets masked."""
    raw = msgspec.to_builtins(cfg, enc_hook=enc_hook)
    _mask_secrets(raw)
    for account in [*raw.get("Account", []), *raw.get("ApiKey", [])]:
        if account.get("secret"):
            account["secret"] = "***"  # a password hash is still an offline-guessing target
    redis = raw.get("Redis")
    if isinstance(redis, dict) and isinstance(redis.get("url"), str):
        redis["url"] = _mask_url_password(redis["url"])
    return msgspec.json.format(msgspec.json.encode(raw), indent=2)


def _mask_url_password(url: str) -> str:
    """``redis://user:pw@host`` -> ``redis://user:***@host``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}" if colon or user else url


def _mask_secrets(node: Any) -> None:
    """Mask every inline secret (``{"@type": "Value", "secret": …}``) wherever an object nests one,
    e.g. ``Asn.httpAuth.bearerToken``."""
    if isinstance(node, dict):
        if node.get("@type") in ("Value", "Text") and "secret" in node:
            node["secret"] = "***"
        for value in node.values():
            _mask_secrets(value)
    elif isinstance(node, list):
        for value in node:
            _mask_secrets(value)
