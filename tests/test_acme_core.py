"""ACME pieces without a CA: JWS, key authorizations, renewal arithmetic, names, configuration
rules, the challenge store and its HTTP route, and the scheduler's retry rules (tls.md §6-§7)."""
from __future__ import annotations

import hashlib
import json
import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, strategies as st

from stalwart.config import parse_bytes
from stalwart.errors import ConfigError
from stalwart.protocols.base import SessionContext
from stalwart.protocols.http.service import HttpService
from stalwart.services.acme.challenges import ID_PE_ACME_IDENTIFIER, ChallengeStore, tls_alpn_certificate
from stalwart.services.acme.client import HttpResponse, links, retry_after
from stalwart.services.acme.jws import AccountKey, b64u, b64u_decode, external_account_binding
from stalwart.services.acme.renewal import renew_at, requested_names
from stalwart.services.acme.scheduler import AcmeScheduler, long_retry
from stalwart.tls.certs import generate_self_signed


def test_jws_es256_verifies_and_thumbprint_is_rfc7638():
    key = AccountKey.generate()
    jws = json.loads(key.sign("https://ca/new-order", {"a": 1}, nonce="n1", kid="https://ca/acct/1"))
    protected = json.loads(b64u_decode(jws["protected"]))
    assert protected == {"alg": "ES256", "kid": "https://ca/acct/1", "nonce": "n1", "url": "https://ca/new-order"}
    sig = b64u_decode(jws["signature"])
    assert len(sig) == 64  # fixed-length r || s, not DER
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.key.public_key().verify(der, f"{jws['protected']}.{jws['payload']}".encode(), ec.ECDSA(hashes.SHA256()))
    as_get = json.loads(key.sign("https://ca/x", None, nonce="n", kid="k"))
    assert as_get["payload"] == ""  # POST-as-GET
    jwk_form = json.loads(b64u_decode(json.loads(key.sign("u", {}, nonce="n", kid=None))["protected"]))
    assert jwk_form["jwk"] == key.jwk and "kid" not in jwk_form
    canonical = json.dumps({k: key.jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":")).encode()
    assert key.thumbprint == b64u(hashlib.sha256(canonical).digest())
    assert key.key_authorization("tok") == f"tok.{key.thumbprint}"
    assert AccountKey.from_pem(key.to_pem()).jwk == key.jwk


def test_eab_is_hs256_over_the_jwk():
    key = AccountKey.generate()
    mac = b64u(b"k" * 32)
    eab = external_account_binding(key, "kid-1", mac, "https://ca/new-account")
    assert json.loads(b64u_decode(eab["protected"])) == {"alg": "HS256", "kid": "kid-1", "url": "https://ca/new-account"}
    assert json.loads(b64u_decode(eab["payload"])) == key.jwk
    with pytest.raises(ValueError):
        external_account_binding(key, "kid-1", "not+base64url=", "u")


@given(st.binary(max_size=200))
def test_b64u_roundtrip(data):
    assert b64u_decode(b64u(data)) == data and "=" not in b64u(data)


@pytest.mark.parametrize("ratio,days", [("R12", 45), ("R23", 60), ("R34", 67.5), ("R45", 72)])
def test_renew_at_is_the_elapsed_fraction(ratio, days):
    cert = generate_self_signed(["a.test"], 1_000_000)
    span = cert.not_valid_after - cert.not_valid_before
    expected = cert.not_valid_before + int(span * {"R12": 1 / 2, "R23": 2 / 3, "R34": 3 / 4, "R45": 4 / 5}[ratio])
    assert abs(renew_at(cert, ratio) - expected) <= 1
    ninety = 90 * 86400
    frac = {"R12": (1, 2), "R23": (2, 3), "R34": (3, 4), "R45": (4, 5)}[ratio]
    assert ninety * frac[0] // frac[1] == days * 86400


