"""The live set of certificates and listener TLS contexts of one process (tls.md §4, §5).

A :class:`TlsGeneration` is everything TLS needs for one configuration: the parsed certificates,
the SNI resolver, the self-signed fallback, one server context per TLS listener, and per
certificate a context carrying that listener's policy for the SNI callback to swap in. It is built
completely before it is installed, and installing it is a single attribute assignment, so:

* a handshake already past its ClientHello keeps the contexts it started with (its ``SSLObject``
  holds them), and established connections never notice a rebuild (tls.md §5);
* a handshake that asks :meth:`CertificateStore.context_for` after the swap gets the new ones;
* a rebuild that fails (bad listener TLS settings) raises before anything changes (network.md §9
  "Validate first"). Bad certificates do not fail a rebuild: they are logged and skipped (§4).

Driver use::

    store = CertificateStore.build(config, data_dir)    # the master, before it forks
    store.rebuild(config)                               # certificate changes, file rotation
    ctx = store.context_for(listener.name)              # per handshake; None: useTls is false
    await loop.start_tls(transport, protocol, ctx, server_side=True,
                         ssl_handshake_timeout=store.listener(listener.name).handshake_timeout)
    facts = store.selection(transport.get_extra_info("ssl_object"))   # SNI and certificate chosen
"""
from __future__ import annotations

import os
import ssl
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType

from .. import events
from ..config.loader import hostname as config_hostname
from ..config.model import Config, NetworkListener
from .certs import (
    CertificateError,
    LoadResult,
    ParsedCertificate,
    SelfSignedCache,
    load_certificates,
    read_directory,
    read_sources,
    self_signed_names,
    sources_digest,
)
from .context import TlsPolicy, certificate_context, load_certificate, server_context, sslctx_kernel
from .sni import CertificateResolver, Selection


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """What the driver needs to run a handshake on one listener (tls.md §1, §2)."""

    name: str
    context: ssl.SSLContext  # pass to loop.start_tls(..., server_side=True)
    policy: TlsPolicy
    implicit: bool  # tlsImplicit: handshake right after accept (and the PROXY guard)
    handshake_timeout: float  # seconds: tlsTimeout bounds implicit TLS and STARTTLS handshakes


@dataclass(frozen=True, slots=True, eq=False)
class TlsGeneration:
    """One immutable TLS configuration; see the module docstring."""

    number: int
    config: Config = field(repr=False)
    hostname: str
    resolver: CertificateResolver
    listeners: Mapping[str, ListenerTls]
    certificates: tuple[ParsedCertificate, ...]  # loaded and accepted by OpenSSL (usable or pending)
    failed: tuple[CertificateError, ...]  # skipped: unreadable, unparsable, mismatched, refused
    expired: tuple[ParsedCertificate, ...]  # skipped: expired at load time
    fallback: ParsedCertificate  # the self-signed certificate
    digest: str  # of the resolved PEM texts, to detect changed files and variables


