"""ACME against Let's Encrypt's pebble (Debian ``pebble``): real orders, real validation of our
listeners, live installation (tls.md §7, anchors.md §5)."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from acme_util import HAVE_PEBBLE, ChallengeHttp, cli, leaf_fingerprint, pebbles, presented_chain, server_config, wait_for
from knot_util import HAVE_KNOT, Knot
from harness import Server, free_port, listener
from stalwart.services.acme.challenges import ChallengeStore, Http01Solver
from stalwart.services.acme.client import AcmeClient, AcmeProblem, ChallengeNotSupported
from stalwart.services.acme.http import HttpClient
from stalwart.services.acme.jws import AccountKey, b64u

pytestmark = pytest.mark.skipif(not HAVE_PEBBLE, reason="pebble is not installed (scripts/test-deps)")


@pytest.fixture
def pebble_factory(tmp_path):
    yield from pebbles(tmp_path)


def test_account_and_bad_nonce_retry_direct(pebble_factory, tmp_path):
    """A rejected nonce is retried at once with the nonce of the error response (tls.md §7.4):
    a bogus held nonce is refused by pebble with badNonce, the request still succeeds."""
    peb = pebble_factory()

    async def go():
        client = AcmeClient(peb.directory_url, AccountKey.generate(), HttpClient(ca_file=peb.ca_file))
        client.configure_account(["mailto:admin@example.test"])
        uri = await client.register()
        for _ in range(3):
            client._nonces[:] = ["bm90LWEtbm9uY2U"]  # never issued by pebble
            resp = await client.post(uri, None)
            assert resp.status == 200 and json.loads(resp.body)["status"] == "valid"
        await client.update_contact(["mailto:other@example.test"])
        doc, _ = await client.get(uri)
        return uri, doc

    uri, doc = asyncio.run(go())
    assert uri.startswith(f"https://127.0.0.1:{peb.port}/")
    assert doc["contact"] == ["mailto:other@example.test"]


def test_external_account_binding(pebble_factory):
    mac = b64u(b"0123456789abcdef0123456789abcdef")
    peb = pebble_factory(eab={"kid-1": mac})

    async def go(with_eab: bool):
        client = AcmeClient(peb.directory_url, AccountKey.generate(), HttpClient(ca_file=peb.ca_file))
        client.configure_account(["mailto:admin@example.test"], ("kid-1", mac) if with_eab else None)
        return await client.register()

    assert asyncio.run(go(True))
    with pytest.raises(AcmeProblem) as info:
        asyncio.run(go(False))
    assert info.value.type.endswith("externalAccountRequired")


def test_unsupported_challenge_is_permanent(pebble_factory, tmp_path):
    peb = pebble_factory()

    class Nope(Http01Solver):
        type = "carrier-pigeon-01"

    async def go():
        client = AcmeClient(peb.directory_url, AccountKey.generate(), HttpClient(ca_file=peb.ca_file))
        client.configure_account(["mailto:admin@example.test"])
        await client.issue(["x.example.test"], Nope(ChallengeStore(str(tmp_path))))

    with pytest.raises(ChallengeNotSupported) as info:
        asyncio.run(go())
    assert not info.value.temporary


@pytest.mark.slow
def test_http01_issue_and_live_install(pebble_factory, tmp_path):
    """HTTP-01 end to end: stalwartd orders, pebble fetches /.well-known/acme-challenge/<token> from
    our plain HTTP listener, and the next handshake on the TLS listener presents the issued leaf."""
    http_port, tls_port = free_port(), free_port()
    peb = pebble_factory(http_port=http_port, tls_port=tls_port)
    provider = {"id": "pebble", "directory": peb.directory_url, "challengeType": "Http01",
                "contact": ["admin@example.test"], "caFile": peb.ca_file}
    domain = {"name": "example.test", "certificateManagement": {"@type": "Automatic", "acmeProviderId": "pebble",
                                                                 "subjectAlternativeNames": ["mail", "imap"]}}
    srv = Server(tmp_path / "srv", server_config(http_port, tls_port, provider, domain)).start()
    try:
        before = presented_chain(tls_port, "mail.example.test")[0].fingerprint(hashes.SHA256()).hex()
        srv.wait_log("acme.certificate-issued", timeout=60)
        cert_file = os.path.join(srv.data_dir, "acme", "certs", "example.test.pem")
        issued = leaf_fingerprint(cert_file)
        assert issued != before
        for sni in ("mail.example.test", "imap.example.test"):
            wait_for(lambda: presented_chain(tls_port, sni)[0].fingerprint(hashes.SHA256()).hex() == issued, 10,
                     f"issued certificate served for {sni}")
        with open(cert_file, "rb") as fh:
            chain = x509.load_pem_x509_certificates(fh.read())
        assert len(chain) >= 2 and "Pebble Intermediate" in chain[0].issuer.rfc4514_string()
        sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(sans.get_values_for_type(x509.DNSName)) == ["imap.example.test", "mail.example.test"]
        # State survives: account, order and schedule on disk; status through the CLI.
        assert os.path.exists(os.path.join(srv.data_dir, "acme", "accounts", "pebble.json"))
        out = cli(srv.data_dir, "acme", "status")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("example.test") and "issued" in out.stdout, out.stdout
        # A renewal on request issues a new certificate, installed live again.
        out = cli(srv.data_dir, "acme", "renew", "example.test")
        assert out.returncode == 0, out.stderr + out.stdout
        srv.wait_log("acme.certificate-issued", timeout=60, count=2)
        renewed = leaf_fingerprint(cert_file)
        assert renewed != issued
        wait_for(lambda: presented_chain(tls_port, "mail.example.test")[0].fingerprint(hashes.SHA256()).hex()
                 == renewed, 10, "renewed certificate served")
    finally:
        srv.stop()
    # A restart neither re-orders (the schedule on disk says when the certificate is due) nor
    # loses the certificate: it is served from the data directory at once.
    srv.start()
    try:
        time.sleep(3)
        log = srv.log()
        assert log.count("acme.renewal-start") == 2 and log.count("acme.certificate-issued") == 2, log
        assert presented_chain(tls_port, "mail.example.test")[0].fingerprint(hashes.SHA256()).hex() == renewed
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_KNOT, reason="knot is not installed (scripts/test-deps)")
def test_dns01_wildcard_through_rfc2136(pebble_factory, tmp_path):
    """DNS-01 end to end: the TXT value goes to Knot by a TSIG-signed UPDATE, pebble validates it by
    asking Knot, the wildcard certificate goes live, and the challenge record is removed."""
    knot = Knot(str(tmp_path / "knot")).start()
    try:
        http_port, tls_port = free_port(), free_port()
        peb = pebble_factory(http_port=http_port, tls_port=tls_port, dns_server=f"127.0.0.1:{knot.port}")
        provider = {"id": "pebble", "directory": peb.directory_url, "challengeType": "Dns01",
                    "contact": ["admin@example.test"], "caFile": peb.ca_file}
        domain = {"name": "example.test",
                  "certificateManagement": {"@type": "Automatic", "acmeProviderId": "pebble"},
                  "dnsManagement": {"@type": "Automatic", "dnsServerId": "knot"}}
        cfg = server_config(http_port, tls_port, provider, domain)
        cfg["DnsServer"] = [knot.server()]
        srv = Server(tmp_path / "srv", cfg).start()
        try:
            srv.wait_log("acme.certificate-issued", timeout=60)
            issued = leaf_fingerprint(os.path.join(srv.data_dir, "acme", "certs", "example.test.pem"))
            for sni in ("example.test", "anything.example.test"):
                wait_for(lambda: presented_chain(tls_port, sni)[0].fingerprint(hashes.SHA256()).hex() == issued, 10,
                         f"wildcard certificate served for {sni}")
            assert knot.txt("_acme-challenge.example.test") == []  # removed after validation
            # The DNS-management task ran first: the managed record set is in the zone.
            srv.wait_log("dns.management-complete", count=2)  # before the order, and after the issuance
            assert knot.query("example.test", "MX") == ["10 mail.example.test."]
            assert knot.txt("_dmarc.example.test") == [] and knot.txt("example.test") == ["v=spf1 mx -all"]
            caa = knot.query("example.test", "CAA")
            assert len(caa) == 1 and caa[0].startswith('0 issue "127.0.0.1; accounturi=https://127.0.0.1:'), caa
            assert "dns.record-created" in srv.log()
        finally:
            srv.stop()
    finally:
        knot.stop()


@pytest.mark.slow
def test_tls_alpn01_issue_on_the_implicit_tls_listener(pebble_factory, tmp_path):
    """TLS-ALPN-01 end to end: pebble connects to our implicit-TLS HTTP listener offering only
    acme-tls/1, the peeked ClientHello gets the validation certificate, and afterwards ordinary
    handshakes on the same listener present the issued chain."""
    http_port, tls_port = free_port(), free_port()
    peb = pebble_factory(http_port=http_port, tls_port=tls_port)
    provider = {"id": "pebble", "directory": peb.directory_url, "challengeType": "TlsAlpn01",
                "contact": ["admin@example.test"], "caFile": peb.ca_file}
    domain = {"name": "example.test", "certificateManagement": {"@type": "Automatic", "acmeProviderId": "pebble",
                                                                 "subjectAlternativeNames": ["mail"]}}
    srv = Server(tmp_path / "srv", server_config(http_port, tls_port, provider, domain)).start()
    try:
        srv.wait_log("acme.certificate-issued", timeout=60)
        issued = leaf_fingerprint(os.path.join(srv.data_dir, "acme", "certs", "example.test.pem"))
        wait_for(lambda: presented_chain(tls_port, "mail.example.test")[0].fingerprint(hashes.SHA256()).hex()
                 == issued, 10, "issued certificate served")
        # With no pending challenge an acme-tls/1 hello gets no handshake (tls.md §7.5).
        with pytest.raises((ssl.SSLError, OSError)):
            presented_chain(tls_port, "mail.example.test", ["acme-tls/1"])
        assert not os.listdir(os.path.join(srv.data_dir, "acme", "challenges", "tls-alpn-01"))  # cleaned up
    finally:
        srv.stop()


def test_acme_tls_alpn_handshake_is_answered_then_closed(tmp_path):
    """The responder path alone: a pending challenge answers an acme-tls/1 ClientHello with the
    validation certificate (critical id-pe-acmeIdentifier) and the server closes the connection."""
    from stalwart.services.acme.challenges import ID_PE_ACME_IDENTIFIER

    tls_port = free_port()
    cfg = {"SystemSettings": {"defaultHostname": "mail.example.test", "threadPoolSize": 1},
           "NetworkListener": [listener("https", "http", tls_port, tlsImplicit=True)]}
    srv = Server(tmp_path / "srv", cfg).start()
    try:
        ChallengeStore(srv.data_dir).put_alpn("mail.example.test", "tok.thumb")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["acme-tls/1"])
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls:
                assert tls.selected_alpn_protocol() == "acme-tls/1"
                cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
                ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
                assert ext.critical
                tls.settimeout(5)
                assert tls.recv(1) == b""  # closed by the server
        # A normal client on the same listener still gets the ordinary certificate and an HTTP session.
        normal = presented_chain(tls_port, "mail.example.test")[0]
        with pytest.raises(x509.ExtensionNotFound):
            normal.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    finally:
        srv.stop()


@pytest.mark.slow
def test_rollover_revoke_deactivate(pebble_factory, tmp_path):
    """Operator actions (tls.md §6 "We do better") against pebble: the rolled-over key keeps
    ordering, revocation is accepted once, and a deactivated account is replaced by a new one."""
    from stalwart.config import parse_bytes
    from stalwart.services.acme import actions
    from stalwart.services.acme.renewal import renew
    from stalwart.services.acme.state import AcmeState

    data = str(tmp_path / "data")
    web = ChallengeHttp(data)
    try:
        peb = pebble_factory(http_port=web.port)
        cfg = parse_bytes(json.dumps({
            "AcmeProvider": [{"id": "p", "directory": peb.directory_url, "challengeType": "Http01",
                              "contact": ["admin@example.test"], "caFile": peb.ca_file}],
            "Domain": [{"name": "example.test", "certificateManagement": {
                "@type": "Automatic", "acmeProviderId": "p", "subjectAlternativeNames": ["mail"]}}]}).encode())
        first = asyncio.run(renew(cfg, "example.test", data))
        assert first["status"] == "issued"
        assert asyncio.run(renew(cfg, "example.test", data))["status"] == "not-due"
        state = AcmeState(data)
        old_key, uri, _ = state.load_account("p", peb.directory_url)
        assert "now uses key" in asyncio.run(actions.rollover(cfg, "p", data))
        new_key, same_uri, _ = state.load_account("p", peb.directory_url)
        assert same_uri == uri and new_key.thumbprint != old_key.thumbprint
        second = asyncio.run(renew(cfg, "example.test", data, force=True))  # orders with the new key
        assert second["fingerprint"] != first["fingerprint"]
        assert "revoked" in asyncio.run(actions.revoke(cfg, "example.test", data, reason=4))
        with pytest.raises(AcmeProblem, match="alreadyRevoked"):
            asyncio.run(actions.revoke(cfg, "example.test", data))
        assert "deactivated" in asyncio.run(actions.deactivate(cfg, "p", data))
        third = asyncio.run(renew(cfg, "example.test", data, force=True))  # registers a new account
        assert third["status"] == "issued" and state.account_uri("p") not in (None, uri)
    finally:
        web.close()


@pytest.mark.slow
def test_preferred_chain_follows_alternate_links(pebble_factory, tmp_path):
    """``preferredChain`` names the issuer CN of the chain's top certificate; pebble offers the
    other chains as Link rel="alternate" (PEBBLE_ALTERNATE_ROOTS)."""
    import urllib.request

    from stalwart.config import parse_bytes
    from stalwart.services.acme.renewal import renew

    data = str(tmp_path / "data")
    web = ChallengeHttp(data)
    try:
        peb = pebble_factory(http_port=web.port, env={"PEBBLE_ALTERNATE_ROOTS": "2"})
        ctx = ssl.create_default_context(cafile=peb.ca_file)
        with urllib.request.urlopen(f"https://127.0.0.1:{peb.mgmt_port}/roots/2", context=ctx, timeout=5) as resp:
            wanted = x509.load_pem_x509_certificate(resp.read()).subject.get_attributes_for_oid(
                x509.oid.NameOID.COMMON_NAME)[0].value
        cfg = parse_bytes(json.dumps({
            "AcmeProvider": [{"id": "p", "directory": peb.directory_url, "challengeType": "Http01",
                              "contact": ["admin@example.test"], "caFile": peb.ca_file, "preferredChain": wanted}],
            "Domain": [{"name": "example.test", "certificateManagement": {
                "@type": "Automatic", "acmeProviderId": "p", "subjectAlternativeNames": ["mail"]}}]}).encode())
        assert asyncio.run(renew(cfg, "example.test", data))["status"] == "issued"
        with open(os.path.join(data, "acme", "certs", "example.test.pem"), "rb") as fh:
            chain = x509.load_pem_x509_certificates(fh.read())
        top = chain[-1].issuer.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
        assert top == wanted
    finally:
        web.close()


@pytest.mark.slow
def test_unreachable_ca_is_retried_and_the_server_keeps_serving(tmp_path):
    """A CA that does not answer is a temporary failure: logged, retried with backoff, visible in
    `acme status`, kept across a restart; the listeners go on serving the fallback certificate."""
    http_port, tls_port, dead = free_port(), free_port(), free_port()
    provider = {"id": "p", "directory": f"https://127.0.0.1:{dead}/dir", "challengeType": "Http01",
                "contact": ["admin@example.test"]}
    domain = {"name": "example.test", "certificateManagement": {"@type": "Automatic", "acmeProviderId": "p"}}
    srv = Server(tmp_path / "srv", server_config(http_port, tls_port, provider, domain)).start()
    try:
        log = srv.wait_log("acme.renewal-error", timeout=30)
        assert "Details=Http" in log
        out = cli(srv.data_dir, "acme", "status", "--json")
        entry = json.loads(out.stdout)["example.test"]
        assert entry["status"] == "retry" and entry["attempts"] == 1 and 20 <= entry["dueIn"] <= 100
        assert presented_chain(tls_port, "mail.example.test")  # still serving
    finally:
        srv.stop()
    srv.start()
    try:
        out = cli(srv.data_dir, "acme", "status", "--json")
        entry = json.loads(out.stdout)["example.test"]
        assert entry["status"] == "retry" and entry["attempts"] == 1  # the schedule survived the restart
    finally:
        srv.stop()


@pytest.mark.slow
def test_reuse_key_and_contact_update(pebble_factory, tmp_path):
    """``reuseKey`` keeps the private key across renewals; an edited contact list reaches the CA."""
    from stalwart.config import parse_bytes
    from stalwart.services.acme.renewal import renew
    from stalwart.services.acme.state import AcmeState

    data = str(tmp_path / "data")
    web = ChallengeHttp(data)
    try:
        peb = pebble_factory(http_port=web.port)

        def cfg(reuse: bool, contact: str):
            return parse_bytes(json.dumps({
                "AcmeProvider": [{"id": "p", "directory": peb.directory_url, "challengeType": "Http01",
                                  "contact": [contact], "caFile": peb.ca_file, "reuseKey": reuse}],
                "Domain": [{"name": "example.test", "certificateManagement": {
                    "@type": "Automatic", "acmeProviderId": "p", "subjectAlternativeNames": ["mail"]}}]}).encode())

        state = AcmeState(data)
        asyncio.run(renew(cfg(True, "a@example.test"), "example.test", data))
        first = state.certificate("example.test")
        asyncio.run(renew(cfg(True, "b@example.test"), "example.test", data, force=True))
        second = state.certificate("example.test")
        assert second.fingerprint != first.fingerprint and second.key_pem == first.key_pem
        assert state.load_account("p", peb.directory_url)[2] == ["mailto:b@example.test"]
        asyncio.run(renew(cfg(False, "b@example.test"), "example.test", data, force=True))
        assert state.certificate("example.test").key_pem != first.key_pem
    finally:
        web.close()
