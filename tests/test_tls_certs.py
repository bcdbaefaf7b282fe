"""Certificate parsing, name extraction, loading and the self-signed fallback (tls.md §3–§5).

The helpers at the top (certificate factory, loopback TLS server, ``openssl s_client`` runner) are
shared with test_tls_sni.py and test_tls_context.py.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import re
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from stalwart import events
from stalwart.config.model import Certificate
from stalwart.config.secrets import FromEnvironment, FromFile, PublicTextValue, SecretTextValue
from stalwart.tls import certs as certs_mod
from stalwart.tls.certs import (
    SELF_SIGNED_ID,
    CertificateError,
    SelfSignedCache,
    generate_self_signed,
    load_certificates,
    normalize_dns_name,
    normalize_ip,
    parse_certificate,
    self_signed_names,
)

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
DAY = dt.timedelta(days=1)
OPENSSL = shutil.which("openssl")

# --- shared helpers ------------------------------------------------------------------------------

_KEYS: dict[str, object] = {}


def make_key(kind: str = "ecdsa"):
    """A private key; RSA keys are cached per test run because generating them is slow."""
    if kind == "rsa":
        if "rsa" not in _KEYS:
            _KEYS["rsa"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _KEYS["rsa"]
    if kind == "rsa2":  # a second RSA key, for mismatch tests
        if "rsa2" not in _KEYS:
            _KEYS["rsa2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _KEYS["rsa2"]
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


@dataclass
class Issued:
    cert: x509.Certificate
    key: object
    chain: list[x509.Certificate]

    @property
    def chain_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain)

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()

    def as_object(self, cert_id: str | None = None) -> Certificate:
        return Certificate(id=cert_id, certificate=PublicTextValue(value=self.chain_pem),
                           private_key=SecretTextValue(secret=self.key_pem))


_CA: dict[str, tuple] = {}


def make_ca():
    """An issuer named like Let's Encrypt's R11, to check the issuer text (tls.md §3)."""
    if "ca" not in _CA:
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Let's Encrypt"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "R11")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(NOW - 400 * DAY)
                .not_valid_after(NOW + 400 * DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256()))
        _CA["ca"] = (cert, key)
    return _CA["ca"]


def make_cert(names=("mail.example.com",), *, key="ecdsa", ips=(), cn=None, not_before=None, not_after=None,
              self_signed=False) -> Issued:
    """A leaf for ``names`` (DNS SANs, given verbatim) signed by :func:`make_ca` unless self-signed."""
    priv = make_key(key) if isinstance(key, str) else key
    nb = not_before if not_before is not None else NOW - DAY
    na = not_after if not_after is not None else NOW + 30 * DAY
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) if cn else x509.Name([])
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if self_signed:
        issuer_name, signer, chain_extra = subject, priv, []
    else:
        ca_cert, ca_key = make_ca()
        issuer_name, signer, chain_extra = ca_cert.subject, ca_key, [ca_cert]
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(priv.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(nb).not_valid_after(na))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=not cn)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(signer, algorithm)
    return Issued(cert, priv, [cert, *chain_extra])


class EventLog:
    """Records ``events.emit`` calls."""

    def __init__(self):
        self.items: list[tuple[str, dict]] = []

    def __call__(self, event, level=None, **keys):
        self.items.append((event, keys))

    def named(self, event: str) -> list[dict]:
        return [k for e, k in self.items if e == event]


@pytest.fixture
def emitted(monkeypatch) -> EventLog:
    log = EventLog()
    monkeypatch.setattr(events, "emit", log)
    return log


def ssl_protocol_class(loop):
    """The TLS protocol layer of ``loop``'s implementation (uvloop has its own)."""
    if type(loop).__module__.startswith("uvloop"):
        from uvloop.loop import SSLProtocol
    else:
        from asyncio.sslproto import SSLProtocol
    return SSLProtocol


class _EchoOverTls(asyncio.Protocol):
    """Driver-shaped connection: a TLS layer is swapped in synchronously inside ``connection_made``
    (uvloop reads a new transport as soon as connection_made returns, so a ``start_tls`` task
    could lose the ClientHello to the plain protocol), then lines are echoed."""

    def __init__(self, server: "LoopbackTlsServer"):
        self.server = server
        self.handshaking = False
        self.transport = None

    def connection_made(self, transport):
        if self.handshaking:  # second call: the TLS layer's application transport
            self.transport = transport
            obj = transport.get_extra_info("ssl_object")
            self.server.ssl_objects.append(obj)
            self.server.records.append((obj, obj.version(), obj.cipher()[0]))
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        layer = ssl_protocol_class(loop)(loop, self, self.server.get_context(), waiter, server_side=True,
                                         call_connection_made=True, ssl_handshake_timeout=5)
        self.handshaking = True
        transport.set_protocol(layer)
        layer.connection_made(transport)
        waiter.add_done_callback(self._finished)

    def _finished(self, waiter):
        exc = None if waiter.cancelled() else waiter.exception()
        if waiter.cancelled() or exc is not None:
            self.server.records.append(("error", str(exc)))

    def data_received(self, data):
        self.transport.write(data)


