"""IMAP core: literals, authentication, mailbox commands over a Maildir, search, syntax (no sockets)."""
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailcore import chunkings, ctx, drive, names, record_events, replies, services

from stalwart.accounts.sasl import encode_plain
from stalwart.mailstore import MailStore
from stalwart.protocols.base import NEED_DATA, Blocking
from stalwart.protocols.imap import ImapSession
from stalwart.protocols.imap.fetch import envelope, header_fields, section_bytes
from stalwart.protocols.imap.syntax import ImapSyntaxError, Literal, SequenceSet, tokenize

MSG = (b"From: \"Alice A.\" <alice@remote.test>\r\nTo: jane@example.org, bob@example.org\r\nSubject: Hello\r\n"
       b"Message-ID: <1@remote.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nline 1\r\nline 2\r\n")


@pytest.fixture
def emitted(monkeypatch):
    return record_events(monkeypatch)


def imap(tmp_path, **kw):
    return ImapSession(ctx(protocol="imap", **kw.pop("ctx", {"tls_active": True})), services=services(tmp_path), **kw)


def seed(tmp_path, n=3):
    md = MailStore(str(tmp_path)).maildir("jane")
    for i in range(n):
        md.deliver(MSG.replace(b"Hello", b"Hello %d" % i))
    return md


def test_login_with_literals_any_chunking(tmp_path):
    wire = b"a1 LOGIN {4}\r\njane {11+}\r\njane-secret\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n"
    for i, chunks in enumerate(chunkings(wire)):
        seed(tmp_path / str(i), 1)
        out = replies(drive(imap(tmp_path / str(i)), chunks))
        assert out.startswith(b"+ Ready for literal data\r\na1 OK [CAPABILITY IMAP4rev1")
        assert b"* 1 EXISTS\r\n* 1 RECENT\r\n" in out and b"a2 OK [READ-WRITE] SELECT completed.\r\n" in out
        assert out.endswith(b"a3 OK LOGOUT completed.\r\n")


def test_authenticate_plain_sasl_ir_and_continuation(tmp_path):
    ir = encode_plain("jane", "jane-secret").encode()
    out = replies(drive(imap(tmp_path), [b"a AUTHENTICATE PLAIN " + ir + b"\r\n"]))
    assert out.startswith(b"a OK [CAPABILITY")
    out = replies(drive(imap(tmp_path), [b"a AUTHENTICATE PLAIN\r\n", ir + b"\r\n"]))
    assert out.startswith(b"+ \r\na OK [CAPABILITY")
    out = replies(drive(imap(tmp_path), [b"a AUTHENTICATE PLAIN\r\n*\r\nb AUTHENTICATE CRAM-MD5\r\n"]))
    assert out == b"+ \r\na BAD Authentication cancelled.\r\nb NO [CANNOT] Unsupported mechanism.\r\n"


def test_logindisabled_without_tls(tmp_path):
    core = imap(tmp_path, ctx={"tls_available": True})
    assert b"LOGINDISABLED" in core.greeting() and b"STARTTLS" in core.greeting()
    out = replies(drive(core, [b"a LOGIN jane jane-secret\r\n"]))
    assert out == b"a NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS.\r\n"
    assert b"AUTH=PLAIN" in imap(tmp_path, ctx={}, allow_plain_auth=True).greeting()


def test_auth_failures_and_bad_commands(tmp_path, emitted):
    core = imap(tmp_path, max_errors=4)
    out = replies(drive(core, [b"a LOGIN jane x\r\nb LOGIN ghost y\r\nc LOGIN jane z\r\n"]))
    assert out.endswith(b"c NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
                        b"* BYE Too many authentication failures.\r\n")
    assert names(emitted) == ["auth.failed"] * 3 and core.closed
    emitted.clear()
    core = imap(tmp_path, max_errors=3)
    out = replies(drive(core, [b"* x\r\na FROB\r\nb SELECT INBOX\r\nc\r\n"]))
    assert out == (b"* BAD Invalid tag.\r\na BAD Unknown command.\r\nb NO Not authenticated.\r\n"
                   b"c BAD Missing command.\r\n* BYE Too many invalid commands.\r\n")
    assert names(emitted) == ["imap.invalid-command"] * 3


def login(core):
    drive(core, [b"l LOGIN jane jane-secret\r\n"])


