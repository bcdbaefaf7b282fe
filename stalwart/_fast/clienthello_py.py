"""Pure-Python twin of ``clienthello.pyx``: peek at the TLS ClientHello a client sent first on an
implicit-TLS port, before the bytes are handed (unchanged, whole) to the TLS library.

Wire format: TLS records (RFC 8446 §5.1, RFC 5246 §6.2.1) carrying one ClientHello handshake message
(RFC 8446 §4.1.2, RFC 5246 §7.4.1.2), possibly split over several records. Used for the implicit-TLS
"TLS garbage" check (tls.md §2, security.md §4) and, later, the TLS-ALPN-01 responder (tls.md §7.5),
which needs the SNI and the ALPN list before the handshake starts.

:func:`peek` takes the bytes received so far and returns a :class:`ClientHello`, None when the bytes
are a valid beginning of one that is not complete yet, or raises :class:`ClientHelloError`.
:func:`peek_with_hint` also says how many bytes must be buffered before peeking again can answer
differently; a driver that waits for them does a bounded number of peeks per ClientHello (about
one per extension and record) however the client splits its bytes, instead of one per read. The
result depends only on the bytes; every check is made as soon as the bytes it needs are present, so:

* feeding a valid ClientHello one byte at a time gives None until its last byte arrives;
* an input that fails keeps failing with the same reason however many bytes are appended;
* bytes after the ClientHello's last record (a ChangeCipherSpec, early data) are not looked at.

Reasons (:mod:`clienthello_errors`; the compiled peek gives the same ones for the same bytes):

* ``not-tls`` -- the first byte is not 22 (a handshake record). That includes an SSL 2.0-format
  ClientHello (RFC 5246 Appendix E.2), which cannot offer TLS 1.2 or 1.3. :func:`classify` says what
  the client sent instead.
* ``bad-record`` -- a record's major version is not 3 (any minor version is accepted on the record
  layer, RFC 5246 Appendix E.1), its length is 0 or over 2^14 (RFC 8446 §5.1), or a record that
  continues the ClientHello is not a handshake record (RFC 8446 §5.1: no interleaving).
* ``not-client-hello`` -- the first handshake message type is not client_hello (1).
* ``too-large`` -- the ClientHello declares more than :data:`MAX_HELLO_LENGTH` bytes, needs more
  than :data:`MAX_RECORDS` records, or has more than :data:`MAX_EXTENSIONS` extensions. Real
  ClientHellos are a few KiB (a post-quantum key share included) with about 20 extensions; the
  bounds keep the buffered bytes and the work per connection small.
* ``malformed`` -- anything else: a length overrunning its container (record, message, extension
  block, extension), bytes left over inside one, ``legacy_version`` below 0x0300, a session id over
  32 bytes, an empty or odd-length cipher suite list, no null compression method (RFC 5246
  §7.4.1.2), a duplicate extension (RFC 8446 §4.2), ``pre_shared_key`` not last (RFC 8446 §4.2.11),
  the record holding the end of the ClientHello carrying more bytes after it (RFC 8446 §5.1), or a
  broken ``server_name`` (RFC 6066 §3), ``application_layer_protocol_negotiation`` (RFC 7301 §3.1)
  or ``supported_versions`` (RFC 8446 §4.2.1) extension.

Checks are made in stream order. When the bytes gathered so far cannot be a ClientHello, that
error wins over a bad record header later in the stream.

SNI (RFC 6066 §3). The ``server_name`` list must hold exactly one ``host_name`` entry (the rule
OpenSSL applies). ``HostName`` is "the fully qualified DNS hostname ... ASCII ... without a trailing
dot"; literal IP addresses are "not permitted". What this peek makes of a host name:

* one trailing dot is dropped; the rest must be 1-253 bytes of labels of 1-63 bytes made of
  letters, digits, ``-`` and ``_``; ``sni`` is that name lower-cased;
* an IPv4 or IPv6 literal (as ``inet_pton`` reads it) gives ``sni`` None, not an error: some clients
  send one anyway, and tls.md §4 step 1 selects as if there were no SNI;
* anything else (non-ASCII, U-labels, spaces, NUL, ``*``, an empty label, an IPv6 zone id) is
  ``malformed``.
"""
from __future__ import annotations

import socket
from collections.abc import Iterable

