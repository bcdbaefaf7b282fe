# cython: language_level=3
"""Strict PROXY protocol v1/v2 parser (spec/network.md §6), compiled. Same API, results and reasons
as the twin ``proxy_py``, whose docstring states the reason rules; the builder, constants and the
error class are shared with it.

Why it is fast: the parser is one ``nogil`` C function over ``const unsigned char*`` that fills a
plain struct and returns a status code -- no Python object is touched until the header is known
good. The result object is a small extension type holding that struct; its addresses, TLVs and
strings become Python objects only when a caller reads them. Errors come back as a code and the
wrapper raises :class:`ProxyError` (C code never raises through a callback).
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint32_t
from libc.string cimport memchr, memcmp, memcpy, memset

import socket

from stalwart._fast.proxy_errors import PARSER_REASONS, ProxyError
from stalwart._fast.proxy_py import (BLOCK_SIZE, FAMILIES, INET, INET6, LOCAL, PROXY, SIGNATURE, UNIX, UNSPEC,
                                     V1_MAX, build_v1, build_v2, ssl_tlv)

__all__ = ["ProxyError", "ProxyHeader", "parse", "looks_like_proxy", "build_v1", "build_v2", "ssl_tlv",
           "crc32c", "SIGNATURE", "V1_MAX"]

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static uint32_t pp_crc_table[256];
    static void pp_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            pp_crc_table[i] = c;
        }
    }
    static uint32_t pp_crc_sw(uint32_t c, const unsigned char *p, size_t n) {
        while (n--) c = pp_crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
        return c;
    }
    #if defined(__x86_64__) && defined(__GNUC__)
    #include <nmmintrin.h>
    /* SSE4.2 has a CRC32C instruction; compiled for it here and chosen at run time, so the module
       still loads on a CPU without it. */
    __attribute__((target("sse4.2")))
    static uint32_t pp_crc_hw(uint32_t c, const unsigned char *p, size_t n) {
        uint64_t c64 = c, v;
        while (n >= 8) { memcpy(&v, p, 8); c64 = _mm_crc32_u64(c64, v); p += 8; n -= 8; }
        c = (uint32_t)c64;
        while (n--) c = _mm_crc32_u8(c, *p++);
        return c;
    }
    static int pp_have_hw(void) { return __builtin_cpu_supports("sse4.2"); }
    #else
    static uint32_t pp_crc_hw(uint32_t c, const unsigned char *p, size_t n) { return pp_crc_sw(c, p, n); }
    static int pp_have_hw(void) { return 0; }
    #endif
    static int pp_use_hw = 0;
    /* Raw register update: callers start from ~0 and invert at the end. */
    static inline uint32_t pp_crc_update(uint32_t c, const unsigned char *p, size_t n) {
        return pp_use_hw ? pp_crc_hw(c, p, n) : pp_crc_sw(c, p, n);
    }
    static inline uint32_t pp_be32(const unsigned char *p) {
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    }
    """
    void pp_crc_init() noexcept nogil
    int pp_have_hw() noexcept nogil
    int pp_use_hw
    uint32_t pp_crc_update(uint32_t c, const unsigned char *p, size_t n) noexcept nogil
    uint32_t pp_be32(const unsigned char *p) noexcept nogil

pp_crc_init()
pp_use_hw = pp_have_hw()

# Status codes: > 0 consumed, 0 need more bytes, < 0 -(index in PARSER_REASONS + 1).
DEF E_SIGNATURE = -1
DEF E_VERSION = -2
DEF E_COMMAND = -3
DEF E_FAMILY = -4
DEF E_ADDRESS = -5
DEF E_TOO_LONG = -6
DEF E_TLV = -7
DEF E_CRC = -8

DEF T_ALPN = 0x01
DEF T_AUTHORITY = 0x02
DEF T_CRC32C = 0x03
DEF T_UNIQUE_ID = 0x05
DEF T_SSL = 0x20
DEF T_NETNS = 0x30
DEF UNIQUE_ID_MAX = 128
DEF V1_LIMIT = 107

cdef const unsigned char *V1_SIG = b"PROXY "
cdef const unsigned char *V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"

ctypedef struct pp_span:
    int off            # offset in the header of a TLV value; -1 when absent
    int len

