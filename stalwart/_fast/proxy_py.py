"""Pure-Python twin of ``proxy.pyx``: strict PROXY protocol v1/v2 parser, detector and builder.

Wire format and rules: spec/network.md §6 (HAProxy ``doc/proxy-protocol.txt``, rev. 2020/03/05).

:func:`parse` takes the bytes received so far and returns a :class:`ProxyHeader`, or None when the
bytes are a valid beginning of a header that is not complete yet; anything else raises
:class:`ProxyError` with a reason code. ``ProxyHeader.consumed`` says how many bytes the header used:
the bytes after it belong to TLS or the protocol and must be handed on unchanged.

Reasons, deterministic for a given input (the compiled parser gives the same ones):

* ``bad-signature`` -- the bytes start with neither ``PROXY `` nor the v2 signature; found as soon
  as one byte disagrees.
* ``too-long`` -- v1 without LF in the first 107 bytes.
* ``bad-family`` -- v1 protocol token not ``TCP4``/``TCP6``/``UNKNOWN``; v2 byte 13 not one of
  0x00, 0x11, 0x21, 0x31 (other families, and the DGRAM transports, which TCP listeners refuse).
* ``bad-address`` -- v1: anything wrong after the token (fields, single spaces, addresses of the
  declared family, ports, a lone CR or LF); v2: ``len`` shorter than the family's address block.
* ``bad-version`` / ``bad-command`` -- v2 byte 12.
* ``bad-tlv`` -- a TLV or SSL sub-TLV overrunning its container, a duplicate of a TLV that can
  appear once, a CRC32C TLV not 4 bytes long, UNIQUE_ID over 128 bytes, SSL shorter than its 5
  fixed bytes, AUTHORITY not UTF-8 (checked after the walk, so a CRC failure is reported first).
* ``bad-crc`` -- CRC32C TLV present and not the Castagnoli CRC of the header with that field zeroed.

A v1 line is judged once its LF arrives (or at 107 bytes); a v2 header once its fixed part, then
its whole ``16 + len`` bytes, are present -- never earlier, so feeding a valid header one byte at a
time yields None until the last byte.
"""
from __future__ import annotations

import socket
import struct
from typing import Any, Iterable

from stalwart._fast.proxy_errors import (BAD_ADDRESS, BAD_COMMAND, BAD_CRC, BAD_FAMILY, BAD_SIGNATURE,
                                         BAD_TLV, BAD_VERSION, TOO_LONG, ProxyError)

__all__ = ["ProxyError", "ProxyHeader", "parse", "looks_like_proxy", "build_v1", "build_v2", "ssl_tlv",
           "crc32c", "SIGNATURE", "V1_MAX"]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107

LOCAL, PROXY = "LOCAL", "PROXY"
UNSPEC, INET, INET6, UNIX = "UNSPEC", "INET", "INET6", "UNIX"
FAMILIES = (UNSPEC, INET, INET6, UNIX)
BLOCK_SIZE = (0, 12, 36, 216)

TLV_ALPN = 0x01
TLV_AUTHORITY = 0x02
TLV_CRC32C = 0x03
TLV_NOOP = 0x04
TLV_UNIQUE_ID = 0x05
TLV_SSL = 0x20
TLV_NETNS = 0x30
SSL_VERSION, SSL_CN, SSL_CIPHER, SSL_SIG_ALG, SSL_KEY_ALG = 0x21, 0x22, 0x23, 0x24, 0x25
SSL_CLIENT_SSL, SSL_CLIENT_CERT_CONN, SSL_CLIENT_CERT_SESS = 0x01, 0x02, 0x04
UNIQUE_ID_MAX = 128
_ONCE = frozenset((TLV_ALPN, TLV_AUTHORITY, TLV_CRC32C, TLV_UNIQUE_ID, TLV_SSL, TLV_NETNS))

