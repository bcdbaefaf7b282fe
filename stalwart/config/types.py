"""Value types shared by configuration objects (spec/README.md "Conventions").

msgspec calls :func:`dec_hook` for each of these classes; a ValueError raised there becomes a
``msgspec.ValidationError`` that carries the JSON path of the field.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

import msgspec


class Duration(int):
    """Milliseconds, >= 1 (spec/README.md "Durations")."""


class Size(int):
    """Bytes; a JSON integer or a suffix string such as ``"50mb"`` (powers of 1024)."""


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|k|kb|m|mb|g|gb)?\s*$", re.IGNORECASE)
_SIZE_MULT = {None: 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a byte size")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a byte size (digits with an optional b, kb, mb or gb suffix)")
        n = int(m.group(1)) * _SIZE_MULT[m.group(2).lower() if m.group(2) else None]
    else:
        raise ValueError(f"{value!r} is not a byte size")
    if n < 0 or n > 2**63 - 1:
        raise ValueError(f"{value!r} is out of range")
    return n


class SocketAddr:
    """A bind address: ``"127.0.0.1:25"``, ``"[::]:993"``. Host must be an IP literal."""

    __slots__ = ("host", "port", "family")

    def __init__(self, host: str, port: int, family: int):
        self.host = host
        self.port = port
        self.family = family

    @classmethod
    def parse(cls, text: Any) -> "SocketAddr":
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a valid socket address")
        bad = ValueError(f"{text!r} is not a valid socket address")
        if text.startswith("["):
            end = text.find("]:")
            if end < 0:
                raise bad
            host, port_s = text[1:end], text[end + 2 :]
            try:
                ip = ipaddress.IPv6Address(host)
            except ValueError:
                raise bad from None
            family = socket.AF_INET6
        else:
            host, sep, port_s = text.rpartition(":")
            if not sep:
                raise bad
            try:
                ip = ipaddress.IPv4Address(host)
            except ValueError:
                raise bad from None
            family = socket.AF_INET
        if not port_s.isdigit() or (len(port_s) > 1 and port_s[0] == "0"):
            raise bad
        port = int(port_s)
        if port > 65535:
            raise bad
        return cls(str(ip), port, family)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"

    __repr__ = __str__

    def key(self) -> tuple[int, str, int]:
        return (self.family, self.host, self.port)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SocketAddr) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())


class IpMask:
    """An address or network (spec/README.md "IpMask"); host bits are cleared."""

    __slots__ = ("network",)

    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network):
        self.network = network

    @classmethod
    def parse(cls, text: Any) -> "IpMask":
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{text!r} is not an IP address or network")
        text = text.strip()
        if "%" in text:
            raise ValueError(f"{text!r}: zone identifiers are not allowed")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or network") from None
        if "/" in text and net.prefixlen < 8:
            raise ValueError(f"{text!r}: prefix length must be at least 8")
        if net.network_address.is_unspecified and net.prefixlen == net.max_prefixlen:
            raise ValueError(f"{text!r}: the unspecified address is not allowed")
        return cls(net)

    def __str__(self) -> str:
        n = self.network
        return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IpMask) and self.network == other.network

    def __hash__(self) -> int:
        return hash(self.network)


class UtcDateTime(int):
    """RFC 3339 timestamp in UTC (``"2026-08-21T10:00:00Z"``), stored as Unix seconds."""


def parse_utc(value: Any) -> int:
    """Unix seconds of an RFC 3339 UTC timestamp; fractions round up (security.md §1)."""
    import datetime
    import math

    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp")
    try:
        dt = datetime.datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp") from None
    if dt.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (use Z for UTC)")
    return math.ceil(dt.timestamp())


def format_utc(seconds: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class HostName(str):
    """DNS host name, stored lower-case without a trailing dot."""


_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def parse_hostname(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a host name")
    name = value.strip().rstrip(".").lower()
    if not name or len(name) > 253 or not all(_LABEL_RE.match(lb) for lb in name.split(".")):
        raise ValueError(f"{value!r} is not a valid host name")
    return name


def dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Duration:
        if isinstance(obj, bool) or not isinstance(obj, int) or obj < 1:
            raise ValueError("Invalid duration value")
        return Duration(obj)
    if type_ is Size:
        return Size(parse_size(obj))
    if type_ is SocketAddr:
        return SocketAddr.parse(obj)
    if type_ is IpMask:
        return IpMask.parse(obj)
    if type_ is HostName:
        return HostName(parse_hostname(obj))
    if type_ is UtcDateTime:
        return UtcDateTime(parse_utc(obj))
    # msgspec's hook protocol: raising this error means "not a type this hook handles".
    raise NotImplementedError(f"no decoder for {type_!r}")


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, UtcDateTime):
        return format_utc(int(obj))
    if isinstance(obj, (Duration, Size)):
        return int(obj)
    if isinstance(obj, HostName):
        return str(obj)
    if isinstance(obj, (SocketAddr, IpMask)):
        return str(obj)
    # msgspec's hook protocol, as above.
    raise NotImplementedError(f"cannot encode {type(obj)!r}")


class Rate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """At most ``count`` events inside any sliding interval of ``period`` ms."""

    count: int
    period: Duration

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 1_000_000:
            raise ValueError("Rate.count must be between 1 and 1000000")
