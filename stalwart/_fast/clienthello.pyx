# cython: language_level=3
"""ClientHello peek (tls.md §2, §7.5; RFC 8446 §4.1.2, RFC 5246 §7.4.1.2), compiled. Same API, results
and reasons as the twin ``clienthello_py``, whose docstring states the rules; the builders and the
error class are shared with it.

Why it is fast: the record walk and the message parse are ``nogil`` C functions over
``const unsigned char*`` that fill a plain struct of offsets and return a status code -- no Python
object is made until the ClientHello is known good, and a ClientHello that fits one record (nearly
all of them) is parsed in place, without a copy. Extension bodies other than the three it reads are
stepped over, not scanned. The result object holds that struct and a reference to the bytes; its
tuples and the SNI string are built only when a caller reads them. Errors come back as a code and
the wrapper raises :class:`ClientHelloError` (C code never raises through a callback).

A peek re-reads the buffer from its start, so the work per call is bounded instead (at most 32
records, 128 extensions, 64 KiB) and ``peek_with_hint`` tells the driver when a new call can
answer differently; ``bench/clienthello_peek.py`` measures both.
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy, memset

from stalwart._fast.clienthello_errors import REASONS, ClientHelloError
from stalwart._fast.clienthello_py import (CLASSES, MAX_EXTENSIONS, MAX_HELLO_LENGTH, MAX_RECORD_LENGTH, MAX_RECORDS,
                                           alpn_ext, build, client_hello_message, server_name_ext, to_records,
                                           versions_ext)

__all__ = ["ClientHello", "ClientHelloError", "REASONS", "peek", "peek_with_hint", "classify", "MAX_HELLO_LENGTH",
           "MAX_RECORDS", "MAX_RECORD_LENGTH", "MAX_EXTENSIONS", "server_name_ext", "alpn_ext", "versions_ext",
           "client_hello_message", "to_records", "build"]

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "<sys/socket.h>":
    int AF_INET
    int AF_INET6

# Status codes: 1 done, 0 need more bytes, < 0 -(index in REASONS + 1).
DEF E_NOT_TLS = -1
DEF E_BAD_RECORD = -2
DEF E_NOT_CLIENT_HELLO = -3
DEF E_MALFORMED = -4
DEF E_TOO_LARGE = -5

DEF HANDSHAKE = 22
DEF CLIENT_HELLO = 1
DEF EXT_SERVER_NAME = 0
DEF EXT_ALPN = 16
DEF EXT_PRE_SHARED_KEY = 41
DEF EXT_SUPPORTED_VERSIONS = 43
DEF C_MAX_RECORDS = 32
DEF C_MAX_RECORD_LENGTH = 16384
DEF C_MAX_HELLO_LENGTH = 65536
DEF C_MAX_EXTENSIONS = 128
DEF HIGH_LINEAR = 16  # extension types >= 64 checked for duplicates by a scan up to this many

assert (C_MAX_RECORDS, C_MAX_RECORD_LENGTH, C_MAX_HELLO_LENGTH, C_MAX_EXTENSIONS) == (
    MAX_RECORDS, MAX_RECORD_LENGTH, MAX_HELLO_LENGTH, MAX_EXTENSIONS)

ctypedef struct ch_span:
    int off            # offset in the message; -1 when absent
    int len

ctypedef struct ch_result:
    int legacy_version
    int end            # message length with its 4-byte header
    ch_span suites     # the cipher suite bytes
    ch_span sni        # the host name without a trailing dot; off -1 when absent or an IP literal
    ch_span alpn       # the protocol_name_list bytes
    ch_span versions   # the versions bytes
    ch_span exts       # the extension block without its length

ctypedef struct ch_records:
    int count
    Py_ssize_t pos                 # where the walk stopped: the next record header
    bint more                      # the walk stopped for lack of bytes, wanting another record
    Py_ssize_t off[C_MAX_RECORDS]  # payload start in the input
    Py_ssize_t avail               # payload bytes present, over all records
    Py_ssize_t declared            # payload bytes the record headers announce


cdef inline int _be16(const unsigned char *p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline int _need(Py_ssize_t i, Py_ssize_t k, Py_ssize_t end, Py_ssize_t avail, Py_ssize_t *want) noexcept nogil:
    """Bytes [i, i+k) are read: inside the message (else malformed) and present (else need more,
    ``want`` set to the payload length that has them)."""
    if i + k > end:
        return E_MALFORMED
    if i + k > avail:
        want[0] = i + k
        return 0
    return 1


cdef inline bint _ldh(unsigned char c) noexcept nogil:
    cdef unsigned char low = c | 0x20
    return (low >= b'a' and low <= b'z') or (c >= b'0' and c <= b'9') or c == b'-' or c == b'_'


cdef inline bint _v6char(unsigned char c) noexcept nogil:
    cdef unsigned char low = c | 0x20
    return (c >= b'0' and c <= b'9') or (low >= b'a' and low <= b'f') or c == b':' or c == b'.'


cdef int _host_name(const unsigned char *s, int n, int off, ch_span *out) noexcept nogil:
    """RFC 6066 §3 HostName at ``s``: 1 and ``out`` set for a DNS name, 0 for an IP literal, or
    malformed. The same rules as the twin's ``_host_name``, including the inet_pton calls."""
    cdef char buf[48]
    cdef unsigned char addr[16]
    cdef int i, lab = 0
    cdef bint v4 = True
    if n > 0 and s[n - 1] == b'.':
        n -= 1
    if n == 0 or n > 253:
        return E_MALFORMED
    if memchr(s, b':', n) != NULL:
        if n > 45:
            return E_MALFORMED
        for i in range(n):
            if not _v6char(s[i]):
                return E_MALFORMED
        memcpy(buf, s, n)
        buf[n] = 0
        return 0 if inet_pton(AF_INET6, buf, addr) == 1 else E_MALFORMED
    if s[n - 1] >= b'0' and s[n - 1] <= b'9' and n <= 15:
        for i in range(n):
            if s[i] != b'.' and (s[i] < b'0' or s[i] > b'9'):
                v4 = False
                break
        if v4:
            memcpy(buf, s, n)
            buf[n] = 0
            if inet_pton(AF_INET, buf, addr) == 1:
                return 0
    for i in range(n):
        if s[i] == b'.':
            if lab == 0:
                return E_MALFORMED
            lab = 0
        elif _ldh(s[i]):
            lab += 1
            if lab > 63:
                return E_MALFORMED
        else:
            return E_MALFORMED
    if lab == 0:
        return E_MALFORMED
    out.off = off
    out.len = n
    return 1


