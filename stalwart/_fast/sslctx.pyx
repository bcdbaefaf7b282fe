# cython: language_level=3
"""TLS 1.3 cipher suites on a Python ``ssl.SSLContext`` (tls.md §1 "We do better").

Python's ``ssl`` module sets TLS 1.2 suites (``set_ciphers``) but has no call for the TLS 1.3 ones,
so a disabled TLS 1.3 suite would silently stay on offer. This kernel calls OpenSSL's
``SSL_CTX_set_ciphersuites`` on the context's own ``SSL_CTX``.

Two facts make that safe:

* **The struct.** CPython 3.11 ``Modules/_ssl.c`` declares
  ``typedef struct { PyObject_HEAD SSL_CTX *ctx; unsigned char *alpn_protocols; ... } PySSLContext;``.
  The C snippet below declares the same prefix with the interpreter's own ``PyObject_HEAD``, so the
  offset is the compiler's, not a guess; before every call the pointer is cross-checked by asking
  OpenSSL for the context's options and comparing them with ``ctx.options``.
* **The library.** The functions are looked up with ``dlsym`` on a handle to the already loaded
  ``_ssl`` extension (``dlopen(_ssl.__file__, RTLD_NOLOAD)``); a handle's lookup scope is that object
  and its dependencies, so this finds exactly the ``libssl`` that ``_ssl`` uses, and the extension
  needs no link-time ``-lssl``.

Errors: ``TypeError`` for a non-context, ``ssl.SSLError`` when OpenSSL rejects or drops a suite,
``RuntimeError`` when the shim cannot reach ``libssl`` safely. The pure-Python twin
(``sslctx_py.py``) does the same with ctypes and raises the same classes.
"""
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t

import ssl
import _ssl

cdef extern from "<dlfcn.h>":
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    char *dlerror()
    int RTLD_NOW
    int RTLD_NOLOAD

cdef extern from *:
    """
    /* Prefix of CPython's PySSLContext (Modules/_ssl.c): PyObject_HEAD, then SSL_CTX *ctx. */
    typedef struct { PyObject_HEAD void *ctx; } sw_PySSLContextHead;
    typedef int (*sw_set_ciphersuites_fn)(void *ctx, const char *str);
    typedef uint64_t (*sw_get_options_fn)(const void *ctx);
    static inline void *sw_ssl_ctx(PyObject *o) { return ((sw_PySSLContextHead *)o)->ctx; }
    static inline size_t sw_ctx_offset(void) { return offsetof(sw_PySSLContextHead, ctx); }
    static inline int sw_call_set(void *fn, void *ctx, const char *s) {
        return ((sw_set_ciphersuites_fn)fn)(ctx, s);
    }
    static inline uint64_t sw_call_get(void *fn, const void *ctx) {
        return ((sw_get_options_fn)fn)(ctx);
    }
    """
    void *sw_ssl_ctx(PyObject *o)
    size_t sw_ctx_offset()
    int sw_call_set(void *fn, void *ctx, const char *s)
    uint64_t sw_call_get(void *fn, const void *ctx)

cdef void *_set_fn = NULL
cdef void *_get_fn = NULL
cdef object _resolve_error = None


cdef int _resolve() except -1:
    """Find the two libssl functions once; remember a failure and raise it on every call."""
    global _set_fn, _get_fn, _resolve_error
    if _set_fn != NULL:
        return 0
    if _resolve_error is not None:
        raise RuntimeError(_resolve_error)
    where = getattr(_ssl, "__file__", None)
    cdef void *handle
    cdef char *err
    if where is None:
        # _ssl built into the interpreter: its libssl is in the program's global scope.
        handle = dlopen(NULL, RTLD_NOW)
    else:
        path = where.encode()
        handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD)
    if handle == NULL:
        err = dlerror()
        _resolve_error = f"cannot open the loaded _ssl module {where}: " + (
            err.decode(errors="replace") if err != NULL else "unknown error")
        raise RuntimeError(_resolve_error)
    cdef void *setp = dlsym(handle, b"SSL_CTX_set_ciphersuites")
    cdef void *getp = dlsym(handle, b"SSL_CTX_get_options")
    if setp == NULL or getp == NULL:
        # OpenSSL < 1.1.1, LibreSSL or a statically linked _ssl that hides its symbols.
        _resolve_error = (f"the libssl used by {where or 'the interpreter'} ({ssl.OPENSSL_VERSION}) does not export "
                          "SSL_CTX_set_ciphersuites/SSL_CTX_get_options: TLS 1.3 suites cannot be set")
        raise RuntimeError(_resolve_error)
    _get_fn = getp
    _set_fn = setp
    return 0


cdef void *_checked_ctx(object context) except NULL:
    """The ``SSL_CTX *`` inside ``context``, verified against OpenSSL before anyone writes to it."""
    if not isinstance(context, _ssl._SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, got {type(context).__name__}")
    _resolve()
    if <size_t>_ssl._SSLContext.__basicsize__ < sw_ctx_offset() + sizeof(void *):
        raise RuntimeError("ssl.SSLContext is smaller than the PySSLContext layout this shim expects")
    cdef void *ctx = sw_ssl_ctx(<PyObject *>context)
    if ctx == NULL:
        raise RuntimeError("ssl.SSLContext has no SSL_CTX")
    if sw_call_get(_get_fn, ctx) != <uint64_t>int(context.options):
        raise RuntimeError("SSL_CTX pointer check failed: the PySSLContext layout is not the expected one")
    return ctx


def ssl_ctx_address(context):
    """Address of the ``SSL_CTX`` of ``context`` (diagnostics and tests)."""
    return <size_t>_checked_ctx(context)


def tls13_suites(context):
    """The TLS 1.3 suites ``context`` offers, in preference order (OpenSSL names)."""
    if not isinstance(context, _ssl._SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, got {type(context).__name__}")
    return [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"]


def set_ciphersuites(context, str suites not None):
    """Offer exactly ``suites`` (OpenSSL names joined by ``:``, preference order) for TLS 1.3.

    ``""`` offers no TLS 1.3 suite (only sensible with TLS 1.3 disabled). OpenSSL silently drops
    names it does not know, so the result is read back and any difference raises ``ssl.SSLError``.
    """
    cdef void *ctx = _checked_ctx(context)
    wanted = [s for s in suites.split(":") if s]
    if sw_call_set(_set_fn, ctx, suites.encode("ascii")) != 1:
        raise ssl.SSLError(ssl.SSL_ERROR_SSL, f"OpenSSL rejected the TLS 1.3 cipher suites {suites!r}")
    got = tls13_suites(context)
    if got != wanted:
        missing = [s for s in wanted if s not in got]
        raise ssl.SSLError(ssl.SSL_ERROR_SSL, f"OpenSSL did not accept the TLS 1.3 cipher suites {missing or wanted!r} "
                           f"(offered now: {got!r})")
