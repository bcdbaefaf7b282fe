"""Listener TLS: certificates, SNI selection, per-listener contexts and their live store (spec/tls.md).

The connection driver needs one object, :class:`CertificateStore`: ``CertificateStore.build(config,
data_dir)`` in the master before it forks, :meth:`CertificateStore.rebuild` when certificates change,
and ``store.context_for(listener_name)`` passed to ``loop.start_tls(..., server_side=True)`` for every
handshake.
"""
from .certs import CertificateError, ParsedCertificate, parse_certificate
from .context import CIPHER_SUITES, TlsPolicy, server_context
from .sni import CertificateResolver, Selection, normalize_server_name
from .store import CertificateStore, TlsGeneration

__all__ = [
    "CIPHER_SUITES",
    "CertificateError",
    "CertificateResolver",
    "CertificateStore",
    "ParsedCertificate",
    "Selection",
    "TlsGeneration",
    "TlsPolicy",
    "normalize_server_name",
    "parse_certificate",
    "server_context",
]