cdef int _server_name(const unsigned char *d, int n, int off, ch_span *out) noexcept nogil:
    # exactly one host_name entry filling a non-empty list, the host name not empty
    if n < 6 or _be16(d) != n - 2 or d[2] != 0 or _be16(d + 3) != n - 5:
        return E_MALFORMED
    return _host_name(d + 5, n - 5, off + 5, out)


cdef int _alpn(const unsigned char *d, int n, int off, ch_span *out) noexcept nogil:
    cdef int j = 2, nl
    if n < 4 or _be16(d) != n - 2:
        return E_MALFORMED
    while j < n:
        nl = d[j]
        if nl == 0 or j + 1 + nl > n:
            return E_MALFORMED
        j += 1 + nl
    out.off = off + 2
    out.len = n - 2
    return 1


cdef int _versions(const unsigned char *d, int n, int off, ch_span *out) noexcept nogil:
    if n < 3 or d[0] != n - 1 or d[0] & 1:
        return E_MALFORMED
    out.off = off + 1
    out.len = n - 1
    return 1


cdef int ch_message(const unsigned char *m, Py_ssize_t avail, ch_result *r, Py_ssize_t *want) noexcept nogil:
    """The ClientHello handshake message at ``m`` (``avail`` payload bytes gathered so far):
    1 with ``r`` filled, 0 need more (``want``: the payload length the next check needs), < 0 a
    reason code. Checks in the twin's ``_message`` order."""
    cdef Py_ssize_t i, end, cs_len, cm_len, k
    cdef int rc, t, elen, prev = -1, nhigh = 0, count = 0
    cdef bint use_bits = False
    cdef uint64_t low = 0
    cdef unsigned short high[HIGH_LINEAR]
    cdef uint64_t bits[1024]  # every type >= 64, set up only when more than HIGH_LINEAR appear
    cdef const unsigned char *d
    if avail < 1:
        want[0] = 1
        return 0
    if m[0] != CLIENT_HELLO:
        return E_NOT_CLIENT_HELLO
    if avail < 4:
        want[0] = 4
        return 0
    end = (m[1] << 16) | (m[2] << 8) | m[3]
    if end > C_MAX_HELLO_LENGTH:
        return E_TOO_LARGE
    end += 4
    r.end = <int> end
    i = 4
    rc = _need(i, 2, end, avail, want)
    if rc <= 0:
        return rc
    r.legacy_version = _be16(m + i)
    if r.legacy_version < 0x0300:
        return E_MALFORMED
    i += 2 + 32  # random: stepped over
    if i > end:
        return E_MALFORMED
    rc = _need(i, 1, end, avail, want)
    if rc <= 0:
        return rc
    if m[i] > 32:
        return E_MALFORMED
    i += 1 + m[i]
    if i > end:
        return E_MALFORMED
    rc = _need(i, 2, end, avail, want)
    if rc <= 0:
        return rc
    cs_len = _be16(m + i)
    if cs_len < 2 or cs_len & 1:
        return E_MALFORMED
    r.suites.off = <int> (i + 2)
    r.suites.len = <int> cs_len
    i += 2 + cs_len
    if i > end:
        return E_MALFORMED
    rc = _need(i, 1, end, avail, want)
    if rc <= 0:
        return rc
    cm_len = m[i]
    rc = _need(i + 1, cm_len, end, avail, want)
    if rc <= 0:
        return rc
    if cm_len == 0 or memchr(m + i + 1, 0, cm_len) == NULL:
        return E_MALFORMED
    i += 1 + cm_len
    r.exts.off = <int> i
    r.exts.len = 0
    if i < end:
        rc = _need(i, 2, end, avail, want)
        if rc <= 0:
            return rc
        if i + 2 + _be16(m + i) != end:
            return E_MALFORMED
        i += 2
        r.exts.off = <int> i
        r.exts.len = <int> (end - i)
        while i < end:
            if count == C_MAX_EXTENSIONS:
                return E_TOO_LARGE
            count += 1
            rc = _need(i, 4, end, avail, want)
            if rc <= 0:
                return rc
            t = _be16(m + i)
            elen = _be16(m + i + 2)
            i += 4
            if i + elen > end or prev == EXT_PRE_SHARED_KEY:
                return E_MALFORMED
            # duplicate types (RFC 8446 §4.2): a bit mask for the common ones below 64, a short
            # scan for the few above (GREASE, renegotiation_info, ECH), a bitmap past that
            if t < 64:
                if (low >> t) & 1:
                    return E_MALFORMED
                low |= (<uint64_t> 1) << t
            elif not use_bits:
                for k in range(nhigh):
                    if high[k] == t:
                        return E_MALFORMED
                if nhigh < HIGH_LINEAR:
                    high[nhigh] = <unsigned short> t
                    nhigh += 1
                else:
                    memset(bits, 0, sizeof(bits))
                    for k in range(nhigh):
                        bits[high[k] >> 6] |= (<uint64_t> 1) << (high[k] & 63)
                    bits[t >> 6] |= (<uint64_t> 1) << (t & 63)
                    use_bits = True
            else:
                if (bits[t >> 6] >> (t & 63)) & 1:
                    return E_MALFORMED
                bits[t >> 6] |= (<uint64_t> 1) << (t & 63)
            prev = t
            if t == EXT_SERVER_NAME or t == EXT_ALPN or t == EXT_SUPPORTED_VERSIONS:
                rc = _need(i, elen, end, avail, want)
                if rc <= 0:
                    return rc
                d = m + i
                if t == EXT_SERVER_NAME:
                    rc = _server_name(d, elen, <int> i, &r.sni)
                elif t == EXT_ALPN:
                    rc = _alpn(d, elen, <int> i, &r.alpn)
                else:
                    rc = _versions(d, elen, <int> i, &r.versions)
                if rc < 0:
                    return rc
            i += elen
    if avail < end:
        want[0] = end
        return 0
    return 1


