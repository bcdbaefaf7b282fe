"""The client address behind a trusted reverse proxy: ``Forwarded`` / ``X-Forwarded-For`` (security.md §7).

Only a connection whose attributed address (after PROXY processing) is in the listener's effective
trust list may speak for someone else. The hop list is read right to left and the first hop that
is not itself trusted is the client: a client cannot slip an address past the proxy by writing its
own header, because the proxy appends the real peer on the right (RFC 7239 §5.2).
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_MAPPED = b"\x00" * 10 + b"\xff\xff"


@dataclass(slots=True)
class ClientAddress:
    """The address a request is attributed to, and whether it is a trusted proxy speaking for itself."""

    ip: str
    packed: bytes
    exempt: bool = False  # a trusted proxy hop: never counted, blocked or banned (security.md §2)
    forwarded: bool = False  # taken from a forwarding header
    missing: bool = False  # a trusted proxy sent no usable header (http.x-forwarded-missing)


def pack(text: str) -> bytes | None:
    """Packed address of an IP literal, IPv4-mapped IPv6 turned into IPv4; None if not an address."""
    try:
        if ":" in text:
            packed = socket.inet_pton(socket.AF_INET6, text)
            return packed[12:] if packed[:12] == _MAPPED else packed
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return None


def unpack(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def parse_node(value: str) -> bytes | None:
    """One node (RFC 7239 §6): ``192.0.2.1``, ``192.0.2.1:8080``, ``[2001:db8::1]:4711``, a bare IPv6
    address; ``unknown`` and obfuscated ``_names`` are not addresses."""
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1].strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1:]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        return pack(value[1:end]) if ":" in value[1:end] else None
    if value.count(":") == 1:  # IPv4 with a port
        host, _, port = value.partition(":")
        if not port.isdigit():
            return None
        value = host
    return pack(value)


def _split_quoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings (RFC 9110 §5.6.4 quoted-string, with ``\\`` escapes)."""
    parts, cur, quoted, escape = [], [], False, False
    for c in text:
        if escape:
            cur.append(c)
            escape = False
        elif quoted and c == "\\":
            cur.append(c)
            escape = True
        elif c == '"':
            quoted = not quoted
            cur.append(c)
        elif c == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def hops(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes | None] | None:
    """The forwarding hops, left to right: the ``for=`` of each ``Forwarded`` element when that header is
    present (every instance joined), else the ``X-Forwarded-For`` entries. None: neither header.
    An element or entry that is not an address is kept as None so the walk can stop there."""
    fwd: list[str] = []
    xff: list[str] = []
    for name, value in headers:
        if name == b"forwarded":
            fwd.append(value.decode("latin-1"))
        elif name == b"x-forwarded-for":
            xff.append(value.decode("latin-1"))
    if fwd:
        out: list[bytes | None] = []
        for element in _split_quoted(",".join(fwd), ","):
            if not element.strip():
                continue
            node = None
            for pair in _split_quoted(element, ";"):
                key, eq, val = pair.partition("=")
                if eq and key.strip().lower() == "for":
                    node = parse_node(val)
                    break
            out.append(node)
        return out
    if xff:
        return [parse_node(v) for v in ",".join(xff).split(",") if v.strip()]
    return None


def attribute(headers: Iterable[tuple[bytes, bytes]], peer_ip: str, peer: bytes,
              trusted: Callable[[bytes], bool]) -> ClientAddress:
    """The client address of one request from a trusted peer (security.md §7 "right-most untrusted hop").

    ``peer`` is the connection's attributed address and must already be trusted. Walking from the right,
    trusted hops are skipped; the first untrusted hop is the client. A hop that is not an address stops
    the walk at the hop to its right (a trusted proxy, so exempt). All hops trusted: the left-most one.
    """
    chain = hops(headers)
    if not chain:
        return ClientAddress(peer_ip, peer, exempt=True, missing=True)
    right = peer_ip, peer, False  # the hop to the right of the one looked at: trusted so far
    for hop in reversed(chain):
        if hop is None:
            break
        if not trusted(hop):
            return ClientAddress(unpack(hop), hop, forwarded=True)
        right = unpack(hop), hop, True
    ip, packed, forwarded = right
    return ClientAddress(ip, packed, exempt=True, forwarded=forwarded)
