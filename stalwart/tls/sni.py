"""SNI selection of the certificate a handshake presents (tls.md §4 "We do better").

Two tables, rebuilt whenever the set of usable certificates changes:

* **exact**: every non-wildcard DNS name, lower-case;
* **wildcard**: every ``*.<suffix>`` name, keyed by ``<suffix>``.

For each name the usable certificate with the latest ``notValidAfter`` wins (ties: the lowest id).
Selection for a ClientHello:

1. SNI absent or an IP literal: step 4.
2. Lower-case, drop one trailing dot, look the name up in **exact**.
3. Drop exactly one leading label and look the rest up in **wildcard**: ``*.example.com`` answers
   ``a.example.com``, never ``example.com`` nor ``a.b.example.com``.
4. No match: ``defaultCertificateId`` if usable; else the usable certificate covering the default host
   name; else the usable certificate with the latest ``notValidAfter`` (ties: lowest id, numeric ids
   in numeric order); else the self-signed fallback.

Certificates that are not yet valid join the tables at their ``notValidBefore`` and leave them at
their ``notValidAfter`` without a reload: the resolver notes the next such instant and re-indexes
when a handshake arrives after it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import events
from .certs import ParsedCertificate, iso_time, normalize_dns_name, normalize_ip

EXACT = "exact"
WILDCARD = "wildcard"
DEFAULT = "default"  # step 4 with a usable certificate
SELF_SIGNED = "self-signed"  # step 4 with nothing usable


def normalize_server_name(name: str | None) -> str | None:
    """Steps 1–2: the SNI as a lookup key, or None when it is absent, empty or an IP literal."""
    if not name:
        return None
    n = name[:-1] if name.endswith(".") else name
    if not n:
        return None
    # Only an IPv6 literal has a colon and only an IPv4 one ends in a digit (TLDs are letters):
    # parsing every SNI as an address would cost a raised exception per handshake.
    if (":" in n or n[-1].isdigit()) and normalize_ip(n) is not None:
        return None
    return n.lower()


@dataclass(frozen=True, slots=True)
class Selection:
    """What the SNI callback chose for one handshake (logged and handed to the session)."""

    certificate: ParsedCertificate
    server_name: str | None  # normalised SNI, None when absent or an IP literal
    match: str  # EXACT, WILDCARD, DEFAULT or SELF_SIGNED


class SniIndex:
    """The lookup tables for one span of time in which the usable set does not change."""

    __slots__ = ("exact", "wildcard", "default", "usable", "valid_until")

    def __init__(self, exact: dict[str, ParsedCertificate], wildcard: dict[str, ParsedCertificate],
                 default: ParsedCertificate | None, usable: tuple[ParsedCertificate, ...], valid_until: float):
        self.exact = exact
        self.wildcard = wildcard
        self.default = default
        self.usable = usable
        self.valid_until = valid_until

    @classmethod
    def build(cls, certificates: Iterable[ParsedCertificate], now: float, *,
              default_certificate_id: str | None = None, default_hostname: str | None = None) -> "SniIndex":
        pending_or_usable = [c for c in certificates if now < c.not_valid_after]
        usable = tuple(sorted((c for c in pending_or_usable if c.usable_at(now)), key=lambda c: c.sort_key))
        # The next instant the usable set changes: a pending certificate starts or a usable one ends.
        valid_until = min((c.not_valid_before if c.not_valid_before > now else c.not_valid_after
                           for c in pending_or_usable), default=float("inf"))
        exact: dict[str, ParsedCertificate] = {}
        wildcard: dict[str, ParsedCertificate] = {}
        # ``usable`` is already in preference order, so the first claim of a name is the winner.
        for cert in usable:
            for name in cert.dns_names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], cert)
                else:
                    exact.setdefault(name, cert)
        index = cls(exact, wildcard, None, usable, valid_until)
        index.default = index._default(default_certificate_id, default_hostname)
        return index

    def _default(self, default_certificate_id: str | None, default_hostname: str | None) -> ParsedCertificate | None:
        if not self.usable:
            return None
        if default_certificate_id is not None:
            for cert in self.usable:
                if cert.id == default_certificate_id:
                    return cert
        host = normalize_dns_name(default_hostname) if default_hostname else None
        if host:
            cert = self.match(host)[0]
            if cert is not None:
                return cert
        return self.usable[0]

    def match(self, name: str) -> tuple[ParsedCertificate | None, str]:
        """Steps 2–3 for a normalised name: ``(certificate, EXACT|WILDCARD)`` or ``(None, "")``."""
        cert = self.exact.get(name)
        if cert is not None:
            return cert, EXACT
        dot = name.find(".")
        if dot > 0:
            cert = self.wildcard.get(name[dot + 1:])
            if cert is not None:
                return cert, WILDCARD
        return None, ""


class CertificateResolver:
    """Chooses a certificate for each handshake and keeps the tables current as time passes.

    ``certificates`` are the loaded ones (usable and not yet valid); ``fallback`` is the self-signed
    certificate served when none is usable. ``clock`` returns Unix seconds.
    """

    def __init__(self, certificates: Iterable[ParsedCertificate], fallback: ParsedCertificate, *,
                 default_certificate_id: str | None = None, default_hostname: str | None = None,
                 clock: Callable[[], float] = time.time):
        self.certificates = tuple(certificates)
        self.fallback = fallback
        self.default_certificate_id = default_certificate_id
        self.default_hostname = default_hostname
        self._clock = clock
        self._reported_expired: set[str] = set()
        self._index = self._build(clock())

    def _build(self, now: float) -> SniIndex:
        for cert in self.certificates:
            if cert.not_valid_after <= now and cert.id not in self._reported_expired:
                self._reported_expired.add(cert.id)
                events.emit("tls.certificate-expired", level="warn",
                            Details=f"{cert.describe()} expired at {iso_time(cert.not_valid_after)}; no longer served")
        return SniIndex.build(self.certificates, now, default_certificate_id=self.default_certificate_id,
                              default_hostname=self.default_hostname)

    @property
    def index(self) -> SniIndex:
        """The tables valid now (rebuilt first if a certificate started or ended since)."""
        index = self._index
        now = self._clock()
        if now >= index.valid_until:
            index = self._index = self._build(now)
        return index

    def select(self, server_name: str | None) -> Selection:
        """The certificate to present for a ClientHello carrying ``server_name`` (steps 1–4)."""
        index = self.index
        name = normalize_server_name(server_name)
        if name is not None:
            cert, how = index.match(name)
            if cert is not None:
                return Selection(cert, name, how)
            events.emit("tls.certificate-not-found", Hostname=name)
        if index.default is not None:
            return Selection(index.default, name, DEFAULT)
        events.emit("tls.no-certificates-available")
        return Selection(self.fallback, name, SELF_SIGNED)

    def resolve_certificate(self, host: str) -> ParsedCertificate | None:
        """Steps 2–3 only, without events or fallbacks (TLSA records, tls.md §4)."""
        name = normalize_server_name(host)
        return self.index.match(name)[0] if name is not None else None