_V6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")
_DIGITS = frozenset(b"0123456789")


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli), as the PROXY v2 CRC32C TLV uses it; ``crc`` continues a previous run."""
    c = crc ^ 0xFFFFFFFF
    t = _CRC_TABLE
    for b in bytes(data):
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


class ProxyHeader:
    """A parsed PROXY header. Addresses are packed (4 or 16 bytes); ``source``/``destination`` are
    their text forms. ``proxied`` is True only for a PROXY command with an INET/INET6 family: in
    every other case (LOCAL, v1 ``UNKNOWN``, UNSPEC, UNIX) the real socket endpoints are the client
    (network.md §5 step 3.3)."""

    __slots__ = ("version", "command", "family", "src_addr", "dst_addr", "src_port", "dst_port",
                 "src_path", "dst_path", "consumed", "tlvs", "alpn", "authority", "crc32c", "unique_id",
                 "netns", "ssl", "ssl_client", "ssl_verify", "ssl_version", "ssl_cn", "ssl_cipher",
                 "ssl_sig_alg", "ssl_key_alg")

    def __init__(self, version: int, command: str, family: str, consumed: int):
        self.version = version
        self.command = command
        self.family = family
        self.consumed = consumed
        self.src_addr = self.dst_addr = None
        self.src_port = self.dst_port = 0
        self.src_path = self.dst_path = None
        self.tlvs: tuple = ()
        self.alpn = self.authority = self.crc32c = self.unique_id = self.netns = None
        self.ssl = False
        self.ssl_client = 0
        self.ssl_verify = None
        self.ssl_version = self.ssl_cn = self.ssl_cipher = self.ssl_sig_alg = self.ssl_key_alg = None

    @property
    def proxied(self) -> bool:
        return self.command == PROXY and self.family in (INET, INET6)

    @property
    def tls(self) -> bool:
        """The SSL TLV says the client connected over TLS (client bit 0x01; network.md §6)."""
        return bool(self.ssl_client & SSL_CLIENT_SSL)

    @property
    def source(self) -> str | None:
        return _ntop(self.src_addr)

    @property
    def destination(self) -> str | None:
        return _ntop(self.dst_addr)

    def as_dict(self) -> dict[str, Any]:
        """Every field, including the derived ones; equal for equal headers in both twins."""
        out = {name: getattr(self, name) for name in self.__slots__}
        out.update(proxied=self.proxied, tls=self.tls, source=self.source, destination=self.destination)
        return out

    def __repr__(self) -> str:
        return (f"ProxyHeader(v{self.version} {self.command} {self.family} {self.source}:{self.src_port}"
                f" -> {self.destination}:{self.dst_port}, consumed={self.consumed})")


def _ntop(packed: bytes | None) -> str | None:
    if packed is None:
        return None
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def looks_like_proxy(data: bytes) -> bool | None:
    """First-bytes guard (network.md §5 step 7): True when ``data`` starts with ``PROXY `` or the v2
    signature, False when it certainly does not, None when it is a proper prefix of one of them."""
    n = len(data)
    if n == 0:
        return None
    head = bytes(data[:12])
    if head[:6] == V1_PREFIX or head == SIGNATURE:
        return True
    if V1_PREFIX.startswith(head[:6]) or SIGNATURE.startswith(head):
        return None
    return False


def parse(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY v1 or v2 header at the start of ``data`` (network.md §6).

    Returns the header, or None when more bytes are needed; raises :class:`ProxyError`.
    """
    n = len(data)
    if n == 0:
        return None
    first = data[0]
    if first == 0x50:  # "P"
        return _parse_v1(bytes(data[:V1_MAX]), n)
    if first == 0x0D:
        return _parse_v2(data, n)
    raise ProxyError(BAD_SIGNATURE)


def _parse_v1(data: bytes, n: int) -> ProxyHeader | None:
    if data[:6] != V1_PREFIX[: min(n, 6)]:
        raise ProxyError(BAD_SIGNATURE)
    lf = data.find(b"\n")
    if lf < 0:
        if n >= V1_MAX:
            raise ProxyError(TOO_LONG)
        return None
    if data[lf - 1] != 0x0D:
        raise ProxyError(BAD_ADDRESS)  # lone LF
    line = data[6:lf - 1]
    if b"\r" in line:
        raise ProxyError(BAD_ADDRESS)  # lone CR
    sp = line.find(b" ")
    token = line if sp < 0 else line[:sp]
    if token == b"UNKNOWN":
        return ProxyHeader(1, PROXY, UNSPEC, lf + 1)
    if token == b"TCP4":
        family, parse_addr = INET, _v4
    elif token == b"TCP6":
        family, parse_addr = INET6, _v6
    else:
        raise ProxyError(BAD_FAMILY)
    fields = line[sp + 1:].split(b" ") if sp >= 0 else []
    if len(fields) != 4:
        raise ProxyError(BAD_ADDRESS)
    h = ProxyHeader(1, PROXY, family, lf + 1)
    h.src_addr = parse_addr(fields[0])
    h.dst_addr = parse_addr(fields[1])
    h.src_port = _port(fields[2])
    h.dst_port = _port(fields[3])
    return h


def _decimal(field: bytes, max_digits: int, max_value: int) -> int:
    """A decimal without sign or leading zeros (``0`` itself is fine)."""
    if not 1 <= len(field) <= max_digits or not _DIGITS.issuperset(field) or (len(field) > 1 and field[0] == 0x30):
        raise ProxyError(BAD_ADDRESS)
    value = int(field)
    if value > max_value:
        raise ProxyError(BAD_ADDRESS)
    return value