cdef int ch_walk(const unsigned char *p, Py_ssize_t n, ch_records *w) noexcept nogil:
    """Walk the record headers (the twin's loop in ``peek``): 0, or the first record error."""
    cdef Py_ssize_t pos = 0, needed = -1, a, k, j, q
    cdef int rlen
    cdef unsigned char hdr[4]
    w.count = 0
    w.avail = 0
    w.declared = 0
    w.pos = 0
    w.more = True
    while pos < n and (needed < 0 or w.declared < needed):
        if w.count == C_MAX_RECORDS:
            return E_TOO_LARGE
        if p[pos] != HANDSHAKE or (pos + 1 < n and p[pos + 1] != 3):
            return E_BAD_RECORD
        if pos + 5 > n:
            break
        rlen = _be16(p + pos + 3)
        if rlen == 0 or rlen > C_MAX_RECORD_LENGTH:
            return E_BAD_RECORD
        w.off[w.count] = pos + 5
        w.count += 1
        a = n - pos - 5
        w.avail += rlen if a > rlen else a
        w.declared += rlen
        pos += 5 + rlen
        if needed < 0 and w.avail >= 4:
            # the first four payload bytes, wherever the records put them
            j = 0
            for k in range(w.count):
                q = w.off[k]
                while j < 4 and q < n and q < w.off[k] + _be16(p + w.off[k] - 2):
                    hdr[j] = p[q]
                    j += 1
                    q += 1
            needed = 4 + ((hdr[1] << 16) | (hdr[2] << 8) | hdr[3])
    w.pos = pos
    w.more = needed < 0 or w.declared < needed
    return 0


