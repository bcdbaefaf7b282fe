"""Listener TLS contexts (tls.md §1): versions, the nine suites, server preference, and the
``sslctx`` kernel that makes TLS 1.3 suite settings real. Every policy is proven by handshakes
with ``openssl s_client`` that succeed or fail as configured; the kernel tests run on the compiled
kernel and on its ctypes twin.
"""
from __future__ import annotations

import json
import socket
import ssl

import pytest
from hypothesis import given, settings
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import strategies as st
from kernels import kernel_fixture
from test_tls_certs import LoopbackTlsServer, make_cert, needs_openssl, s_client

from stalwart._fast import load
from stalwart.config.loader import parse_bytes
from stalwart.errors import ConfigError
from stalwart.tls import CertificateStore
from stalwart.tls.certs import parse_certificate
from stalwart.tls.context import (
    CIPHER_SUITES,
    TlsContextError,
    TlsPolicy,
    certificate_context,
    load_certificate,
    server_context,
)

sslctx = kernel_fixture("sslctx")

TLS13 = [s.openssl for s in CIPHER_SUITES if s.version == "tls13"]
TLS12 = [s.openssl for s in CIPHER_SUITES if s.version == "tls12"]


def offered(ctx: ssl.SSLContext, protocol: str) -> list[str]:
    return [c["name"] for c in ctx.get_ciphers() if c["protocol"] == protocol]


# --- the kernel --------------------------------------------------------------------------------------


def test_compiled_kernel_is_really_compiled():
    assert load("sslctx", compiled=True).__file__.endswith(".so")


def test_kernel_sets_tls13_suites_in_order(sslctx):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sslctx.set_ciphersuites(ctx, "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384")
    assert sslctx.tls13_suites(ctx) == ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"]
    assert offered(ctx, "TLSv1.3") == ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"]
    sslctx.set_ciphersuites(ctx, "")
    assert sslctx.tls13_suites(ctx) == []


def test_kernel_never_ignores_a_suite_silently(sslctx):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ssl.SSLError, match="rejected"):
        sslctx.set_ciphersuites(ctx, "TLS_NO_SUCH_SUITE")
    # OpenSSL itself would drop the unknown name and report success
    with pytest.raises(ssl.SSLError, match="TLS_NO_SUCH_SUITE"):
        sslctx.set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_NO_SUCH_SUITE")
    # a TLS 1.2 name is not a TLS 1.3 suite
    with pytest.raises(ssl.SSLError):
        sslctx.set_ciphersuites(ctx, "ECDHE-RSA-AES128-GCM-SHA256")


def test_kernel_argument_errors(sslctx):
    with pytest.raises(TypeError):
        sslctx.set_ciphersuites(object(), "TLS_AES_128_GCM_SHA256")
    with pytest.raises(TypeError):
        sslctx.set_ciphersuites(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), None)
    with pytest.raises(TypeError):
        sslctx.ssl_ctx_address("not a context")


def test_both_twins_find_the_same_ssl_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c, py = load("sslctx", compiled=True), load("sslctx", compiled=False)
    assert c.ssl_ctx_address(ctx) == py.ssl_ctx_address(ctx) != 0
    # distinct contexts, distinct SSL_CTX; a subclass keeps the layout
    assert c.ssl_ctx_address(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) != c.ssl_ctx_address(ctx)

    class Sub(ssl.SSLContext):
        pass

    sub = Sub(ssl.PROTOCOL_TLS_SERVER)
    assert c.ssl_ctx_address(sub) == py.ssl_ctx_address(sub)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(TLS13), unique=True), st.booleans())
def test_twins_agree_on_any_suite_list(suites, compiled_first):
    kernels = [load("sslctx", compiled=True), load("sslctx", compiled=False)]
    if not compiled_first:
        kernels.reverse()
    results = []
    for kernel in kernels:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        kernel.set_ciphersuites(ctx, ":".join(suites))
        results.append(offered(ctx, "TLSv1.3"))
    assert results[0] == results[1] == suites


# --- policies ----------------------------------------------------------------------------------------


def test_default_policy_is_the_table_in_order():
    p = TlsPolicy.from_settings()
    assert p.versions == ("tls12", "tls13")
    assert list(p.tls13_suites) == TLS13 and list(p.tls12_suites) == TLS12
    assert p.server_preference is True
    assert [s.value for s in CIPHER_SUITES][:3] == [
        "tls13-aes-256-gcm-sha384", "tls13-aes-128-gcm-sha256", "tls13-chacha20-poly1305-sha256"]