ctypedef struct pp_result:
    int version
    int command        # 0 LOCAL, 1 PROXY
    int family         # index in FAMILIES
    int consumed
    int src_port
    int dst_port
    unsigned char src[16]
    unsigned char dst[16]
    int tlv_start      # first byte after the address block (v2)
    pp_span alpn, authority, unique_id, netns
    pp_span ssl_sub[5]  # SSL_VERSION .. SSL_KEY_ALG
    int ssl            # SSL TLV present
    int ssl_client
    uint32_t ssl_verify
    int64_t crc        # verified CRC32C, -1 when absent


cdef inline int _decimal(const unsigned char *p, Py_ssize_t n, int max_digits, int max_value) noexcept nogil:
    """Decimal without sign or leading zeros; -1 when malformed or above max_value."""
    cdef int v = 0
    cdef Py_ssize_t i
    if n < 1 or n > max_digits or (n > 1 and p[0] == b'0'):
        return -1
    for i in range(n):
        if p[i] < b'0' or p[i] > b'9':
            return -1
        v = v * 10 + (p[i] - 48)  # 48 is '0'
    return v if v <= max_value else -1


cdef inline Py_ssize_t _digits_at(const unsigned char *p, Py_ssize_t i, Py_ssize_t end, int max_digits,
                                   int max_value, int *out) noexcept nogil:
    """Decimal without sign or leading zeros starting at ``i``; index of the byte after it, -1 if bad."""
    cdef Py_ssize_t start = i
    cdef int v = 0
    while i < end and p[i] >= b'0' and p[i] <= b'9':
        if i - start == max_digits:
            return -1
        v = v * 10 + (p[i] - 48)  # 48 is '0'
        i += 1
    if i == start or (i - start > 1 and p[start] == b'0') or v > max_value:
        return -1
    out[0] = v
    return i


cdef inline Py_ssize_t _v4_at(const unsigned char *p, Py_ssize_t i, Py_ssize_t end, unsigned char *out) noexcept nogil:
    """Dotted quad at ``i`` followed by one space; index after the space, -1 if bad."""
    cdef int k, v
    for k in range(4):
        i = _digits_at(p, i, end, 3, 255, &v)
        if i < 0 or i >= end or p[i] != (46 if k < 3 else 32):  # '.' between octets, ' ' after
            return -1
        out[k] = <unsigned char> v
        i += 1
    return i


cdef inline Py_ssize_t _port_at(const unsigned char *p, Py_ssize_t i, Py_ssize_t end, int *out) noexcept nogil:
    """Port at ``i`` followed by one space (or by ``end``, the CR); index after that byte, -1 if bad."""
    i = _digits_at(p, i, end, 5, 65535, out)
    if i < 0 or (i < end and p[i] != b' '):
        return -1
    return i + 1


cdef inline int _hexval(unsigned char c) noexcept nogil:
    if c >= b'0' and c <= b'9':
        return c - 48
    if c >= b'a' and c <= b'f':
        return c - 87
    if c >= b'A' and c <= b'F':
        return c - 55
    return -1


cdef inline int _v6(const unsigned char *p, Py_ssize_t n, unsigned char *out) noexcept nogil:
    """RFC 4291 §2.2 text form: exactly the grammar of glibc's inet_pton(AF_INET6), which the twin
    calls (hex groups of 1-4 digits, one ``::``, an optional strict dotted-quad tail). Done here
    instead of calling inet_pton because copying and NUL-terminating the field cost more than the
    parse; the twins are cross-checked on random text in the tests and by the fuzzer."""
    cdef unsigned char tmp[16]
    cdef int tp = 0, colonp = -1, xdigits = 0, d, k, octets, saw
    cdef unsigned int val = 0, o
    cdef Py_ssize_t i = 0, curtok, m
    cdef unsigned char c
    if n < 2 or n > 45:
        return -1
    memset(tmp, 0, 16)
    if p[0] == b':':
        if p[1] != b':':
            return -1
        i = 1
    curtok = i
    while i < n:
        c = p[i]
        i += 1
        d = _hexval(c)
        if d >= 0:
            if xdigits == 4:
                return -1
            val = (val << 4) | d
            xdigits += 1
            continue
        if c == b':':
            curtok = i
            if xdigits == 0:
                if colonp >= 0:
                    return -1
                colonp = tp
                continue
            if i == n or tp + 2 > 16:
                return -1
            tmp[tp] = <unsigned char> (val >> 8)
            tmp[tp + 1] = <unsigned char> val
            tp += 2
            xdigits = 0
            val = 0
            continue
        if c == b'.' and tp + 4 <= 16:
            # dotted quad from the start of this group to the end: 4 octets, no leading zeros
            octets = 0
            saw = 0
            o = 0
            m = curtok
            while m < n:
                c = p[m]
                m += 1
                if c >= b'0' and c <= b'9':
                    if saw and o == 0:
                        return -1
                    o = o * 10 + (c - 48)
                    if o > 255:
                        return -1
                    if not saw:
                        octets += 1
                        if octets > 4:
                            return -1
                        saw = 1
                elif c == b'.' and saw:
                    if octets == 4:
                        return -1
                    tmp[tp + octets - 1] = <unsigned char> o
                    o = 0
                    saw = 0
                else:
                    return -1
            if octets < 4:
                return -1
            tmp[tp + 3] = <unsigned char> o
            tp += 4
            xdigits = 0
            break
        return -1
    if xdigits > 0:
        if tp + 2 > 16:
            return -1
        tmp[tp] = <unsigned char> (val >> 8)
        tmp[tp + 1] = <unsigned char> val
        tp += 2
    if colonp >= 0:
        if tp == 16:
            return -1  # "::" must stand for at least one group
        k = tp - colonp
        memcpy(out + 16 - k, tmp + colonp, k)
        memcpy(out, tmp, colonp)
        memset(out + colonp, 0, 16 - k - colonp)
        return 0
    if tp != 16:
        return -1
    memcpy(out, tmp, 16)
    return 0


