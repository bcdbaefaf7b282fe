"""SNI selection (tls.md §4) and the live certificate store (tls.md §5).

Table tests drive :class:`CertificateResolver` with a fake clock; handshake tests check the
certificate a real client receives, through a driver-shaped loopback server (plain accept, then
``start_tls`` with ``store.context_for(...)``) on asyncio and on uvloop.
"""
from __future__ import annotations

import hashlib
import json
import socket
import ssl
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from test_tls_certs import (
    DAY,
    NOW,
    LoopbackTlsServer,
    emitted,  # noqa: F401 - fixture
    loop_factories,
    make_cert,
    needs_openssl,
    s_client,
)

from stalwart.config.loader import parse_bytes
from stalwart.errors import ConfigError
from stalwart.tls import CertificateStore
from stalwart.tls.certs import generate_self_signed, parse_certificate
from stalwart.tls.sni import DEFAULT, EXACT, SELF_SIGNED, WILDCARD, CertificateResolver, normalize_server_name

T0 = NOW.timestamp()


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def parsed(names=("mail.example.com",), cert_id="0", **kw):
    issued = make_cert(names, **kw)
    return parse_certificate(issued.chain_pem, issued.key_pem, cert_id=cert_id, path=f"$.Certificate[{cert_id}]")


FALLBACK = generate_self_signed(("localhost",), T0)


def resolver(certs, clock=None, **kw) -> CertificateResolver:
    return CertificateResolver(certs, FALLBACK, clock=clock or Clock(), **kw)


# --- tables ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    (None, None), ("", None), (".", None), ("192.0.2.1", None), ("2001:db8::1", None),
    ("Mail.Example.COM.", "mail.example.com"), ("localhost", "localhost"),
])
def test_normalize_server_name(raw, expected):
    assert normalize_server_name(raw) == expected


def test_exact_then_wildcard_of_exactly_one_label(emitted):
    apex = parsed(("example.com",), "0")
    wild = parsed(("*.example.com",), "1")
    host = parsed(("mail.example.com",), "2")
    r = resolver([apex, wild, host], default_certificate_id="0")
    assert r.select("mail.example.com") == r.select("MAIL.Example.com.")
    assert r.select("mail.example.com").certificate is host and r.select("mail.example.com").match == EXACT
    sel = r.select("imap.example.com")
    assert sel.certificate is wild and sel.match == WILDCARD and sel.server_name == "imap.example.com"
    assert r.select("example.com").certificate is apex  # the apex by its own name, not by the wildcard
    # a.b.example.com: the wildcard covers one label only -> default, with an event
    emitted.items.clear()
    sel = r.select("a.b.example.com")
    assert sel.match == DEFAULT and sel.certificate is apex
    assert emitted.named("tls.certificate-not-found") == [{"Hostname": "a.b.example.com"}]


def test_wildcard_never_answers_its_apex(emitted):
    wild = parsed(("*.example.com",), "0")
    other = parsed(("other.example.net",), "1", not_after=NOW + 60 * DAY)
    r = resolver([wild, other])
    sel = r.select("example.com")
    assert sel.match == DEFAULT and sel.certificate is other  # latest notValidAfter, not the wildcard
    assert emitted.named("tls.certificate-not-found") == [{"Hostname": "example.com"}]
    # and an apex-only certificate never answers a subdomain (reference quirk not reproduced)
    r = resolver([parsed(("example.com",), "0")])
    assert r.select("foo.example.com").match == DEFAULT


def test_latest_not_valid_after_wins_then_lowest_id():
    early = parsed(("mail.example.com", "*.example.com"), "5", not_after=NOW + 10 * DAY)
    late = parsed(("mail.example.com", "*.example.com"), "9", not_after=NOW + 80 * DAY)
    assert resolver([early, late]).select("mail.example.com").certificate is late
    assert resolver([late, early]).select("x.example.com").certificate is late
    same_a = parsed(("mail.example.com",), "10", not_after=NOW + 40 * DAY)
    same_b = parsed(("mail.example.com",), "2", not_after=NOW + 40 * DAY)
    # ids compare numerically: "2" < "10"
    assert resolver([same_a, same_b]).select("mail.example.com").certificate is same_b


