"""PROXY protocol kernel (network.md §6): conformance cases, builder round trips, incremental input,
fuzz invariants, a cross-check of the compiled parser against its twin, and headers from a real
sender (haproxy, skipped when it is not installed)."""
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernels import kernel_fixture
from stalwart._fast import load
from stalwart._fast.proxy_errors import PARSER_REASONS, ProxyError
from stalwart.errors import RemoteProtocolError, StalwartError

proxy = kernel_fixture("proxy")
PY = load("proxy", compiled=False)
C = load("proxy", compiled=True)
SIG = PY.SIGNATURE


def reason(mod, data):
    with pytest.raises(ProxyError) as exc:
        mod.parse(data)
    return exc.value.reason


def outcome(mod, data):
    """What a parser makes of ``data``, in a form both twins can be compared on."""
    try:
        h = mod.parse(data)
    except ProxyError as exc:
        return ("error", exc.reason)
    return ("need", None) if h is None else ("ok", h.as_dict())


def test_compiled_kernel_is_really_compiled():
    assert C.__file__.endswith(".so")
    assert C.ProxyError is PY.ProxyError is ProxyError
    assert issubclass(ProxyError, RemoteProtocolError) and issubclass(ProxyError, StalwartError)


# -- v1 --------------------------------------------------------------------------------------------

def test_v1_spec_examples(proxy):
    h = proxy.parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n")
    assert (h.version, h.command, h.family, h.proxied) == (1, "PROXY", "INET", True)
    assert (h.source, h.src_port, h.destination, h.dst_port) == ("192.0.2.1", 56324, "198.51.100.7", 25)
    assert h.src_addr == socket.inet_aton("192.0.2.1") and h.consumed == 44
    h = proxy.parse(b"PROXY TCP6 2001:db8::1 2001:db8::25 56324 993\r\n")
    assert (h.family, h.source, h.destination, h.dst_port) == ("INET6", "2001:db8::1", "2001:db8::25", 993)
    assert h.src_addr == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    h = proxy.parse(b"PROXY UNKNOWN\r\n")
    assert (h.family, h.proxied, h.source, h.consumed) == ("UNSPEC", False, None, 15)


def test_v1_unknown_ignores_the_rest_of_the_line(proxy):
    line = b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"
    assert proxy.parse(line + b"EHLO x\r\n").consumed == len(line)
    line = b"PROXY UNKNOWN " + b"\xff\x00 junk" * 9 + b"\r\n"
    assert len(line) <= 107 and proxy.parse(line).family == "UNSPEC"


