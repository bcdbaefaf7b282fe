"""RFC 2136 updates with TSIG against Knot DNS on loopback (services.md §2.3)."""
from __future__ import annotations

import asyncio
import json

import pytest

from knot_util import HAVE_KNOT, Knot
from stalwart.config import parse_bytes  # the model first: it imports the provider structs
from stalwart.services.dnsproviders import build_updater
from stalwart.services.dnsproviders.propagation import wait_for_txt
from stalwart.services.dnsproviders.records import DnsProviderError, split_txt

pytestmark = pytest.mark.skipif(not HAVE_KNOT, reason="knot is not installed (scripts/test-deps)")


@pytest.fixture
def knot(tmp_path):
    k = Knot(str(tmp_path / "knot"), records='@ TXT "google-site-verification=abc"\n@ TXT "v=spf1 -all"\n').start()
    yield k
    k.stop()


def updater(obj: dict):
    cfg = parse_bytes(json.dumps({"DnsServer": [obj]}).encode())  # decoded as the server decodes it
    return build_updater(cfg.DnsServer[0])


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_records_appear_are_replaced_and_removed(knot, protocol):
    u = updater(knot.server(protocol=protocol))
    z = "example.test"
    run(u.set_rrset(z, "mail.example.test", "A", ["192.0.2.1", "192.0.2.2"]))
    assert knot.query("mail.example.test", "A") == ["192.0.2.1", "192.0.2.2"]
    run(u.set_rrset(z, "mail.example.test", "A", ["192.0.2.3"]))  # one message: delete + add
    assert knot.query("mail.example.test", "A") == ["192.0.2.3"]
    run(u.set_rrset(z, "example.test", "MX", ["10 mail.example.test."]))
    assert knot.query("example.test", "MX") == ["10 mail.example.test."]
    run(u.add_to_rrset(z, "_acme-challenge.example.test", "TXT", ["one"]))
    run(u.add_to_rrset(z, "_acme-challenge.example.test", "TXT", ["two"]))
    assert knot.txt("_acme-challenge.example.test") == ["one", "two"]
    assert sorted(run(u.list_rrset(z, "_acme-challenge.example.test", "TXT"))) == ["one", "two"]
    run(u.remove_from_rrset(z, "_acme-challenge.example.test", "TXT", ["one"]))
    assert knot.txt("_acme-challenge.example.test") == ["two"]
    run(u.set_rrset(z, "mail.example.test", "A", []))  # empty: delete
    assert knot.query("mail.example.test", "A") == []
    assert knot.txt("example.test") == ["google-site-verification=abc", "v=spf1 -all"]  # foreign records stay


def test_set_is_atomic_with_a_prerequisite(knot):
    """A replacement conditioned on what was read applies whole or not at all (RFC 2136 §3.2.5)."""
    u = updater(knot.server())
    run(u.set_rrset("example.test", "srv.example.test", "TXT", ["a", "b"]))
    with pytest.raises(DnsProviderError, match="NXRRSET"):
        run(u.set_rrset("example.test", "srv.example.test", "TXT", ["c"], expect=["a"]))
    assert knot.txt("srv.example.test") == ["a", "b"]
    run(u.set_rrset("example.test", "srv.example.test", "TXT", ["c"], expect=["a", "b"]))
    assert knot.txt("srv.example.test") == ["c"]


def test_long_txt_is_split_at_255_bytes(knot):
    value = "v=DKIM1; k=rsa; p=" + "A" * 400 + "é" * 100
    u = updater(knot.server())
    run(u.set_rrset("example.test", "s1._domainkey.example.test", "TXT", [value]))
    assert knot.txt("s1._domainkey.example.test") == [value]
    assert run(u.list_rrset("example.test", "s1._domainkey.example.test", "TXT")) == [value]  # UDP, then TCP
    assert all(len(part) <= 255 for part in split_txt(value))
    assert b"".join(split_txt(value)).decode() == value


def test_wrong_tsig_key_is_refused_clearly(knot):
    bad = updater(knot.server(key={"@type": "Value", "secret": "c2VjcmV0LXRoYXQtaXMtd3Jvbmc="}))
    with pytest.raises(DnsProviderError) as info:
        run(bad.set_rrset("example.test", "x.example.test", "A", ["192.0.2.9"]))
    assert "TSIG" in str(info.value) and not info.value.temporary
    assert knot.query("x.example.test", "A") == []
    with pytest.raises(DnsProviderError, match="base64"):
        updater(knot.server(key={"@type": "Value", "secret": "not base64!"}))


def test_unreachable_server_is_temporary(knot):
    u = updater(knot.server(port=1, timeout=300))
    with pytest.raises(DnsProviderError) as info:
        run(u.set_rrset("example.test", "x.example.test", "A", ["192.0.2.9"]))
    assert info.value.temporary


def test_propagation_wait_exact_match(knot):
    u = updater(knot.server())
    run(u.set_rrset("example.test", "_acme-challenge.example.test", "TXT", ["token-value-long"]))
    run(wait_for_txt(u, "example.test", "_acme-challenge.example.test", "token-value-long", interval=0.05, timeout=2))
    with pytest.raises(DnsProviderError) as info:  # a prefix is not a match (services.md §2: equality)
        run(wait_for_txt(u, "example.test", "_acme-challenge.example.test", "token-value", interval=0.05,
                         timeout=0.3))
    assert info.value.temporary


def test_dns_persist_record_is_ensured_and_visible(knot):
    """DNS-PERSIST-01 (tls.md §7.5): the standing record is added once and checked on the server."""
    from stalwart.services.dnsproviders.dns01 import DnsPersist01Solver

    u = updater(knot.server())
    solver = DnsPersist01Solver(u, "example.test", "letsencrypt.org", "https://ca.test/acct/7", wildcard=True)
    run(solver.prepare("*.example.test", "tok", "tok.thumb"))
    run(solver.prepare("example.test", "tok2", "tok2.thumb"))  # already there: not added twice
    assert knot.txt("_validation-persist.example.test") == [
        "letsencrypt.org; accounturi=https://ca.test/acct/7; policy=wildcard"]
    run(solver.cleanup("example.test", "tok2", "tok2.thumb"))  # persistent: cleanup removes nothing
    assert len(knot.txt("_validation-persist.example.test")) == 1


def test_authoritative_lookup_follows_the_zones_ns_records(knot):
    """Hosted providers check propagation on the zone's own nameservers: NS names are resolved, then
    each is asked directly without recursion (services.md §2 "We do better")."""
    from stalwart.services.dnsproviders.propagation import query_authoritative_txt

    u = updater(knot.server())
    run(u.set_rrset("example.test", "_acme-challenge.example.test", "TXT", ["abc"]))
    got = run(query_authoritative_txt("example.test", "_acme-challenge.example.test", resolver_ip="127.0.0.1",
                                      port=knot.port))
    assert got == ["abc"]
    assert run(query_authoritative_txt("example.test", "none.example.test", resolver_ip="127.0.0.1",
                                       port=knot.port)) == []
    assert run(query_authoritative_txt("nonexistent.test", "x.nonexistent.test", resolver_ip="127.0.0.1",
                                       port=knot.port)) is None
