"""What a lookup returns: the AS number, its organisation and the country of an address."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """ASN and country of one address; any part may be unknown (None).

    ``asn`` is the AS number, ``asn_name`` the AS organisation as the source gives it, ``country``
    the ISO 3166-1 code (upper case; a CSV source may give a 3-letter code)."""

    asn: int | None = None
    asn_name: str | None = None
    country: str | None = None

    def received_comment(self) -> str:
        """The ``asn-part`` of the SMTP ``Received:`` header (spec/services.md §3 "Use of results"):
        ``AS<n>[ <name>][, <CC>]``, or just ``<CC>``; empty when nothing is known."""
        if self.asn is not None:
            out = f"AS{self.asn}"
            name = _comment_safe(self.asn_name or "")
            if name:
                out += f" {name}"
            if self.country:
                out += f", {self.country}"
            return out
        return self.country or ""

    def as_dict(self) -> dict:
        """The JSON form used by ``stalwart-cli geo lookup --json`` and management answers."""
        return {"asn": self.asn, "asnName": self.asn_name, "country": self.country}

    def event_keys(self) -> dict:
        """Keys for session log events (``smtp.connection-start Asn=15169 Country=US``); unknown
        parts are left out."""
        keys: dict = {}
        if self.asn is not None:
            keys["Asn"] = self.asn
        if self.country:
            keys["Country"] = self.country
        return keys


def _comment_safe(text: str) -> str:
    """Names come from downloaded data: keep them from closing the RFC 5322 §3.2.2 comment they
    are printed in or from breaking the header line."""
    return " ".join("".join(c if c.isprintable() and c not in "()\\" else " " for c in text).split())