def test_v1_limits(proxy):
    worst = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    assert len(worst) == 104 and proxy.parse(worst).dst_port == 65535
    assert proxy.parse(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n").src_port == 0
    unknown = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(unknown) == 107 and proxy.parse(unknown).consumed == 107
    assert reason(proxy, b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n") == "too-long"
    assert proxy.parse(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 bytes: can still end in time
    assert reason(proxy, b"PROXY UNKNOWN " + b"x" * 93) == "too-long"


@pytest.mark.parametrize("line,why", [
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 0056324 25\r\n", "bad-address"),  # leading zeros
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 +80 25\r\n", "bad-address"),  # sign
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 25\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 25\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 100000 25\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 80 00\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.1  198.51.100.7 80 25\r\n", "bad-address"),  # double space
    (b"PROXY  TCP4 192.0.2.1 198.51.100.7 80 25\r\n", "bad-family"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 80 25 \r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 80\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 80 25 9\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 80 25\n", "bad-address"),  # lone LF
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 80 25\r\r\n", "bad-address"),  # lone CR
    (b"PROXY TCP4 192.0.2.1\r198.51.100.7 80 25\r\n", "bad-address"),
    (b"PROXY UNKNOWN\rx\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.01 198.51.100.7 80 25\r\n", "bad-address"),  # octet with leading zero
    (b"PROXY TCP4 192.0.2.256 198.51.100.7 80 25\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2 198.51.100.7 80 25\r\n", "bad-address"),
    (b"PROXY TCP4 192.0.2.1.5 198.51.100.7 80 25\r\n", "bad-address"),
    (b"PROXY TCP4 2001:db8::1 198.51.100.7 80 25\r\n", "bad-address"),  # family mismatch
    (b"PROXY TCP6 192.0.2.1 2001:db8::25 80 25\r\n", "bad-address"),
    (b"PROXY TCP6 2001:db8::1::2 2001:db8::25 80 25\r\n", "bad-address"),  # two ::
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::25 80 25\r\n", "bad-address"),  # zone id
    (b"PROXY TCP6 2001:db8:0:0:0:0:0:0:1 ::1 80 25\r\n", "bad-address"),  # nine groups
    (b"PROXY TCP6 12345:: ::1 80 25\r\n", "bad-address"),
    (b"PROXY TCP4\r\n", "bad-address"),
    (b"PROXY TCP5 192.0.2.1 198.51.100.7 80 25\r\n", "bad-family"),
    (b"PROXY tcp4 192.0.2.1 198.51.100.7 80 25\r\n", "bad-family"),
    (b"PROXY UNKNOWNX\r\n", "bad-family"),
    (b"PROXY \r\n", "bad-family"),
    (b"PROXY\r\n", "bad-signature"),
    (b"PROXZ TCP4", "bad-signature"),
    (b"EHLO example.com\r\n", "bad-signature"),
    (b"\x16\x03\x01\x02\x00\x01", "bad-signature"),  # a TLS ClientHello from a misconfigured proxy
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25" + b" " * 70 + b"\r\n", "too-long"),
])
def test_v1_rejected(proxy, line, why):
    assert reason(proxy, line) == why


def test_v1_trailing_bytes_belong_to_the_protocol(proxy):
    line = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n"
    data = line + b"\x16\x03\x01 TLS or EHLO, never touched\n"
    h = proxy.parse(data)
    assert h.consumed == len(line) and data[h.consumed:].startswith(b"\x16\x03")


# -- v2 --------------------------------------------------------------------------------------------

def test_v2_inet_and_inet6(proxy):
    h = proxy.parse(PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 56324, 25) + b"rest")
    assert (h.version, h.command, h.family, h.proxied, h.consumed) == (2, "PROXY", "INET", True, 28)
    assert (h.source, h.src_port, h.destination, h.dst_port) == ("192.0.2.1", 56324, "198.51.100.7", 25)
    assert h.tlvs == () and h.alpn is None and h.ssl is False and h.tls is False and h.crc32c is None
    h = proxy.parse(PY.build_v2("PROXY", "2001:db8::1", "2001:db8::25", 1, 993))
    assert (h.family, h.source, h.destination, h.consumed) == ("INET6", "2001:db8::1", "2001:db8::25", 52)


def test_v2_local_unspec_unix_use_the_real_endpoints(proxy):
    h = proxy.parse(PY.build_v2("LOCAL"))
    assert (h.command, h.family, h.proxied, h.consumed) == ("LOCAL", "UNSPEC", False, 16)
    # LOCAL with an address block: parsed, skipped (never assume len 0), still not proxied
    h = proxy.parse(PY.build_v2("LOCAL", "192.0.2.1", "198.51.100.7", 1, 2, tlvs=[(0x04, b"pad")]))
    assert (h.command, h.proxied, h.consumed) == ("LOCAL", False, 34)
    h = proxy.parse(PY.build_v2("PROXY"))
    assert (h.family, h.proxied) == ("UNSPEC", False)
    h = proxy.parse(PY.build_v2(family="UNIX", source=b"/run/a.sock", destination=b"/run/" + b"b" * 103))
    assert (h.family, h.proxied, h.src_path, h.dst_path, h.src_addr) == (
        "UNIX", False, b"/run/a.sock", b"/run/" + b"b" * 103, None)
    # UNSPEC with bytes after the fixed part: they are TLVs
    h = proxy.parse(SIG + b"\x21\x00\x00\x06" + b"\x04\x00\x03abc")
    assert h.tlvs == ((4, b"abc"),) and h.consumed == 22


def test_v2_every_tlv(proxy):
    tlvs = [(0x01, b"smtp"), (0x02, "mäil.example".encode()), (0x05, b"u" * 128), (0x30, b"blue"),
            PY.ssl_tlv(0x07, 1, version="TLSv1.3", cn="client", cipher="TLS_AES_128_GCM_SHA256",
                       sig_alg="SHA256", key_alg="RSA2048", extra=[(0x2F, b"future")]),
            (0x04, b"\0" * 5), (0xE0, b"app"), (0xF1, b"exp"), (0xFF, b""), (0x21, b"top-level 0x21"), (0x06, b"?")]
    data = PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 1, 2, tlvs=tlvs, crc=True)
    h = proxy.parse(data)
    assert h.consumed == len(data)
    assert [t for t, _ in h.tlvs] == [t for t, _ in tlvs] + [0x03]
    assert (h.alpn, h.authority, h.unique_id, h.netns) == (b"smtp", "mäil.example", b"u" * 128, "blue")
    assert h.crc32c == PY.crc32c(data[:-4] + b"\0" * 4) == int.from_bytes(data[-4:], "big")
    assert (h.ssl, h.ssl_client, h.tls, h.ssl_verify) == (True, 7, True, 1)
    assert (h.ssl_version, h.ssl_cn, h.ssl_cipher, h.ssl_sig_alg, h.ssl_key_alg) == (
        "TLSv1.3", "client", "TLS_AES_128_GCM_SHA256", "SHA256", "RSA2048")


def test_v2_ssl_without_tls_bit(proxy):
    h = proxy.parse(PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 1, 2, tlvs=[PY.ssl_tlv(0, 0)]))
    assert h.ssl and not h.tls and h.ssl_verify == 0 and h.ssl_version is None


def _v2(cmd=0x21, fam=0x11, body=b"\xc0\0\2\1\xc6\x33\x64\7\0\1\0\2", length=None):
    return SIG + bytes([cmd, fam]) + (len(body) if length is None else length).to_bytes(2, "big") + body


ADDR4 = b"\xc0\0\2\1\xc6\x33\x64\7\0\1\0\2"


@pytest.mark.parametrize("data,why", [
    (b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x00", "bad-signature"),
    (b"\r\n\r\n\x01", "bad-signature"),
    (b"\r\r", "bad-signature"),
    (_v2(cmd=0x11), "bad-version"),
    (_v2(cmd=0x31), "bad-version"),
    (_v2(cmd=0x22), "bad-command"),
    (_v2(cmd=0x2F), "bad-command"),
    (_v2(fam=0x41), "bad-family"),  # family nibble 4 (a lenient parser maps it to "unknown")
    (_v2(fam=0x12), "bad-family"),  # UDP over IPv4
    (_v2(fam=0x22, body=b"\0" * 36), "bad-family"),
    (_v2(fam=0x32, body=b"\0" * 216), "bad-family"),
    (_v2(fam=0x13), "bad-family"),
    (_v2(fam=0x10), "bad-family"),
    (_v2(fam=0x01, body=b""), "bad-family"),
    (_v2(fam=0x11, body=ADDR4[:11]), "bad-address"),
    (_v2(fam=0x21, body=b"\0" * 35), "bad-address"),
    (_v2(fam=0x31, body=b"\0" * 215), "bad-address"),
    (_v2(body=ADDR4 + b"\x04\x00"), "bad-tlv"),  # TLV header cut short
    (_v2(body=ADDR4 + b"\x04\x00\x05abcd"), "bad-tlv"),  # value overruns len
    (_v2(body=ADDR4 + b"\x01\x00\x01a\x01\x00\x01b"), "bad-tlv"),  # ALPN twice
    (_v2(body=ADDR4 + b"\x02\x00\x02\xc3\x28"), "bad-tlv"),  # AUTHORITY not UTF-8
    (_v2(body=ADDR4 + b"\x03\x00\x03abc"), "bad-tlv"),  # CRC32C of 3 bytes
    (_v2(body=ADDR4 + b"\x05\x00\x81" + b"u" * 129), "bad-tlv"),  # UNIQUE_ID over 128
    (_v2(body=ADDR4 + b"\x20\x00\x04\x01\0\0\0"), "bad-tlv"),  # SSL shorter than 5
    (_v2(body=ADDR4 + b"\x20\x00\x08\x01\0\0\0\0\x21\x00\x05"), "bad-tlv"),  # sub-TLV overruns SSL
    (_v2(body=ADDR4 + b"\x20\x00\x0e\x01\0\0\0\0\x21\x00\x01a\x21\x00\x01b"), "bad-tlv"),  # sub twice
    (_v2(body=ADDR4 + b"\x03\x00\x04\0\0\0\0"), "bad-crc"),
])
def test_v2_rejected(proxy, data, why):
    assert reason(proxy, data) == why


def test_v2_crc_mismatch_and_position(proxy):
    good = PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 1, 2, tlvs=[(0x02, b"a.example")], crc=True)
    assert proxy.parse(good).crc32c is not None
    for i in range(len(good)):  # a flipped bit anywhere breaks the CRC (or the framing before it)
        bad = bytearray(good)
        bad[i] ^= 0x01
        assert outcome(proxy, bytes(bad))[0] != "ok", i
    # the CRC field need not be last: it covers the whole header either way
    body = ADDR4 + b"\x03\x00\x04\0\0\0\0" + b"\x04\x00\x02zz"
    raw = bytearray(_v2(body=body))
    crc = PY.crc32c(bytes(raw))
    raw[31:35] = crc.to_bytes(4, "big")
    assert proxy.parse(bytes(raw)).crc32c == crc


def test_v2_authority_checked_after_crc(proxy):
    """AUTHORITY's UTF-8 is judged after the walk, so both twins report the CRC first."""
    body = ADDR4 + b"\x02\x00\x01\xff" + b"\x03\x00\x04\0\0\0\0"
    assert reason(proxy, _v2(body=body)) == "bad-crc"


def test_v2_length_is_honoured(proxy):
    data = PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 1, 2, tlvs=[(0x04, b"x" * 600)])
    assert proxy.parse(data + b"next").consumed == len(data) == 16 + 12 + 603
    assert proxy.parse(data[:-1]) is None