def _cfg(extra: dict) -> object:
    base = {"SystemSettings": {"defaultHostname": "mail.example.test"},
            "AcmeProvider": [{"id": "p", "contact": [" mailto:admin@example.test "], "challengeType": "Http01"}],
            "Domain": [{"name": "example.test",
                        "certificateManagement": {"@type": "Automatic", "acmeProviderId": "p"}}]}
    for key, value in extra.items():
        base[key] = value
    return parse_bytes(json.dumps(base).encode())


def test_requested_names_follow_the_challenge_type():
    cfg = _cfg({})
    dom, prov = cfg.Domain[0], cfg.AcmeProvider[0]
    assert requested_names(cfg, "example.test", dom.certificate_management, prov) == [
        "autoconfig.example.test", "autodiscover.example.test", "mail.example.test", "mta-sts.example.test",
        "ua-auto-config.example.test"]
    prov.challenge_type = "Dns01"
    assert requested_names(cfg, "example.test", dom.certificate_management, prov) == ["*.example.test", "example.test"]
    dom.certificate_management.subject_alternative_names = ["*", "imap", "other.example.org"]
    assert requested_names(cfg, "example.test", dom.certificate_management, prov) == [
        "*.example.test", "imap.example.test", "other.example.org"]


def test_configuration_rules():
    cfg = _cfg({})
    assert cfg.AcmeProvider[0].contact == ["mailto:admin@example.test"]  # trimmed, mailto: added back
    bad = [
        ({"AcmeProvider": [{"id": "p", "contact": ["nope"]}]}, "$.AcmeProvider[0].contact[0]"),
        ({"AcmeProvider": [{"id": "p", "contact": ["a@b.test"], "directory": "http://ca.test/dir"}]},
         "$.AcmeProvider[0].directory"),
        ({"AcmeProvider": [{"id": "q", "contact": ["a@b.test"]}]}, "$.Domain[0].certificateManagement.acmeProviderId"),
        ({"AcmeProvider": [{"id": "p", "contact": ["a@b.test"], "challengeType": "Dns01"}]},
         "$.Domain[0].certificateManagement.acmeProviderId"),
        ({"AcmeProvider": [{"id": "p", "contact": ["a@b.test"], "eabKeyId": "k",
                            "eabHmacKey": {"@type": "Value", "secret": "a+b="}}]}, "$.AcmeProvider[0].eabHmacKey"),
    ]
    for extra, path in bad:
        with pytest.raises(ConfigError) as info:
            _cfg(extra)
        assert info.value.path == path, (extra, info.value)


def test_challenge_store_and_http_route(tmp_path):
    store = ChallengeStore(str(tmp_path))
    store.put_http("tok_en-1", "tok_en-1.thumb")
    svc = HttpService(parse_bytes(b"{}"), data_dir=str(tmp_path))
    ctx = SessionContext(hostname="h", listener="http", protocol="http", remote_ip="127.0.0.1", remote_port=1,
                         local_port=80)
    resp = svc.respond("GET", "/.well-known/acme-challenge/tok_en-1", [], b"", ctx)
    assert (resp.status, resp.body, resp.content_type) == (200, b"tok_en-1.thumb", "text/plain")
    assert svc.respond("GET", "/.well-known/acme-challenge/unknown", [], b"", ctx).status == 404
    assert svc.respond("GET", "/.well-known/acme-challenge/tok_en-1%2Fx", [], b"", ctx).status == 404
    assert svc.respond("GET", "/.well-known/acme-challenge/..%2F..%2Fetc", [], b"", ctx).status == 403  # banned path
    assert svc.respond("POST", "/.well-known/acme-challenge/tok_en-1", [], b"", ctx).status == 405
    alpn_only = HttpService(_cfg({"AcmeProvider": [{"id": "p", "contact": ["a@b.test"]}]}), data_dir=str(tmp_path))
    assert alpn_only.respond("GET", "/.well-known/acme-challenge/tok_en-1", [], b"", ctx).status == 404  # inactive
    store.remove_http("tok_en-1")
    assert svc.respond("GET", "/.well-known/acme-challenge/tok_en-1", [], b"", ctx).status == 404
    with pytest.raises(ValueError):
        store.put_http("../x", "y")


