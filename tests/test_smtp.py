"""SMTP/LMTP core: transactions, delivery into Maildir, AUTH, limits and security events (no sockets)."""
import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailcore import chunkings, ctx, drive, names, record_events, replies, services

from stalwart.accounts.sasl import encode_plain
from stalwart.protocols.base import NEED_DATA, StartTls
from stalwart.protocols.smtp import SmtpSession, parse_mailbox


@pytest.fixture
def emitted(monkeypatch):
    return record_events(monkeypatch)


def smtp(tmp_path, lmtp=False, **kw):
    svc = kw.pop("svc", None) or services(tmp_path)
    return SmtpSession(ctx(**kw.pop("ctx", {})), lmtp=lmtp, services=svc, **kw)


def mailbox(tmp_path, account):
    root = os.path.join(str(tmp_path), "mail", account)
    names = sorted(os.listdir(os.path.join(root, "new"))) if os.path.isdir(os.path.join(root, "new")) else []
    return [open(os.path.join(root, "new", n), "rb").read() for n in names]


TRANSACTION = (b"EHLO client.test\r\nMAIL FROM:<sender@remote.test> SIZE=100\r\nRCPT TO:<jane@example.org>\r\n"
               b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n"
               b"Subject: hi\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")


def test_transaction_any_chunking_delivers_once(tmp_path):
    expected_tail = (b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 Mailbox does not exist.\r\n"
                     b"554 5.7.1 Relay access denied.\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n"
                     b"250 2.0.0 Message accepted for delivery.\r\n221 2.0.0 Bye.\r\n")
    for i, chunks in enumerate(chunkings(TRANSACTION)):
        d = tmp_path / str(i)
        core = smtp(d)
        out = replies(drive(core, chunks))
        assert out.endswith(expected_tail), out
        assert core.closed
        [msg] = mailbox(d, "jane")
        head, body = msg.split(b"\r\n\r\n", 1)
        assert head.startswith(b"Received: from client.test (unknown [192.0.2.1])\r\n"
                               b"\tby mx.example.test (Stalwart) with ESMTP")
        assert b"\r\nSubject: hi" in head and body == b".leading dot\r\n"


