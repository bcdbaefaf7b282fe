"""ClientHello peek kernel (tls.md §2, §7.5; RFC 8446 §4.1.2, RFC 6066 §3, RFC 7301 §3.1): real
ClientHellos from Python's ``ssl`` and from ``openssl s_client``, every error reason and how early it
is decided, incremental and re-fragmented input, the SNI rules, ``classify``, and hypothesis
properties (random and mutated bytes raise only ``ClientHelloError``; the twins agree; an error never
turns into something else when more bytes arrive)."""
import http.client
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certgen import make_cert
from kernels import kernel_fixture
from stalwart._fast import load
from stalwart._fast.clienthello_errors import REASONS, ClientHelloError
from stalwart.errors import RemoteProtocolError, StalwartError

clienthello = kernel_fixture("clienthello")
PY = load("clienthello", compiled=False)
C = load("clienthello", compiled=True)

TLS13, TLS12 = 0x0304, 0x0303


def python_hello(sni="mail.example.com", alpn=None, maximum=None) -> bytes:
    """The ClientHello Python's ssl writes, through a MemoryBIO: no network involved."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


CORPUS = {
    "tls13-sni": python_hello(),
    "tls13-no-sni": python_hello(None),
    "tls13-alpn": python_hello("www.example.org", ["h2", "http/1.1"]),
    "tls13-acme": python_hello("mail.example.com", ["acme-tls/1"]),
    "tls12-only": python_hello("mx.example.net", maximum=ssl.TLSVersion.TLSv1_2),
    "tls12-only-alpn": python_hello(None, ["acme-tls/1"], maximum=ssl.TLSVersion.TLSv1_2),
    "built-fragmented": PY.build("frag.example", ["acme-tls/1"], fragment=7),
}


def outcome(mod, data):
    """What a peek makes of ``data``, in a form both twins can be compared on."""
    try:
        h = mod.peek(data)
    except ClientHelloError as exc:
        assert exc.reason in REASONS
        return ("error", exc.reason)
    return ("need", None) if h is None else ("ok", h.as_dict())


def reason(mod, data):
    with pytest.raises(ClientHelloError) as exc:
        mod.peek(data)
    return exc.value.reason


def records(message: bytes, fragment=16384, **kw) -> bytes:
    return PY.to_records(message, fragment, **kw)


def message(exts=(), **kw) -> bytes:
    return PY.client_hello_message(exts, **kw)


def hello_with(*exts, **kw) -> bytes:
    return records(message(list(exts), **kw))


def test_compiled_kernel_is_really_compiled():
    assert C.__file__.endswith(".so")
    assert C.ClientHelloError is PY.ClientHelloError is ClientHelloError
    assert issubclass(ClientHelloError, RemoteProtocolError) and issubclass(ClientHelloError, StalwartError)
    err = ClientHelloError("malformed")
    assert (err.reason, err.reply, err.close) == ("malformed", b"", True)
    assert C.MAX_HELLO_LENGTH == PY.MAX_HELLO_LENGTH == 65536 and C.MAX_RECORDS == PY.MAX_RECORDS == 32


# -- real ClientHellos ------------------------------------------------------------------------------

def test_python_tls13_hello(clienthello):
    h = clienthello.peek(CORPUS["tls13-sni"])
    assert (h.sni, h.alpn, h.legacy_version, h.records) == ("mail.example.com", (), TLS12, 1)
    assert TLS13 in h.supported_versions and 0x1301 in h.cipher_suites
    assert 0 in h.extensions
    assert 43 in h.extensions and 16 not in h.extensions


def test_python_hello_without_sni(clienthello):
    h = clienthello.peek(CORPUS["tls13-no-sni"])
    assert h.sni is None and 0 not in h.extensions


def test_python_hello_with_alpn(clienthello):
    assert clienthello.peek(CORPUS["tls13-alpn"]).alpn == (b"h2", b"http/1.1")
    h = clienthello.peek(CORPUS["tls13-acme"])
    assert h.alpn == (b"acme-tls/1",) and h.sni == "mail.example.com"


def test_python_tls12_only_hello(clienthello):
    h = clienthello.peek(CORPUS["tls12-only"])
    assert h.sni == "mx.example.net" and TLS13 not in h.supported_versions
    assert 0x1301 not in h.cipher_suites and 0xC02F in h.cipher_suites
    assert clienthello.peek(CORPUS["tls12-only-alpn"]).alpn == (b"acme-tls/1",)


def test_python_never_sends_an_ip_literal(clienthello):
    h = clienthello.peek(python_hello("192.0.2.1"))
    assert h.sni is None and 0 not in h.extensions


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_twins_agree(name):
    assert outcome(C, CORPUS[name]) == outcome(PY, CORPUS[name])
    assert outcome(C, CORPUS[name])[0] == "ok"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_byte_at_a_time(clienthello, name):
    data = CORPUS[name]
    for k in range(len(data)):
        assert clienthello.peek(data[:k]) is None, k
    assert clienthello.peek(data) is not None


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_buffer_types(clienthello, name):
    data = CORPUS[name]
    want = clienthello.peek(data).as_dict()
    assert clienthello.peek(bytearray(data)).as_dict() == want
    assert clienthello.peek(memoryview(data)).as_dict() == want
    buf = bytearray(data)
    h = clienthello.peek(buf)
    buf[:] = b"\0" * len(buf)  # a receive buffer reused after the peek must not change the result
    assert h.as_dict() == want


@pytest.mark.parametrize("fragment", [1, 2, 3, 5, 16, 100, 511, [4, 1000], [1, 3, 200]])
def test_refragmented_hello(clienthello, fragment):
    data = CORPUS["tls13-acme"]
    msg = bytearray()
    pos = 0
    while pos < len(data):  # the handshake message out of its records
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        msg += data[pos + 5:pos + 5 + n]
        pos += 5 + n
    split = records(bytes(msg), fragment)
    want = clienthello.peek(data).as_dict()
    if isinstance(fragment, int) and len(msg) > 32 * fragment:
        assert reason(clienthello, split) == "too-large"  # more than MAX_RECORDS records
        return
    got = clienthello.peek(split)
    want["records"] = got.records
    assert got.as_dict() == want and got.records > 1
    assert clienthello.peek(split[:-1]) is None


def test_records_past_the_hello_are_not_read(clienthello):
    data = CORPUS["tls13-sni"]
    ccs = b"\x14\x03\x03\x00\x01\x01"
    assert clienthello.peek(data + ccs + b"\x17\x03\x03\x00\x05hello").sni == "mail.example.com"
    assert clienthello.peek(data + b"garbage").sni == "mail.example.com"


def test_record_versions(clienthello):
    msg = message([PY.server_name_ext("a.example")])
    for version in (0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x03FF):  # RFC 5246 Appendix E.1: {03,XX}
        assert clienthello.peek(records(msg, version=version)).sni == "a.example"


def test_extensionless_tls12_hello(clienthello):
    h = clienthello.peek(records(message(None)))
    assert (h.sni, h.alpn, h.supported_versions, h.extensions) == (None, (), (), ())
    h = clienthello.peek(records(message(())))
    assert h.extensions == ()


def test_legacy_versions_accepted(clienthello):
    for v in (0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x7F00):  # the TLS layer answers them
        assert clienthello.peek(records(message(None, legacy_version=v))).legacy_version == v


def test_grease_and_psk_last(clienthello):
    grease = [(0x0A0A, b""), (0x1A1A, b"\x00")]
    h = clienthello.peek(hello_with(*grease, PY.versions_ext([0x7A7A, TLS13]), (41, b"\x00\x00")))
    assert h.extensions == (0x0A0A, 0x1A1A, 43, 41) and h.supported_versions == (0x7A7A, TLS13)


def test_many_distinct_extension_types(clienthello):
    types = range(100, 100 + 7 * 128, 7)  # past the short list of high types: the bitmap
    assert clienthello.peek(hello_with(*[(t, b"") for t in types])).extensions == tuple(types)
    dup = [(t, b"") for t in types[:100]] + [(types[50], b"")]
    assert reason(clienthello, hello_with(*dup)) == "malformed"
    assert reason(clienthello, hello_with(*[(t, b"") for t in range(64, 64 + 129)])) == "too-large"
    assert reason(clienthello, hello_with(*[(t, b"") for t in range(64, 64 + 129)])[:5 + 6000]) == "too-large"


# -- the peeked bytes, replayed whole, complete a real handshake -----------------------------------

@pytest.fixture(scope="module")
def server_context(tmp_path_factory):
    cert, key, _ = make_cert(["mail.example.com"])
    d = tmp_path_factory.mktemp("clienthello")
    (d / "cert.pem").write_text(cert)
    (d / "key.pem").write_text(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    ctx.set_alpn_protocols(["acme-tls/1", "http/1.1"])
    return ctx


def client_context(alpn=None, maximum=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def handshake_after_peek(mod, server_ctx, client_ctx, sni, session=None, chunk=1):
    """A client and a server over MemoryBIOs. The client's first flight reaches the peek in
    ``chunk``-byte reads, peeked at the hint as a driver would, then goes whole to the server."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    flight = c_out.read()
    buf, hello, want = b"", None, 1
    for k in range(0, len(flight), chunk):
        buf += flight[k:k + chunk]
        if len(buf) >= want:
            hello, want = mod.peek_with_hint(buf)
            if hello is not None:
                break
    assert hello is not None and buf == flight
    s_in.write(flight)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("server", server), ("client", client)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            c_in.write(s_out.read())
            s_in.write(c_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    return hello, client, server


def test_peeked_flight_completes_the_handshake(clienthello, server_context):
    hello, _, server = handshake_after_peek(clienthello, server_context, client_context(["acme-tls/1"]),
                                            "Mail.Example.com")
    assert (hello.sni, hello.alpn) == ("mail.example.com", (b"acme-tls/1",))
    assert server.selected_alpn_protocol() == "acme-tls/1" and server.version() == "TLSv1.3"
    hello, _, server = handshake_after_peek(clienthello, server_context,
                                            client_context(maximum=ssl.TLSVersion.TLSv1_2), None, chunk=7)
    assert hello.sni is None and server.version() == "TLSv1.2"


def test_resumption_hello_with_pre_shared_key_last(clienthello, server_context):
    ctx = client_context()
    _, client, _ = handshake_after_peek(clienthello, server_context, ctx, "mail.example.com")
    # TLS 1.3 tickets arrive after the handshake (the pump moved them): a read makes the client take them
    with pytest.raises(ssl.SSLWantReadError):
        client.read(1)
    assert client.session is not None and client.session.has_ticket
    hello, client2, _ = handshake_after_peek(clienthello, server_context, ctx, "mail.example.com",
                                             session=client.session)
    assert hello.extensions[-1] == 41 and 45 in hello.extensions  # pre_shared_key last, psk modes
    assert client2.session_reused


# -- peek_with_hint: when peeking again can answer differently ---------------------------------------

def hint_is_sound(mod, data: bytes) -> None:
    """For every prefix that needs more, every longer prefix shorter than the hint needs more too."""
    results = []
    for k in range(len(data) + 1):
        try:
            h, want = mod.peek_with_hint(data[:k])
            results.append(("need", want) if h is None else ("ok", 0))
        except ClientHelloError as exc:
            results.append((exc.reason, 0))
    for k, (kind, want) in enumerate(results):
        if kind == "need":
            assert want > k, (k, want)
            assert all(r[0] == "need" for r in results[k:want]), (data, k, want)


def driver_peeks(mod, data: bytes, chunk: int = 1) -> tuple:
    """How a driver would use the hint: a peek only once the buffer reached it."""
    buf = b""
    want = 1
    calls = 0
    for k in range(0, len(data), chunk):
        buf += data[k:k + chunk]
        if len(buf) < want:
            continue
        calls += 1
        h, want = mod.peek_with_hint(buf)
        if h is not None:
            return h, calls
    return None, calls


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hint_on_real_hellos(clienthello, name):
    hint_is_sound(clienthello, CORPUS[name])
    h, calls = driver_peeks(clienthello, CORPUS[name])
    assert h.as_dict() == clienthello.peek(CORPUS[name]).as_dict()
    assert calls < 40 + 5 * h.records  # a few per extension and record, not one per byte


def test_hint_bounds_a_dribbled_worst_case(clienthello):
    # 128 extensions of 400 bytes over 4 records: one byte per read costs a few hundred peeks
    data = hello_with(*[(t, bytes(400)) for t in range(200, 328)])
    assert len(data) > 50_000
    h, calls = driver_peeks(clienthello, data)
    assert h is not None and h.records == 4 and calls < 400
    assert clienthello.peek_with_hint(data)[1] == 0


def test_hint_examples(clienthello):
    assert clienthello.peek_with_hint(b"") == (None, 1)
    assert clienthello.peek_with_hint(b"\x16\x03") == (None, 3)
    assert clienthello.peek_with_hint(b"\x16\x03\x01\x02\x00") == (None, 6)
    assert clienthello.peek_with_hint(b"\x16\x03\x01\x02\x00\x01") == (None, 9)  # the length
    # past the handshake header: the legacy_version, then the session id length after the random
    assert clienthello.peek_with_hint(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc") == (None, 11)
    assert clienthello.peek_with_hint(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == (None, 44)
    with pytest.raises(ClientHelloError):
        clienthello.peek_with_hint(b"EHLO")


# -- errors and how early they are decided --------------------------------------------------------

VALID = message([PY.server_name_ext("a.example"), PY.alpn_ext([b"h2"]), PY.versions_ext([TLS13])])


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


BAD = [
    (b"EHLO mail.example.com\r\n", "not-tls"),
    (b"GET / HTTP/1.1\r\n", "not-tls"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "not-tls"),
    (b"\x80\x2e\x01\x03\x01", "not-tls"),  # SSL 2.0 ClientHello
    (b"\x15\x03\x03\x00\x02\x02\x28", "not-tls"),  # an alert record first
    (b"\x16\x02", "bad-record"),
    (b"\x16\x04\x01", "bad-record"),
    (b"\x16\x03\x01\x00\x00", "bad-record"),  # zero-length handshake fragment
    (b"\x16\x03\x01\x40\x01", "bad-record"),  # 2^14 + 1
    (records(VALID, 10)[:15] + b"\x17\x03\x01\x00\x0a", "bad-record"),  # interleaved record type
    (records(VALID, 10)[:15] + b"\x16\x02", "bad-record"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not-client-hello"),  # ServerHello
    (b"\x16\x03\x01\x00\x01\x00", "not-client-hello"),
    (b"\x16\x03\x01\x00\x04\x01\x01\x00\x01", "too-large"),  # 65537
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "too-large"),
    (records(VALID, 1)[:33 * 6], "too-large"),  # a 33rd record
    (records(message(None, legacy_version=0x0200)), "malformed"),
    (records(message(None, session_id=bytes(33))), "malformed"),
    (records(message(None, cipher_suites=())), "malformed"),
    (records(_patch(message(None, cipher_suites=(1,)), 4 + 2 + 32 + 1, b"\x00\x03")), "malformed"),
    (records(message(None, compression=b"")), "malformed"),
    (records(message(None, compression=b"\x01")), "malformed"),
    (records(message([(0, b"")])), "malformed"),  # empty server_name in a ClientHello
    (records(message([(7, b"")]) + b"\x00"), "malformed"),  # the record goes on past the message
    (hello_with((13, b""), (13, b"")), "malformed"),  # duplicate
    (hello_with((0x0A0A, b""), (0x0A0A, b"")), "malformed"),  # duplicate GREASE
    (hello_with((41, b"\x00\x00"), (43, b"\x02\x03\x04")), "malformed"),  # pre_shared_key not last
    (hello_with((16, b"\x00\x00")), "malformed"),  # empty ALPN list
    (hello_with((16, b"\x00\x02\x00\x00")), "malformed"),  # empty protocol name
    (hello_with((16, b"\x00\x03\x05h2x")), "malformed"),  # name overruns the list
    (hello_with((16, b"\x00\x04\x02h2")), "malformed"),  # list length overruns the extension
    (hello_with((43, b"\x03\x03\x04\x03")), "malformed"),  # odd versions length
    (hello_with((43, b"\x00")), "malformed"),
    (hello_with((43, b"\x04\x03\x04")), "malformed"),
    (hello_with((0, b"\x00\x00")), "malformed"),  # empty server_name_list
    (hello_with((0, b"\x00\x04\x01\x00\x01a")), "malformed"),  # name_type 1
    (hello_with((0, b"\x00\x03\x00\x00\x00")), "malformed"),  # empty HostName
    (hello_with((0, b"\x00\x08\x00\x00\x01a\x00\x00\x01b")), "malformed"),  # two host_names
    (hello_with((0, b"\x00\x05\x00\x00\x01a\x00")), "malformed"),  # bytes after the host_name
]


@pytest.mark.parametrize("data,why", BAD)
def test_rejected(clienthello, data, why):
    assert reason(clienthello, data) == why
    assert outcome(PY, data) == outcome(C, data)


def test_length_overruns(clienthello):
    body = message([PY.server_name_ext("a.example")])
    # the extension block length one too long, one too short
    at = len(body) - 14 - 2
    assert int.from_bytes(body[at:at + 2], "big") == 14
    assert reason(clienthello, records(_patch(body, at, b"\x00\x0f"))) == "malformed"
    assert reason(clienthello, records(_patch(body, at, b"\x00\x0d"))) == "malformed"
    # the extension length past the block
    assert reason(clienthello, records(_patch(body, at + 4, b"\x00\x0b"))) == "malformed"
    # the message length shorter than its fields: the suites overrun it
    short = _patch(body, 1, (40).to_bytes(3, "big"))[:44]
    assert reason(clienthello, records(short)) == "malformed"
    # the message ends inside the record: the record carries bytes past the ClientHello
    assert reason(clienthello, records(body + b"\x16")) == "malformed"


def test_errors_are_decided_early(clienthello):
    assert reason(clienthello, b"E") == "not-tls"
    assert reason(clienthello, b"\x16\x02") == "bad-record"
    assert reason(clienthello, b"\x16\x03\x01\x00\x00") == "bad-record"
    assert reason(clienthello, b"\x16\x03\x01\x02\x00\x02") == "not-client-hello"
    assert reason(clienthello, b"\x16\x03\x01\x02\x00\x01\x01\x00\x01") == "too-large"
    big_sid = records(message(None, session_id=bytes(33)))
    assert reason(clienthello, big_sid[:5 + 4 + 2 + 32 + 1]) == "malformed"  # at the session id length
    assert clienthello.peek(big_sid[:5 + 4 + 2 + 32]) is None
    # a bad SNI is decided once the server_name extension is in, long before the rest arrives
    data = hello_with(PY.server_name_ext(b"bad name"), (0xFF02, bytes(3000)))
    sni_end = data.index(b"bad name") + len(b"bad name")
    assert clienthello.peek(data[:sni_end - 1]) is None
    assert reason(clienthello, data[:sni_end]) == "malformed"


def test_bad_record_after_a_bad_message_reports_the_message(clienthello):
    # Stream order: the ClientHello breaks in the first record, before the bad second header.
    data = records(message(None, session_id=bytes(33)), 50)[:55] + b"\x17\x03\x01\x00\x05"
    assert reason(clienthello, data) == "malformed"
    data = records(VALID, 50)[:55] + b"\x17\x03\x01\x00\x05"
    assert reason(clienthello, data) == "bad-record"


# -- SNI (RFC 6066 §3) ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw,want", [
    (b"mail.example.com", "mail.example.com"),
    (b"MAIL.Example.COM", "mail.example.com"),
    (b"mail.example.com.", "mail.example.com"),  # one trailing dot dropped
    (b"localhost", "localhost"),
    (b"_acme-challenge.example.com", "_acme-challenge.example.com"),
    (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
    (b"a" * 63 + b".example", "a" * 63 + ".example"),
    (b".".join([b"a" * 63] * 3) + b"." + b"b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),  # 253
    (b"1.2.3", "1.2.3"),  # not an address: a (numeric) name
    (b"01.2.3.4", "01.2.3.4"),  # inet_pton refuses leading zeros
    (b"192.0.2.1", None),  # IP literals: as if there were no SNI (tls.md §4 step 1)
    (b"192.0.2.1.", None),
    (b"::1", None),
    (b"2001:db8::25", None),
    (b"::ffff:192.0.2.1", None),
])
def test_sni_accepted(clienthello, raw, want):
    assert clienthello.peek(hello_with(PY.server_name_ext(raw))).sni == want


@pytest.mark.parametrize("raw", [
    b".", b"..", b"a..b", b".a", b"a.b..", b"bad name", b"a\x00b", b"a\x00", b"*.example.com",
    "bücher.example".encode(), b"\xff", b"a" * 64 + b".example",
    b".".join([b"a" * 63] * 3) + b"." + b"b" * 62,  # 254
    b"fe80::1%eth0", b"[::1]", b"1:2:3:4:5:6:7:8:9", b"::1\x00", b"example.com:443", b"a/b", b"a@b",
])
def test_sni_rejected(clienthello, raw):
    assert reason(clienthello, hello_with(PY.server_name_ext(raw))) == "malformed"


# -- classify ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,want", [
    (b"EHLO mail.example.com\r\n", "plaintext-smtp"),
    (b"helo x\r\n", "plaintext-smtp"),
    (b"QUIT\r\n", "plaintext-smtp"),
    (b"starttls\n", "plaintext-smtp"),
    (b"MAIL FROM:<a@b>\r\n", "plaintext-smtp"),
    (b"EHLO", "unknown"),  # too early to tell
    (b"EHLOX y\r\n", "unknown"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "plaintext-http"),
    (b"POST /jmap HTTP/1.1\r\n", "plaintext-http"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "plaintext-http"),
    (b"OPTIONS * HTTP/1.1\r\n", "plaintext-http"),
    (b"get / HTTP/1.1\r\n", "unknown"),  # methods are case-sensitive
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "proxy-header"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c", "proxy-header"),
    (b"PROXY", "unknown"),
    (b"\x16\x03\x01\x02\x00\x01", "tls"),
    (b"\x16", "tls"),
    (b"\x15\x03\x03\x00\x02", "tls"),
    (b"\x80\x2e\x01\x03\x01\x00\x15", "tls"),  # SSL 2.0 ClientHello
    (b"\x16\x41", "unknown"),
    (b"", "unknown"),
    (b"\x00\x00\x00", "unknown"),
    (b"a001 CAPABILITY\r\n", "unknown"),
])
def test_classify(clienthello, data, want):
    assert clienthello.classify(data) == want
    assert clienthello.classify(bytearray(data)) == want


def test_classify_names_what_peek_refused(clienthello):
    for data in (b"EHLO x\r\n", b"GET / HTTP/1.0\r\n", b"PROXY UNKNOWN\r\n"):
        assert reason(clienthello, data) == "not-tls"
        assert clienthello.classify(data) != "tls"
    assert clienthello.classify(CORPUS["tls13-sni"]) == "tls"


def test_real_plaintext_http_client_is_named(clienthello):
    # What http.client sends to an implicit-TLS port it takes for plain HTTP (loopback, no reply).
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10)
        client = http.client.HTTPConnection("127.0.0.1", srv.getsockname()[1], timeout=5)
        try:
            client.request("GET", "/.well-known/acme-challenge/x")
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(5)
                data = conn.recv(4096)
        finally:
            client.close()
    assert reason(clienthello, data) == "not-tls"
    assert clienthello.classify(data) == "plaintext-http"