cdef int _parse_v1(const unsigned char *p, Py_ssize_t n, pp_result *r) noexcept nogil:
    cdef Py_ssize_t lim = n if n < V1_LIMIT else V1_LIMIT
    cdef Py_ssize_t k = n if n < 6 else 6
    cdef const unsigned char *lfp
    cdef Py_ssize_t lf, end, i, sp
    cdef Py_ssize_t f[5]
    cdef int nf, port
    if memcmp(p, V1_SIG, k) != 0:
        return E_SIGNATURE
    lfp = <const unsigned char *> memchr(p, b'\n', lim)
    if lfp == NULL:
        return E_TOO_LONG if n >= V1_LIMIT else 0
    lf = lfp - p
    if p[lf - 1] != b'\r':
        return E_ADDRESS  # lone LF
    end = lf - 1
    if memchr(p + 6, b'\r', end - 6) != NULL:
        return E_ADDRESS  # lone CR
    sp = 6
    while sp < end and p[sp] != b' ':
        sp += 1
    r.version = 1
    r.command = 1
    r.consumed = <int> (lf + 1)
    if sp - 6 == 7 and memcmp(p + 6, b"UNKNOWN", 7) == 0:
        r.family = 0
        return r.consumed
    if sp - 6 != 4 or memcmp(p + 6, b"TCP", 3) != 0 or (p[9] != b'4' and p[9] != b'6'):
        return E_FAMILY
    r.family = 1 if p[9] == b'4' else 2
    if sp == end:
        return E_ADDRESS
    if r.family == 1:
        # One pass over the bytes: each field is parsed where it stands, and its terminator (a
        # single space, or the CR for the last) is part of the check.
        i = _v4_at(p, sp + 1, end, r.src)
        if i >= 0:
            i = _v4_at(p, i, end, r.dst)
        if i >= 0:
            i = _port_at(p, i, end, &r.src_port)
        if i < 0 or _port_at(p, i, end, &r.dst_port) != end + 1:
            return E_ADDRESS
        return r.consumed
    # TCP6: exactly four fields separated by single spaces: f[k] .. f[k+1]-2
    f[0] = sp + 1
    nf = 1
    for i in range(sp + 1, end):
        if p[i] == b' ':
            if nf == 4:
                return E_ADDRESS
            f[nf] = i + 1
            nf += 1
    if nf != 4:
        return E_ADDRESS
    f[4] = end + 1
    if _v6(p + f[0], f[1] - 1 - f[0], r.src) < 0 or _v6(p + f[1], f[2] - 1 - f[1], r.dst) < 0:
        return E_ADDRESS
    port = _decimal(p + f[2], f[3] - 1 - f[2], 5, 65535)
    if port < 0:
        return E_ADDRESS
    r.src_port = port
    port = _decimal(p + f[3], f[4] - 1 - f[3], 5, 65535)
    if port < 0:
        return E_ADDRESS
    r.dst_port = port
    return r.consumed


