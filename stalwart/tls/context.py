"""Server ``ssl.SSLContext`` objects built from a listener's TLS settings (tls.md §1).

Only TLS 1.2 and 1.3 are ever offered, and only the nine suites of the tls.md §1 table, in table
order, minus ``tlsDisableCipherSuites``. Python's ``ssl`` cannot set TLS 1.3 suites, so those go
through the ``sslctx`` kernel (``SSL_CTX_set_ciphersuites``). Every setting is read back from
OpenSSL after it is applied; a mismatch raises :class:`TlsContextError` instead of serving a
configuration that differs from the one written (tls.md §1: "A setting is never silently ignored").

Other choices, each matching the reference's rustls server where it has one:

* no client certificates (``CERT_NONE``), no ALPN, no compression, no renegotiation;
* ``OP_NO_TICKET``: resumption uses the per-process session cache, not stateless tickets, whose
  never-rotated key would weaken forward secrecy (rustls' default server also keeps a stateful cache
  and issues no stateless tickets);
* ``OP_CIPHER_SERVER_PREFERENCE`` exactly when ``tlsIgnoreClientOrder`` is true.

OpenSSL takes the cipher list and certificate from whichever context is attached to the connection
*after* the SNI callback swapped it, while versions and options stay those of the listener context.
Every certificate context is therefore built from the same :class:`TlsPolicy` as its listener.
"""
from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType

from .._fast import load as load_kernel
from ..errors import ConfigError, StalwartError
from ..fileio import write_all
from .certs import CertificateError, ParsedCertificate


class TlsContextError(StalwartError):
    """OpenSSL refused or silently altered a TLS setting: a local failure, never a peer's."""


@dataclass(frozen=True, slots=True)
class CipherSuite:
    value: str  # TlsCipherSuite enum value (configuration spelling)
    iana: str
    openssl: str
    version: str  # "tls13" or "tls12"


