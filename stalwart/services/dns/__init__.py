"""The DNS resolver (spec/services.md §1): configuration, upstream client, typed cached lookups.

``build_resolver(cfg)`` builds what a worker needs from a whole configuration: a
:class:`~.client.DnsClient` for ``cfg.DnsResolver`` and a :class:`~.lookups.Resolver` whose result caches come from a
:class:`~stalwart.services.cache.registry.CacheRegistry` sized by ``cfg.Cache`` (pass the worker's
registry to share it with the other caches of the process).
"""
from __future__ import annotations

# Submodules are imported where used (``from stalwart.services.dns.lookups import Resolver``):
# ``stalwart.config.model`` imports ``.config`` while the configuration package is still loading,
# so this package must not pull the client in eagerly, and loads that package before its own
# submodules when it is imported first.
from ... import config as _config  # noqa: F401 -- the configuration package first, see above

__all__ = ["build_resolver"]


def build_resolver(cfg, caches=None, *, tls_context=None):
    """A :class:`~.lookups.Resolver` for a whole :class:`~stalwart.config.Config` (its ``DnsResolver`` and
    ``Cache`` objects); ``caches`` is the process's registry when it has one."""
    from ..cache.registry import CacheRegistry
    from .client import DnsClient
    from .lookups import Resolver

    if caches is None:
        caches = CacheRegistry(cfg.Cache)
    return Resolver(DnsClient(cfg.DnsResolver, tls_context=tls_context), caches)