cdef bytes _gather(const unsigned char *p, Py_ssize_t n, ch_records *w):
    """The payload of a ClientHello spread over records, made contiguous: at most what the message
    parser can ever read (its header and MAX_HELLO_LENGTH bytes)."""
    cdef Py_ssize_t g = w.avail if w.avail < 4 + C_MAX_HELLO_LENGTH else 4 + C_MAX_HELLO_LENGTH
    cdef Py_ssize_t j = 0, q, take
    cdef int k
    cdef bytes out = PyBytes_FromStringAndSize(NULL, g)
    cdef char *o = PyBytes_AS_STRING(out)
    for k in range(w.count):
        if j >= g:
            break
        q = w.off[k]
        take = _be16(p + q - 2)
        if take > n - q:
            take = n - q
        if take > g - j:
            take = g - j
        memcpy(o + j, p + q, take)
        j += take
    return out


@cython.final
@cython.freelist(8)
cdef class ClientHello:
    """What the peek extracted; attributes as in the twin's ``ClientHello``."""
    cdef ch_result r
    cdef bytes _raw          # holds the message at _base
    cdef Py_ssize_t _base
    cdef int _records
    cdef object _sni

    FIELDS = ("legacy_version", "cipher_suites", "sni", "alpn", "supported_versions", "extensions", "records")

    cdef const unsigned char *_m(self):
        return <const unsigned char *> PyBytes_AS_STRING(self._raw) + self._base

    @property
    def legacy_version(self):
        return self.r.legacy_version

    @property
    def records(self):
        return self._records

    @property
    def sni(self):
        cdef const unsigned char *s
        cdef unsigned char *out
        cdef int k
        cdef unsigned char c
        if self._sni is None and self.r.sni.off >= 0:
            # The name was checked to be letters, digits, '-', '_' and '.': an ASCII string,
            # lower-cased while it is copied (one allocation instead of bytes, decode, lower).
            name = PyUnicode_New(self.r.sni.len, 127)
            out = <unsigned char *> PyUnicode_DATA(name)
            s = self._m() + self.r.sni.off
            for k in range(self.r.sni.len):
                c = s[k]
                out[k] = c | 0x20 if c >= b'A' and c <= b'Z' else c
            self._sni = name
        return self._sni

    @property
    def cipher_suites(self):
        cdef const unsigned char *m = self._m()
        cdef int k
        return tuple([_be16(m + k) for k in range(self.r.suites.off, self.r.suites.off + self.r.suites.len, 2)])

    @property
    def supported_versions(self):
        cdef const unsigned char *m = self._m()
        cdef int k
        if self.r.versions.off < 0:
            return ()
        return tuple([_be16(m + k) for k in range(self.r.versions.off, self.r.versions.off + self.r.versions.len, 2)])

    @property
    def alpn(self):
        cdef const unsigned char *m = self._m()
        cdef int j, stop, nl
        if self.r.alpn.off < 0:
            return ()
        out = []
        j = self.r.alpn.off
        stop = j + self.r.alpn.len
        while j < stop:
            nl = m[j]
            out.append(PyBytes_FromStringAndSize(<const char *> m + j + 1, nl))
            j += 1 + nl
        return tuple(out)

    @property
    def extensions(self):
        cdef const unsigned char *m = self._m()
        cdef int j = self.r.exts.off, stop = self.r.exts.off + self.r.exts.len
        out = []
        while j < stop:
            out.append(_be16(m + j))
            j += 4 + _be16(m + j + 2)
        return tuple(out)

    def as_dict(self):
        """Every field; equal for equal input in both twins."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self):
        return (f"ClientHello(sni={self.sni!r}, alpn={self.alpn!r}, legacy_version=0x{self.legacy_version:04x}, "
                f"supported_versions={tuple(hex(v) for v in self.supported_versions)}, "
                f"{len(self.cipher_suites)} suites, {len(self.extensions)} extensions, records={self.records})")


cdef object _peek(object data, const unsigned char *p, Py_ssize_t n, bint exact, Py_ssize_t *want):
    """Records, then the message (the twin's ``peek_with_hint``): a ClientHello (``want`` 0), None
    (``want`` set), or the error raised."""
    cdef ch_records w
    cdef ch_result r
    cdef int rc, rec_rc
    cdef Py_ssize_t payload_want = 0, avail
    cdef bytes gathered = None
    cdef ClientHello h
    want[0] = 0
    if n == 0:
        want[0] = 1
        return None
    if p[0] != HANDSHAKE:
        raise ClientHelloError(REASONS[-E_NOT_TLS - 1])
    memset(&r, 0, sizeof(ch_result))
    r.sni.off = -1
    r.alpn.off = -1
    r.versions.off = -1
    rec_rc = ch_walk(p, n, &w)
    if w.count <= 1:
        avail = w.avail
        rc = ch_message(p + 5, avail, &r, &payload_want)
    else:
        gathered = _gather(p, n, &w)
        avail = PyBytes_GET_SIZE(gathered)
        rc = ch_message(<const unsigned char *> PyBytes_AS_STRING(gathered), avail, &r, &payload_want)
    if rc == 0:
        if rec_rc < 0:
            # the message stops where a bad record header starts: that header is the error
            raise ClientHelloError(REASONS[-rec_rc - 1])
        # each byte still to come adds at most one payload byte; a record header yet to come is
        # checked from its first byte on
        want[0] = n + payload_want - avail
        if w.pos < n:
            want[0] = n + 1
        elif w.more and w.pos + 1 < want[0]:
            want[0] = w.pos + 1
        return None
    if rc < 0:
        raise ClientHelloError(REASONS[-rc - 1])
    if w.declared != r.end:
        raise ClientHelloError(REASONS[-E_MALFORMED - 1])  # the last record goes on past the ClientHello
    h = ClientHello.__new__(ClientHello)
    h.r = r
    h._records = w.count
    if gathered is not None:
        h._raw = gathered
        h._base = 0
    elif exact:
        h._raw = <bytes> data  # immutable: a reference instead of a copy
        h._base = 5
    else:
        h._raw = PyBytes_FromStringAndSize(<const char *> p + 5, r.end)
        h._base = 0
    return h


cdef object _dispatch(object data, Py_ssize_t *want):
    cdef Py_buffer view
    if PyBytes_CheckExact(data):
        return _peek(data, <const unsigned char *> PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), True, want)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _peek(data, <const unsigned char *> view.buf, view.len, False, want)
    finally:
        PyBuffer_Release(&view)


def peek(data):
    """Peek at the ClientHello at the start of ``data`` (bytes, bytearray or memoryview holding
    every byte the client sent so far; tls.md §2). Returns a :class:`ClientHello`, None when more
    bytes are needed, or raises :class:`ClientHelloError` with the reason."""
    cdef Py_ssize_t want
    return _dispatch(data, &want)


def peek_with_hint(data):
    """:func:`peek`, plus how long ``data`` must grow before another peek can answer differently:
    ``(hello, 0)`` or ``(None, n)`` (the twin's docstring has the rule)."""
    cdef Py_ssize_t want
    h = _dispatch(data, &want)
    return h, want


# -- classify ----------------------------------------------------------------------------------------

cdef extern from *:
    """
    static const char *ch_http_methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                                            "TRACE", "PATCH", "PRI"};
    static const char *ch_smtp_verbs[] = {"EHLO", "HELO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP",
                                          "QUIT", "VRFY", "EXPN", "HELP", "AUTH", "ETRN", "STARTTLS"};
    """
    const char **ch_http_methods
    const char **ch_smtp_verbs

cdef const char *PROXY_V1 = b"PROXY "
cdef const char *PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n"


cdef bint _word_in(const unsigned char *w, int n, const char **table, int count) noexcept nogil:
    cdef int k, i
    cdef const char *s
    for k in range(count):
        s = table[k]
        i = 0
        while i < n and s[i] != 0 and <unsigned char> s[i] == w[i]:
            i += 1
        if i == n and s[i] == 0:
            return True
    return False


cdef int ch_classify(const unsigned char *b, Py_ssize_t n) noexcept nogil:
    """Index in CLASSES; the twin's ``classify`` rules over the first 16 bytes."""
    cdef unsigned char c
    cdef unsigned char up[16]
    cdef int k
    if n > 16:
        n = 16
    if n == 0:
        return 4
    c = b[0]
    if c >= 20 and c <= 24 and (n == 1 or b[1] == 3):
        return 3
    if (c & 0x80) and n >= 5 and b[2] == CLIENT_HELLO and (b[3] == 0 or b[3] == 3):
        return 3
    if (n >= 6 and memcmp(b, PROXY_V1, 6) == 0) or (n >= 12 and memcmp(b, PROXY_V2, 12) == 0):
        return 2
    k = 0
    while k < n and b[k] != b' ':
        k += 1
    if 0 < k < n and _word_in(b, k, ch_http_methods, 10):
        return 1
    k = 0
    while k < n and b[k] != b' ' and b[k] != b'\r' and b[k] != b'\n':
        up[k] = b[k] - 32 if b[k] >= b'a' and b[k] <= b'z' else b[k]
        k += 1
    if k < n and _word_in(up, k, ch_smtp_verbs, 16):
        return 0
    return 4


def classify(data):
    """What a client sent instead of a ClientHello (rules in the twin's ``classify``): one of
    ``plaintext-smtp``, ``plaintext-http``, ``proxy-header``, ``tls``, ``unknown``."""
    cdef Py_buffer view
    cdef int rc
    if PyBytes_CheckExact(data):
        rc = ch_classify(<const unsigned char *> PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    else:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            rc = ch_classify(<const unsigned char *> view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
    return CLASSES[rc]