def test_no_sni_and_ip_sni_use_the_default_chain_of_choices(emitted):
    a = parsed(("a.example",), "0", not_after=NOW + 90 * DAY)
    b = parsed(("mail.example.org",), "1", not_after=NOW + 20 * DAY)
    c = parsed(("c.example",), "2", not_after=NOW + 30 * DAY)
    # 1. defaultCertificateId
    assert resolver([a, b, c], default_certificate_id="2").select(None).certificate is c
    # 2. the certificate covering the default host name
    assert resolver([a, b, c], default_hostname="Mail.Example.org").select(None).certificate is b
    # 3. latest notValidAfter
    assert resolver([b, c, a]).select(None).certificate is a
    # an IP literal as SNI counts as no SNI and is not reported as not found
    sel = resolver([a, b, c]).select("192.0.2.1")
    assert sel.certificate is a and sel.server_name is None and sel.match == DEFAULT
    assert emitted.named("tls.certificate-not-found") == []
    # an unusable default falls through to the next rule
    expired_default = parsed(("d.example",), "3", not_before=NOW - 40 * DAY, not_after=NOW - DAY)
    assert resolver([a, expired_default], default_certificate_id="3").select(None).certificate is a


def test_self_signed_only_when_nothing_is_usable(emitted):
    r = resolver([])
    sel = r.select("mail.example.com")
    assert sel.certificate is FALLBACK and sel.match == SELF_SIGNED
    assert emitted.named("tls.certificate-not-found") == [{"Hostname": "mail.example.com"}]
    assert len(emitted.named("tls.no-certificates-available")) == 1
    assert resolver([]).select(None).match == SELF_SIGNED


def test_certificates_activate_and_expire_without_a_reload(emitted):
    clock = Clock()
    current = parsed(("mail.example.com",), "0", not_after=NOW + 2 * DAY)
    upcoming = parsed(("mail.example.com",), "1", not_before=NOW + DAY, not_after=NOW + 90 * DAY)
    r = resolver([current, upcoming], clock=clock)
    assert r.select("mail.example.com").certificate is current  # upcoming is not valid yet
    clock.t = T0 + DAY.total_seconds()
    assert r.select("mail.example.com").certificate is upcoming  # activated at its notValidBefore
    clock.t = T0 + 3 * DAY.total_seconds()
    assert r.select("mail.example.com").certificate is upcoming
    (event,) = emitted.named("tls.certificate-expired")  # `current` ended, reported once
    assert "Certificate 0" in event["Details"]
    r.select("mail.example.com")
    assert len(emitted.named("tls.certificate-expired")) == 1
    clock.t = T0 + 91 * DAY.total_seconds()
    assert r.select("mail.example.com").certificate is FALLBACK
    assert len(emitted.named("tls.certificate-expired")) == 2


def test_resolve_certificate_for_tlsa_has_no_fallbacks(emitted):
    wild = parsed(("*.example.com",), "0")
    r = resolver([wild], default_certificate_id="0")
    assert r.resolve_certificate("mx.example.com") is wild
    assert r.resolve_certificate("example.com") is None
    assert r.resolve_certificate("192.0.2.1") is None
    assert emitted.items == []


# --- the store over real handshakes ---------------------------------------------------------------


def write_pair(directory, stem, issued):
    (directory / f"{stem}.crt").write_text(issued.chain_pem)
    (directory / f"{stem}.key").write_text(issued.key_pem)
    return {"certificate": {"@type": "File", "filePath": str(directory / f"{stem}.crt")},
            "privateKey": {"@type": "File", "filePath": str(directory / f"{stem}.key")}}