# tls.md §1, in the provider's preference order.
CIPHER_SUITES: tuple[CipherSuite, ...] = (
    CipherSuite("tls13-aes-256-gcm-sha384", "TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", "tls13"),
    CipherSuite("tls13-aes-128-gcm-sha256", "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", "tls13"),
    CipherSuite("tls13-chacha20-poly1305-sha256", "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256", "tls13"),
    CipherSuite("tls-ecdhe-ecdsa-with-aes-256-gcm-sha384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "ECDHE-ECDSA-AES256-GCM-SHA384", "tls12"),
    CipherSuite("tls-ecdhe-ecdsa-with-aes-128-gcm-sha256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "ECDHE-ECDSA-AES128-GCM-SHA256", "tls12"),
    CipherSuite("tls-ecdhe-ecdsa-with-chacha20-poly1305-sha256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "ECDHE-ECDSA-CHACHA20-POLY1305", "tls12"),
    CipherSuite("tls-ecdhe-rsa-with-aes-256-gcm-sha384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384", "tls12"),
    CipherSuite("tls-ecdhe-rsa-with-aes-128-gcm-sha256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256", "tls12"),
    CipherSuite("tls-ecdhe-rsa-with-chacha20-poly1305-sha256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "ECDHE-RSA-CHACHA20-POLY1305", "tls12"),
)
SUITES_BY_VALUE = {s.value: s for s in CIPHER_SUITES}
SUITES_BY_OPENSSL = {s.openssl: s for s in CIPHER_SUITES}
TLS_VERSIONS = ("tls12", "tls13")
_SSL_VERSION = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}
_VERSION_NAME = {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """The TLS settings of one listener in resolved form (OpenSSL suite names, table order)."""

    tls12: bool = True
    tls13: bool = True
    tls12_suites: tuple[str, ...] = tuple(s.openssl for s in CIPHER_SUITES if s.version == "tls12")
    tls13_suites: tuple[str, ...] = tuple(s.openssl for s in CIPHER_SUITES if s.version == "tls13")
    server_preference: bool = True

    @classmethod
    def from_settings(cls, disable_protocols: Iterable[str] = (), disable_cipher_suites: Iterable[str] = (),
                      ignore_client_order: bool = True, path: str = "") -> "TlsPolicy":
        """Validate and resolve the three listener fields (tls.md §1 "Validation errors")."""
        prefix = f"{path}." if path else ""
        off_versions = set()
        for v in disable_protocols:
            if v not in TLS_VERSIONS:
                raise ConfigError(f"{prefix}tlsDisableProtocols", f"unknown TLS version {v!r} (known: tls12, tls13)")
            off_versions.add(v)
        if off_versions >= set(TLS_VERSIONS):
            raise ConfigError(f"{prefix}tlsDisableProtocols", "disabling both tls12 and tls13 leaves no TLS version")
        off_suites = set()
        for name in disable_cipher_suites:
            if name not in SUITES_BY_VALUE:
                raise ConfigError(f"{prefix}tlsDisableCipherSuites", f"unknown cipher suite {name!r}")
            off_suites.add(name)
        remaining = {v: tuple(s.openssl for s in CIPHER_SUITES if s.version == v and s.value not in off_suites)
                     for v in TLS_VERSIONS}
        for v in TLS_VERSIONS:
            if v not in off_versions and not remaining[v]:
                raise ConfigError(f"{prefix}tlsDisableCipherSuites",
                                  f"{_VERSION_NAME[v]} is enabled but every {_VERSION_NAME[v]} suite is disabled")
        return cls(tls12="tls12" not in off_versions, tls13="tls13" not in off_versions,
                   tls12_suites=remaining["tls12"], tls13_suites=remaining["tls13"],
                   server_preference=bool(ignore_client_order))

    @classmethod
    def from_listener(cls, listener, path: str = "") -> "TlsPolicy":
        """The policy of a ``NetworkListener`` (``path`` is its JSON path, for errors)."""
        return cls.from_settings(listener.tls_disable_protocols, listener.tls_disable_cipher_suites,
                                 listener.tls_ignore_client_order, path)

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(v for v in TLS_VERSIONS if getattr(self, v))


def sslctx_kernel() -> ModuleType:
    """The TLS 1.3 suite kernel: compiled, or its twin under ``STALWART_NO_EXTENSIONS=1``."""
    return load_kernel("sslctx")


def server_context(policy: TlsPolicy, *, kernel: ModuleType | None = None) -> ssl.SSLContext:
    """A server context carrying ``policy`` and no certificate yet; see :func:`load_certificate`."""
    kernel = kernel or sslctx_kernel()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _SSL_VERSION["tls12" if policy.tls12 else "tls13"]
    ctx.maximum_version = _SSL_VERSION["tls13" if policy.tls13 else "tls12"]
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET | ssl.OP_SINGLE_ECDH_USE
    if policy.server_preference:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # OpenSSL cannot hold an empty TLS 1.2 list; that only happens with TLS 1.2 disabled, where the
    # version bounds already keep every TLS 1.2 suite off the wire, so the table's list stands in.
    tls12 = policy.tls12_suites or TlsPolicy().tls12_suites
    try:
        ctx.set_ciphers(":".join(tls12))
    except ssl.SSLError as exc:
        raise TlsContextError(f"OpenSSL rejected the TLS 1.2 cipher suites {tls12!r}: {exc}") from None
    try:
        kernel.set_ciphersuites(ctx, ":".join(policy.tls13_suites))
    except (ssl.SSLError, RuntimeError) as exc:
        raise TlsContextError(f"TLS 1.3 cipher suites {policy.tls13_suites!r} cannot be applied: {exc}") from None
    _verify(ctx, policy, tls12)
    return ctx


def _verify(ctx: ssl.SSLContext, policy: TlsPolicy, tls12: tuple[str, ...]) -> None:
    """Read every setting back from OpenSSL; a difference is an error, never a quiet downgrade."""
    offered = ctx.get_ciphers()
    got12 = tuple(c["name"] for c in offered if c["protocol"] == "TLSv1.2")
    got13 = tuple(c["name"] for c in offered if c["protocol"] == "TLSv1.3")
    if got12 != tls12:
        raise TlsContextError(f"OpenSSL offers TLS 1.2 suites {got12!r}, configured {tls12!r}")
    if got13 != policy.tls13_suites:
        raise TlsContextError(f"OpenSSL offers TLS 1.3 suites {got13!r}, configured {policy.tls13_suites!r}")
    want_min = _SSL_VERSION["tls12" if policy.tls12 else "tls13"]
    want_max = _SSL_VERSION["tls13" if policy.tls13 else "tls12"]
    if (ctx.minimum_version, ctx.maximum_version) != (want_min, want_max):
        raise TlsContextError(f"OpenSSL version bounds are {ctx.minimum_version.name}..{ctx.maximum_version.name}, "
                              f"configured {want_min.name}..{want_max.name}")
    if bool(ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE) != policy.server_preference:
        raise TlsContextError("OpenSSL did not take the server cipher preference setting")


@contextlib.contextmanager
def _pem_path(data: bytes) -> Iterator[str]:
    """A path naming ``data`` for ``load_cert_chain``, which only reads files.

    Linux: an anonymous memory file (``memfd``) reached through ``/proc/self/fd``, so private keys
    never touch a disk. Elsewhere: a 0600 temporary file removed right after the load.
    """
    fd = -1
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.memfd_create("stalwart-tls", os.MFD_CLOEXEC)
        except OSError:
            fd = -1
    if fd >= 0:
        try:
            write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="stalwart-tls-", suffix=".pem") as fh:
        fh.write(data)
        fh.flush()
        yield fh.name


def load_certificate(ctx: ssl.SSLContext, cert: ParsedCertificate) -> None:
    """Install ``cert``'s chain and key into ``ctx``; OpenSSL refusals become :class:`CertificateError`."""
    try:
        with _pem_path(cert.chain_pem + cert.key_pem) as path:
            ctx.load_cert_chain(path)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(cert.path, f"OpenSSL refused the certificate: {exc}") from None


def certificate_context(policy: TlsPolicy, cert: ParsedCertificate, *,
                        kernel: ModuleType | None = None) -> ssl.SSLContext:
    """A context presenting ``cert`` under ``policy``: what the SNI callback swaps in."""
    ctx = server_context(policy, kernel=kernel)
    load_certificate(ctx, cert)
    return ctx