def test_policy_validation_errors_carry_paths():
    with pytest.raises(ConfigError) as e:
        TlsPolicy.from_settings(["tls12", "tls13"], path="$.NetworkListener[1]")
    assert e.value.path == "$.NetworkListener[1].tlsDisableProtocols"
    with pytest.raises(ConfigError) as e:
        TlsPolicy.from_settings(disable_cipher_suites=["tls-rsa-with-rc4-128-sha"], path="$.NetworkListener[0]")
    assert e.value.path == "$.NetworkListener[0].tlsDisableCipherSuites" and "tls-rsa-with-rc4-128-sha" in str(e.value)
    with pytest.raises(ConfigError, match="TLSv1.3 is enabled"):
        TlsPolicy.from_settings(disable_cipher_suites=[s.value for s in CIPHER_SUITES if s.version == "tls13"])
    with pytest.raises(ConfigError, match="TLSv1.2 is enabled"):
        TlsPolicy.from_settings(disable_cipher_suites=[s.value for s in CIPHER_SUITES if s.version == "tls12"])
    with pytest.raises(ConfigError, match="unknown TLS version"):
        TlsPolicy.from_settings(["tls11"])
    # a disabled version may lose all its suites
    p = TlsPolicy.from_settings(["tls12"], [s.value for s in CIPHER_SUITES if s.version == "tls12"])
    assert p.versions == ("tls13",) and p.tls12_suites == ()


def test_server_context_reads_back_as_configured(sslctx):
    p = TlsPolicy.from_settings(["tls12"], ["tls13-aes-128-gcm-sha256"], ignore_client_order=False)
    ctx = server_context(p, kernel=sslctx)
    assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert offered(ctx, "TLSv1.3") == ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET):
        assert ctx.options & flag
    assert ctx.verify_mode == ssl.CERT_NONE
    p = TlsPolicy.from_settings(["tls13"], ["tls-ecdhe-rsa-with-chacha20-poly1305-sha256"])
    ctx = server_context(p, kernel=sslctx)
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    assert offered(ctx, "TLSv1.2") == [n for n in TLS12 if n != "ECDHE-RSA-CHACHA20-POLY1305"]
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    # only table suites, whatever OpenSSL's defaults would add
    assert {c["name"] for c in ctx.get_ciphers()} <= set(TLS12 + TLS13)


def test_a_kernel_that_cannot_work_fails_loudly():
    class Broken:
        @staticmethod
        def set_ciphersuites(ctx, suites):
            raise RuntimeError("libssl has no SSL_CTX_set_ciphersuites")

    with pytest.raises(TlsContextError, match="cannot be applied"):
        server_context(TlsPolicy(), kernel=Broken)

    class Ignoring:  # claims success but changes nothing: caught by the read-back
        @staticmethod
        def set_ciphersuites(ctx, suites):
            return None

    with pytest.raises(TlsContextError, match="TLS 1.3 suites"):
        server_context(TlsPolicy.from_settings(disable_cipher_suites=["tls13-aes-128-gcm-sha256"]), kernel=Ignoring)


# --- handshakes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    """An ECDSA and an RSA certificate, so every TLS 1.2 suite has a certificate to run with."""
    ecdsa = make_cert(("ecdsa.example.com",), key="ecdsa")
    rsa_ = make_cert(("rsa.example.com",), key="rsa")
    return {"ecdsa": parse_certificate(ecdsa.chain_pem, ecdsa.key_pem, cert_id="0"),
            "rsa": parse_certificate(rsa_.chain_pem, rsa_.key_pem, cert_id="1")}


def serve(policy: TlsPolicy, cert, kernel=None) -> LoopbackTlsServer:
    ctx = certificate_context(policy, cert, kernel=kernel)
    return LoopbackTlsServer(lambda: ctx)


