"""Sans-IO protocol cores: no sockets. Each dialogue is replayed whole, byte by byte and in random
chunks, and must give the same replies every time (STYLE.md "Wire corpora")."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.protocols import NEED_DATA, Send, SessionContext, StartTls
from stalwart.protocols.http import HttpSession
from stalwart.protocols.imap import ImapSession
from stalwart.protocols.managesieve import ManageSieveSession
from stalwart.protocols.pop3 import Pop3Session
from stalwart.protocols.smtp import SmtpSession


def ctx(**kw):
    base = dict(hostname="mx.example.test", listener="l", protocol="smtp", remote_ip="192.0.2.1",
                remote_port=4000, local_port=25, tls_available=True)
    base.update(kw)
    return SessionContext(**base)


def drive(core, chunks):
    out = []
    for chunk in chunks:
        core.receive_data(chunk)
        while (ev := core.next_event()) is not NEED_DATA:
            out.append(ev)
    return out


def replies(events):
    return b"".join(e.data if isinstance(e, Send) else e.reply for e in events)


def chunkings(data: bytes, seed: int = 7):
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    rnd = random.Random(seed)
    for _ in range(5):
        parts, i = [], 0
        while i < len(data):
            n = rnd.randint(1, 9)
            parts.append(data[i:i + n])
            i += n
        yield parts


CORPORA = [
    (lambda: SmtpSession(ctx()),
     b"EHLO client.test\r\nNOOP\r\nRSET\r\nFOO bar\r\nMAIL FROM:<a@b>\r\nHELO x\r\nQUIT\r\n",
     b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
     b"250-SMTPUTF8\r\n250 STARTTLS\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n500 5.5.1 Invalid command.\r\n"
     b"250 2.1.0 OK\r\n250 mx.example.test says hello\r\n221 2.0.0 Bye.\r\n"),
    (lambda: SmtpSession(ctx(), lmtp=True),
     b"EHLO x\r\nLHLO client.test\r\nQUIT\r\n",
     b"500 5.5.1 Invalid command.\r\n250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n"
     b"250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n221 2.0.0 Bye.\r\n"),
    (lambda: ImapSession(ctx(tls_available=False)),
     b"a1 CAPABILITY\r\na2 NOOP\r\na3 LOGIN u p\r\n* bad\r\na4 FROB\r\na5 LOGOUT\r\n",
     b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE UNSELECT LOGINDISABLED\r\na1 OK CAPABILITY completed.\r\n"
     b"a2 OK NOOP completed.\r\na3 NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS.\r\n* BAD Invalid tag.\r\n"
     b"a4 BAD Unknown command.\r\n* BYE Stalwart IMAP4rev1 bids you farewell.\r\na5 OK LOGOUT completed.\r\n"),
    (lambda: Pop3Session(ctx()),
     b"CAPA\r\nNOOP\r\nUSER x\r\nXYZZY\r\nQUIT\r\n",
     b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\n"
     b"IMPLEMENTATION Stalwart\r\n.\r\n+OK\r\n"
     b"-ERR [AUTH] Plain-text authentication is disabled, use STLS first.\r\n-ERR Unknown command.\r\n"
     b"+OK Stalwart POP3 bids you farewell.\r\n"),
    (lambda: ManageSieveSession(ctx(tls_available=False)),
     b"NOOP\r\nPUTSCRIPT x\r\nLOGOUT\r\n",
     b'OK "NOOP completed."\r\nNO "Not authenticated."\r\nOK "Logout complete."\r\n'),
]


@pytest.mark.parametrize("make,wire,expected", CORPORA)
def test_corpus_any_chunking(make, wire, expected):
    for chunks in chunkings(wire):
        core = make()
        events = drive(core, chunks)
        assert replies(events) == expected
        assert events[-1].close and core.closed


def test_bytes_after_quit_are_ignored():
    core = SmtpSession(ctx())
    events = drive(core, [b"QUIT\r\nNOOP\r\n"])
    assert replies(events) == b"221 2.0.0 Bye.\r\n"


@pytest.mark.parametrize("make,cmd,reply", [
    (lambda: SmtpSession(ctx()), b"STARTTLS\r\n", b"220 2.0.0 Ready to start TLS.\r\n"),
    (lambda: ImapSession(ctx()), b"t STARTTLS\r\n", b"t OK Begin TLS negotiation now.\r\n"),
    (lambda: Pop3Session(ctx()), b"STLS\r\n", b"+OK Begin TLS negotiation now.\r\n"),
    (lambda: ManageSieveSession(ctx()), b"STARTTLS\r\n", b'OK "Begin TLS negotiation now."\r\n'),
])
def test_starttls_discards_pipelined_plaintext(make, cmd, reply):
    """CVE-2011-0411: commands pipelined after STARTTLS must never run inside the TLS session."""
    core = make()
    injected = b"QUIT\r\n" if not isinstance(core, ImapSession) else b"x LOGOUT\r\n"
    events = drive(core, [cmd + injected])
    assert len(events) == 1 and isinstance(events[0], StartTls) and events[0].reply == reply
    core.receive_data(b"MORE PLAINTEXT\r\n")  # still before the handshake: dropped
    assert core.next_event() is NEED_DATA
    core.tls_started("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    if isinstance(core, ManageSieveSession):  # RFC 5804 §2.2: capabilities again after the handshake
        ev = core.next_event()
        assert isinstance(ev, Send) and ev.data.endswith(b'OK "TLS negotiation successful."\r\n')
        assert b"STARTTLS" not in ev.data
    assert core.next_event() is NEED_DATA and not core.closed


def test_starttls_refused_without_tls_and_when_active():
    assert replies(drive(SmtpSession(ctx(tls_available=False)), [b"STARTTLS\r\n"])) == b"502 5.7.0 TLS not available.\r\n"
    assert replies(drive(SmtpSession(ctx(tls_active=True)), [b"STARTTLS\r\n"])) == b"504 5.7.4 Already in TLS mode.\r\n"
    core = SmtpSession(ctx(tls_active=True))
    assert b"STARTTLS" not in replies(drive(core, [b"EHLO x\r\n"]))


def test_overlong_line_answered_once_and_memory_bounded():
    core = SmtpSession(ctx())
    flood = [b"A" * 1000 for _ in range(100)]
    events = drive(core, flood + [b"\r\nNOOP\r\n"])
    assert replies(events) == b"500 5.5.2 Line too long.\r\n250 2.0.0 OK\r\n"
    assert len(core._buf) < 1024


def test_farewell_and_timeout_lines():
    s = SmtpSession(ctx())
    assert s.shutdown_reply() == b"421 4.3.0 mx.example.test Server shutting down.\r\n"
    assert s.timeout_reply() == b"421 4.4.2 mx.example.test Disconnecting inactive client.\r\n"
    assert Pop3Session(ctx()).shutdown_reply() == b"-ERR Server shutting down.\r\n"
    assert ImapSession(ctx()).timeout_reply() == b"* BYE Connection timed out.\r\n"
    assert ManageSieveSession(ctx()).shutdown_reply() == b'BYE "Server shutting down."\r\n'


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([SmtpSession, ImapSession, Pop3Session, ManageSieveSession, HttpSession]))
def test_random_bytes_never_crash(data, cls):
    core = cls(ctx())
    for i in range(0, len(data), 97):
        core.receive_data(data[i:i + 97])
        for _ in range(10000):
            if core.next_event() is NEED_DATA:
                break
        else:
            pytest.fail("core produced events forever")


def test_http_keepalive_pipelining_head_and_errors():
    core = HttpSession(ctx(protocol="http"))
    wire = (b"GET /healthz/live HTTP/1.1\r\nHost: a\r\n\r\n"
            b"HEAD /healthz/ready HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /healthz/live HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
            b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    for chunks in chunkings(wire):
        core = HttpSession(ctx(protocol="http"))
        out = replies(drive(core, chunks))
        assert out.count(b"HTTP/1.1 200 OK") == 2
        assert b"405 Method Not Allowed" in out and b"Allow: GET, HEAD" in out
        assert b"404 Not Found" in out and out.endswith(b"does not exist on this server.\"}")
        assert not core.closed


def test_http_malformed_request_is_400_and_close():
    core = HttpSession(ctx(protocol="http"))
    events = drive(core, [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"])
    assert b"400 Bad Request" in replies(events) and events[-1].close


def test_http_headers_too_large_is_431():
    core = HttpSession(ctx(protocol="http"))
    events = drive(core, [b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000])
    assert b"431 " in replies(events) and events[-1].close


def test_http_body_too_large_is_413():
    core = HttpSession(ctx(protocol="http"))
    events = drive(core, [b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n"])
    assert b"413 " in replies(events) and events[-1].close


def test_http_draining_adds_connection_close():
    core = HttpSession(ctx(protocol="http"))
    core.draining = True
    events = drive(core, [b"GET /healthz/live HTTP/1.1\r\nHost: a\r\n\r\n"])
    assert b"Connection: close" in replies(events) and events[-1].close