class LoopbackTlsServer:
    """A loopback TLS server run like the connection driver: plain accept, then a TLS layer with a
    context asked for per connection (like ``store.context_for``); echoes what it receives. Its
    event loop runs in a thread.

    ``records`` gets, per connection, ``(ssl_object, version, cipher)`` or ``("error", text)``.
    """

    def __init__(self, get_context, loop_factory=asyncio.new_event_loop):
        self.get_context = get_context
        self.loop = loop_factory()
        self.records: list = []
        self.ssl_objects: list = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _EchoOverTls(self), "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc):
        async def stop():
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def loop_factories():
    """Event loops the driver may run: asyncio's, and uvloop's when installed."""
    out = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        pass
    else:
        out.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return out


@dataclass
class ClientResult:
    ok: bool
    version: str | None
    cipher: str | None
    fingerprint: str | None
    output: str


_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def s_client(port: int, *args: str) -> ClientResult:
    """Run ``openssl s_client`` against 127.0.0.1:port; report what it negotiated and received."""
    proc = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
                          input=b"", capture_output=True, timeout=20)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    m = re.search(r"New, (TLSv1\.[0-3]), Cipher is (\S+)", out)
    pem = _PEM_CERT.search(out)
    fp = None
    if pem:
        fp = x509.load_pem_x509_certificate(pem.group(0).encode()).fingerprint(hashes.SHA256()).hex()
    ok = bool(m) and m.group(2) != "(NONE)"
    return ClientResult(ok, m.group(1) if ok else None, m.group(2) if ok else None, fp, out)


needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")

# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("Mail.Example.COM", "mail.example.com"),
    ("mail.example.com.", "mail.example.com"),
    ("*.Example.com", "*.example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("_mta-sts.example.com", "_mta-sts.example.com"),
    ("f*.example.com", None),  # partial-label wildcards are not supported (tls.md §4)
    ("a.*.example.com", None),
    ("*", None),
    ("", None),
    ("-bad.example", None),
    ("a" * 64 + ".example", None),
    ("has space.example", None),
])
def test_normalize_dns_name(raw, expected):
    assert normalize_dns_name(raw) == expected


def test_normalize_ip_is_canonical():
    assert normalize_ip("2001:DB8:0:0::1") == "2001:db8::1"
    assert normalize_ip("192.0.2.1") == "192.0.2.1"
    assert normalize_ip("mail.example.com") is None


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, key_type", [("rsa", "rsa-2048"), ("ecdsa", "ecdsa-p256"),
                                            ("ecdsa384", "ecdsa-p384"), ("ed25519", "ed25519")])
def test_parse_each_key_type(kind, key_type):
    issued = make_cert(("Mail.Example.com", "*.example.com"), key=kind, ips=("2001:db8::0:1", "192.0.2.7"),
                       cn="Mail.Example.com")
    parsed = parse_certificate(issued.chain_pem, issued.key_pem, cert_id="7", path="$.Certificate[0]")
    assert parsed.key_type == key_type
    assert parsed.dns_names == ("*.example.com", "mail.example.com")
    assert parsed.ip_addresses == ("192.0.2.7", "2001:db8::1")
    assert parsed.subject_alternative_names == ("*.example.com", "192.0.2.7", "2001:db8::1", "mail.example.com")
    assert parsed.issuer == "CN=R11, O=Let's Encrypt, C=US"
    assert parsed.not_valid_before == (NOW - DAY).timestamp()
    assert parsed.not_valid_after == (NOW + 30 * DAY).timestamp()
    assert parsed.fingerprint == issued.fingerprint
    assert parsed.id == "7"
    # the chain is kept leaf first; the key is normalised to PKCS#8 and never shown by repr
    assert parsed.chain_pem.count(b"BEGIN CERTIFICATE") == 2
    assert parsed.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(parsed)


