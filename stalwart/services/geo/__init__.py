"""ASN and GeoIP (spec/services.md §3): the ``Asn`` object, range tables shared by every worker,
CSV resources, MaxMind databases and DNS TXT zones.

For sessions: ``GeoService(cfg.Asn, data_dir).lookup(packed_ip) -> GeoInfo | None`` (see
``service.py``). For the master: ``GeoRefresher`` (``manager.py``) keeps the tables fresh.
"""
# stalwart.config imports .config (the Asn object) while it loads; loading it first makes a direct
# import of this package work in either order.
from ... import config as _config  # noqa: F401

__all__ = ["GeoInfo", "GeoService"]


def __getattr__(name: str):
    if name == "GeoInfo":
        from .info import GeoInfo

        return GeoInfo
    if name == "GeoService":
        from .service import GeoService

        return GeoService
    raise AttributeError(name)
