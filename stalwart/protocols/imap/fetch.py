"""FETCH (RFC 3501 §6.4.5, §7.4.2): which data items a client asked for, and their wire form."""
from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
import time
from dataclasses import dataclass

from .syntax import ImapSyntaxError, nstring, quote

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MACROS = {"ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
           "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
           "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]}
_SIMPLE = {"FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "RFC822", "RFC822.HEADER", "RFC822.TEXT",
           "BODY", "BODYSTRUCTURE"}
_SECTION_RE = re.compile(r"^(BODY(?:\.PEEK)?)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?$", re.IGNORECASE)
_PART_RE = re.compile(r"^(\d{1,4}(?:\.\d{1,4})*)(?:\.(HEADER|TEXT|MIME))?$|^(HEADER|TEXT)$|^$"
                      r"|^(?:(\d{1,4}(?:\.\d{1,4})*)\.)?(HEADER\.FIELDS(?:\.NOT)?) \(([^()]*)\)$", re.IGNORECASE)
_HDR_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class Item:
    """One requested data item. ``section`` is set for BODY[...] forms."""

    name: str  # FLAGS, UID, …, or BODY / BODY.PEEK for sections
    section: str | None = None
    partial: tuple[int, int] | None = None

    @property
    def needs_content(self) -> bool:
        return self.name not in ("FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE")

    @property
    def sets_seen(self) -> bool:
        """RFC 3501 §6.4.5: BODY[...] and RFC822 / RFC822.TEXT set \\Seen; PEEK and HEADER do not."""
        return (self.name == "BODY" and self.section is not None) or self.name in ("RFC822", "RFC822.TEXT")


def parse_items(tokens: list) -> list[Item]:
    """The data items of one FETCH: a macro, one item or a parenthesised list."""
    if len(tokens) != 1:
        raise ImapSyntaxError("expected one item or a parenthesised list")
    raw = tokens[0] if isinstance(tokens[0], list) else [tokens[0]]
    if isinstance(tokens[0], str) and tokens[0].upper() in _MACROS:
        raw = list(_MACROS[tokens[0].upper()])
    items = []
    for tok in raw:
        if not isinstance(tok, str):
            raise ImapSyntaxError("invalid fetch item")
        up = tok.upper()
        if up in _SIMPLE:
            items.append(Item(up))
            continue
        m = _SECTION_RE.match(tok)
        if m is None or not _PART_RE.match(m.group(2)):
            raise ImapSyntaxError(f"unsupported fetch item {tok[:40]!r}")
        partial = (int(m.group(3)), int(m.group(4))) if m.group(3) is not None else None
        items.append(Item(m.group(1).upper(), m.group(2).upper(), partial))
    return items


def internaldate(mtime: float) -> bytes:
    t = time.gmtime(mtime)
    day = f"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year}"
    return f'"{day} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"'.encode()


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body) — RFC 3501 §6.4.5 HEADER and TEXT."""
    m = _HDR_END.search(data)
    if m is None:
        return data, b""
    return data[:m.end()], data[m.end():]


def header_fields(header: bytes, names: list[str], negate: bool) -> bytes:
    """The fields of ``header`` named (or, negated, not named) in ``names``, then a blank line."""
    wanted = {n.lower() for n in names}
    out = []
    current: list[bytes] = []
    keep = False
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current and keep:
            out.extend(current)
        name = line.split(b":", 1)[0].strip().decode("latin-1").lower()
        keep = (name in wanted) != negate
        current = [line]
    if current and keep:
        out.extend(current)
    return b"".join(out) + b"\r\n"


def _parse(data: bytes):
    return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)


def _part(msg, path: str):
    """The MIME part at ``path`` ("1.2"); part 1 of a non-multipart message is its body."""
    for n in (int(x) for x in path.split(".")):
        if msg.is_multipart():
            parts = msg.get_payload()
            if not 1 <= n <= len(parts):
                return None
            msg = parts[n - 1]
        elif n != 1:
            return None
    return msg


def section_bytes(data: bytes, section: str) -> bytes:
    """The bytes of ``section`` of the message ``data``; unknown parts are empty (RFC 3501 §6.4.5)."""
    if section == "":
        return data
    header, body = split_message(data)
    if section == "HEADER":
        return header
    if section == "TEXT":
        return body
    m = _PART_RE.match(section)
    if m.group(5):  # [part.]HEADER.FIELDS[.NOT] (names)
        target = header
        if m.group(4):
            part = _part(_parse(data), m.group(4))
            if part is None or part.get_content_type() != "message/rfc822":
                return b""
            target = split_message(part.get_payload()[0].as_bytes())[0]
        return header_fields(target, m.group(6).split(), m.group(5).endswith(".NOT"))
    if m.group(3):
        return header if m.group(3) == "HEADER" else body
    part = _part(_parse(data), m.group(1))
    if part is None:
        return b""
    kind = (m.group(2) or "").upper()
    if kind == "MIME":
        return split_message(part.as_bytes())[0]
    if part.get_content_type() == "message/rfc822" and kind in ("HEADER", "TEXT"):
        inner = split_message(part.get_payload()[0].as_bytes())
        return inner[0] if kind == "HEADER" else inner[1]
    if part.is_multipart():
        return split_message(part.as_bytes())[1]
    payload = part.get_payload()
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _addresses(value: str | None) -> bytes:
    if not value:
        return b"NIL"
    out = []
    for name, addr in email.utils.getaddresses([value]):
        if not addr and not name:
            continue
        mailbox, _, host = addr.rpartition("@") if "@" in addr else (addr, "", "")
        out.append(b"(" + b" ".join([nstring(name or None), b"NIL", nstring(mailbox or None),
                                     nstring(host or None)]) + b")")
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def envelope(data: bytes) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE from the raw (undecoded) header fields."""
    hdr = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(split_message(data)[0])

    def raw(name):
        v = hdr.get(name)
        return None if v is None else str(v).replace("\r", "").replace("\n", "")

    frm = raw("From")
    fields = [nstring(raw("Date")), nstring(raw("Subject")), _addresses(frm), _addresses(raw("Sender") or frm),
              _addresses(raw("Reply-To") or frm), _addresses(raw("To")), _addresses(raw("Cc")),
              _addresses(raw("Bcc")), nstring(raw("In-Reply-To")), nstring(raw("Message-ID"))]
    return b"(" + b" ".join(fields) + b")"


def _params(part) -> bytes:
    params = part.get_params(header="content-type")
    pairs = [(k, v) for k, v in (params or [])[1:] if isinstance(v, str)]
    if not pairs:
        return b"NIL"
    return b"(" + b" ".join(quote(k.upper()) + b" " + quote(v) for k, v in pairs) + b")"


def _structure(part) -> bytes:
    if part.is_multipart():
        return b"(" + b"".join(_structure(p) for p in part.get_payload()) + b" " + \
            quote(part.get_content_subtype().upper()) + b")"
    maintype, subtype = part.get_content_maintype().upper(), part.get_content_subtype().upper()
    payload = part.get_payload()
    body = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    fields = [quote(maintype), quote(subtype), _params(part), nstring(part.get("Content-ID")),
              nstring(part.get("Content-Description")),
              quote((part.get("Content-Transfer-Encoding") or "7BIT").strip().upper()), str(len(body)).encode()]
    if maintype == "TEXT":
        fields.append(str(body.count(b"\n")).encode())
    return b"(" + b" ".join(fields) + b")"


def bodystructure(data: bytes) -> bytes:
    """RFC 3501 §7.4.2 BODY / BODYSTRUCTURE without extension data."""
    return _structure(_parse(data))