def test_common_name_only_certificate_and_ip_common_name():
    issued = make_cert((), cn="Legacy.Example.NET", self_signed=True)
    assert parse_certificate(issued.chain_pem, issued.key_pem).dns_names == ("legacy.example.net",)
    issued = make_cert((), cn="192.0.2.9", self_signed=True)
    parsed = parse_certificate(issued.chain_pem, issued.key_pem)
    assert parsed.ip_addresses == ("192.0.2.9",) and parsed.dns_names == ()
    # a CN that is no host name can never match an SNI and is left out
    issued = make_cert(("a.example",), cn="My Mail Server")
    assert parse_certificate(issued.chain_pem, issued.key_pem).dns_names == ("a.example",)


def _traditional(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def test_pkcs1_and_sec1_keys_and_leading_blocks():
    rsa_cert = make_cert(key="rsa")
    pkcs1 = _traditional(rsa_cert.key)
    assert pkcs1.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert parse_certificate(rsa_cert.chain_pem, pkcs1).key_type == "rsa-2048"
    ec_cert = make_cert(key="ecdsa")
    sec1 = _traditional(ec_cert.key)
    assert sec1.startswith("-----BEGIN EC PRIVATE KEY-----")
    # `openssl ecparam -genkey` writes an EC PARAMETERS block first; the first key block is used
    params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    assert parse_certificate(ec_cert.chain_pem, params + sec1).key_type == "ecdsa-p256"
    # a key file may also hold the chain (combined PEM)
    assert parse_certificate(ec_cert.chain_pem + sec1, ec_cert.chain_pem + sec1).key_type == "ecdsa-p256"
    # CRLF line endings from a Windows editor
    assert parse_certificate(ec_cert.chain_pem.replace("\n", "\r\n"), sec1.replace("\n", "\r\n")).dns_names


def test_rejections_name_the_field():
    good = make_cert()
    with pytest.raises(CertificateError) as e:
        parse_certificate(good.chain_pem, make_cert().key_pem, path="$.Certificate[3]")
    assert e.value.path == "$.Certificate[3].privateKey" and "does not match" in e.value.reason
    with pytest.raises(CertificateError) as e:
        parse_certificate("not a pem", good.key_pem, path="$.Certificate[3]")
    assert e.value.path == "$.Certificate[3].certificate"
    with pytest.raises(CertificateError) as e:
        parse_certificate("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", good.key_pem)
    assert e.value.path == "certificate"
    with pytest.raises(CertificateError, match="no PKCS#8"):
        parse_certificate(good.chain_pem, good.chain_pem)
    encrypted = good.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw")).decode()
    with pytest.raises(CertificateError, match="encrypted"):
        parse_certificate(good.chain_pem, encrypted)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = make_cert(key=small)
    with pytest.raises(CertificateError, match="1024 bits is too small"):
        parse_certificate(weak.chain_pem, weak.key_pem)
    dsa_key = dsa.generate_private_key(2048)
    dsa_pem = dsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    with pytest.raises(CertificateError, match="not supported"):
        parse_certificate(good.chain_pem, dsa_pem)


# --- loading Certificate objects --------------------------------------------------------------------


def test_load_skips_and_logs_but_keeps_the_rest(emitted, tmp_path, monkeypatch):
    ok = make_cert(("ok.example",))
    expired = make_cert(("old.example",), not_before=NOW - 90 * DAY, not_after=NOW - DAY)
    pending = make_cert(("new.example",), not_before=NOW + DAY, not_after=NOW + 90 * DAY)
    (tmp_path / "c.pem").write_text(ok.chain_pem)
    (tmp_path / "k.pem").write_text(ok.key_pem)
    monkeypatch.delenv("STALWART_TEST_NO_SUCH_VAR", raising=False)
    objects = [
        ok.as_object(),
        expired.as_object(),
        pending.as_object(),
        Certificate(certificate=PublicTextValue(value="garbage"), private_key=SecretTextValue(secret=ok.key_pem)),
        Certificate(certificate=FromEnvironment(variable_name="STALWART_TEST_NO_SUCH_VAR"),
                    private_key=SecretTextValue(secret=ok.key_pem)),
        Certificate(id="file", certificate=FromFile(file_path=str(tmp_path / "c.pem")),
                    private_key=FromFile(file_path=str(tmp_path / "k.pem"))),
    ]
    result = load_certificates(objects, NOW.timestamp())
    assert [c.id for c in result.certificates] == ["0", "2", "file"]
    assert [c.id for c in result.expired] == ["1"]
    assert [e.path for e in result.failed] == ["$.Certificate[3].certificate", "$.Certificate[4].certificate"]
    (expired_event,) = emitted.named("tls.certificate-expired")
    assert "old.example" in expired_event["Details"]
    assert [k["Path"] for k in emitted.named("config.build-error")] == [
        "$.Certificate[3].certificate", "$.Certificate[4].certificate"]
    assert "STALWART_TEST_NO_SUCH_VAR" in emitted.named("config.build-error")[1]["Details"]
    (warning,) = emitted.named("config.build-warning")
    assert warning["Path"] == "$.Certificate[2]" and "not valid before" in warning["Details"]
    # nothing secret reaches the log
    assert all("PRIVATE KEY" not in str(k) for _e, k in emitted.items)


def test_digest_tracks_file_content(tmp_path):
    a, b = make_cert(("a.example",)), make_cert(("b.example",))
    (tmp_path / "c.pem").write_text(a.chain_pem)
    (tmp_path / "k.pem").write_text(a.key_pem)
    objects = [Certificate(certificate=FromFile(file_path=str(tmp_path / "c.pem")),
                           private_key=FromFile(file_path=str(tmp_path / "k.pem")))]
    first = load_certificates(objects, NOW.timestamp()).digest
    assert load_certificates(objects, NOW.timestamp()).digest == first
    (tmp_path / "c.pem").write_text(b.chain_pem)
    (tmp_path / "k.pem").write_text(b.key_pem)
    assert load_certificates(objects, NOW.timestamp()).digest != first


# --- self-signed fallback ---------------------------------------------------------------------------


def test_self_signed_is_ecdsa_p256_for_host_and_localhost():
    names = self_signed_names("Mail.Example.org", [])
    assert names == ("localhost", "mail.example.org")
    cert = generate_self_signed(names, NOW.timestamp(), "mail.example.org")
    assert cert.id == SELF_SIGNED_ID and cert.key_type == "ecdsa-p256"
    assert cert.subject_alternative_names == names
    assert cert.subject == cert.issuer == "CN=mail.example.org"
    assert cert.usable_at(NOW.timestamp())
    lifetime = cert.not_valid_after - cert.not_valid_before
    assert 364 * 86400 <= lifetime <= 366 * 86400


def test_self_signed_names_include_configured_names():
    configured = parse_certificate(*(lambda i: (i.chain_pem, i.key_pem))(make_cert(("*.example.com",),
                                                                                     ips=("192.0.2.1",))))
    assert self_signed_names("192.0.2.5", [configured]) == ("*.example.com", "192.0.2.1", "192.0.2.5", "localhost")


def test_self_signed_cache_is_stable_across_restarts(tmp_path):
    now = NOW.timestamp()
    first = SelfSignedCache(tmp_path).get(("localhost", "mail.example.org"), now)
    path = tmp_path / "tls" / "selfsigned.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    # a new process (new cache object) reads the same certificate back
    again = SelfSignedCache(tmp_path).get(("mail.example.org", "localhost"), now + 3600)
    assert again.fingerprint == first.fingerprint
    # the name set changed: a new certificate replaces the cached one
    other = SelfSignedCache(tmp_path).get(("localhost", "other.example.org"), now)
    assert other.fingerprint != first.fingerprint
    assert SelfSignedCache(tmp_path).get(("localhost", "other.example.org"), now).fingerprint == other.fingerprint
    # close to its end it is replaced before it could lapse
    late = now + 340 * 86400
    renewed = SelfSignedCache(tmp_path).get(("localhost", "other.example.org"), late)
    assert renewed.fingerprint != other.fingerprint and renewed.usable_at(late)


def test_self_signed_cache_survives_a_corrupt_or_unwritable_file(tmp_path, emitted):
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "selfsigned.pem").write_text("junk")
    cert = SelfSignedCache(tmp_path).get(("localhost",), NOW.timestamp())
    assert cert.subject_alternative_names == ("localhost",)
    assert emitted.named("config.build-warning")
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    cert = SelfSignedCache(blocked).get(("localhost",), NOW.timestamp())  # cannot create blocked/tls
    assert cert.usable_at(NOW.timestamp())
    assert any("cannot cache" in k["Details"] for k in emitted.named("config.build-warning"))


def test_self_signed_without_data_dir_stays_in_memory():
    cache = SelfSignedCache(None)
    a = cache.get(("localhost",), NOW.timestamp())
    assert cache.get(("localhost",), NOW.timestamp()) is a


def test_sources_digest_separates_fields():
    # the digest separates fields, so moving text from one field to the next changes it
    one = certs_mod.sources_digest([("0", "p", "ab", "c", None)])
    two = certs_mod.sources_digest([("0", "p", "a", "bc", None)])
    assert one != two and len(one) == len(hashlib.sha256().hexdigest())


def test_loopback_server_helper_cleans_up():
    # the helper used by the handshake tests must not leak threads between tests
    before = threading.active_count()
    with LoopbackTlsServer(lambda: None) as srv:
        assert srv.port
    assert threading.active_count() == before