def test_tls_alpn_certificate_carries_the_critical_acme_identifier():
    from cryptography import x509

    cert_pem, _key = tls_alpn_certificate("mail.example.test", "tok.thumb")
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["mail.example.test"]


def test_alpn_context_only_for_pending_names(tmp_path):
    store = ChallengeStore(str(tmp_path))
    assert store.alpn_context("mail.example.test") is None
    assert store.alpn_context(None) is None
    store.put_alpn("mail.example.test", "tok.thumb")
    assert store.alpn_context("MAIL.example.test.") is not None
    store.remove_alpn("mail.example.test")
    assert store.alpn_context("mail.example.test") is None


def test_retry_after_and_links():
    assert retry_after(HttpResponse(429, [("retry-after", "30")]), 0) == 30
    assert retry_after(HttpResponse(429, [("retry-after", "Thu, 01 Jan 1970 00:01:40 GMT")]), 40) == 60
    assert retry_after(HttpResponse(200), 0) is None
    resp = HttpResponse(200, [("link", '<https://ca/cert/1/alt/1>;rel="alternate", <https://ca/dir>;rel="index"'),
                              ("link", "<https://ca/cert/1/alt/2>; rel=alternate")])
    assert links(resp, "alternate") == ["https://ca/cert/1/alt/1", "https://ca/cert/1/alt/2"]


class _Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_scheduler_retries_with_backoff_and_never_drops_the_schedule(tmp_path):
    clock = _Clock()
    installed = []
    sch = AcmeScheduler(str(tmp_path), lambda: installed.append(1), clock=clock, rng=random.Random(1))
    cfg = _cfg({"AcmeProvider": [{"id": "p", "contact": ["a@b.test"], "challengeType": "Http01", "maxRetries": 3}]})
    sch.configure(cfg)
    entry = sch.entries["example.test"]
    assert entry["due"] == clock.now and entry["status"] == "pending"
    temp = {"ok": False, "error": "timeout", "kind": "Http", "temporary": True, "retryAfter": None}
    waits = []
    for _ in range(6):
        before = clock.now
        sch._finished("example.test", temp)
        waits.append(sch.entries["example.test"]["due"] - before)
        clock.now = sch.entries["example.test"]["due"]
    assert 30 <= waits[0] <= 90 and 60 <= waits[1] <= 180 and 120 <= waits[2] <= 360  # 60 s x 2^n, jittered
    assert waits[3:] == [long_retry(0), long_retry(1), long_retry(2)] == [3600, 7200, 14400]  # then 1 h, 2 h, 4 h
    assert long_retry(3) == long_retry(9) == 21600
    sch._finished("example.test", {"ok": False, "error": "slow", "kind": "Backoff", "temporary": True,
                                   "retryAfter": 120.0})
    assert sch.entries["example.test"]["due"] - clock.now >= 121
    # "not due" is a success that schedules the renewal at renewAt.
    sch._finished("example.test", {"ok": True, "result": {"status": "not-due", "renewAt": clock.now + 5000,
                                                          "notAfter": clock.now + 9000, "names": []}})
    assert sch.entries["example.test"]["due"] == clock.now + 5000 and sch.entries["example.test"]["attempts"] == 0
    assert not installed
    sch._finished("example.test", {"ok": True, "result": {"status": "issued", "renewAt": clock.now + 7000,
                                                          "notAfter": clock.now + 9000, "names": ["a"]}})
    assert installed == [1]
    # Permanent failures wait for a configuration change, a manual renew, or the 6 h re-check.
    sch._finished("example.test", {"ok": False, "error": "bad", "kind": "Invalid", "temporary": False})
    assert sch.entries["example.test"]["status"] == "failed"
    assert sch.command("renew", {"domain": "example.test"})["ok"]
    assert sch.entries["example.test"]["due"] == clock.now and sch.entries["example.test"]["force"]
    assert not sch.command("renew", {"domain": "other.test"})["ok"]
    # The schedule survives a restart (a new scheduler reads it back).
    again = AcmeScheduler(str(tmp_path), lambda: None, clock=clock)
    assert again.entries["example.test"]["due"] == clock.now
    sch.close()