class CertificateStore:
    """Builds and swaps :class:`TlsGeneration` objects; one instance per process.

    ``data_dir`` holds the cached self-signed certificate (``<data_dir>/tls/selfsigned.pem``);
    ``None`` keeps it in memory only. ``hostname`` overrides the configuration's host name (the
    default host name, else the OS one). ``clock`` returns Unix seconds. ``kernel`` overrides the
    ``sslctx`` kernel (tests run both twins).
    """

    def __init__(self, data_dir: str | None = None, *, hostname: str | None = None,
                 clock: Callable[[], float] = time.time, kernel: ModuleType | None = None):
        self._hostname = hostname
        self._clock = clock
        self._kernel = kernel or sslctx_kernel()
        self._self_signed = SelfSignedCache(data_dir)
        # Certificates installed as files by ACME (tls.md §7.2 step 8): read with the Certificate
        # objects on every rebuild and watched by reload_if_changed like File sources.
        self._cert_dir = os.path.join(os.fspath(data_dir), "acme", "certs") if data_dir is not None else None
        self._generation: TlsGeneration | None = None
        self._count = 0
        # Filled by the SNI callbacks; entries vanish with their SSLObject.
        self._selections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # --- building and swapping ------------------------------------------------------------------

    @classmethod
    def build(cls, config: Config, data_dir: str | None = None, hostname: str | None = None,
              **kwargs) -> "CertificateStore":
        """A store with ``config``'s generation installed (what the master builds before forking)."""
        store = cls(data_dir, hostname=hostname, **kwargs)
        store.rebuild(config)
        return store

    def prepare(self, config: Config) -> TlsGeneration:
        """Everything TLS needs for ``config``, not yet installed.

        Raises ``ConfigError`` (with the listener's JSON path) for invalid TLS settings and
        ``TlsContextError`` when OpenSSL will not take a setting. Certificate problems never raise.
        """
        now = self._clock()
        policies: dict[str, tuple[NetworkListener, TlsPolicy]] = {}
        for i, listener in enumerate(config.NetworkListener):
            if listener.use_tls:
                policies[listener.name] = (listener, TlsPolicy.from_listener(listener, f"$.NetworkListener[{i}]"))
        distinct = list(dict.fromkeys(p for _l, p in policies.values()))

        loaded = load_certificates(config.Certificate, now, read_directory(self._cert_dir))
        certificates, refused, per_policy = self._certificate_contexts(loaded, distinct)
        host = self._hostname or config_hostname(config)
        fallback = self._self_signed.get(self_signed_names(host, certificates), now, host)
        for policy, contexts in per_policy.items():
            contexts[fallback.id] = certificate_context(policy, fallback, kernel=self._kernel)
        default_id = config.SystemSettings.default_certificate_id
        if default_id is not None and default_id not in {c.id for c in certificates}:
            events.emit("config.build-warning", level="warn", Path="$.SystemSettings.defaultCertificateId",
                        Details=f"default certificate {default_id!r} is not usable; another one answers "
                                "handshakes without a matching SNI")
        resolver = CertificateResolver(certificates, fallback, default_certificate_id=default_id,
                                       default_hostname=host, clock=self._clock)

        listeners = {}
        index = resolver.index
        initial = index.default or fallback
        for name, (listener, policy) in policies.items():
            ctx = server_context(policy, kernel=self._kernel)
            load_certificate(ctx, initial)
            ctx.sni_callback = self._sni_callback(name, resolver, per_policy[policy], initial.id)
            listeners[name] = ListenerTls(name, ctx, policy, listener.tls_implicit,
                                          listener.effective_tls_timeout / 1000.0)

        self._count += 1
        return TlsGeneration(
            number=self._count,
            config=config,
            hostname=host,
            resolver=resolver,
            listeners=MappingProxyType(listeners),
            certificates=certificates,
            failed=loaded.failed + refused,
            expired=loaded.expired,
            fallback=fallback,
            digest=loaded.digest,
        )

    def _certificate_contexts(self, loaded: LoadResult, policies: list[TlsPolicy]) -> tuple[
            tuple[ParsedCertificate, ...], tuple[CertificateError, ...], dict[TlsPolicy, dict[str, ssl.SSLContext]]]:
        """One context per (policy, certificate). A certificate OpenSSL refuses (say, a key below
        its security level) is logged and dropped, like one that does not parse."""
        per_policy: dict[TlsPolicy, dict[str, ssl.SSLContext]] = {p: {} for p in policies}
        kept, refused = [], []
        for cert in loaded.certificates:
            try:
                contexts = {p: certificate_context(p, cert, kernel=self._kernel) for p in policies}
            except CertificateError as exc:
                refused.append(exc)
                events.emit("config.build-error", level="error", Path=exc.path,
                            Details=f"Certificate {cert.id} skipped: {exc.reason}")
                continue
            for policy, ctx in contexts.items():
                per_policy[policy][cert.id] = ctx
            kept.append(cert)
        return tuple(kept), tuple(refused), per_policy

    def _sni_callback(self, listener: str, resolver: CertificateResolver, contexts: dict[str, ssl.SSLContext],
                      initial_id: str) -> Callable:
        selections = self._selections

        def on_client_hello(ssl_object, server_name, listener_ctx):
            # Called by OpenSSL for every ClientHello, with server_name None when there is no SNI.
            # An exception here would abort the handshake with a bare traceback on stderr, so it
            # is turned into an event and an internal_error alert instead.
            try:
                chosen = resolver.select(server_name)
                if chosen.certificate.id != initial_id:
                    ssl_object.context = contexts[chosen.certificate.id]
                selections[ssl_object] = chosen
            except Exception as exc:  # noqa: BLE001 - see above
                events.emit("tls.handshake-error", level="error", ListenerId=listener,
                            Reason=f"certificate selection for SNI {server_name!r} failed: {exc!r}")
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            return None

        return on_client_hello

    def install(self, generation: TlsGeneration) -> None:
        """Make ``generation`` the one new handshakes use (a single, atomic reference swap)."""
        self._generation = generation

    def rebuild(self, config: Config) -> TlsGeneration:
        """:meth:`prepare` then :meth:`install`; on error the running generation stays."""
        generation = self.prepare(config)
        self.install(generation)
        return generation

    def sources_changed(self) -> bool:
        """Whether a ``File`` or ``EnvironmentVariable`` certificate source, or an installed
        certificate file (``<data_dir>/acme/certs``), now reads differently."""
        gen = self.generation
        return sources_digest(read_sources(gen.config.Certificate) + read_directory(self._cert_dir)) != gen.digest

    def reload_if_changed(self) -> bool:
        """Rebuild from the current configuration when a certificate source changed (tls.md §5:
        checked at least once a minute). Returns whether a new generation was installed."""
        if not self.sources_changed():
            return False
        self.rebuild(self.generation.config)
        return True

    # --- queries --------------------------------------------------------------------------------

    @property
    def generation(self) -> TlsGeneration:
        if self._generation is None:
            raise RuntimeError("CertificateStore.rebuild() has not been called yet")
        return self._generation

    def listener(self, listener: NetworkListener | str) -> ListenerTls | None:
        """TLS settings of a listener by name (or object); None when it has ``useTls: false``."""
        name = listener if isinstance(listener, str) else listener.name
        return self.generation.listeners.get(name)

    def context_for(self, listener: NetworkListener | str) -> ssl.SSLContext | None:
        """The context to pass to ``start_tls`` now. Ask per handshake: a reload replaces it."""
        tls = self.listener(listener)
        return tls.context if tls is not None else None

    def selection(self, ssl_object: object) -> Selection | None:
        """The SNI and certificate chosen for the handshake of ``ssl_object`` (None if unknown)."""
        try:
            return self._selections.get(ssl_object)
        except TypeError:  # not weak-referenceable: never one of ours
            return None

    def resolve_certificate(self, host: str) -> ParsedCertificate | None:
        """The certificate serving ``host`` by exact or one-label wildcard match (TLSA records)."""
        return self.generation.resolver.resolve_certificate(host)