cdef int _parse_ssl(const unsigned char *p, int off, int end, pp_result *r) noexcept nogil:
    cdef int t, vlen, seen = 0
    if end - off < 5:
        return E_TLV
    r.ssl = 1
    r.ssl_client = p[off]
    r.ssl_verify = pp_be32(p + off + 1)
    off += 5
    while off < end:
        if end - off < 3:
            return E_TLV
        t = p[off]
        vlen = (p[off + 1] << 8) | p[off + 2]
        if off + 3 + vlen > end:
            return E_TLV
        if t >= 0x21 and t <= 0x25:
            if seen & (1 << (t - 0x21)):
                return E_TLV
            seen |= 1 << (t - 0x21)
            r.ssl_sub[t - 0x21].off = off + 3
            r.ssl_sub[t - 0x21].len = vlen
        off += 3 + vlen
    return 0


cdef inline int _once(int *seen, int bit) noexcept nogil:
    if seen[0] & bit:
        return -1
    seen[0] |= bit
    return 0


cdef int _parse_v2(const unsigned char *p, Py_ssize_t n, pp_result *r) noexcept nogil:
    cdef Py_ssize_t k = n if n < 12 else 12
    cdef int fam, total, block, off, t, vlen, voff, rc, seen = 0
    cdef uint32_t c
    if memcmp(p, V2_SIG, k) != 0:
        return E_SIGNATURE
    if n < 13:
        return 0
    if (p[12] >> 4) != 2:
        return E_VERSION
    if (p[12] & 0x0F) > 1:
        return E_COMMAND
    if n < 14:
        return 0
    fam = p[13]
    if fam != 0x00 and fam != 0x11 and fam != 0x21 and fam != 0x31:
        return E_FAMILY  # unknown families, and DGRAM, which TCP listeners refuse
    fam >>= 4
    if n < 16:
        return 0
    total = 16 + ((p[14] << 8) | p[15])
    block = 0 if fam == 0 else (12 if fam == 1 else (36 if fam == 2 else 216))
    if total - 16 < block:
        return E_ADDRESS
    if n < total:
        return 0
    r.version = 2
    r.command = p[12] & 0x0F
    r.family = fam
    r.consumed = total
    r.tlv_start = 16 + block
    if fam == 1:
        memcpy(r.src, p + 16, 4)
        memcpy(r.dst, p + 20, 4)
        r.src_port = (p[24] << 8) | p[25]
        r.dst_port = (p[26] << 8) | p[27]
    elif fam == 2:
        memcpy(r.src, p + 16, 16)
        memcpy(r.dst, p + 32, 16)
        r.src_port = (p[48] << 8) | p[49]
        r.dst_port = (p[50] << 8) | p[51]
    off = r.tlv_start
    while off < total:
        if total - off < 3:
            return E_TLV
        t = p[off]
        vlen = (p[off + 1] << 8) | p[off + 2]
        voff = off + 3
        if voff + vlen > total:
            return E_TLV
        if t == T_ALPN:
            if _once(&seen, 1) < 0:
                return E_TLV
            r.alpn.off = voff
            r.alpn.len = vlen
        elif t == T_AUTHORITY:
            if _once(&seen, 2) < 0:
                return E_TLV
            r.authority.off = voff
            r.authority.len = vlen
        elif t == T_CRC32C:
            if _once(&seen, 4) < 0 or vlen != 4:
                return E_TLV
            c = pp_crc_update(0xFFFFFFFFu, p, voff)
            c = pp_crc_update(c, <const unsigned char *> b"\0\0\0\0", 4)
            c = pp_crc_update(c, p + voff + 4, total - voff - 4) ^ 0xFFFFFFFFu
            if c != pp_be32(p + voff):
                return E_CRC
            r.crc = c
        elif t == T_UNIQUE_ID:
            if _once(&seen, 8) < 0 or vlen > UNIQUE_ID_MAX:
                return E_TLV
            r.unique_id.off = voff
            r.unique_id.len = vlen
        elif t == T_SSL:
            if _once(&seen, 16) < 0:
                return E_TLV
            rc = _parse_ssl(p, voff, voff + vlen, r)
            if rc < 0:
                return rc
        elif t == T_NETNS:
            if _once(&seen, 32) < 0:
                return E_TLV
            r.netns.off = voff
            r.netns.len = vlen
        # NOOP, application-specific, experimental, reserved and unknown types: ignored
        off = voff + vlen
    return total


