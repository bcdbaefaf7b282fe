"""DNS providers: RFC 2136 with TSIG and hosted APIs, managed record sets (spec/services.md §2).

``build_updater(server)`` turns a ``DnsServer`` object into a :class:`~.records.DnsUpdater`.
"""
from __future__ import annotations

from .records import DnsProviderError, DnsUpdater


def build_updater(server, path: str = "$.DnsServer") -> DnsUpdater:
    """The updater of one ``DnsServer``, with its timing fields (seconds) attached."""
    # Imported here: the configuration model imports .config, and this package may be imported first.
    from .config import Cloudflare, DeSEC, DigitalOcean, Hetzner, Linode, Porkbun, Tsig, Vultr

    if isinstance(server, Tsig):
        from .rfc2136 import TsigUpdater

        updater: DnsUpdater = TsigUpdater(server, path)
    elif isinstance(server, (Cloudflare, DeSEC, DigitalOcean, Hetzner, Linode, Vultr, Porkbun)):
        from .hosted import hosted_updater

        updater = hosted_updater(server, path)
    else:  # Deprecated1, the slot of the removed Sig0 variant
        raise DnsProviderError(f"{path}: DNS server type no longer supported")
    updater.ttl = server.ttl_seconds
    updater.propagation_delay = (int(server.propagation_delay) / 1000.0) if server.propagation_delay else 0.0
    updater.polling_interval = int(server.polling_interval) / 1000.0
    updater.propagation_timeout = int(server.propagation_timeout) / 1000.0
    return updater


__all__ = ["DnsProviderError", "DnsUpdater", "build_updater"]