def test_crc32c_vector(proxy):
    assert proxy.crc32c(b"123456789") == 0xE3069283
    assert proxy.crc32c(b"") == 0
    assert proxy.crc32c(b"6789", proxy.crc32c(b"12345")) == 0xE3069283
    assert proxy.crc32c(bytes(range(256)) * 3) == PY.crc32c(bytes(range(256)) * 3)


# -- incremental input, detection, buffer types --------------------------------------------------

@pytest.mark.parametrize("data", [
    b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n", b"PROXY UNKNOWN\r\n",
    PY.build_v2("PROXY", "2001:db8::1", "2001:db8::25", 1, 2, tlvs=[PY.ssl_tlv(version="TLSv1.2")], crc=True),
    PY.build_v2("LOCAL"),
])
def test_byte_at_a_time(proxy, data):
    for i in range(len(data)):
        assert proxy.parse(data[:i]) is None, i
    assert proxy.parse(data).consumed == len(data)


def test_buffer_types(proxy):
    data = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\nEHLO"
    for buf in (bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        assert proxy.parse(buf).consumed == 44
    v2 = PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 1, 2, tlvs=[(1, b"h2")])
    buf = bytearray(v2)
    h = proxy.parse(buf)
    buf[:] = b"\0" * len(buf)  # the receive buffer is reused: the header must not depend on it
    assert h.alpn == b"h2" and h.source == "192.0.2.1"