cdef inline void _init(pp_result *r) noexcept nogil:
    memset(r, 0, sizeof(pp_result))
    r.alpn.off = -1
    r.authority.off = -1
    r.unique_id.off = -1
    r.netns.off = -1
    cdef int i
    for i in range(5):
        r.ssl_sub[i].off = -1
    r.crc = -1


cdef int pp_parse(const unsigned char *p, Py_ssize_t n, pp_result *r) noexcept nogil:
    """Parse a header at ``p``; > 0 consumed, 0 need more, < 0 a reason code. Never raises."""
    _init(r)
    if n == 0:
        return 0
    if p[0] == b'P':
        return _parse_v1(p, n, r)
    if p[0] == b'\r':
        return _parse_v2(p, n, r)
    return E_SIGNATURE


cdef inline object _decode(bytes raw, pp_span s):
    if s.off < 0:
        return None
    return raw[s.off:s.off + s.len].decode("utf-8", "replace")


cdef inline object _slice(bytes raw, pp_span s):
    if s.off < 0:
        return None
    return raw[s.off:s.off + s.len]


cdef object _path(bytes raw, int off):
    cdef const unsigned char *p = <const unsigned char *> PyBytes_AS_STRING(raw) + off
    cdef const unsigned char *z = <const unsigned char *> memchr(p, 0, 108)
    return PyBytes_FromStringAndSize(<const char *> p, 108 if z == NULL else z - p)


@cython.final
@cython.freelist(16)
cdef class ProxyHeader:
    """A parsed PROXY header; attributes as in the twin's ``ProxyHeader`` (network.md §6)."""
    cdef pp_result r
    cdef bytes _raw         # copy of the header when it has TLVs or UNIX paths, else None
    cdef object _authority

    @property
    def version(self):
        return self.r.version

    @property
    def command(self):
        return PROXY if self.r.command else LOCAL

    @property
    def family(self):
        return FAMILIES[self.r.family]

    @property
    def consumed(self):
        return self.r.consumed

    @property
    def proxied(self):
        return self.r.command == 1 and (self.r.family == 1 or self.r.family == 2)

    @property
    def src_addr(self):
        if self.r.family == 1 or self.r.family == 2:
            return PyBytes_FromStringAndSize(<char *> self.r.src, 4 if self.r.family == 1 else 16)
        return None

    @property
    def dst_addr(self):
        if self.r.family == 1 or self.r.family == 2:
            return PyBytes_FromStringAndSize(<char *> self.r.dst, 4 if self.r.family == 1 else 16)
        return None

    @property
    def src_port(self):
        return self.r.src_port

    @property
    def dst_port(self):
        return self.r.dst_port

    @property
    def source(self):
        a = self.src_addr
        return None if a is None else socket.inet_ntop(socket.AF_INET if len(a) == 4 else socket.AF_INET6, a)

    @property
    def destination(self):
        a = self.dst_addr
        return None if a is None else socket.inet_ntop(socket.AF_INET if len(a) == 4 else socket.AF_INET6, a)

    @property
    def src_path(self):
        return _path(self._raw, 16) if self.r.family == 3 else None

    @property
    def dst_path(self):
        return _path(self._raw, 124) if self.r.family == 3 else None

    @property
    def tlvs(self):
        """Top-level TLVs in order, as (type, value) pairs, unknown and NOOP ones included."""
        if self._raw is None:
            return ()
        cdef bytes raw = self._raw
        cdef const unsigned char *p = <const unsigned char *> PyBytes_AS_STRING(raw)
        cdef int off = self.r.tlv_start, vlen
        out = []
        while off < self.r.consumed:
            vlen = (p[off + 1] << 8) | p[off + 2]
            out.append((p[off], raw[off + 3:off + 3 + vlen]))
            off += 3 + vlen
        return tuple(out)

    @property
    def alpn(self):
        return _slice(self._raw, self.r.alpn)

    @property
    def authority(self):
        return self._authority

    @property
    def unique_id(self):
        return _slice(self._raw, self.r.unique_id)

    @property
    def netns(self):
        return _decode(self._raw, self.r.netns)

    @property
    def crc32c(self):
        return None if self.r.crc < 0 else self.r.crc

    @property
    def ssl(self):
        return bool(self.r.ssl)

    @property
    def ssl_client(self):
        return self.r.ssl_client

    @property
    def tls(self):
        """The SSL TLV says the client connected over TLS (client bit 0x01; network.md §6)."""
        return bool(self.r.ssl_client & 0x01)

    @property
    def ssl_verify(self):
        return self.r.ssl_verify if self.r.ssl else None

    @property
    def ssl_version(self):
        return _decode(self._raw, self.r.ssl_sub[0])

    @property
    def ssl_cn(self):
        return _decode(self._raw, self.r.ssl_sub[1])

    @property
    def ssl_cipher(self):
        return _decode(self._raw, self.r.ssl_sub[2])

    @property
    def ssl_sig_alg(self):
        return _decode(self._raw, self.r.ssl_sub[3])

    @property
    def ssl_key_alg(self):
        return _decode(self._raw, self.r.ssl_sub[4])

    def as_dict(self):
        """Every field, including the derived ones; equal for equal headers in both twins."""
        names = ("version", "command", "family", "src_addr", "dst_addr", "src_port", "dst_port", "src_path",
                 "dst_path", "consumed", "tlvs", "alpn", "authority", "crc32c", "unique_id", "netns", "ssl",
                 "ssl_client", "ssl_verify", "ssl_version", "ssl_cn", "ssl_cipher", "ssl_sig_alg", "ssl_key_alg",
                 "proxied", "tls", "source", "destination")
        return {name: getattr(self, name) for name in names}

    def __repr__(self):
        return (f"ProxyHeader(v{self.version} {self.command} {self.family} {self.source}:{self.src_port}"
                f" -> {self.destination}:{self.dst_port}, consumed={self.consumed})")


