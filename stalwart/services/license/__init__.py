"""The Enterprise licence: offline-signed keys, the state in force, renewal (spec/services.md §6).

Names are loaded on first use (PEP 562): ``stalwart.config.model`` imports ``.config`` from here,
and loading a configuration should not pull in asyncio, cryptography and the Public Suffix List.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "key": ("DomainMismatch", "InvalidDomain", "LicenseDecodeError", "LicenseError", "LicenseExpired",
            "LicenseKey", "LicenseNotYetValid", "LicenseParametersError", "LicenseParseError",
            "LicenseSignatureError"),
    "renewal": ("LicenseRenewer", "RenewalError", "next_attempt"),
    "state": ("AccountLimitExceeded", "EnterpriseRequired", "EnterpriseState", "ensure_can_add_account"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