@pytest.mark.parametrize("data,want", [
    (b"", None), (b"P", None), (b"PROX", None), (b"PROXY", None), (b"PROXY ", True),
    (b"PROXY TCP4 1.2.3.4", True), (b"PROXYZ", False), (b"POST / HTTP/1.1", False), (b"EHLO", False),
    (b"\r", None), (b"\r\n", None), (SIG[:11], None), (SIG, True), (SIG + b"\x21", True),
    (SIG[:11] + b"X", False), (b"\r\n\r\nQUIT", False), (b"\x16\x03\x01", False), (b"a1 LOGIN", False),
])
def test_looks_like_proxy(proxy, data, want):
    assert proxy.looks_like_proxy(data) is want
    assert proxy.looks_like_proxy(bytearray(data)) is want


# -- hypothesis ------------------------------------------------------------------------------------

_KNOWN = {0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x30}
_unknown_type = st.integers(0, 255).filter(lambda t: t not in _KNOWN)


@st.composite
def headers(draw):
    """A valid header built by the builder, and what parsing it must give back."""
    version = draw(st.sampled_from([1, 2]))
    family = draw(st.sampled_from(["INET", "INET6", "UNSPEC"] + (["UNIX"] if version == 2 else [])))
    want = {"version": version, "family": family}
    if family in ("INET", "INET6"):
        n = 4 if family == "INET" else 16
        src, dst = draw(st.binary(min_size=n, max_size=n)), draw(st.binary(min_size=n, max_size=n))
        sp, dp = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
        want.update(src_addr=src, dst_addr=dst, src_port=sp, dst_port=dp)
    else:
        src = dst = None
        sp = dp = 0
    if version == 1:
        return PY.build_v1(src, dst, sp, dp), want
    command = draw(st.sampled_from(["PROXY", "LOCAL"]))
    want["command"] = command
    if family == "UNIX":
        src, dst = draw(st.binary(max_size=108).map(lambda b: b.replace(b"\0", b"/"))), b"/run/d"
        want.update(src_path=src, dst_path=dst)
    tlvs = []
    if draw(st.booleans()):
        tlvs.append((0x01, draw(st.binary(max_size=20))))
        want["alpn"] = tlvs[-1][1]
    if draw(st.booleans()):
        name = draw(st.text(max_size=30))
        tlvs.append((0x02, name.encode("utf-8", "surrogatepass")))
        want["authority"] = name
    if draw(st.booleans()):
        tlvs.append((0x05, draw(st.binary(max_size=128))))
        want["unique_id"] = tlvs[-1][1]
    if draw(st.booleans()):
        client, verify = draw(st.integers(0, 255)), draw(st.integers(0, 2**32 - 1))
        version_s = draw(st.one_of(st.none(), st.sampled_from(["TLSv1.2", "TLSv1.3"])))
        cipher = draw(st.one_of(st.none(), st.text(alphabet="ABCDEFGHIJ_0123456789", max_size=40)))
        tlvs.append(PY.ssl_tlv(client, verify, version=version_s, cipher=cipher))
        want.update(ssl=True, ssl_client=client, ssl_verify=verify, ssl_version=version_s, ssl_cipher=cipher,
                    tls=bool(client & 1))
    for _ in range(draw(st.integers(0, 3))):
        tlvs.append((draw(st.sampled_from([0x04]) | _unknown_type), draw(st.binary(max_size=40))))
    draw(st.randoms()).shuffle(tlvs)
    crc = draw(st.booleans())
    data = PY.build_v2(command, src, dst, sp, dp, family=family if family == "UNIX" else None, tlvs=tlvs,
                       crc=crc)
    want["tlvs"] = tuple(tlvs) + (((0x03, data[-4:]),) if crc else ())
    return data, want