from stalwart._fast.clienthello_errors import (BAD_RECORD, MALFORMED, NOT_CLIENT_HELLO, NOT_TLS, REASONS,
                                               TOO_LARGE, ClientHelloError)

__all__ = ["ClientHello", "ClientHelloError", "REASONS", "peek", "peek_with_hint", "classify", "MAX_HELLO_LENGTH",
           "MAX_RECORDS", "MAX_RECORD_LENGTH", "MAX_EXTENSIONS", "server_name_ext", "alpn_ext", "versions_ext",
           "client_hello_message", "to_records", "build"]

MAX_HELLO_LENGTH = 65536  # bytes of ClientHello body (the handshake length field)
MAX_RECORDS = 32
MAX_RECORD_LENGTH = 16384  # RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14
MAX_EXTENSIONS = 128  # real clients send about 20; the bound keeps a peek's work small

HANDSHAKE = 22
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_PRE_SHARED_KEY = 41
EXT_SUPPORTED_VERSIONS = 43

# classify() outcomes
PLAINTEXT_SMTP = "plaintext-smtp"
PLAINTEXT_HTTP = "plaintext-http"
PROXY_HEADER = "proxy-header"
TLS = "tls"
UNKNOWN = "unknown"
CLASSES = (PLAINTEXT_SMTP, PLAINTEXT_HTTP, PROXY_HEADER, TLS, UNKNOWN)

_LDH = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_V4_CHARS = frozenset(b"0123456789.")
_V6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")
_DIGITS = frozenset(b"0123456789")


