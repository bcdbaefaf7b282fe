"""The shared challenge store and the HTTP-01 / TLS-ALPN-01 solvers (tls.md §7.5).

The renewal runs in a helper process while the CA's validation request reaches whichever worker
accepts it, so challenge answers live in the data directory, readable by every worker of every
generation (tls.md §7.5 "We do better: shared challenge store"):

* HTTP-01 (RFC 8555 §8.3): ``<data-dir>/acme/challenges/http-01/<token>`` holds the key
  authorization, served at ``/.well-known/acme-challenge/<token>`` as ``text/plain``;
* TLS-ALPN-01 (RFC 8737): ``<data-dir>/acme/challenges/tls-alpn-01/<name>.pem`` holds a self-signed
  P-256 certificate for ``<name>`` with the critical ``id-pe-acmeIdentifier`` extension
  (1.3.6.1.5.5.7.1.31) carrying SHA-256 of the key authorization, and its key. A ClientHello whose
  ALPN list is exactly ``["acme-tls/1"]`` gets a context serving it (:meth:`ChallengeStore.alpn_context`).

Entries older than :data:`CHALLENGE_TTL` are ignored and removed (the reference's 1 h TTL).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
import ssl
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ... import events
from ...fileio import replace_file
from .client import ChallengeSolver

CHALLENGE_TTL = 3600.0  # s
ACME_TLS_ALPN = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737 §6.1
HTTP_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # RFC 8555 §8.1: base64url, no padding
_NAME = re.compile(r"^[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$")


def acme_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "acme")


def write_private(path: str, data: bytes) -> None:
    """Atomically write ``data`` (mode 0600) in a private directory: readers see the old or the new file."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    replace_file(path, data)


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """RFC 8737 §3: the validation certificate for ``name`` (PEM certificate, PEM PKCS#8 key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            # The extension value is the DER OCTET STRING of the digest (RFC 8737 §3).
            .add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


class ChallengeStore:
    """Challenge answers under ``<data-dir>/acme/challenges``; safe to share between processes."""

    def __init__(self, data_dir: str, clock=time.time):
        base = os.path.join(acme_dir(data_dir), "challenges")
        self.http_dir = os.path.join(base, "http-01")
        self.alpn_dir = os.path.join(base, "tls-alpn-01")
        self.clock = clock
        self._contexts: dict[str, tuple[float, ssl.SSLContext]] = {}

    # -- HTTP-01 ---------------------------------------------------------------------------------
    def put_http(self, token: str, key_authorization: str) -> None:
        if not _TOKEN.match(token):
            raise ValueError(f"invalid ACME token {token!r}")
        write_private(os.path.join(self.http_dir, token), key_authorization.encode("ascii"))

    def remove_http(self, token: str) -> None:
        if _TOKEN.match(token):
            _unlink(os.path.join(self.http_dir, token))

    def http_answer(self, token: str) -> bytes | None:
        """The key authorization for ``token``, or None (unknown, malformed or expired)."""
        if not _TOKEN.match(token):
            return None
        return self._read_fresh(os.path.join(self.http_dir, token))

    # -- TLS-ALPN-01 -----------------------------------------------------------------------------
    def put_alpn(self, name: str, key_authorization: str) -> None:
        name = name.lower()
        if not _NAME.match(name):
            raise ValueError(f"invalid identifier {name!r}")
        cert, key = tls_alpn_certificate(name, key_authorization)
        write_private(os.path.join(self.alpn_dir, f"{name}.pem"), cert + key)

    def remove_alpn(self, name: str) -> None:
        name = name.lower()
        if _NAME.match(name):
            _unlink(os.path.join(self.alpn_dir, f"{name}.pem"))

    def alpn_context(self, server_name: str | None) -> ssl.SSLContext | None:
        """A server context presenting the validation certificate for ``server_name`` with ALPN
        ``acme-tls/1`` (RFC 8737 §3), or None when there is no SNI or no pending challenge."""
        if not server_name:
            events.emit("acme.client-missing-sni", level="debug")
            return None
        name = server_name.lower().rstrip(".")
        if not _NAME.match(name):
            return None
        path = os.path.join(self.alpn_dir, f"{name}.pem")
        try:
            st = os.stat(path)
        except OSError:
            events.emit("acme.tls-alpn-error", level="debug", Hostname=name, Reason="no pending challenge")
            return None
        if self.clock() - st.st_mtime > CHALLENGE_TTL:
            _unlink(path)
            return None
        cached = self._contexts.get(name)
        if cached is not None and cached[0] == st.st_mtime:
            return cached[1]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(path)
        except (OSError, ssl.SSLError) as exc:
            events.emit("acme.tls-alpn-error", level="warn", Hostname=name, Reason=str(exc))
            return None
        ctx.set_alpn_protocols([ACME_TLS_ALPN])
        if len(self._contexts) > 64:
            self._contexts.clear()
        self._contexts[name] = (st.st_mtime, ctx)
        events.emit("acme.tls-alpn-received", level="debug", Hostname=name)
        return ctx

    def _read_fresh(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if self.clock() - st.st_mtime > CHALLENGE_TTL:
                    _unlink(path)
                    return None
                return fh.read(4096)
        except OSError:
            return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Http01Solver(ChallengeSolver):
    """RFC 8555 §8.3: answer at ``/.well-known/acme-challenge/<token>`` on every HTTP listener."""

    type = "http-01"

    def __init__(self, store: ChallengeStore):
        self.store = store

    async def prepare(self, identifier: str, token: str, key_authorization: str) -> None:
        self.store.put_http(token, key_authorization)

    async def cleanup(self, identifier: str, token: str, key_authorization: str) -> None:
        self.store.remove_http(token)


class TlsAlpn01Solver(ChallengeSolver):
    """RFC 8737: answer ``acme-tls/1`` handshakes on implicit-TLS listeners."""

    type = "tls-alpn-01"

    def __init__(self, store: ChallengeStore):
        self.store = store

    async def prepare(self, identifier: str, token: str, key_authorization: str) -> None:
        self.store.put_alpn(identifier, key_authorization)

    async def cleanup(self, identifier: str, token: str, key_authorization: str) -> None:
        self.store.remove_alpn(identifier)


def http01_route_active(cfg) -> bool:
    """tls.md §7.5: the HTTP-01 route is served when some AcmeProvider uses Http01, or none exists
    (so a provider added later works at once); recomputed on every configuration load."""
    providers = getattr(cfg, "AcmeProvider", [])
    return not providers or any(p.challenge_type == "Http01" for p in providers)


def http_challenge_response(store: ChallengeStore | None, path: str):
    """``(status, body)`` for a request path under :data:`HTTP_PREFIX` (404 when unknown)."""
    token = path[len(HTTP_PREFIX):]
    answer = store.http_answer(token) if store is not None else None
    return (200, answer) if answer is not None else (404, None)
