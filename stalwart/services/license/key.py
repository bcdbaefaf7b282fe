"""Enterprise licence keys: format, offline Ed25519 verification and the domain rule.

spec/services.md §6.2. A key is standard base64 (RFC 4648 §4, padding required) of::

    valid_from u64 LE | valid_to u64 LE | accounts u32 LE | domain_len u32 LE | domain | signature[64]

where the Ed25519 signature (RFC 8032 §5.1) covers every byte before it. Validation steps run in the
reference's order and the first failure wins, with the reference's messages. We do better: ASCII
whitespace is removed before decoding, both domains are lower-cased, stripped of a trailing dot and
turned into IDNA A-labels before the Public Suffix List step, and a domain without a registrable
part says why. "Not yet valid" is its own error (the reference reports it as expired).
"""
from __future__ import annotations

import base64
import binascii
import struct
import time

import idna
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from publicsuffixlist import PublicSuffixList

from ...errors import StalwartError
from . import trust

HEADER = struct.Struct("<QQII")
SIGNATURE_LEN = 64
_ASCII_WS = b" \t\n\r\x0b\x0c"

_psl: PublicSuffixList | None = None


def _suffix_list() -> PublicSuffixList:
    global _psl  # parsed once per process: the list is ~10k rules and never changes at run time
    if _psl is None:
        _psl = PublicSuffixList()
    return _psl


class LicenseError(StalwartError):
    """A licence key is unusable. The message is the operator-facing reason."""


class LicenseDecodeError(LicenseError):
    def __init__(self) -> None:
        super().__init__("Failed to decode license key")


class LicenseParseError(LicenseError):
    def __init__(self) -> None:
        super().__init__("Failed to parse license key")


class LicenseParametersError(LicenseError):
    def __init__(self) -> None:
        super().__init__("Invalid license key parameters")


class LicenseSignatureError(LicenseError):
    def __init__(self) -> None:
        super().__init__("Failed to validate license key")


class LicenseExpired(LicenseError):
    def __init__(self, valid_to: int) -> None:
        self.valid_to = valid_to
        super().__init__("License is expired")


class LicenseNotYetValid(LicenseError):
    def __init__(self, valid_from: int) -> None:
        self.valid_from = valid_from
        super().__init__(f"License is not yet valid (valid from {_utc(valid_from)})")


class InvalidDomain(LicenseError):
    def __init__(self, domain: str, why: str) -> None:
        self.domain = domain
        super().__init__(f'Invalid domain "{domain}": {why}')


class DomainMismatch(LicenseError):
    def __init__(self, licensed: str, host: str) -> None:
        self.licensed = licensed
        self.host = host
        super().__init__(f'License issued to domain "{licensed}" does not match "{host}"')


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(seconds, 253402300799)))


class LicenseKey:
    """A decoded, signature-checked licence."""

    __slots__ = ("valid_from", "valid_to", "accounts", "domain", "text")

    def __init__(self, valid_from: int, valid_to: int, accounts: int, domain: str, text: str):
        self.valid_from = valid_from
        self.valid_to = valid_to
        self.accounts = accounts
        self.domain = domain
        self.text = text

    def is_active(self, now: float) -> bool:
        """``valid_from <= now < valid_to`` (services.md §6.3 ``is_enterprise_edition``)."""
        return self.valid_from <= now < self.valid_to

    def check_time(self, now: float) -> None:
        if now >= self.valid_to:
            raise LicenseExpired(self.valid_to)
        if now < self.valid_from:
            raise LicenseNotYetValid(self.valid_from)

    def describe(self) -> dict:
        return {"domain": self.domain, "accounts": self.accounts,
                "validFrom": _utc(self.valid_from), "validTo": _utc(self.valid_to)}

    def __repr__(self) -> str:
        return (f"LicenseKey(domain={self.domain!r}, accounts={self.accounts}, "
                f"valid {_utc(self.valid_from)} .. {_utc(self.valid_to)})")


def decode(text: str | bytes, public_key: Ed25519PublicKey | None = None) -> LicenseKey:
    """Steps 1–4 of §6.2: base64, layout, parameters, signature. No clock, no domain."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    compact = raw.translate(None, _ASCII_WS)
    try:
        blob = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise LicenseDecodeError() from None
    if len(blob) < HEADER.size:
        raise LicenseParseError()
    valid_from, valid_to, accounts, domain_len = HEADER.unpack_from(blob)
    end = HEADER.size + domain_len
    if len(blob) < end + SIGNATURE_LEN:
        raise LicenseParseError()
    try:
        domain = blob[HEADER.size:end].decode("utf-8")
    except UnicodeDecodeError:
        raise LicenseParseError() from None
    if valid_from == 0 or valid_to == 0 or valid_from >= valid_to or accounts == 0 or not domain:
        raise LicenseParametersError()
    key = public_key or trust.public_key()
    try:
        key.verify(blob[end:end + SIGNATURE_LEN], blob[:end])
    except InvalidSignature:
        raise LicenseSignatureError() from None
    return LicenseKey(valid_from, valid_to, accounts, domain, compact.decode("ascii"))


def normalise_domain(name: str) -> str:
    """Lower-case, no trailing dot, IDNA A-labels (UTS #46); a leading ``*.`` is kept."""
    name = name.strip().rstrip(".").lower()
    wildcard = name.startswith("*.")
    if wildcard:
        name = name[2:]
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii") if name else ""
    except idna.IDNAError as exc:
        raise InvalidDomain(name, f"not a valid domain name ({exc})") from None
    return ("*." if wildcard else "") + ascii_name


def registrable_domain(name: str, field: str) -> str:
    """The eTLD+1 of ``name`` by the Public Suffix List; ``field`` says what to change if none."""
    norm = normalise_domain(name)
    bare = norm[2:] if norm.startswith("*.") else norm
    if not bare:
        raise InvalidDomain(name, f"empty name; set {field}")
    if "." not in bare:
        raise InvalidDomain(name, f"a single label has no registrable domain; set {field} to a fully "
                                  "qualified name such as mx.example.org")
    found = _suffix_list().privatesuffix(bare)
    if found is None:
        raise InvalidDomain(name, f"it is a public suffix, not a registrable domain; set {field} to a "
                                  "name under a domain you own")
    return found


def covers(license_domain: str, hostname: str) -> None:
    """Step 6: the licence covers ``hostname`` when both have the same registrable domain."""
    lic = registrable_domain(license_domain, "the licence's domain (ask for a new licence)")
    host = registrable_domain(hostname, "SystemSettings.defaultHostname")
    if lic != host:
        raise DomainMismatch(license_domain, hostname)


def validate(text: str | bytes, hostname: str, now: float | None = None,
             public_key: Ed25519PublicKey | None = None) -> LicenseKey:
    """All of §6.2: decode and verify, then the validity window, then the domain rule."""
    lic = decode(text, public_key)
    lic.check_time(time.time() if now is None else now)
    covers(lic.domain, hostname)
    return lic


def issue(private_key: Ed25519PrivateKey, domain: str, accounts: int, valid_from: int, valid_to: int) -> str:
    """Sign a licence (the issuing side: ``scripts/issue-license`` and tests)."""
    name = domain.encode("utf-8")
    body = HEADER.pack(valid_from, valid_to, accounts, len(name)) + name
    return base64.b64encode(body + private_key.sign(body)).decode("ascii")
