"""AI model endpoints: the OpenAI-compatible client and message classification (spec/services.md §4).

Names are loaded on first use (PEP 562): ``stalwart.config.model`` imports ``.config`` from here,
and loading a configuration should not pull in asyncio and the HTTP client.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "client": ("AiAnswer", "AiError", "AiModelClient", "AiResponseError", "AiStatusError", "AiTimeout",
               "AiTransportError"),
    "classification": ("Classification", "Classifier", "classify"),
    "models": ("AiModels", "UnknownModel"),
    "http": ("HttpClient", "HttpError"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