def config(certificates, default=None, listener=None, hostname="mail.example.org"):
    doc = {
        "SystemSettings": {"defaultHostname": hostname, **({"defaultCertificateId": default} if default else {})},
        "NetworkListener": [{"name": "imaps", "protocol": "imap", "bind": ["127.0.0.1:1"], "tlsImplicit": True,
                             **(listener or {})}],
        "Certificate": certificates,
    }
    return parse_bytes(json.dumps(doc).encode())


@pytest.fixture(scope="module")
def sni_certs():
    return {
        "mail": make_cert(("mail.example.com",), key="rsa"),
        "wild": make_cert(("*.example.com",), key="ecdsa", not_after=NOW + 60 * DAY),
        "apex": make_cert(("example.com",), key="ed25519", not_after=NOW + 20 * DAY),
        "dflt": make_cert(("default.example.net",), key="ecdsa", not_after=NOW + 10 * DAY),
    }


@needs_openssl
@pytest.mark.parametrize("loop_factory", loop_factories())
def test_openssl_client_receives_the_selected_certificate(tmp_path, sni_certs, loop_factory):
    docs = [{"id": k, **write_pair(tmp_path, k, v)} for k, v in sni_certs.items()]
    store = CertificateStore.build(config(docs, default="dflt"), str(tmp_path / "data"))
    fp = {k: v.fingerprint for k, v in sni_certs.items()}
    with LoopbackTlsServer(lambda: store.context_for("imaps"), loop_factory) as srv:
        cases = [
            (["-servername", "mail.example.com"], "mail", EXACT),
            (["-servername", "MAIL.EXAMPLE.COM"], "mail", EXACT),
            (["-servername", "imap.example.com"], "wild", WILDCARD),
            (["-servername", "example.com"], "apex", EXACT),
            (["-servername", "a.b.example.com"], "dflt", DEFAULT),
            (["-servername", "unknown.test"], "dflt", DEFAULT),
            (["-noservername"], "dflt", DEFAULT),
        ]
        for args, want, how in cases:
            got = s_client(srv.port, *args)
            assert got.ok, got.output
            assert got.fingerprint == fp[want], (args, want)
            sel = store.selection(srv.ssl_objects[-1])
            assert sel is not None and sel.certificate.id == want and sel.match == how
        # TLS 1.2 goes through the same selection
        got = s_client(srv.port, "-tls1_2", "-servername", "imap.example.com")
        assert got.ok and got.version == "TLSv1.2" and got.fingerprint == fp["wild"]
        assert got.cipher.startswith("ECDHE-ECDSA-")


@pytest.mark.parametrize("loop_factory", loop_factories())
def test_python_client_sees_selection_and_self_signed_fallback(tmp_path, loop_factory):
    store = CertificateStore.build(config([]), str(tmp_path / "data"))
    fallback = store.generation.fallback
    assert fallback.subject_alternative_names == ("localhost", "mail.example.org")
    client = ssl.create_default_context(cadata=fallback.chain_pem.decode())
    with LoopbackTlsServer(lambda: store.context_for("imaps"), loop_factory) as srv:
        with client.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=5),
                                server_hostname="mail.example.org") as s:
            assert s.version() == "TLSv1.3"
            s.sendall(b"ping\n")
            assert s.recv(16) == b"ping\n"
    assert store.selection(srv.ssl_objects[-1]).match == SELF_SIGNED