def _port(field: bytes) -> int:
    return _decimal(field, 5, 65535)


def _v4(field: bytes) -> bytes:
    parts = field.split(b".")
    if len(parts) != 4:
        raise ProxyError(BAD_ADDRESS)
    return bytes(_decimal(p, 3, 255) for p in parts)


def _v6(field: bytes) -> bytes:
    # RFC 4291 §2.2 text forms (what inet_pton accepts), which include the RFC 5952 canonical forms
    # every sender emits; the character check keeps zone ids and other junk away from inet_pton.
    if not 2 <= len(field) <= 45 or not _V6_CHARS.issuperset(field):
        raise ProxyError(BAD_ADDRESS)
    try:
        return socket.inet_pton(socket.AF_INET6, field.decode("ascii"))
    except OSError:
        raise ProxyError(BAD_ADDRESS) from None


def _parse_v2(data: bytes, n: int) -> ProxyHeader | None:
    head = bytes(data[:16])
    if head[:12] != SIGNATURE[: min(n, 12)]:
        raise ProxyError(BAD_SIGNATURE)
    if n < 13:
        return None
    if head[12] >> 4 != 2:
        raise ProxyError(BAD_VERSION)
    cmd = head[12] & 0x0F
    if cmd > 1:
        raise ProxyError(BAD_COMMAND)
    if n < 14:
        return None
    fam = head[13]
    if fam not in (0x00, 0x11, 0x21, 0x31):
        raise ProxyError(BAD_FAMILY)
    fam >>= 4
    if n < 16:
        return None
    total = 16 + ((head[14] << 8) | head[15])
    block = BLOCK_SIZE[fam]
    if total - 16 < block:
        raise ProxyError(BAD_ADDRESS)
    if n < total:
        return None
    buf = bytes(data[:total])
    h = ProxyHeader(2, PROXY if cmd else LOCAL, FAMILIES[fam], total)
    if fam == 1:
        h.src_addr, h.dst_addr = buf[16:20], buf[20:24]
        h.src_port, h.dst_port = struct.unpack_from(">HH", buf, 24)
    elif fam == 2:
        h.src_addr, h.dst_addr = buf[16:32], buf[32:48]
        h.src_port, h.dst_port = struct.unpack_from(">HH", buf, 48)
    elif fam == 3:
        h.src_path = buf[16:124].split(b"\0", 1)[0]
        h.dst_path = buf[124:232].split(b"\0", 1)[0]
    _tlvs(h, buf, 16 + block, total)
    return h


def _walk(buf: bytes, off: int, end: int):
    """Yield (type, value offset, value length) for the TLVs in ``buf[off:end]``."""
    while off < end:
        if end - off < 3:
            raise ProxyError(BAD_TLV)
        vlen = (buf[off + 1] << 8) | buf[off + 2]
        if off + 3 + vlen > end:
            raise ProxyError(BAD_TLV)
        yield buf[off], off + 3, vlen
        off += 3 + vlen


def _tlvs(h: ProxyHeader, buf: bytes, off: int, total: int) -> None:
    seen = set()
    tlvs = []
    authority = None
    for t, voff, vlen in _walk(buf, off, total):
        value = buf[voff:voff + vlen]
        tlvs.append((t, value))
        if t in _ONCE:
            if t in seen:
                raise ProxyError(BAD_TLV)
            seen.add(t)
        if t == TLV_ALPN:
            h.alpn = value
        elif t == TLV_AUTHORITY:
            authority = value
        elif t == TLV_CRC32C:
            if vlen != 4:
                raise ProxyError(BAD_TLV)
            crc = crc32c(buf[voff + 4:total], crc32c(b"\0\0\0\0", crc32c(buf[:voff])))
            if crc != int.from_bytes(value, "big"):
                raise ProxyError(BAD_CRC)
            h.crc32c = crc
        elif t == TLV_UNIQUE_ID:
            if vlen > UNIQUE_ID_MAX:
                raise ProxyError(BAD_TLV)
            h.unique_id = value
        elif t == TLV_SSL:
            _ssl(h, buf, voff, voff + vlen)
        elif t == TLV_NETNS:
            h.netns = value.decode("utf-8", "replace")
        # NOOP, application-specific (0xE0-0xEF), experimental, reserved and unknown: ignored
    if authority is not None:
        try:
            h.authority = authority.decode("utf-8")
        except UnicodeDecodeError:
            raise ProxyError(BAD_TLV) from None
    h.tlvs = tuple(tlvs)