@given(st.text(max_size=900))
def test_txt_split_is_lossless_and_bounded(value):
    from stalwart.services.dnsproviders.records import split_txt

    parts = split_txt(value)
    assert b"".join(parts).decode("utf-8") == value
    assert all(len(p) <= 255 for p in parts)
    for p in parts:
        p.decode("utf-8")  # never cut inside a character


@given(st.text(max_size=300), st.text(max_size=300))
def test_header_parsers_never_crash(retry, link):
    resp = HttpResponse(503, [("retry-after", retry), ("link", link)])
    value = retry_after(resp, 0.0)
    assert value is None or value >= 0
    assert isinstance(links(resp, "alternate"), list)


@given(st.text(max_size=200))
def test_challenge_lookup_with_any_token_is_safe(tmp_path_factory, token):
    store = ChallengeStore(str(tmp_path_factory.getbasetemp()))
    assert store.http_answer(token) in (None,) or isinstance(store.http_answer(token), bytes)
    assert store.alpn_context(token) is None


def test_ari_cert_id_matches_rfc9773_example():
    """RFC 9773 §4.1: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4, serial
    00:87:65:43:21 -> aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"""
    import datetime as dt

    from cryptography import x509 as cx
    from cryptography.x509.oid import NameOID

    from stalwart.services.acme.client import ari_cert_id

    key = ec.generate_private_key(ec.SECP256R1())
    name = cx.Name([cx.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.timezone.utc)
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    cert = (cx.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x87654321).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(cx.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(key, hashes.SHA256()))
    assert ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_ari_window_from_a_directory_with_renewal_info():
    """RFC 9773 §4.2 shapes from a local server: the window is read, Retry-After honoured, and the
    renewal time falls inside the window (or at the re-check, when sooner)."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography.x509.oid import NameOID
    import datetime as dt
    from cryptography import x509 as cx

    from stalwart.services.acme.client import AcmeClient, ari_cert_id
    from stalwart.services.acme.http import HttpClient
    from stalwart.services.acme.renewal import _ari_due

    seen = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path == "/dir":
                body = json.dumps({"newNonce": base + "/n", "newAccount": base + "/a", "newOrder": base + "/o",
                                   "renewalInfo": base + "/ari/"}).encode()
                extra = []
            else:
                seen.append(self.path)
                body = json.dumps({"suggestedWindow": {"start": "2030-01-01T00:00:00Z",
                                                       "end": "2030-01-03T00:00:00Z"}}).encode()
                extra = [("Retry-After", "21600")]
            self.send_response(200)
            for k, v in [("Content-Type", "application/json"), *extra]:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        name = cx.Name([cx.NameAttribute(NameOID.COMMON_NAME, "x")])
        now = dt.datetime.now(dt.timezone.utc)
        leaf = (cx.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(12345).not_valid_before(now).not_valid_after(now + dt.timedelta(days=90))
                .add_extension(cx.AuthorityKeyIdentifier(b"\x01" * 20, None, None), critical=False)
                .sign(key, hashes.SHA256()))
        client = AcmeClient(f"http://127.0.0.1:{srv.server_address[1]}/dir", AccountKey.generate(), HttpClient())
        start, end, recheck = asyncio.run(client.renewal_window(leaf))
        assert seen == [f"/ari/{ari_cert_id(leaf)}"]
        assert end - start == 2 * 86400 and recheck == 21600

        class Parsed:  # what _ari_due needs of an installed certificate
            chain_pem = leaf.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                     fromlist=["Encoding"]).Encoding.PEM)

        client.clock = lambda: start - 10 * 86400  # long before the window: re-check after Retry-After
        assert asyncio.run(_ari_due(client, Parsed, random.Random(3))) == start - 10 * 86400 + 21600
        client.clock = lambda: start  # inside: a random time in the window
        at = asyncio.run(_ari_due(client, Parsed, random.Random(3)))
        assert start <= at <= end
    finally:
        srv.shutdown()
        srv.server_close()


def test_certificate_store_serves_installed_files_and_skips_broken_ones(tmp_path):
    """The TLS store takes ``<data-dir>/acme/certs/*.pem`` with the Certificate objects; a broken
    file is logged and skipped, a changed directory is noticed by reload_if_changed (tls.md §5)."""
    import os

    from stalwart.services.acme.state import AcmeState
    from stalwart.tls import CertificateStore

    cfg = parse_bytes(json.dumps({"NetworkListener": [{"name": "https", "protocol": "http", "bind": ["127.0.0.1:4430"],
                                                       "tlsImplicit": True}]}).encode())
    store = CertificateStore.build(cfg, str(tmp_path), "host.test")
    assert store.resolve_certificate("mail.example.test") is None
    os.makedirs(tmp_path / "acme" / "certs", exist_ok=True)
    (tmp_path / "acme" / "certs" / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    made = generate_self_signed(["mail.example.test"], __import__("time").time())
    AcmeState(str(tmp_path)).install("example.test", made.chain_pem, made.key_pem)
    assert store.sources_changed() and store.reload_if_changed()
    gen = store.generation
    assert [c.id for c in gen.certificates] == ["file:example.test"]
    assert [e.path.startswith(str(tmp_path / "acme" / "certs" / "broken.pem")) for e in gen.failed] == [True]
    assert store.resolve_certificate("mail.example.test").fingerprint == made.fingerprint
    assert not store.reload_if_changed()


@pytest.mark.parametrize("may_reregister", [True, False])
def test_account_does_not_exist_reregisters_only_when_no_key_is_pending(may_reregister):
    """``accountDoesNotExist`` re-registers with the stored key once (tls.md §6), except while a
    rolled-over key is unresolved: then the old key being unknown may only mean the CA has the new
    one, and registering it again would make a second account (keychange.py)."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from stalwart.services.acme.client import AcmeClient, AcmeProblem
    from stalwart.services.acme.http import HttpClient

    hits = {"/acct": 0, "/x": 0}

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _reply(self, status, doc=None, headers=()):
            body = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(status)
            self.send_header("Replay-Nonce", f"n{sum(hits.values())}")
            ctype = "application/problem+json" if status >= 400 else "application/json"
            for k, v in [("Content-Type", ctype), *headers]:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self):
            self._reply(200)

        def do_GET(self):
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            self._reply(200, {"newNonce": base + "/nonce", "newAccount": base + "/acct", "newOrder": base + "/o"})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            hits[self.path] += 1
            if self.path == "/acct":
                self._reply(201, {"status": "valid"}, [("Location", "http://127.0.0.1/acct/2")])
            else:
                self._reply(400, {"type": "urn:ietf:params:acme:error:accountDoesNotExist", "detail": "no"})

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        client = AcmeClient(base + "/dir", AccountKey.generate(), HttpClient(), account_uri="http://127.0.0.1/acct/1")
        client.may_reregister = may_reregister
        with pytest.raises(AcmeProblem, match="accountDoesNotExist"):
            asyncio.run(client.post(base + "/x", {}))
        assert hits == ({"/acct": 1, "/x": 2} if may_reregister else {"/acct": 0, "/x": 1})
    finally:
        srv.shutdown()
        srv.server_close()