@settings(max_examples=300, deadline=None)
@given(headers(), st.binary(max_size=20))
def test_builder_round_trip_on_both_twins(built, trailing):
    data, want = built
    for mod in (C, PY):
        h = mod.parse(data + trailing)
        assert h.consumed == len(data)
        got = h.as_dict()
        assert {k: got[k] for k in want} == want
        assert h.proxied == (want.get("command", "PROXY") == "PROXY" and want["family"] in ("INET", "INET6"))
    assert C.parse(data).as_dict() == PY.parse(data).as_dict()


@settings(max_examples=150, deadline=None)
@given(headers())
def test_byte_at_a_time_random_headers(built):
    data, _ = built
    for i in range(len(data)):
        assert C.parse(data[:i]) is None and PY.parse(data[:i]) is None
    assert C.parse(data).consumed == PY.parse(data).consumed == len(data)


_seeds = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", SIG,
                          SIG + b"\x21\x11", SIG + b"\x20\x00", SIG + b"\x21\x21\x00"])


@settings(max_examples=1500, deadline=None)
@given(_seeds, st.binary(max_size=200))
@example(b"PROXY TCP6 ", b"::ffff:1.2.3.4 ::1 1 2\r\n")
@example(SIG + b"\x21\x11", b"\x00\x0c" + ADDR4)
def test_random_bytes_only_raise_proxy_error_and_twins_agree(seed, tail):
    data = seed + tail
    got = outcome(C, data)
    assert got == outcome(PY, data)
    if got[0] == "error":
        assert got[1] in PARSER_REASONS
    if got[0] == "ok":
        assert 0 < got[1]["consumed"] <= len(data)
    assert C.looks_like_proxy(data) is PY.looks_like_proxy(data)