@needs_openssl
def test_disabled_tls13_suite_really_leaves_the_handshake(pair, sslctx):
    """tls.md §1: proven with `openssl s_client -tls1_3 -ciphersuites …`, on both twins."""
    off = TlsPolicy.from_settings(disable_cipher_suites=["tls13-aes-128-gcm-sha256"])
    with serve(off, pair["ecdsa"], sslctx) as srv:
        refused = s_client(srv.port, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
        assert not refused.ok, refused.output
        other = s_client(srv.port, "-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256")
        assert other.ok and other.cipher == "TLS_CHACHA20_POLY1305_SHA256"
    with serve(TlsPolicy(), pair["ecdsa"], sslctx) as srv:
        allowed = s_client(srv.port, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
        assert allowed.ok and allowed.version == "TLSv1.3" and allowed.cipher == "TLS_AES_128_GCM_SHA256"


@needs_openssl
def test_plain_python_ssl_would_have_kept_the_suite(pair):
    """Why the kernel exists: with Python's own knobs only, the "disabled" suite is negotiated."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers(":".join(TLS12))  # the only cipher call Python offers: TLS 1.2 only
    load_certificate(ctx, pair["ecdsa"])
    with LoopbackTlsServer(lambda: ctx) as srv:
        got = s_client(srv.port, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
        assert got.ok and got.cipher == "TLS_AES_128_GCM_SHA256"


@needs_openssl
@pytest.mark.parametrize("suite", [s for s in CIPHER_SUITES if s.version == "tls12"], ids=lambda s: s.value)
def test_each_tls12_suite_can_be_disabled(pair, suite):
    cert = pair["ecdsa"] if "ECDSA" in suite.openssl else pair["rsa"]
    with serve(TlsPolicy.from_settings(disable_cipher_suites=[suite.value]), cert) as srv:
        refused = s_client(srv.port, "-tls1_2", "-cipher", suite.openssl)
        assert not refused.ok, refused.output
    with serve(TlsPolicy(), cert) as srv:
        allowed = s_client(srv.port, "-tls1_2", "-cipher", suite.openssl)
        assert allowed.ok and allowed.cipher == suite.openssl


@needs_openssl
def test_versions(pair):
    ecdsa = pair["ecdsa"]
    with serve(TlsPolicy.from_settings(["tls13"]), ecdsa) as srv:
        assert not s_client(srv.port, "-tls1_3").ok
        assert s_client(srv.port, "-tls1_2").version == "TLSv1.2"
    with serve(TlsPolicy.from_settings(["tls12"]), ecdsa) as srv:
        assert not s_client(srv.port, "-tls1_2").ok
        assert s_client(srv.port, "-tls1_3").version == "TLSv1.3"
    with serve(TlsPolicy(), ecdsa) as srv:
        # never below TLS 1.2, whatever the client asks for
        for old in ("-tls1_1", "-tls1"):
            got = s_client(srv.port, old, "-cipher", "DEFAULT@SECLEVEL=0")
            assert not got.ok, got.output
        assert s_client(srv.port).version == "TLSv1.3"


@needs_openssl
def test_server_preference_follows_tls_ignore_client_order(pair):
    ecdsa = pair["ecdsa"]
    client12 = ("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384")
    client13 = ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384")
    with serve(TlsPolicy.from_settings(ignore_client_order=True), ecdsa) as srv:
        assert s_client(srv.port, *client12).cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
        assert s_client(srv.port, *client13).cipher == "TLS_AES_256_GCM_SHA384"
    with serve(TlsPolicy.from_settings(ignore_client_order=False), ecdsa) as srv:
        assert s_client(srv.port, *client12).cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"
        assert s_client(srv.port, *client13).cipher == "TLS_CHACHA20_POLY1305_SHA256"


@needs_openssl
def test_policy_survives_the_sni_swap(tmp_path, pair):
    """OpenSSL takes the cipher list from the context the SNI callback installs; the store gives
    every certificate context its listener's policy, so a disabled suite stays disabled."""
    ecdsa = make_cert(("ecdsa.example.com",), key="ecdsa")
    rsa_ = make_cert(("rsa.example.com",), key="rsa")
    doc = {
        "SystemSettings": {"defaultHostname": "mail.example.org", "defaultCertificateId": "e"},
        "NetworkListener": [{"name": "smtps", "bind": ["127.0.0.1:1"], "tlsImplicit": True,
                             "tlsDisableProtocols": ["tls13"],
                             "tlsDisableCipherSuites": ["tls-ecdhe-rsa-with-aes-128-gcm-sha256"]}],
        "Certificate": [
            {"id": "e", "certificate": {"@type": "Text", "value": ecdsa.chain_pem},
             "privateKey": {"@type": "Text", "secret": ecdsa.key_pem}},
            {"id": "r", "certificate": {"@type": "Text", "value": rsa_.chain_pem},
             "privateKey": {"@type": "Text", "secret": rsa_.key_pem}},
        ],
    }
    store = CertificateStore.build(parse_bytes(json.dumps(doc).encode()), str(tmp_path))
    with LoopbackTlsServer(lambda: store.context_for("smtps")) as srv:
        refused = s_client(srv.port, "-servername", "rsa.example.com", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
        assert not refused.ok, refused.output
        got = s_client(srv.port, "-servername", "rsa.example.com", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
        assert got.ok and got.fingerprint == rsa_.fingerprint and got.version == "TLSv1.2"
        # versions stay the listener's after the swap as well
        assert not s_client(srv.port, "-servername", "rsa.example.com", "-tls1_3").ok


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
def test_python_client_handshake_on_each_key_type(kind):
    issued = make_cert(("mail.example.com",), key=kind)
    cert = parse_certificate(issued.chain_pem, issued.key_pem, cert_id="0")
    client = ssl.create_default_context(cadata=issued.chain[-1].public_bytes(Encoding.PEM).decode())
    with serve(TlsPolicy(), cert) as srv:
        with client.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=5),
                                server_hostname="mail.example.com") as s:
            assert s.version() == "TLSv1.3"
            s.sendall(b"hello\n")
            assert s.recv(16) == b"hello\n"
        # and the client really verified the chain and the name
        with pytest.raises(ssl.SSLCertVerificationError):
            client.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=5),
                               server_hostname="other.example.com")