def test_fetch_store_search_expunge(tmp_path):
    seed(tmp_path)
    core = imap(tmp_path)
    login(core)
    out = replies(drive(core, [b"s SELECT inbox\r\n"]))
    assert b"* OK [UNSEEN 1] First unseen.\r\n" in out and b"* OK [UIDNEXT 4]" in out
    out = replies(drive(core, [b"f FETCH 1:2 (UID FLAGS RFC822.SIZE)\r\n"]))
    size = len(MSG) + 2
    assert out == (b"* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE %d)\r\n* 2 FETCH (UID 2 FLAGS (\\Recent) "
                   b"RFC822.SIZE %d)\r\nf OK FETCH completed.\r\n" % (size, size))
    out = replies(drive(core, [b"f UID FETCH 2 (BODY[HEADER.FIELDS (Subject)] BODY[TEXT]<0.4>)\r\n"]))
    assert out == (b"* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {20}\r\nSubject: Hello 1\r\n\r\n"
                   b" BODY[TEXT]<0> {4}\r\nline"
                   b" UID 2 FLAGS (\\Seen \\Recent))\r\nf OK UID FETCH completed.\r\n")
    out = replies(drive(core, [b"x SEARCH SEEN\r\ny UID SEARCH NOT SEEN\r\nz SEARCH OR 1 3 UNSEEN\r\n"]))
    assert out == (b"* SEARCH 2\r\nx OK SEARCH completed.\r\n* SEARCH 1 3\r\ny OK UID SEARCH completed.\r\n"
                   b"* SEARCH 1 3\r\nz OK SEARCH completed.\r\n")
    out = replies(drive(core, [b"t STORE 1,3 +FLAGS.SILENT (\\Deleted)\r\nu STORE 2 FLAGS (\\Flagged $Junk)\r\n"]))
    assert out == b"t OK STORE completed.\r\n* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\nu OK STORE completed.\r\n"
    out = replies(drive(core, [b"e EXPUNGE\r\nf UID FETCH 1:* (FLAGS)\r\n"]))
    assert out == (b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\ne OK EXPUNGE completed.\r\n"
                   b"* 1 FETCH (FLAGS (\\Flagged \\Recent) UID 2)\r\n"
                   b"f OK UID FETCH completed.\r\n")
    out = replies(drive(core, [b"c CLOSE\r\nd FETCH 1 FLAGS\r\n"]))
    assert out == b"c OK CLOSE completed.\r\nd NO No mailbox selected.\r\n"


def test_recent_belongs_to_the_first_session_only(tmp_path):
    seed(tmp_path, 2)
    first, second = imap(tmp_path), imap(tmp_path)
    login(first)
    login(second)
    assert b"* 2 RECENT\r\n" in replies(drive(first, [b"s SELECT INBOX\r\n"]))
    out = replies(drive(second, [b"s SELECT INBOX\r\nr SEARCH RECENT\r\n"]))
    assert b"* 0 RECENT\r\n" in out and out.endswith(b"* SEARCH\r\nr OK SEARCH completed.\r\n")
    assert replies(drive(first, [b"r SEARCH NEW\r\n"])) == b"* SEARCH 1 2\r\nr OK SEARCH completed.\r\n"
    assert not os.listdir(tmp_path / "mail" / "jane" / "new")  # claimed into cur/


def test_noop_reports_new_and_expunged_messages(tmp_path):
    md = seed(tmp_path, 2)
    core = imap(tmp_path)
    login(core)
    drive(core, [b"s SELECT INBOX\r\n"])
    _, _, msgs = md.snapshot()
    md.remove([msgs[0]])
    md.deliver(MSG)
    out = replies(drive(core, [b"n NOOP\r\n"]))
    assert out == b"* 1 EXPUNGE\r\n* 2 EXISTS\r\n* 2 RECENT\r\nn OK NOOP completed.\r\n"


def test_list_status_and_missing_mailboxes(tmp_path):
    seed(tmp_path, 2)
    core = imap(tmp_path)
    login(core)
    out = replies(drive(core, [b'a LIST "" "*"\r\nb LIST "" ""\r\nc LSUB "" "%"\r\nd LIST "" "Sent*"\r\n'
                               b"e STATUS INBOX (MESSAGES UNSEEN UIDNEXT)\r\nf SELECT Sent\r\ng CREATE Foo\r\n"]))
    assert out == (b'* LIST (\\HasNoChildren) "/" INBOX\r\na OK LIST completed.\r\n* LIST (\\Noselect) "/" ""\r\n'
                   b'b OK LIST completed.\r\n* LSUB (\\HasNoChildren) "/" INBOX\r\nc OK LSUB completed.\r\n'
                   b"d OK LIST completed.\r\n* STATUS INBOX (MESSAGES 2 UNSEEN 2 UIDNEXT 3)\r\n"
                   b"e OK STATUS completed.\r\nf NO [NONEXISTENT] Only INBOX exists.\r\n"
                   b"g NO [CANNOT] Only INBOX is available on this server.\r\n")