class ClientHello:
    """What the peek extracted (RFC 8446 §4.1.2). ``sni``: the host name, lower-case, None when
    absent or an IP literal; ``alpn``: the offered protocol names as bytes, in order (RFC 7301 §3.1),
    () when absent; ``supported_versions`` (RFC 8446 §4.2.1) and ``cipher_suites``: as sent, GREASE
    values included; ``extensions``: the extension types in order; ``records``: how many records
    carried the message."""

    __slots__ = ("legacy_version", "cipher_suites", "sni", "alpn", "supported_versions", "extensions", "records")

    FIELDS = ("legacy_version", "cipher_suites", "sni", "alpn", "supported_versions", "extensions", "records")

    def __init__(self, legacy_version: int, cipher_suites: tuple, sni: str | None, alpn: tuple,
                 supported_versions: tuple, extensions: tuple, records: int):
        self.legacy_version = legacy_version
        self.cipher_suites = cipher_suites
        self.sni = sni
        self.alpn = alpn
        self.supported_versions = supported_versions
        self.extensions = extensions
        self.records = records

    def as_dict(self) -> dict:
        """Every field; equal for equal input in both twins."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self) -> str:
        return (f"ClientHello(sni={self.sni!r}, alpn={self.alpn!r}, legacy_version=0x{self.legacy_version:04x}, "
                f"supported_versions={tuple(hex(v) for v in self.supported_versions)}, "
                f"{len(self.cipher_suites)} suites, {len(self.extensions)} extensions, records={self.records})")


class _NeedMore(Exception):
    """Internal: the bytes stop before the next thing to check; ``args[0]`` is the payload length
    the check needs. Never leaves this module."""


def _fail(reason: str):
    raise ClientHelloError(reason)


def _host_name(raw: bytes) -> str | None:
    """RFC 6066 §3 HostName: the lower-case name, None for an IP literal, else ``malformed``."""
    name = raw[:-1] if raw[-1:] == b"." else raw
    if not name or len(name) > 253:
        _fail(MALFORMED)
    if b":" in name:
        # Only an IPv6 literal may hold a colon; its character set is checked first so that
        # inet_pton (which stops at a NUL) sees exactly the bytes the compiled peek sees.
        if len(name) <= 45 and _V6_CHARS.issuperset(name):
            try:
                socket.inet_pton(socket.AF_INET6, name.decode("ascii"))
                return None
            except OSError:
                pass
        _fail(MALFORMED)
    if name[-1] in _DIGITS and len(name) <= 15 and _V4_CHARS.issuperset(name):
        try:
            socket.inet_pton(socket.AF_INET, name.decode("ascii"))
            return None
        except OSError:
            pass
    for label in name.split(b"."):
        if not label or len(label) > 63 or not _LDH.issuperset(label):
            _fail(MALFORMED)
    return name.decode("ascii").lower()


def _server_name(d: bytes) -> str | None:
    # struct { ServerName server_name_list<1..2^16-1> }; ServerName = name_type(1) HostName<1..2^16-1>
    if len(d) < 5 or int.from_bytes(d[0:2], "big") != len(d) - 2 or d[2] != 0:
        _fail(MALFORMED)
    if int.from_bytes(d[3:5], "big") != len(d) - 5 or len(d) == 5:
        _fail(MALFORMED)  # exactly one host_name, filling the list; HostName not empty
    return _host_name(d[5:])


def _alpn(d: bytes) -> tuple:
    # ProtocolName protocol_name_list<2..2^16-1>; ProtocolName = opaque<1..2^8-1>
    if len(d) < 4 or int.from_bytes(d[0:2], "big") != len(d) - 2:
        _fail(MALFORMED)
    names = []
    j = 2
    while j < len(d):
        nl = d[j]
        if nl == 0 or j + 1 + nl > len(d):
            _fail(MALFORMED)
        names.append(d[j + 1:j + 1 + nl])
        j += 1 + nl
    return tuple(names)


def _versions(d: bytes) -> tuple:
    # ProtocolVersion versions<2..254>
    if len(d) < 3 or d[0] != len(d) - 1 or d[0] & 1:
        _fail(MALFORMED)
    return tuple(int.from_bytes(d[k:k + 2], "big") for k in range(1, len(d), 2))


def _message(m: bytes | bytearray) -> tuple | int:
    """The ClientHello handshake message at the start of ``m`` (all the payload gathered so far):
    the extracted fields, or (when it stops too early) the payload length the next check needs, or
    a raised error."""
    avail = len(m)
    if avail < 1:
        return 1
    if m[0] != CLIENT_HELLO:
        _fail(NOT_CLIENT_HELLO)
    if avail < 4:
        return 4
    length = int.from_bytes(m[1:4], "big")
    if length > MAX_HELLO_LENGTH:
        _fail(TOO_LARGE)
    end = 4 + length

    def need(i: int, k: int) -> None:
        """Bytes [i, i+k) are read: they must lie inside the message and be present."""
        if i + k > end:
            _fail(MALFORMED)
        if i + k > avail:
            raise _NeedMore(i + k)

    def skip(i: int, k: int) -> int:
        """Bytes [i, i+k) are stepped over: they only have to lie inside the message."""
        if i + k > end:
            _fail(MALFORMED)
        return i + k

    try:
        i = 4
        need(i, 2)
        legacy_version = int.from_bytes(m[i:i + 2], "big")
        if legacy_version < 0x0300:
            _fail(MALFORMED)
        i = skip(i + 2, 32)  # random
        need(i, 1)
        if m[i] > 32:
            _fail(MALFORMED)  # SessionID legacy_session_id<0..32>
        i = skip(i + 1, m[i])
        need(i, 2)
        cs_len = int.from_bytes(m[i:i + 2], "big")
        if cs_len < 2 or cs_len & 1:
            _fail(MALFORMED)  # CipherSuite cipher_suites<2..2^16-2>
        cs_off = i + 2
        i = skip(cs_off, cs_len)
        need(i, 1)
        cm_len = m[i]
        need(i + 1, cm_len)
        if 0 not in m[i + 1:i + 1 + cm_len]:
            _fail(MALFORMED)  # empty, or without the null method every implementation must offer
        i += 1 + cm_len
        sni = None
        alpn = versions = ()
        types: list[int] = []
        if i < end:  # extensions are optional before TLS 1.3 (RFC 5246 §7.4.1.2)
            need(i, 2)
            if i + 2 + int.from_bytes(m[i:i + 2], "big") != end:
                _fail(MALFORMED)
            i += 2
            seen: set[int] = set()
            while i < end:
                if len(types) == MAX_EXTENSIONS:
                    _fail(TOO_LARGE)
                need(i, 4)
                t = int.from_bytes(m[i:i + 2], "big")
                elen = int.from_bytes(m[i + 2:i + 4], "big")
                i += 4
                if i + elen > end or t in seen or (types and types[-1] == EXT_PRE_SHARED_KEY):
                    _fail(MALFORMED)
                seen.add(t)
                types.append(t)
                if t == EXT_SERVER_NAME or t == EXT_ALPN or t == EXT_SUPPORTED_VERSIONS:
                    need(i, elen)
                    d = bytes(m[i:i + elen])
                    if t == EXT_SERVER_NAME:
                        sni = _server_name(d)
                    elif t == EXT_ALPN:
                        alpn = _alpn(d)
                    else:
                        versions = _versions(d)
                i += elen
        if avail < end:
            return end
    except _NeedMore as more:
        return more.args[0]
    suites = tuple(int.from_bytes(m[k:k + 2], "big") for k in range(cs_off, cs_off + cs_len, 2))
    return (legacy_version, suites, sni, alpn, versions, tuple(types), end)


def peek(data) -> ClientHello | None:
    """Peek at the ClientHello at the start of ``data`` (bytes, bytearray or memoryview holding
    every byte the client sent so far). Returns a :class:`ClientHello`, None when more bytes are
    needed, or raises :class:`ClientHelloError` (rules in the module docstring)."""
    return peek_with_hint(data)[0]


def peek_with_hint(data) -> tuple[ClientHello | None, int]:
    """:func:`peek`, plus how long ``data`` must grow before another peek can answer differently:
    ``(hello, 0)``, or ``(None, n)`` where every extension of ``data`` shorter than ``n`` bytes is
    still incomplete. A driver that peeks again only from ``n`` bytes on does a bounded number of
    peeks per ClientHello however the client splits its bytes (one peek re-reads the whole buffer)."""
    data = bytes(data)
    n = len(data)
    if n == 0:
        return None, 1
    if data[0] != HANDSHAKE:
        _fail(NOT_TLS)
    payload = bytearray()
    pos = declared = records = 0
    needed = -1  # message length with its header, once the first 4 payload bytes are known
    record_error = None
    while pos < n and (needed < 0 or declared < needed):
        if records == MAX_RECORDS:
            record_error = TOO_LARGE
            break
        if data[pos] != HANDSHAKE or (pos + 1 < n and data[pos + 1] != 3):
            record_error = BAD_RECORD
            break
        if pos + 5 > n:
            break
        rlen = int.from_bytes(data[pos + 3:pos + 5], "big")
        if rlen == 0 or rlen > MAX_RECORD_LENGTH:
            record_error = BAD_RECORD
            break
        records += 1
        payload += data[pos + 5:pos + 5 + rlen]
        declared += rlen
        pos += 5 + rlen
        if needed < 0 and len(payload) >= 4:
            needed = 4 + int.from_bytes(payload[1:4], "big")
    fields = _message(payload)
    if isinstance(fields, int):
        if record_error is not None:
            _fail(record_error)
        # Each byte still to come adds at most one payload byte; a record header yet to come is
        # checked from its first byte on.
        want = n + fields - len(payload)
        if pos < n:
            want = n + 1  # inside a record header
        elif needed < 0 or declared < needed:
            want = min(want, pos + 1)
        return None, want
    if declared != fields[-1]:
        _fail(MALFORMED)  # the last record goes on past the ClientHello
    return ClientHello(*fields[:-1], records), 0


# -- classify ----------------------------------------------------------------------------------------

PROXY_V1 = b"PROXY "
PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
# RFC 9110 §9.1 (methods are case-sensitive), RFC 5789 PATCH, RFC 9113 §3.4 the HTTP/2 preface.
HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"PRI")
# RFC 5321 §4.1 and the extensions a client may open with (AUTH, STARTTLS, BDAT, ETRN); RFC 2033 LHLO.
SMTP_VERBS = (b"EHLO", b"HELO", b"LHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"NOOP", b"QUIT", b"VRFY",
              b"EXPN", b"HELP", b"AUTH", b"ETRN", b"STARTTLS")
_SMTP_VERBS = frozenset(SMTP_VERBS)
_HTTP_METHODS = frozenset(HTTP_METHODS)


def classify(data) -> str:
    """What a client sent instead of a ClientHello, for the event that closes the connection:

    * ``tls`` -- a TLS record header (content type 20-24, then major version 3, RFC 8446 §5.1) or an
      SSL 2.0-format ClientHello (RFC 5246 Appendix E.2);
    * ``proxy-header`` -- a PROXY protocol v1 or v2 signature (network.md §6);
    * ``plaintext-http`` -- an HTTP method (case-sensitive) followed by a space;
    * ``plaintext-smtp`` -- an SMTP command verb (any case) followed by a space, CR or LF;
    * ``unknown`` -- anything else, including too few bytes to tell.
    """
    b = bytes(data[:16])
    n = len(b)
    if n == 0:
        return UNKNOWN
    c = b[0]
    if 20 <= c <= 24 and (n == 1 or b[1] == 3):
        return TLS
    if c & 0x80 and n >= 5 and b[2] == CLIENT_HELLO and b[3] in (0, 3):
        return TLS
    if b.startswith((PROXY_V1, PROXY_V2)):
        return PROXY_HEADER
    sp = b.find(b" ")
    if sp > 0 and b[:sp] in _HTTP_METHODS:
        return PLAINTEXT_HTTP
    k = 0
    while k < n and b[k] not in b" \r\n":
        k += 1
    if k < n and b[:k].upper() in _SMTP_VERBS:
        return PLAINTEXT_SMTP
    return UNKNOWN


# -- builders (tests, fuzz seeds, benchmarks) ----------------------------------------------------------

def server_name_ext(name: bytes | str) -> tuple[int, bytes]:
    """A ``server_name`` extension with one host_name entry (RFC 6066 §3), bytes as given."""
    raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
    entry = b"\x00" + len(raw).to_bytes(2, "big") + raw
    return EXT_SERVER_NAME, len(entry).to_bytes(2, "big") + entry


def alpn_ext(protocols: Iterable[bytes | str]) -> tuple[int, bytes]:
    """An ALPN extension (RFC 7301 §3.1) offering ``protocols`` in order."""
    body = b"".join(bytes([len(p)]) + p for p in (p.encode("ascii") if isinstance(p, str) else p
                                                 for p in protocols))
    return EXT_ALPN, len(body).to_bytes(2, "big") + body


def versions_ext(versions: Iterable[int]) -> tuple[int, bytes]:
    """A ClientHello ``supported_versions`` extension (RFC 8446 §4.2.1)."""
    body = b"".join(v.to_bytes(2, "big") for v in versions)
    return EXT_SUPPORTED_VERSIONS, bytes([len(body)]) + body


def client_hello_message(extensions: Iterable[tuple[int, bytes]] | None = (), *, legacy_version: int = 0x0303,
                         random: bytes = bytes(32), session_id: bytes = b"",
                         cipher_suites: Iterable[int] = (0x1302, 0x1301, 0xC02C, 0xC02B),
                         compression: bytes = b"\x00") -> bytes:
    """A ClientHello handshake message with its 4-byte header (RFC 8446 §4.1.2); ``extensions``
    None leaves the extension block out entirely, as a TLS 1.2 client may."""
    suites = b"".join(s.to_bytes(2, "big") for s in cipher_suites)
    body = (legacy_version.to_bytes(2, "big") + random + bytes([len(session_id)]) + session_id
            + len(suites).to_bytes(2, "big") + suites + bytes([len(compression)]) + compression)
    if extensions is not None:
        block = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in extensions)
        body += len(block).to_bytes(2, "big") + block
    return bytes([CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body


def to_records(message: bytes, fragment: int | Iterable[int] = MAX_RECORD_LENGTH, *,
               version: int = 0x0301, content_type: int = HANDSHAKE) -> bytes:
    """``message`` as TLS records: fragments of at most ``fragment`` bytes, or of the given sizes
    in turn (the last size repeats)."""
    sizes = [fragment] if isinstance(fragment, int) else list(fragment)
    out = bytearray()
    pos = k = 0
    while pos < len(message):
        size = sizes[min(k, len(sizes) - 1)]
        chunk = message[pos:pos + size]
        out += bytes([content_type]) + version.to_bytes(2, "big") + len(chunk).to_bytes(2, "big") + chunk
        pos += size
        k += 1
    return bytes(out)


def build(sni: bytes | str | None = None, alpn: Iterable[bytes | str] = (),
          versions: Iterable[int] = (0x0304, 0x0303), fragment: int | Iterable[int] = MAX_RECORD_LENGTH,
          extra: Iterable[tuple[int, bytes]] = ()) -> bytes:
    """A complete, valid ClientHello flight: SNI, ALPN and supported_versions when given, then
    ``extra`` extensions, in records of ``fragment`` bytes."""
    exts = []
    if sni is not None:
        exts.append(server_name_ext(sni))
    alpn = tuple(alpn)
    if alpn:
        exts.append(alpn_ext(alpn))
    versions = tuple(versions)
    if versions:
        exts.append(versions_ext(versions))
    exts.extend(extra)
    return to_records(client_hello_message(exts), fragment)
