"""Pure-Python twin of ``sslctx.pyx``: TLS 1.3 cipher suites through ctypes (tls.md §1).

Same API and exceptions as the compiled kernel. Instead of the compiler's view of
``PySSLContext`` it reads the ``SSL_CTX *`` at offset ``object.__basicsize__`` (the size of
``PyObject_HEAD`` in this interpreter build) of the context object, which is where CPython 3.11's
``Modules/_ssl.c`` puts it; the pointer is cross-checked against ``ctx.options`` through OpenSSL
before anything is written. The functions come from the ``libssl`` that ``_ssl`` itself loaded
(``dlopen(_ssl.__file__, RTLD_NOLOAD)`` then ``dlsym``), never from another copy on the system.
"""
from __future__ import annotations

import ctypes
import os
import ssl

import _ssl

_CTX_OFFSET = object.__basicsize__

_fns: tuple | None = None
_resolve_error: str | None = None


def _resolve() -> tuple:
    """``(SSL_CTX_set_ciphersuites, SSL_CTX_get_options)`` of ``_ssl``'s libssl, found once."""
    global _fns, _resolve_error
    if _fns is not None:
        return _fns
    if _resolve_error is not None:
        raise RuntimeError(_resolve_error)
    where = getattr(_ssl, "__file__", None)
    try:
        # None: _ssl is built into the interpreter and its libssl is in the global scope.
        lib = ctypes.CDLL(where, mode=os.RTLD_NOW | os.RTLD_NOLOAD) if where else ctypes.CDLL(None)
    except OSError as exc:
        _resolve_error = f"cannot open the loaded _ssl module {where}: {exc}"
        raise RuntimeError(_resolve_error) from None
    try:
        set_fn = lib.SSL_CTX_set_ciphersuites
        get_fn = lib.SSL_CTX_get_options
    except AttributeError:
        # OpenSSL < 1.1.1, LibreSSL or a statically linked _ssl that hides its symbols.
        _resolve_error = (f"the libssl used by {where or 'the interpreter'} ({ssl.OPENSSL_VERSION}) does not export "
                          "SSL_CTX_set_ciphersuites/SSL_CTX_get_options: TLS 1.3 suites cannot be set")
        raise RuntimeError(_resolve_error) from None
    set_fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    set_fn.restype = ctypes.c_int
    get_fn.argtypes = [ctypes.c_void_p]
    get_fn.restype = ctypes.c_uint64
    _fns = (set_fn, get_fn)
    return _fns


def _checked_ctx(context: object) -> int:
    """The ``SSL_CTX *`` inside ``context``, verified against OpenSSL before anyone writes to it."""
    if not isinstance(context, _ssl._SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, got {type(context).__name__}")
    _set, get = _resolve()
    if _ssl._SSLContext.__basicsize__ < _CTX_OFFSET + ctypes.sizeof(ctypes.c_void_p):
        raise RuntimeError("ssl.SSLContext is smaller than the PySSLContext layout this shim expects")
    ptr = ctypes.c_void_p.from_address(id(context) + _CTX_OFFSET).value
    if not ptr:
        raise RuntimeError("ssl.SSLContext has no SSL_CTX")
    if get(ptr) != int(context.options):
        raise RuntimeError("SSL_CTX pointer check failed: the PySSLContext layout is not the expected one")
    return ptr


def ssl_ctx_address(context: object) -> int:
    """Address of the ``SSL_CTX`` of ``context`` (diagnostics and tests)."""
    return _checked_ctx(context)


def tls13_suites(context: object) -> list[str]:
    """The TLS 1.3 suites ``context`` offers, in preference order (OpenSSL names)."""
    if not isinstance(context, _ssl._SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, got {type(context).__name__}")
    return [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"]


def set_ciphersuites(context: object, suites: str) -> None:
    """Offer exactly ``suites`` (OpenSSL names joined by ``:``, preference order) for TLS 1.3.

    ``""`` offers no TLS 1.3 suite (only sensible with TLS 1.3 disabled). OpenSSL silently drops
    names it does not know, so the result is read back and any difference raises ``ssl.SSLError``.
    """
    if not isinstance(suites, str):
        raise TypeError(f"suites must be str, not {type(suites).__name__}")
    ptr = _checked_ctx(context)
    set_fn, _get = _resolve()
    wanted = [s for s in suites.split(":") if s]
    if set_fn(ptr, suites.encode("ascii")) != 1:
        raise ssl.SSLError(ssl.SSL_ERROR_SSL, f"OpenSSL rejected the TLS 1.3 cipher suites {suites!r}")
    got = tls13_suites(context)
    if got != wanted:
        missing = [s for s in wanted if s not in got]
        raise ssl.SSLError(ssl.SSL_ERROR_SSL, f"OpenSSL did not accept the TLS 1.3 cipher suites {missing or wanted!r} "
                           f"(offered now: {got!r})")
