"""POP3 core over a Maildir: authentication, maildrop commands, UPDATE at QUIT, limits (no sockets)."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailcore import chunkings, ctx, drive, names, record_events, replies, services

from stalwart.accounts.sasl import encode_plain
from stalwart.mailstore import MailStore
from stalwart.protocols.pop3 import Pop3Session, multiline


@pytest.fixture
def emitted(monkeypatch):
    return record_events(monkeypatch)


def pop3(tmp_path, **kw):
    return Pop3Session(ctx(protocol="pop3", **kw.pop("ctx", {"tls_active": True})), services=services(tmp_path), **kw)


def seed(tmp_path, *bodies):
    store = MailStore(str(tmp_path))
    for b in bodies:
        store.maildir("jane").deliver(b)
    return store


MSG1 = b"Subject: one\r\n\r\nfirst\r\n.hidden dot\r\n"
MSG2 = b"Subject: two\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n"


def test_session_any_chunking(tmp_path):
    wire = (b"USER jane\r\nPASS jane-secret\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\nTOP 2 1\r\nDELE 1\r\n"
            b"RETR 1\r\nSTAT\r\nRSET\r\nDELE 2\r\nQUIT\r\n")
    for i, chunks in enumerate(chunkings(wire)):
        d = tmp_path / str(i)
        seed(d, MSG1, MSG2)
        out = replies(drive(pop3(d), chunks))
        lines = out.split(b"\r\n")
        assert lines[0] == b"+OK" and lines[1] == b"+OK jane has 2 messages."
        assert lines[2] == f"+OK 2 {len(MSG1) + len(MSG2)}".encode()
        assert re.match(rb"\+OK\r\n1 \d+\r\n2 \d+\r\n\.\r\n\+OK 2 \d+\.2\r\n", out.split(b"\r\n", 3)[3])
        assert (f"+OK {len(MSG1)} octets\r\n".encode() + b"Subject: one\r\n\r\nfirst\r\n..hidden dot\r\n.\r\n") in out
        assert b"Subject: two\r\nX: y\r\n\r\nl1\r\n.\r\n" in out
        assert b"+OK Message 1 deleted.\r\n-ERR Message is deleted.\r\n" in out
        assert out.endswith(b"+OK 2 messages.\r\n+OK Message 2 deleted.\r\n+OK Stalwart POP3 bids you farewell.\r\n")
        _, _, left = MailStore(str(d)).maildir("jane").snapshot()
        assert [MailStore(str(d)).maildir("jane").read(m) for m in left] == [MSG1]


def test_auth_plain_and_login(tmp_path):
    seed(tmp_path, MSG1)
    plain = encode_plain("jane", "jane-secret").encode()
    out = replies(drive(pop3(tmp_path), [b"AUTH PLAIN " + plain + b"\r\nSTAT\r\n"]))
    assert out == b"+OK jane has 1 messages.\r\n+OK 1 " + str(len(MSG1)).encode() + b"\r\n"
    out = replies(drive(pop3(tmp_path), [b"AUTH\r\nAUTH LOGIN\r\nYm9i\r\nYm9iLXNlY3JldA==\r\n"]))
    assert out == b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n+OK bob has 0 messages.\r\n"


def test_no_credentials_in_clear(tmp_path):
    core = pop3(tmp_path, ctx={"tls_available": True})
    out = replies(drive(core, [b"CAPA\r\nUSER jane\r\nAUTH PLAIN\r\n"]))
    assert b"USER\r\n" not in out and b"SASL" not in out and b"STLS\r\n" in out
    assert out.endswith(b"-ERR [AUTH] Plain-text authentication is disabled, use STLS first.\r\n"
                        b"-ERR [AUTH] Authentication requires TLS, use STLS first.\r\n")
    out = replies(drive(pop3(tmp_path, ctx={}, allow_plain_auth=True), [b"CAPA\r\n"]))
    assert b"USER\r\nSASL PLAIN LOGIN\r\n" in out


def test_auth_failures_close_after_limit(tmp_path, emitted):
    core = pop3(tmp_path)
    out = replies(drive(core, [b"USER jane\r\nPASS nope\r\nUSER ghost\r\nPASS x\r\nUSER jane\r\nPASS y\r\n"]))
    assert out.endswith(b"-ERR [AUTH] Authentication failed.\r\n+OK\r\n"
                        b"-ERR [AUTH] Too many authentication failures.\r\n")
    assert core.closed and names(emitted) == ["auth.failed"] * 3


def test_state_errors_and_bad_commands(tmp_path, emitted):
    core = pop3(tmp_path, max_errors=3)
    out = replies(drive(core, [b"STAT\r\nPASS x\r\nXYZZY\r\n\xff\xfe\r\nFOO\r\n"]))
    assert out == (b"-ERR Not authenticated.\r\n-ERR USER first.\r\n-ERR Unknown command.\r\n"
                   b"-ERR Unknown command.\r\n-ERR Too many bad commands, closing connection.\r\n")
    assert names(emitted) == ["pop3.invalid-command"] * 3


def test_message_number_errors(tmp_path):
    seed(tmp_path, MSG1)
    wire = b"USER jane\r\nPASS jane-secret\r\nRETR 0\r\nRETR 2\r\nRETR x\r\nTOP 1\r\nUSER x\r\n"
    out = replies(drive(pop3(tmp_path), [wire]))
    assert out.endswith(b"-ERR No such message.\r\n-ERR No such message.\r\n-ERR Invalid message number.\r\n"
                        b"-ERR Usage: TOP message lines\r\n-ERR Already authenticated.\r\n")


def test_quit_without_auth_deletes_nothing_and_timeouts(tmp_path, emitted):
    core = pop3(tmp_path)
    assert core.timeout_reply() == b"-ERR Connection timed out.\r\n" and names(emitted) == ["pop3.loitering"]
    assert core.shutdown_reply() == b"-ERR Server shutting down.\r\n"
    assert core.idle_timeout_ms == 60000
    drive(core, [b"USER jane\r\nPASS jane-secret\r\n"])
    assert core.idle_timeout_ms == 1800000


def test_multiline_framing():
    assert multiline(b"a\n.b\r\n..c") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert multiline(b"") == b".\r\n"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([b"USER jane", b"PASS jane-secret", b"PASS bad", b"STAT", b"LIST", b"LIST 1",
                                 b"UIDL", b"RETR 1", b"TOP 1 0", b"DELE 1", b"RSET", b"NOOP", b"CAPA", b"AUTH PLAIN",
                                 b"*", b"AUTH", b"QUIT", b"\x80", b"STLS", b"APOP a b"]), max_size=20))
def test_random_command_sequences(tmp_path_factory, seq):
    d = tmp_path_factory.mktemp("p")
    seed(d, MSG1)
    core = pop3(d)
    out = replies(drive(core, [b"".join(c + b"\r\n" for c in seq)]))
    assert out == b"" or (out[:1] in (b"+", b"-") and out.endswith(b"\r\n"))
    if seq and not core.closed and core._sasl is None:
        assert replies(drive(core, [b"NOOP\r\n"])) == b"+OK\r\n"  # the session is still usable


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_after_login(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("r")
    seed(d, MSG1)
    core = pop3(d)
    drive(core, [b"USER jane\r\nPASS jane-secret\r\n"])
    out = replies(drive(core, [data[i:i + 53] for i in range(0, len(data), 53)] + [b"\r\n"]))
    assert out == b"" or (out[:1] in (b"+", b"-") and out.endswith(b"\r\n"))
