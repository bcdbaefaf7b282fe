"""``Tsig``: RFC 2136 dynamic updates signed with TSIG (RFC 8945), via dnspython (services.md §2.3).

"We do better": ``set_rrset`` sends **one** UPDATE carrying the RRset deletion and the additions, so
the change is atomic (RFC 2136 §3.4: the whole update section is applied or none of it); an
optional prerequisite (RFC 2136 §2.4.2, "RRset exists, value dependent") lets a caller replace a
set only when it still holds what it last saw. ``DnsServer.timeout`` bounds every exchange.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.tsigkeyring
import dns.update

from ... import events
from ...config.secrets import resolve
from .config import Tsig
from .records import DnsProviderError, DnsUpdater, check_type, fqdn, split_txt

TSIG_FUDGE = 60  # s: services.md §2.3
ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5, "hmac-sha1": dns.tsig.HMAC_SHA1, "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha256-128": dns.tsig.HMAC_SHA256_128,
    "hmac-sha384": dns.tsig.HMAC_SHA384, "hmac-sha384-192": dns.tsig.HMAC_SHA384_192,
    "hmac-sha512": dns.tsig.HMAC_SHA512, "hmac-sha512-256": dns.tsig.HMAC_SHA512_256,
}
_TEMPORARY_RCODES = {dns.rcode.SERVFAIL}


def to_rdata(rtype: str, value: str) -> dns.rdata.Rdata:
    if rtype == "TXT":
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, split_txt(value))
    try:
        return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), value)
    except (dns.exception.DNSException, ValueError) as exc:
        raise DnsProviderError(f"invalid {rtype} record {value!r}: {exc}") from None


def from_rdata(rd: dns.rdata.Rdata) -> str:
    if rd.rdtype == dns.rdatatype.TXT:
        return b"".join(rd.strings).decode("utf-8", "replace")
    return rd.to_text()


class TsigUpdater(DnsUpdater):
    """One provider built from a ``Tsig`` object; a new connection per operation."""

    def __init__(self, server: Tsig, path: str = "$.DnsServer"):
        if server.tsig_algorithm not in ALGORITHMS:
            raise DnsProviderError(f"{path}.tsigAlgorithm: {server.tsig_algorithm} is not supported for updates "
                                   "(GSS-TSIG needs Kerberos)")
        secret = resolve(server.key, f"{path}.key") or ""
        try:
            raw = base64.b64decode(secret.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DnsProviderError(f"Failed to base64 decode TSIG key: {exc}") from None
        try:
            self.key_name = dns.name.from_text(server.key_name)
        except dns.exception.DNSException as exc:
            raise DnsProviderError(f"{path}.keyName: {exc}") from None
        self.keyring = {self.key_name: dns.tsig.Key(self.key_name, raw, ALGORITHMS[server.tsig_algorithm])}
        self.host, self.port, self.tcp = server.host, server.port, server.protocol == "tcp"
        self.timeout = int(server.timeout) / 1000.0
        self.ttl = server.ttl_seconds

    async def _exchange(self, msg: dns.message.Message, what: str) -> dns.message.Message:
        try:
            if self.tcp:
                resp = await dns.asyncquery.tcp(msg, self.host, timeout=self.timeout, port=self.port)
            else:
                resp = await dns.asyncquery.udp(msg, self.host, timeout=self.timeout, port=self.port)
                if resp.flags & dns.flags.TC:  # truncated (a long TXT set): the same question over TCP
                    resp = await dns.asyncquery.tcp(msg, self.host, timeout=self.timeout, port=self.port)
        except dns.tsig.PeerError as exc:
            raise DnsProviderError(f"{what}: {self.host}:{self.port} refused the TSIG key "
                                   f"{self.key_name.to_text(omit_final_dot=True)}: {type(exc).__name__} ({exc})") from None
        except dns.exception.Timeout:
            raise DnsProviderError(f"{what}: no answer from {self.host}:{self.port} within {self.timeout:g} s",
                                   temporary=True) from None
        except (OSError, dns.exception.DNSException) as exc:
            raise DnsProviderError(f"{what}: {self.host}:{self.port}: {exc}", temporary=True) from None
        rcode = resp.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or (rcode == dns.rcode.NXDOMAIN and
                                                                    isinstance(msg, dns.update.UpdateMessage)):
            hint = " (TSIG key not accepted)" if rcode in (dns.rcode.NOTAUTH, dns.rcode.REFUSED) else ""
            raise DnsProviderError(f"{what}: server answered {dns.rcode.to_text(rcode)}{hint}",
                                   temporary=rcode in _TEMPORARY_RCODES)
        return resp

    def _update(self, zone: str) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(fqdn(zone) + ".", keyring=self.keyring, keyname=self.key_name,
                                        keyalgorithm=self.keyring[self.key_name].algorithm)

    async def set_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str], *,
                        expect: Sequence[str] | None = None) -> None:
        """Delete the RRset and add ``values`` in one UPDATE (atomic). With ``expect``, the update
        only applies while the RRset still holds exactly those values (RFC 2136 §2.4.2)."""
        rtype = check_type(rtype)
        upd = self._update(zone)
        owner = fqdn(name) + "."
        if expect is not None:
            if expect:
                rds = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.from_text(rtype))
                for v in expect:
                    rds.add(to_rdata(rtype, v), 0)
                upd.present(owner, rds)
            else:
                upd.absent(owner, rtype)
        upd.delete(owner, rtype)
        for v in dict.fromkeys(values):
            upd.add(owner, self.ttl, to_rdata(rtype, v))
        await self._exchange(upd, f"Failed to set DNS RRSet {name}/{rtype}")
        if values:
            events.emit("dns.record-created", Hostname=fqdn(name), Details=f"{rtype} {list(values)}")

    async def add_to_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str]) -> None:
        rtype = check_type(rtype)
        if not values:
            return
        upd = self._update(zone)
        for v in values:
            upd.add(fqdn(name) + ".", self.ttl, to_rdata(rtype, v))
        await self._exchange(upd, f"Failed to add to DNS RRSet {name}/{rtype}")
        events.emit("dns.record-created", Hostname=fqdn(name), Details=f"{rtype} {list(values)}")

    async def remove_from_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str]) -> None:
        """Delete exactly these records (class NONE, RFC 2136 §2.5.4)."""
        rtype = check_type(rtype)
        if not values:
            return
        upd = self._update(zone)
        for v in values:
            upd.delete(fqdn(name) + ".", to_rdata(rtype, v))
        try:
            await self._exchange(upd, f"Failed to remove from DNS RRSet {name}/{rtype}")
        except DnsProviderError as exc:
            events.emit("dns.record-deletion-failed", level="warn", Hostname=fqdn(name), Reason=str(exc))
            raise

    async def list_rrset(self, zone: str, name: str, rtype: str) -> list[str]:
        rtype = check_type(rtype)
        q = dns.message.make_query(fqdn(name) + ".", rtype)
        resp = await self._exchange(q, f"Failed to list DNS RRSet {name}/{rtype}")
        owner = dns.name.from_text(fqdn(name) + ".")
        out = []
        for rrset in resp.answer:
            if rrset.name == owner and rrset.rdtype == dns.rdatatype.from_text(rtype):
                out.extend(from_rdata(rd) for rd in rrset)
        return out

    async def authoritative_txt(self, zone: str, name: str) -> list[str] | None:
        """The update target is the zone's primary: ask it directly (no recursive cache)."""
        try:
            return await self.list_rrset(zone, name, "TXT")
        except DnsProviderError:
            return None
