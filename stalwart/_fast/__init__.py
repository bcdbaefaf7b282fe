"""Cython kernels and their pure-Python twins.

Every kernel ``name`` exists twice: ``name.pyx`` (compiled) and ``name_py.py`` (the twin, same API,
same exceptions). :func:`load` returns the compiled module unless it is missing or the environment
sets ``STALWART_NO_EXTENSIONS=1``; tests load both explicitly with ``load(name, compiled=...)``.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType


def extensions_disabled() -> bool:
    return os.environ.get("STALWART_NO_EXTENSIONS", "") not in ("", "0")


def load(name: str, compiled: bool | None = None) -> ModuleType:
    """Return kernel ``name``: compiled when available (or when ``compiled`` is True), else the twin.

    ``compiled=True`` raises ImportError when the extension is not built, so a test asking for the
    compiled kernel can never silently exercise the twin.
    """
    if compiled is None:
        compiled = not extensions_disabled()
        if compiled:
            try:
                return importlib.import_module(f"stalwart._fast.{name}")
            except ImportError:
                return importlib.import_module(f"stalwart._fast.{name}_py")
        return importlib.import_module(f"stalwart._fast.{name}_py")
    if compiled:
        mod = importlib.import_module(f"stalwart._fast.{name}")
        if not (mod.__file__ or "").endswith((".so", ".pyd")):
            raise ImportError(f"stalwart._fast.{name} is not the compiled extension")
        return mod
    return importlib.import_module(f"stalwart._fast.{name}_py")