_SSL_FIELDS = {SSL_VERSION: "ssl_version", SSL_CN: "ssl_cn", SSL_CIPHER: "ssl_cipher",
               SSL_SIG_ALG: "ssl_sig_alg", SSL_KEY_ALG: "ssl_key_alg"}


def _ssl(h: ProxyHeader, buf: bytes, off: int, end: int) -> None:
    if end - off < 5:
        raise ProxyError(BAD_TLV)
    h.ssl = True
    h.ssl_client = buf[off]
    h.ssl_verify = int.from_bytes(buf[off + 1:off + 5], "big")
    seen = set()
    for t, voff, vlen in _walk(buf, off + 5, end):
        name = _SSL_FIELDS.get(t)
        if name is None:
            continue  # unknown sub-TLV: ignored like unknown TLVs
        if t in seen:
            raise ProxyError(BAD_TLV)
        seen.add(t)
        setattr(h, name, buf[voff:voff + vlen].decode("utf-8", "replace"))


# -- builder (tests, benchmarks, fuzzing seeds) --------------------------------------------------

def _packed(addr: str | bytes | None) -> bytes | None:
    if addr is None or isinstance(addr, (bytes, bytearray)):
        return None if addr is None else bytes(addr)
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def build_v1(source: str | bytes | None = None, destination: str | bytes | None = None,
             source_port: int = 0, destination_port: int = 0) -> bytes:
    """A v1 line: ``TCP4``/``TCP6`` from the address family, ``UNKNOWN`` when no address is given."""
    src, dst = _packed(source), _packed(destination)
    if src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    if len(src) != len(dst):
        raise ValueError("source and destination must be of one family")
    proto = "TCP4" if len(src) == 4 else "TCP6"
    return (f"PROXY {proto} {_ntop(src)} {_ntop(dst)} {int(source_port)} {int(destination_port)}\r\n"
            .encode("ascii"))


def ssl_tlv(client: int = SSL_CLIENT_SSL, verify: int = 0, version: str | None = None, cn: str | None = None,
            cipher: str | None = None, sig_alg: str | None = None, key_alg: str | None = None,
            extra: Iterable[tuple[int, bytes]] = ()) -> tuple[int, bytes]:
    """An SSL TLV (type 0x20) with its sub-TLVs, for the ``tlvs`` argument of :func:`build_v2`."""
    subs = [(t, v.encode()) for t, v in ((SSL_VERSION, version), (SSL_CN, cn), (SSL_CIPHER, cipher),
                                         (SSL_SIG_ALG, sig_alg), (SSL_KEY_ALG, key_alg)) if v is not None]
    body = bytes([client]) + verify.to_bytes(4, "big") + b"".join(_tlv(t, v) for t, v in [*subs, *extra])
    return TLV_SSL, body


def _tlv(t: int, value: bytes) -> bytes:
    return bytes([t]) + len(value).to_bytes(2, "big") + bytes(value)


def build_v2(command: str = PROXY, source: str | bytes | None = None, destination: str | bytes | None = None,
             source_port: int = 0, destination_port: int = 0, *, family: str | None = None,
             tlvs: Iterable[tuple[int, bytes]] = (), crc: bool = False) -> bytes:
    """A v2 header. The family follows the addresses (none: UNSPEC) unless ``family`` says UNIX, in
    which case ``source``/``destination`` are paths (bytes, at most 108). ``crc`` appends a CRC32C
    TLV that covers the whole header."""
    if family == UNIX:
        fam, block = 0x31, bytes(source or b"").ljust(108, b"\0") + bytes(destination or b"").ljust(108, b"\0")
        if len(block) != 216:
            raise ValueError("UNIX paths are at most 108 bytes")
    else:
        src, dst = _packed(source), _packed(destination)
        if src is None or dst is None:
            fam, block = 0x00, b""
        elif len(src) != len(dst):
            raise ValueError("source and destination must be of one family")
        else:
            fam = 0x11 if len(src) == 4 else 0x21
            block = src + dst + struct.pack(">HH", source_port, destination_port)
    body = block + b"".join(_tlv(t, v) for t, v in tlvs)
    if crc:
        body += _tlv(TLV_CRC32C, b"\0\0\0\0")
    if len(body) > 0xFFFF:
        raise ValueError("a v2 header holds at most 65535 bytes after the fixed part")
    cmd = 0x21 if command == PROXY else 0x20
    out = SIGNATURE + bytes([cmd, fam]) + len(body).to_bytes(2, "big") + body
    if crc:
        out = out[:-4] + crc32c(out).to_bytes(4, "big")
    return out