def _v6_forms(packed):
    """Several spellings of one IPv6 address: compressed, exploded, upper case, dotted tail."""
    a = ipaddress.IPv6Address(packed)
    tail = f"{':'.join(a.exploded.split(':')[:6])}:{ipaddress.IPv4Address(packed[12:])}"
    return [a.compressed, a.exploded, a.exploded.upper(), tail, a.compressed.replace("::", ":0:", 1)]


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789abcdefABCDEF:.", max_size=46),
                 st.binary(min_size=16, max_size=16).flatmap(lambda b: st.sampled_from(_v6_forms(b))),
                 st.sampled_from(["::", "::1", "1::", ":::", "1:::2", "::ffff:1.2.3.4", "::1.2.3.4", "1::2.3.4.5.6",
                                  "::01.2.3.4", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9",
                                  "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "12345::", "1.2.3.4", ":1::",
                                  "1:2:3:4:5:6:7:8::", "::1.2.3", "::1.2.3.4.", "::1..2.3", "a::b.1.2.3"])))
@example("1:2:3:4:5:6:7:8")
def test_tcp6_address_grammar_matches_inet_pton(text):
    """The compiled parser spells out inet_pton's IPv6 grammar; the twin calls inet_pton."""
    data = f"PROXY TCP6 {text} ::1 1 2\r\n".encode()
    got = outcome(C, data)
    assert got == outcome(PY, data)
    try:
        want = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        want = None
    if got[0] == "ok":
        assert got[1]["src_addr"] == want
    elif len(data) <= 107 and text:
        assert want is None or len(text) > 45