def _handshake_fingerprint(port: int, name: str) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=name) as s:
        return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def test_rebuild_swaps_for_new_handshakes_and_keeps_open_sessions(tmp_path):
    old = make_cert(("mail.example.com",))
    docs = [write_pair(tmp_path, "mail", old)]
    store = CertificateStore.build(config(docs), str(tmp_path / "data"))
    with LoopbackTlsServer(lambda: store.context_for("imaps")) as srv:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        established = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=5),
                                      server_hostname="mail.example.com")
        established.sendall(b"before\n")
        assert established.recv(16) == b"before\n"
        first_generation = store.generation

        # rotate the files on disk; nothing changes until the store notices
        new = make_cert(("mail.example.com",), not_after=NOW + 80 * DAY)
        write_pair(tmp_path, "mail", new)
        assert _handshake_fingerprint(srv.port, "mail.example.com") == old.fingerprint
        assert store.sources_changed()
        assert store.reload_if_changed() is True
        assert store.generation is not first_generation
        assert store.reload_if_changed() is False

        assert _handshake_fingerprint(srv.port, "mail.example.com") == new.fingerprint
        # the session established before the swap carries on with its certificate
        established.sendall(b"after\n")
        assert established.recv(16) == b"after\n"
        assert established.getpeercert(binary_form=True) == old.cert.public_bytes(Encoding.DER)
        established.close()


def test_failed_rebuild_keeps_the_running_generation(tmp_path):
    store = CertificateStore.build(config([write_pair(tmp_path, "m", make_cert())]), str(tmp_path / "data"))
    running = store.generation
    bad = config([], listener={"tlsDisableProtocols": ["tls13"]})
    bad.NetworkListener[0].tls_disable_protocols = ["tls12", "tls13"]  # bypass the loader's check
    with pytest.raises(ConfigError) as e:
        store.rebuild(bad)
    assert e.value.path == "$.NetworkListener[0].tlsDisableProtocols"
    assert store.generation is running


def test_store_reports_broken_certificates_and_serves_the_rest(tmp_path, emitted):
    good = make_cert(("good.example",))
    docs = [write_pair(tmp_path, "good", good),
            {"certificate": {"@type": "Text", "value": good.chain_pem},
             "privateKey": {"@type": "Text", "secret": make_cert().key_pem}}]
    store = CertificateStore.build(config(docs, default="1"), str(tmp_path / "data"))
    gen = store.generation
    assert [c.id for c in gen.certificates] == ["0"]
    assert [e.path for e in gen.failed] == ["$.Certificate[1].privateKey"]
    assert emitted.named("config.build-error")[0]["Path"] == "$.Certificate[1].privateKey"
    # the configured default is unusable: that is said once at build time
    assert any(k["Path"] == "$.SystemSettings.defaultCertificateId" for k in emitted.named("config.build-warning"))
    assert store.resolve_certificate("good.example").id == "0"
    assert store.context_for("nope") is None and store.listener("imaps").handshake_timeout == 60.0


def test_listeners_without_tls_get_no_context(tmp_path):
    store = CertificateStore.build(config([], listener={"useTls": False, "tlsImplicit": False}),
                                   str(tmp_path / "data"))
    assert store.context_for("imaps") is None
    assert store.generation.fallback.usable_at(time.time())


def test_sni_callback_failure_becomes_an_alert_not_a_crash(tmp_path, emitted):
    store = CertificateStore.build(config([]), str(tmp_path / "data"))

    def boom(_name):
        raise RuntimeError("selection bug")

    store.generation.resolver.select = boom  # instance attribute shadows the method
    with LoopbackTlsServer(lambda: store.context_for("imaps")) as srv:
        with pytest.raises(ssl.SSLError):
            _handshake_fingerprint(srv.port, "x.example")
        deadline = time.time() + 5
        while not srv.records and time.time() < deadline:
            time.sleep(0.01)
    assert srv.records and srv.records[0][0] == "error"
    assert any("selection bug" in k["Reason"] for k in emitted.named("tls.handshake-error"))


def test_handshake_timeout_is_what_the_listener_says(tmp_path):
    store = CertificateStore.build(config([], listener={"tlsTimeout": 2500}), str(tmp_path / "data"))
    tls = store.listener("imaps")
    assert tls.handshake_timeout == 2.5 and tls.implicit is True