def test_idle_and_examine_read_only(tmp_path):
    seed(tmp_path, 1)
    core = imap(tmp_path)
    login(core)
    out = replies(drive(core, [b"e EXAMINE INBOX\r\ni IDLE\r\n", b"DONE\r\ns STORE 1 +FLAGS (\\Seen)\r\n"
                               b"f FETCH 1 BODY[]\r\nx SEARCH UNSEEN\r\n"]))
    assert b"e OK [READ-ONLY] EXAMINE completed.\r\n+ idling\r\ni OK IDLE terminated.\r\n" in out
    assert b"s NO [READ-ONLY]" in out and out.endswith(b"* SEARCH 1\r\nx OK SEARCH completed.\r\n")


def test_oversized_literal(tmp_path):
    out = replies(drive(imap(tmp_path), [b"a LOGIN {999999}\r\n"]))
    assert out == b"a NO [TOOBIG] Literal too large.\r\n"
    core = imap(tmp_path)
    assert replies(drive(core, [b"a LOGIN {999999+}\r\n"])) == b"* BYE Literal too large.\r\n" and core.closed


def test_tokenizer_and_sequence_sets():
    assert tokenize(b'a "b \\" c" (d (e)) BODY[HEADER.FIELDS (A B)]<0.5> \\Seen', []) == \
        ["a", b'b " c', ["d", ["e"]], "BODY[HEADER.FIELDS (A B)]<0.5>", "\\Seen"]
    toks = tokenize(b"x \x000\x00", [b"lit\r\n"])
    assert toks == ["x", b"lit\r\n"] and isinstance(toks[1], Literal)
    for bad in (b"(a", b"a)", b'"open', b"a{", b"BODY[x"):
        try:
            tokenize(bad, [])
            raise AssertionError(bad)
        except ImapSyntaxError:
            pass
    s = SequenceSet("1:3,7,9:*")
    assert [n for n in range(1, 12) if s.contains(n, 10)] == [1, 2, 3, 7, 9, 10]
    assert SequenceSet("*:4").contains(5, 5) and not SequenceSet("3").contains(4, 9)


def test_envelope_and_sections():
    env = envelope(MSG)
    assert env.startswith(b'("Mon, 23 Nov 2026 10:00:00 +0000" "Hello" (("Alice A." NIL "alice" "remote.test"))')
    assert b'(NIL NIL "jane" "example.org")(NIL NIL "bob" "example.org")' in env and env.endswith(b'"<1@remote.test>")')
    assert header_fields(MSG, ["to", "x"], False) == b"To: jane@example.org, bob@example.org\r\n\r\n"
    assert section_bytes(MSG, "1") == b"line 1\r\nline 2\r\n" and section_bytes(MSG, "2") == b""
    assert section_bytes(MSG, "TEXT") == b"line 1\r\nline 2\r\n"


REPLY = re.compile(rb"^((\* |\+ ?|[A-Za-z0-9.]+ )[^\r\n]*(\{\d+\}\r\n[\s\S]*?)?\r\n)*$")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([b"a LOGIN jane jane-secret", b"b SELECT INBOX", b"c FETCH 1:* (FLAGS UID)",
                                 b"d STORE 1 +FLAGS (\\Deleted)", b"e EXPUNGE", b"f SEARCH ALL", b"g NOOP",
                                 b"h FETCH 1 BODY[]", b"i IDLE", b"DONE", b"j CLOSE", b"k LOGIN {3}", b"abc",
                                 b"l STATUS INBOX (MESSAGES)", b"m UID FETCH * ENVELOPE", b"n FETCH x y", b"\x00",
                                 b"o AUTHENTICATE PLAIN", b"*", b"p LIST \"\" *", b"q EXAMINE INBOX"]), max_size=20))
def test_random_command_sequences(tmp_path_factory, seq):
    d = tmp_path_factory.mktemp("i")
    seed(d, 2)
    core = imap(d)
    out = replies(drive(core, [b"".join(c + b"\r\n" for c in seq)]))
    for response in responses(out):
        assert re.match(rb"^(\* |\+|[A-Za-z0-9]+ (OK|NO|BAD) )", response), response


def responses(out: bytes) -> list[bytes]:
    """Split server output into logical responses, skipping literal contents (RFC 3501 §7)."""
    result, pos = [], 0
    while pos < len(out):
        start = pos
        while True:
            nl = out.index(b"\r\n", pos)
            m = re.search(rb"\{(\d+)\}$", out[pos:nl])
            if m is None:
                pos = nl + 2
                break
            pos = nl + 2 + int(m.group(1))
        result.append(out[start:pos])
    return result


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500), st.booleans())
def test_random_bytes_after_login(tmp_path_factory, data, select):
    d = tmp_path_factory.mktemp("r")
    seed(d, 1)
    core = imap(d)
    drive(core, [b"l LOGIN jane jane-secret\r\n" + (b"s SELECT INBOX\r\n" if select else b"")])
    out = replies(drive(core, [data[i:i + 61] for i in range(0, len(data), 61)] + [b"\r\n"]))
    for response in responses(out):
        assert re.match(rb"^(\* |\+|[\x21-\x7e]+ (OK|NO|BAD) )", response), response