@settings(max_examples=400, deadline=None)
@given(headers(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 10_000))
def test_mutated_headers_twins_agree(built, flips, cut):
    data = bytearray(built[0])
    for pos, val in flips:
        data[pos % len(data)] = val
    data = bytes(data[: max(1, cut % (len(data) + 1))])
    assert outcome(C, data) == outcome(PY, data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_every_prefix_agrees(data):
    """Incremental feeding: each prefix gives the same outcome in both twins, and once a prefix is
    accepted or rejected, every longer one gives the same verdict."""
    first = None
    for i in range(1, len(data) + 1):
        got = outcome(C, data[:i])
        assert got == outcome(PY, data[:i])
        if first is None and got[0] != "need":
            first = got
        elif first is not None:
            assert got == first


# -- a real sender: haproxy ------------------------------------------------------------------------

HAPROXY = shutil.which("haproxy")


def _free_port(host):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory):
    """haproxy in front of two loopback listening sockets of ours: one receives proxied client
    connections, the other its health checks. Frontends cover send-proxy (v1), send-proxy-v2,
    send-proxy-v2-ssl-cn with every proxy-v2-option we parse, and IPv6 when ::1 exists."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed")
    tmp = tmp_path_factory.mktemp("haproxy")
    key, crt = tmp / "key.pem", tmp / "crt.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-subj", "/CN=mail.example.test", "-days", "2"], check=True, capture_output=True)
    (tmp / "both.pem").write_bytes(crt.read_bytes() + key.read_bytes())
    server = socket.create_server(("127.0.0.1", 0))
    checks = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    checks.settimeout(5)
    sp, cp = server.getsockname()[1], checks.getsockname()[1]
    fronts = {"v1": ("127.0.0.1", "send-proxy", ""), "v2": ("127.0.0.1", "send-proxy-v2", ""),
              "v2ssl": ("127.0.0.1", "send-proxy-v2-ssl-cn proxy-v2-options "
                        "crc32c,unique-id,authority,ssl-cipher,cert-sig,cert-key",
                        f" ssl crt {tmp / 'both.pem'} alpn imap,smtp")}
    if _ipv6_loopback():
        fronts.update(v1_6=("::1", "send-proxy", ""), v2_6=("::1", "send-proxy-v2", ""))
    ports = {name: _free_port(host) for name, (host, _, _) in fronts.items()}
    cfg = ["global", "    maxconn 64", "defaults", "    mode tcp", "    timeout connect 2s",
           "    timeout client 5s", "    timeout server 5s"]
    for name, (host, send, bind_opts) in fronts.items():
        cfg += [f"frontend f_{name}", f"    bind {'ipv6@' if ':' in host else ''}{host}:{ports[name]}{bind_opts}",
                "    unique-id-format %ci_%cp", f"    default_backend b_{name}",
                f"backend b_{name}", f"    server s 127.0.0.1:{sp} {send}"]
    cfg += ["backend b_checks", f"    server s 127.0.0.1:{cp} send-proxy-v2 check check-send-proxy inter 200ms"]
    (tmp / "haproxy.cfg").write_text("\n".join(cfg) + "\n")
    proc = subprocess.Popen([HAPROXY, "-f", str(tmp / "haproxy.cfg"), "-db"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        for name, (host, _, _) in fronts.items():
            while True:
                try:
                    socket.create_connection((host, ports[name]), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        out = proc.stdout.read() if proc.poll() is not None else b""
                        pytest.fail(f"haproxy did not start: {out!r}")
                    time.sleep(0.05)
        # the probe connections above reached our server too: drain them
        server.settimeout(0.3)
        try:
            while True:
                server.accept()[0].close()
        except OSError:
            pass
        server.settimeout(5)
        yield {"server": server, "checks": checks, "fronts": fronts, "ports": ports}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.close()
        checks.close()


def _through(hap, name, payload=b"EHLO client.example\r\n"):
    """Connect to frontend ``name``, send ``payload``; return (client socket address, bytes our
    server received up to and including the payload)."""
    host = hap["fronts"][name][0]
    client = socket.create_connection((host, hap["ports"][name]), timeout=5)
    try:
        if name == "v2ssl":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["smtp"])
            client = ctx.wrap_socket(client, server_hostname="mail.example.test")
        client.sendall(payload)
        conn, _ = hap["server"].accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while not data.endswith(payload):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        return client.getsockname(), data
    finally:
        client.close()


@pytest.mark.parametrize("name", ["v1", "v2", "v2ssl", "v1_6", "v2_6"])
def test_haproxy_headers_parse_in_both_twins(haproxy, name):
    if name not in haproxy["fronts"]:
        pytest.skip("no IPv6 loopback")
    payload = b"EHLO client.example\r\n"
    (chost, cport, *_), data = _through(haproxy, name, payload)
    host = haproxy["fronts"][name][0]
    headers = [C.parse(data), PY.parse(data)]
    assert headers[0].as_dict() == headers[1].as_dict()
    h = headers[0]
    assert data[h.consumed:] == payload
    assert h.version == (1 if name.startswith("v1") else 2) and h.command == "PROXY" and h.proxied
    assert (h.source, h.src_port) == (chost, cport)
    assert (h.destination, h.dst_port) == (host, haproxy["ports"][name])
    if name == "v2ssl":
        assert h.tls and h.ssl_verify == 0 and h.ssl_version.startswith("TLSv1")
        assert h.ssl_cipher and h.ssl_sig_alg and h.ssl_key_alg
        assert h.authority == "mail.example.test" and h.alpn == b"smtp"
        assert h.unique_id == f"{chost}_{cport}".encode() and h.crc32c is not None
        # the CRC is haproxy's: flip one byte inside the SNI and it no longer verifies
        i = data.index(b"mail.example.test")
        bad = data[:i] + b"n" + data[i + 1:]
        assert reason(C, bad) == reason(PY, bad) == "bad-crc"
    else:
        assert h.tlvs == () and not h.tls


def test_haproxy_health_check_is_local(haproxy):
    conn, _ = haproxy["checks"].accept()
    with conn:
        conn.settimeout(5)
        data = b""
        while True:
            h = C.parse(data)
            if h is not None:
                break
            chunk = conn.recv(4096)
            assert chunk, data
            data += chunk
    assert PY.parse(data).as_dict() == h.as_dict()
    assert h.version == 2 and h.command == "LOCAL" and not h.proxied