cdef ProxyHeader _finish(const unsigned char *p, pp_result *r):
    cdef ProxyHeader h = ProxyHeader.__new__(ProxyHeader)
    h.r = r[0]
    if r.version == 2 and (r.family == 3 or r.consumed > r.tlv_start):
        h._raw = PyBytes_FromStringAndSize(<const char *> p, r.consumed)
        if r.authority.off >= 0:
            try:
                h._authority = h._raw[r.authority.off:r.authority.off + r.authority.len].decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyError(PARSER_REASONS[-E_TLV - 1]) from None
    return h


def parse(data):
    """Parse a PROXY v1 or v2 header at the start of ``data`` (bytes, bytearray, memoryview;
    network.md §6). Returns a :class:`ProxyHeader`, or None when more bytes are needed; raises
    :class:`ProxyError` with the reason."""
    cdef pp_result r
    cdef int rc
    cdef Py_buffer view
    cdef const unsigned char *p
    if PyBytes_CheckExact(data):
        p = <const unsigned char *> PyBytes_AS_STRING(data)
        rc = pp_parse(p, PyBytes_GET_SIZE(data), &r)
        if rc > 0:
            return _finish(p, &r)
    else:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const unsigned char *> view.buf
            rc = pp_parse(p, view.len, &r)
            if rc > 0:
                return _finish(p, &r)
        finally:
            PyBuffer_Release(&view)
    if rc == 0:
        return None
    raise ProxyError(PARSER_REASONS[-rc - 1])


def looks_like_proxy(data):
    """First-bytes guard (network.md §5 step 7): True when ``data`` starts with ``PROXY `` or the v2
    signature, False when it certainly does not, None when it is a proper prefix of one of them."""
    cdef const unsigned char[::1] v
    cdef const unsigned char *p
    cdef Py_ssize_t n
    if PyBytes_CheckExact(data):
        p = <const unsigned char *> PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
    else:
        v = bytes(data[:12])
        n = v.shape[0]
        p = &v[0] if n else NULL
    if n == 0:
        return None
    if n >= 6 and memcmp(p, V1_SIG, 6) == 0:
        return True
    if n >= 12 and memcmp(p, V2_SIG, 12) == 0:
        return True
    if memcmp(p, V1_SIG, n if n < 6 else 6) == 0 and n < 6:
        return None
    if memcmp(p, V2_SIG, n if n < 12 else 12) == 0 and n < 12:
        return None
    return False


def crc32c(data, uint32_t crc=0):
    """CRC32C (Castagnoli), as the PROXY v2 CRC32C TLV uses it; ``crc`` continues a previous run."""
    cdef const unsigned char[::1] v = data if isinstance(data, bytes) else bytes(data)
    cdef Py_ssize_t n = v.shape[0]
    if n == 0:
        return crc
    return pp_crc_update(crc ^ 0xFFFFFFFFu, &v[0], n) ^ 0xFFFFFFFFu