def test_overlong_lines_end_sasl_and_idle(tmp_path):
    core = imap(tmp_path)
    out = replies(drive(core, [b"a AUTHENTICATE PLAIN\r\n", b"x" * 9000 + b"\r\nb NOOP\r\n"]))
    assert out == b"+ \r\na BAD Line too long.\r\nb OK NOOP completed.\r\n"
    login(core)
    out = replies(drive(core, [b"i IDLE\r\n", b"y" * 9000 + b"\r\nc NOOP\r\n"]))
    assert out == b"+ idling\r\ni BAD Line too long.\r\nc OK NOOP completed.\r\n"


def test_search_headers_text_and_dates(tmp_path):
    md = seed(tmp_path, 2)
    md.deliver(b"From: carol@else.test\r\nSubject: Other\r\nDate: Tue, 01 Dec 2026 08:00:00 +0000\r\n\r\n"
               b"Needle here\r\n")
    core = imap(tmp_path)
    login(core)
    drive(core, [b"s SELECT INBOX\r\n"])
    cases = {
        b'SUBJECT "hello 1"': b"2", b"FROM alice": b"1 2", b'HEADER Message-ID "1@remote"': b"1 2",
        b"BODY needle": b"3", b"TEXT CAROL": b"3", b"NOT FROM alice": b"3", b"OR SUBJECT other BODY 'x'": b"3",
        b"SENTON 23-Nov-2026": b"1 2", b"SENTSINCE 1-Dec-2026": b"3", b"SINCE 1-Jan-2000": b"1 2 3",
        b"BEFORE 1-Jan-2000": b"", b"HEADER X-None \"\"": b"", b"(FROM alice SUBJECT 0)": b"1",
    }
    for query, hits in cases.items():
        out = replies(drive(core, [b"q SEARCH " + query + b"\r\n"]))
        assert out == b"* SEARCH" + (b" " + hits if hits else b"") + b"\r\nq OK SEARCH completed.\r\n", query
    out = replies(drive(core, [b"q SEARCH SENTON 31-Feb-2026\r\nr SEARCH FROM\r\n"]))
    assert out == b"q BAD invalid date.\r\nr BAD FROM needs an argument.\r\n"


def test_fetch_reads_in_batches(tmp_path, monkeypatch):
    from stalwart.protocols.imap import session as mod

    monkeypatch.setattr(mod, "FETCH_BATCH_BYTES", 300)
    seed(tmp_path, 5)
    core = imap(tmp_path)
    login(core)
    drive(core, [b"s SELECT INBOX\r\n"])
    core.receive_data(b"f FETCH 1:* BODY.PEEK[]\r\nn NOOP\r\n")
    jobs, out = 0, []
    while (ev := core.next_event()) is not NEED_DATA:
        if isinstance(ev, Blocking):
            jobs += 1
            core.blocking_done(ev.fn(*ev.args), None)
        else:
            out.append(ev)
    text = replies(out)
    assert jobs >= 3 and text.count(b" FETCH (BODY[] {") == 5
    assert text.endswith(b"f OK FETCH completed.\r\nn OK NOOP completed.\r\n")


def test_idle_pushes_new_mail_on_timer(tmp_path):
    from stalwart.protocols.base import Timer

    md = seed(tmp_path, 1)
    core = imap(tmp_path)
    login(core)
    drive(core, [b"s SELECT INBOX\r\n"])
    core.now = 100.0
    core.receive_data(b"i IDLE\r\n")
    assert replies([core.next_event()]) == b"+ idling\r\n"
    assert isinstance(core.next_event(), Timer) and core.next_event() is NEED_DATA
    md.deliver(MSG)
    core.now = 105.0
    core.timer_fired()
    out = []
    from mailcore import pump
    pump(core, out)
    assert replies(out) == b"* 2 EXISTS\r\n* 2 RECENT\r\n"
    core.timer_fired()  # nothing new: nothing said
    out = []
    pump(core, out)
    assert replies(out) == b""
    assert replies(drive(core, [b"DONE\r\n"])) == b"i OK IDLE terminated.\r\n"
    core.timer_fired()  # a timer that outlived the IDLE does nothing
    assert core.next_event() is NEED_DATA
    core.receive_data(b"j IDLE\r\n")
    core.now = 105.0 + 1801
    core.timer_fired()
    out = []
    pump(core, out)
    assert replies(out).endswith(b"* BYE IDLE for too long.\r\n") and core.closed