def test_empty_body_and_bare_lf_dot_does_not_end_data(tmp_path):
    core = smtp(tmp_path)
    out = replies(drive(core, [b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\n",
                               b"a\n.\nb\r\n", b".\r\n"]))
    assert out.endswith(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n250 2.0.0 Message accepted for delivery.\r\n")
    [msg] = mailbox(tmp_path, "jane")
    assert msg.endswith(b"\r\n\r\na\n.\nb\r\n") or msg.split(b";\r\n\t", 1)[1].endswith(b"a\n.\nb\r\n")
    out = replies(drive(core, [b"MAIL FROM:<>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\n.\r\n"]))
    assert out.endswith(b"250 2.0.0 Message accepted for delivery.\r\n")
    assert len(mailbox(tmp_path, "jane")) == 2


def test_pipelined_commands_after_data_wait_for_delivery(tmp_path):
    core = smtp(tmp_path)
    events = []
    core.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n")
    ev = None
    while (ev := core.next_event()) is not NEED_DATA and not hasattr(ev, "fn"):
        events.append(ev)
    assert hasattr(ev, "fn")  # the Blocking job; nothing after it until it is done
    assert not core.interruptible and core.next_event() is NEED_DATA
    core.blocking_done(ev.fn(*ev.args), None)
    assert replies([core.next_event(), core.next_event()]) == (b"250 2.0.0 Message accepted for delivery.\r\n"
                                                               b"250 2.0.0 OK\r\n")


def test_delivery_failure_is_451_and_no_partial_file(tmp_path):
    svc = services(tmp_path)
    core = SmtpSession(ctx(), services=svc)
    os.makedirs(tmp_path / "mail", exist_ok=True)
    (tmp_path / "mail" / "jane").write_text("not a directory")  # delivery will fail
    out = replies(drive(core, [b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\nx\r\n.\r\n"]))
    assert out.endswith(b"451 4.3.0 Could not store the message, try again later.\r\n")


def test_lmtp_replies_once_per_recipient(tmp_path):
    core = smtp(tmp_path, lmtp=True)
    wire = (b"LHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<jane@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
            b"RCPT TO:<J.Doe@example.net>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    out = replies(drive(core, [wire]))
    assert out.endswith(b"250 2.1.5 <jane@example.org> delivered.\r\n250 2.1.5 <bob@example.org> delivered.\r\n"
                        b"250 2.1.5 <J.Doe@example.net> delivered.\r\n221 2.0.0 Bye.\r\n")
    assert len(mailbox(tmp_path, "jane")) == 1 and len(mailbox(tmp_path, "bob")) == 1
    assert b"with LMTP" in mailbox(tmp_path, "bob")[0]


def test_lmtp_refuses_ehlo_and_auth(tmp_path):
    out = replies(drive(smtp(tmp_path, lmtp=True, ctx={"tls_active": True}), [b"EHLO x\r\nAUTH PLAIN\r\n"]))
    assert out == b"500 5.5.1 Invalid command.\r\n500 5.5.1 Invalid command.\r\n"


def test_oversized_message_drained_and_answered_once(tmp_path):
    core = smtp(tmp_path, max_message_size=1000)
    out = replies(drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=5000\r\nMAIL FROM:<a@b.c>\r\n"
                               b"RCPT TO:<jane@example.org>\r\nDATA\r\n"]
                        + [b"y" * 500 + b"\r\n"] * 20 + [b".\r\nNOOP\r\n"]))
    assert b"552 5.3.4 Message too big for system.\r\n250 2.1.0 OK" in out
    assert out.endswith(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
                        b"552 5.3.4 Message too big for system.\r\n250 2.0.0 OK\r\n")
    assert core._data is None and mailbox(tmp_path, "jane") == []  # drained; see test_smtp_spool.py


def test_sequence_errors(tmp_path):
    out = replies(drive(smtp(tmp_path), [b"MAIL FROM:<a@b.c>\r\nEHLO c\r\nRCPT TO:<jane@example.org>\r\nDATA\r\n"
                                         b"MAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\nDATA\r\nVRFY jane\r\n"]))
    lines = out.split(b"\r\n")
    assert lines[0] == b"503 5.5.1 Polite people say EHLO first."
    assert b"503 5.5.1 MAIL is required first." in lines
    assert b"503 5.5.1 Multiple MAIL commands not allowed." in lines
    assert b"554 5.5.1 No valid recipients." in lines
    assert b"252 2.5.1 VRFY is disabled." in lines


def test_bad_syntax_replies(tmp_path):
    out = replies(drive(smtp(tmp_path), [b"EHLO c\r\nMAIL FROM:junk\r\nMAIL TO:<a@b>\r\nMAIL FROM:<a@b> FOO=1\r\n"
                                         b"RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<no-at>\r\nRCPT TO:<a@b> X\r\n"]))
    assert b"501 5.1.7 Bad sender address syntax.\r\n501 5.5.4 Syntax: MAIL FROM:<address>\r\n" in out
    assert b"555 5.5.4 Unsupported parameter.\r\n" in out
    assert out.endswith(b"501 5.1.3 Bad recipient address syntax.\r\n501 5.1.3 Bad recipient address syntax.\r\n")


def test_too_many_recipients_and_rcpt_errors(tmp_path):
    core = smtp(tmp_path, max_recipients=2, max_rcpt_errors=3)
    out = replies(drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n" + b"RCPT TO:<jane@example.org>\r\n" * 3
                               + b"RSET\r\nMAIL FROM:<a@b.c>\r\n" + b"RCPT TO:<no@example.org>\r\n" * 3 + b"NOOP\r\n"]))
    assert out.count(b"250 2.1.5 OK\r\n") == 2 and b"452 4.5.3 Too many recipients.\r\n" in out
    assert out.endswith(b"550 5.1.1 Mailbox does not exist.\r\n451 4.3.0 Too many errors, disconnecting.\r\n")
    assert core.closed


def test_too_many_bad_commands_disconnects(tmp_path, emitted):
    core = smtp(tmp_path, max_errors=3)
    out = replies(drive(core, [b"A\r\nB\r\nC\r\nD\r\n"]))
    assert out == b"500 5.5.1 Invalid command.\r\n" * 2 + b"451 4.3.0 Too many errors, disconnecting.\r\n"
    assert names(emitted) == ["smtp.invalid-command"] * 3
    assert emitted[0][1]["Reason"] == "Invalid SMTP command"


def test_max_duration_ends_session(tmp_path, emitted):
    core = smtp(tmp_path, max_duration_ms=1000)
    assert replies(drive(core, [b"NOOP\r\n"], now=0.5)) == b"250 2.0.0 OK\r\n"
    out = replies(drive(core, [b"NOOP\r\n"], now=1.5))
    assert out == b"421 4.3.2 mx.example.test Session open for too long.\r\n" and core.closed
    assert names(emitted) == ["smtp.time-limit-exceeded"]


def test_loitering_reported_only_without_any_command(tmp_path, emitted):
    core = smtp(tmp_path)
    assert core.timeout_reply() == b"421 4.4.2 mx.example.test Disconnecting inactive client.\r\n"
    assert names(emitted) == ["smtp.loitering"]
    drive(core, [b"NOOP\r\n"])
    core.timeout_reply()
    assert names(emitted) == ["smtp.loitering"]


# -- AUTH --------------------------------------------------------------------------------------------
def test_auth_not_offered_without_tls(tmp_path):
    core = smtp(tmp_path)
    out = replies(drive(core, [b"EHLO c\r\nAUTH PLAIN " + encode_plain("jane", "jane-secret").encode() + b"\r\n"]))
    assert b"AUTH" not in out.split(b"\r\n")[0:8][-2] and b"250-AUTH" not in out
    assert out.endswith(b"538 5.7.11 Encryption required for requested authentication mechanism.\r\n")


def test_auth_plain_and_relay_after_auth(tmp_path):
    core = smtp(tmp_path, ctx={"tls_active": True, "tls_version": "TLSv1.3", "tls_cipher": "TLS_AES_128_GCM_SHA256"})
    out = replies(drive(core, [b"EHLO c\r\n"]))
    assert out.endswith(b"250 AUTH PLAIN LOGIN\r\n") and b"STARTTLS" not in out
    out = replies(drive(core, [b"AUTH PLAIN " + encode_plain("jane@example.org", "jane-secret").encode() + b"\r\n"
                               b"MAIL FROM:<jane@example.org>\r\nRCPT TO:<friend@remote.test>\r\n"
                               b"RCPT TO:<bob@example.org>\r\n"
                               b"DATA\r\nhello\r\n.\r\nEHLO c\r\n"]))
    assert out.startswith(b"235 2.7.0 Authentication succeeded.\r\n250 2.1.0 OK\r\n"
                          b"451 4.4.0 Relaying is not available on this server.\r\n250 2.1.5 OK\r\n")
    assert b"250-AUTH" not in out
    [msg] = mailbox(tmp_path, "bob")
    assert b"(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)" in msg and b"with ESMTPSA" in msg


def test_auth_login_two_steps_and_plain_empty_initial(tmp_path):
    core = smtp(tmp_path, allow_plain_auth=True)
    b64 = lambda s: base64.b64encode(s.encode())  # noqa: E731
    out = replies(drive(core, [b"EHLO c\r\nAUTH LOGIN\r\n", b64("bob") + b"\r\n", b64("bob-secret") + b"\r\n"]))
    assert out.endswith(b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication succeeded.\r\n")
    core = smtp(tmp_path, allow_plain_auth=True)
    out = replies(drive(core, [b"EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\nAUTH CRAM-MD5\r\n"]))
    assert out.endswith(b"334 \r\n501 5.7.0 Authentication cancelled.\r\n334 \r\n"
                        b"501 5.5.2 Cannot decode the response.\r\n"
                        b"504 5.5.4 Mechanism not supported.\r\n")


def test_auth_failures_reported_and_disconnect(tmp_path, emitted):
    core = smtp(tmp_path, allow_plain_auth=True)
    bad = b"AUTH PLAIN " + encode_plain("jane", "wrong").encode() + b"\r\n"
    unknown = b"AUTH PLAIN " + encode_plain("ghost", "x").encode() + b"\r\n"
    out = replies(drive(core, [b"EHLO c\r\n" + bad + unknown + bad]))
    assert out.endswith(b"535 5.7.8 Authentication credentials invalid.\r\n" * 2
                        + b"421 4.7.0 Too many authentication errors, disconnecting.\r\n")
    assert names(emitted) == ["auth.failed"] * 3
    assert [k["AccountName"] for _, k in emitted] == ["jane", "ghost", "jane"]


def test_starttls_resets_session(tmp_path):
    core = smtp(tmp_path)
    events = drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nSTARTTLS\r\nRCPT TO:<jane@example.org>\r\n"])
    assert isinstance(events[-1], StartTls)
    core.tls_started("TLSv1.3", "X")
    out = replies(drive(core, [b"MAIL FROM:<a@b.c>\r\n"]))
    assert out == b"503 5.5.1 Polite people say EHLO first.\r\n"


def test_parse_mailbox():
    assert parse_mailbox("Jane.Doe@Example.ORG") == "Jane.Doe@example.org"
    assert parse_mailbox('"a b"@x.test') == '"a b"@x.test'
    assert parse_mailbox("ü@bücher.example") == "ü@bücher.example"
    for bad in ("", "a", "@x", "a@", "a..b@x", "a@-x", "a@x..y", "a b@x"):
        assert parse_mailbox(bad) is None, bad


def test_shutdown_waits_for_data_end(tmp_path):
    core = smtp(tmp_path)
    drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\npart"])
    assert not core.interruptible
    drive(core, [b"\r\n.\r\n"])
    assert core.interruptible


COMMANDS = [b"EHLO c", b"HELO c", b"LHLO c", b"MAIL FROM:<a@b.c>", b"MAIL FROM:<>", b"RCPT TO:<jane@example.org>",
            b"RCPT TO:<x@y.z>", b"DATA", b"hello", b".", b"RSET", b"NOOP", b"AUTH PLAIN", b"AUTH LOGIN", b"*",
            b"VRFY x", b"STARTTLS", b"QUIT", b"\x00\xff", b"MAIL FROM:<\xff@x>", b"BDAT 10"]
REPLY_OK = __import__("re").compile(rb"^(\d{3}[ -][^\r\n]*\r\n)*$")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(COMMANDS), max_size=25), st.booleans(), st.booleans())
def test_random_command_sequences_give_valid_replies(tmp_path_factory, seq, lmtp, tls):
    d = tmp_path_factory.mktemp("s")
    core = SmtpSession(ctx(tls_active=tls), lmtp=lmtp, services=services(d), allow_plain_auth=True)
    events = drive(core, [b"".join(c + b"\r\n" for c in seq)])
    out = replies(events)
    assert REPLY_OK.match(out), out


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_in_data_phase(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("b")
    core = SmtpSession(ctx(), services=services(d))
    drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\n", data, b"\r\n.\r\n"])
    out = replies(drive(core, [b"NOOP\r\n"]))
    assert REPLY_OK.match(out)


def test_auth_failure_reply_waits_for_a_delay(tmp_path):
    from stalwart.protocols.base import Blocking, Delay

    core = smtp(tmp_path, allow_plain_auth=True)
    drive(core, [b"EHLO c\r\n"])
    core.receive_data(b"AUTH PLAIN " + encode_plain("jane", "bad").encode() + b"\r\nNOOP\r\n")
    job = core.next_event()
    assert isinstance(job, Blocking)
    core.blocking_done(job.fn(*job.args), None)
    delay = core.next_event()
    assert isinstance(delay, Delay) and 0.05 <= delay.seconds <= 0.5
    assert core.next_event() is NEED_DATA and not core.interruptible  # nothing until the pause ends
    core.blocking_done(None, None)
    assert replies([core.next_event(), core.next_event()]) == (b"535 5.7.8 Authentication credentials invalid.\r\n"
                                                               b"250 2.0.0 OK\r\n")


def test_auth_failed_event_carries_a_masked_credential(tmp_path, emitted):
    from stalwart.events import _fmt

    core = smtp(tmp_path, allow_plain_auth=True)
    drive(core, [b"EHLO c\r\nAUTH PLAIN " + encode_plain("jane", "hunter2").encode() + b"\r\n"])
    [(name, keys)] = emitted
    assert keys["Credential"].value == "hunter2" and "hunter2" not in _fmt(keys["Credential"])
    assert core._credential is None


def test_session_transfer_quota(tmp_path):
    core = smtp(tmp_path, transfer_limit=100)
    out = replies(drive(core, [b"EHLO c\r\n", b"NOOP\r\n" * 20]))
    assert out.endswith(b"452 4.7.28 mx.example.test Session exceeded transfer quota.\r\n") and core.closed


def test_password_checks_use_the_cpu_pool_and_deliveries_the_io_pool(tmp_path):
    from stalwart.protocols.base import Blocking

    core = smtp(tmp_path, allow_plain_auth=True)
    drive(core, [b"EHLO c\r\n"])
    core.receive_data(b"AUTH PLAIN " + encode_plain("jane", "jane-secret").encode() + b"\r\n")
    job = core.next_event()
    assert isinstance(job, Blocking) and job.pool == "cpu"
    core.blocking_done(job.fn(*job.args), None)
    core.next_event()
    core.receive_data(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\nx\r\n.\r\n")
    while not isinstance(ev := core.next_event(), Blocking):
        pass
    assert ev.pool == "io"