# -- openssl s_client -------------------------------------------------------------------------------

def openssl_hello(*args: str) -> bytes:
    """The ClientHello ``openssl s_client`` sends to a loopback socket of this test."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10)
        port = srv.getsockname()[1]
        proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(5)
                buf = b""
                deadline = time.monotonic() + 10
                while C.peek(buf) is None and time.monotonic() < deadline:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                return buf
        finally:
            proc.kill()
            proc.wait(timeout=10)


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@needs_openssl
@pytest.mark.parametrize("args,sni,alpn,tls13", [
    (("-servername", "Mx.Example.org"), "mx.example.org", (), True),
    (("-noservername",), None, (), True),
    (("-servername", "imap.example.org", "-alpn", "acme-tls/1"), "imap.example.org", (b"acme-tls/1",), True),
    (("-tls1_2", "-servername", "smtp.example.org", "-alpn", "h2,http/1.1"), "smtp.example.org",
     (b"h2", b"http/1.1"), False),
    (("-servername", "192.0.2.1"), None, (), True),
    (("-servername", "2001:db8::1"), None, (), True),
])
def test_openssl_s_client(clienthello, args, sni, alpn, tls13):
    data = openssl_hello(*args)
    h = clienthello.peek(data)
    assert (h.sni, h.alpn, TLS13 in h.supported_versions) == (sni, alpn, tls13)
    assert outcome(C, data) == outcome(PY, data)
    for k in range(len(data)):
        assert clienthello.peek(data[:k]) is None


@needs_openssl
def test_openssl_hello_over_several_records(clienthello):
    protocols = [f"proto-{i:02d}-" + "x" * 90 for i in range(12)] + ["acme-tls/1"]
    data = openssl_hello("-max_send_frag", "512", "-servername", "big.example", "-alpn", ",".join(protocols))
    h = clienthello.peek(data)
    assert h.records >= 3 and h.sni == "big.example"
    assert h.alpn == tuple(p.encode() for p in protocols)
    assert outcome(C, data) == outcome(PY, data)
    for k in range(len(data)):
        assert clienthello.peek(data[:k]) is None


# -- hypothesis ---------------------------------------------------------------------------------------

def check_prefixes(data: bytes, step: int = 1) -> None:
    """Twins agree on ``data`` and on its prefixes; a prefix is either need-more or already the final
    outcome: an error never changes as bytes arrive, and a hello once accepted stays the same. Both
    give the same hint, and no prefix shorter than a hint answers differently."""
    final = outcome(C, data)
    assert outcome(PY, data) == final, data
    hints = {}
    for k in range(0, len(data) + 1, step):
        got = outcome(C, data[:k])
        assert got == outcome(PY, data[:k]), (data, k)
        if got[0] != "need":
            assert got == final, (data, k)
        else:
            hints[k] = C.peek_with_hint(data[:k])[1]
            assert hints[k] == PY.peek_with_hint(data[:k])[1] > k, (data, k)
    for k, want in hints.items():
        for j in range(k, min(want, len(data) + 1), step):
            assert j in hints, (data, k, want, j)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
@example(b"")
@example(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03")
def test_random_bytes(data):
    check_prefixes(data)
    assert C.classify(data) == PY.classify(data)


@settings(max_examples=1500, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 0x03FF))
def test_random_bytes_behind_a_hello_header(body, legacy):
    # A record and handshake header around random bytes reach the field parsers.
    msg = b"\x01" + len(body).to_bytes(3, "big") + legacy.to_bytes(2, "big") + body
    check_prefixes(records(msg, 64))


@st.composite
def mutations(draw):
    data = bytearray(draw(st.sampled_from(sorted(CORPUS.values()))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 0xFF, 0x7F, 0x80, 0x20, 0x2E, 0x3A]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(mutations())
def test_mutated_real_hellos(data):
    check_prefixes(data, step=7)
    assert outcome(C, data) == outcome(C, bytearray(data))


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(_label, min_size=1, max_size=5).map(".".join),
       st.lists(st.binary(min_size=1, max_size=30), max_size=5),
       st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=6),
       st.one_of(st.integers(16, 600), st.lists(st.integers(16, 200), min_size=1, max_size=4)))
def test_built_hellos_round_trip(name, alpn, versions, fragment):
    data = PY.build(name, alpn, versions, fragment)
    try:
        ipaddress.IPv4Address(name)
        sni = None  # an IP literal
    except ValueError:
        sni = name.lower()
    for mod in (C, PY):
        h = mod.peek(data)
        assert (h.sni, h.alpn, h.supported_versions) == (sni, tuple(alpn), tuple(versions))
    assert outcome(C, data) == outcome(PY, data)
    assert C.peek(data[:-1]) is None


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.binary(min_size=1, max_size=70),
                 st.text(alphabet="0123456789abcdefABCDEF:.%", min_size=1, max_size=50).map(str.encode),
                 st.text(alphabet="0123456789.", min_size=1, max_size=18).map(str.encode)))
def test_sni_rules_agree(raw):
    assert outcome(C, hello_with(PY.server_name_ext(raw))) == outcome(PY, hello_with(PY.server_name_ext(raw)))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=24))
def test_classify_agrees(data):
    assert C.classify(data) == PY.classify(data) in PY.CLASSES
