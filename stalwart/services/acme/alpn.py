"""TLS-ALPN-01 responder for implicit-TLS listeners (RFC 8737, tls.md §7.5).

The driver peeks the ClientHello before OpenSSL sees it and asks the worker for the handshake's
context with it. A ClientHello whose ALPN list is **exactly** ``["acme-tls/1"]`` (RFC 8737 §3) gets
the validation certificate stored for its SNI by the renewal helper (``ChallengeStore``), with
ALPN ``acme-tls/1``; the connection is closed once that handshake completes. An ``acme-tls/1``
ClientHello with no SNI or no pending challenge for its name fails the handshake (tls.md §7.5).
Every other ClientHello gets the listener's normal context: the peeked bytes are replayed unchanged
into the normal handshake (tls.md §7.5 "We do better").

Active (tls.md §7.5, recomputed on every configuration load) on implicit-TLS HTTP listeners when an
``AcmeProvider`` uses ``TlsAlpn01`` or no provider exists.
"""
from __future__ import annotations

import ssl

from ... import events
from .challenges import ACME_TLS_ALPN, ChallengeStore

_ACME_ALPN = (ACME_TLS_ALPN.encode("ascii"),)


class AlpnResponder:
    """``context_for(hello)``: the challenge context for an ``acme-tls/1`` ClientHello, else None."""

    def __init__(self, data_dir: str, listener: str = ""):
        self.store = ChallengeStore(data_dir)
        self.listener = listener

    @staticmethod
    def wants(hello) -> bool:
        """The ClientHello's ALPN list is exactly ``["acme-tls/1"]``: a CA validating, nobody else."""
        alpn = tuple(p if isinstance(p, bytes) else str(p).encode() for p in (getattr(hello, "alpn", None) or ()))
        return alpn == _ACME_ALPN

    def context_for(self, hello) -> ssl.SSLContext | None:
        if not self.wants(hello):
            return None
        if hello.sni:
            events.emit("acme.client-supplied-sni", level="debug", Hostname=hello.sni, ListenerId=self.listener)
        return self.store.alpn_context(hello.sni)


def tls_alpn_responder(config, listener, data_dir: str | None) -> AlpnResponder | None:
    """The responder for ``listener`` under ``config``, or None when TLS-ALPN-01 is not served there."""
    if data_dir is None or not (listener.use_tls and listener.tls_implicit and listener.protocol == "http"):
        return None
    providers = getattr(config, "AcmeProvider", [])
    if providers and not any(p.challenge_type == "TlsAlpn01" for p in providers):
        return None
    return AlpnResponder(data_dir, listener.name)


def is_acme_handshake(ssl_object) -> bool:
    """Whether a completed handshake negotiated ``acme-tls/1``: the driver closes such connections."""
    try:
        return ssl_object is not None and ssl_object.selected_alpn_protocol() == ACME_TLS_ALPN
    except (AttributeError, ValueError):
        return False
