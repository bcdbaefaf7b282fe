"""ManageSieve core: authentication, script storage commands, literals, syntax check (no sockets)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailcore import chunkings, ctx, drive, names, record_events, replies, services

from stalwart.accounts.sasl import encode_plain
from stalwart.mailstore.sieve import check_script
from stalwart.protocols.managesieve import ManageSieveSession

SCRIPT = b'require ["fileinto"];\r\nif header :contains "subject" "[spam]" {\r\n  fileinto "Junk";\r\n}\r\n'


@pytest.fixture
def emitted(monkeypatch):
    return record_events(monkeypatch)


def sieve(tmp_path, **kw):
    return ManageSieveSession(ctx(protocol="manageSieve", **kw.pop("ctx", {"tls_active": True})),
                              services=services(tmp_path), **kw)


AUTH = b'AUTHENTICATE "PLAIN" "' + encode_plain("jane", "jane-secret").encode() + b'"\r\n'


def test_put_get_list_activate_any_chunking(tmp_path):
    wire = (AUTH + b'PUTSCRIPT "main" {%d+}\r\n' % len(SCRIPT) + SCRIPT + b"\r\n"
            b'PUTSCRIPT "other" "keep;"\r\nLISTSCRIPTS\r\nSETACTIVE "main"\r\nLISTSCRIPTS\r\nGETSCRIPT "main"\r\n'
            b'DELETESCRIPT "main"\r\nRENAMESCRIPT "other" "second"\r\nHAVESPACE "x" 100\r\nHAVESPACE "x" 99999999\r\n'
            b'GETSCRIPT "nope"\r\nLOGOUT\r\n')
    for i, chunks in enumerate(chunkings(wire)):
        out = replies(drive(sieve(tmp_path / str(i)), chunks))
        assert out == (b'OK "Authentication successful."\r\nOK "Putscript completed."\r\nOK "Putscript completed."\r\n'
                       b'"main"\r\n"other"\r\nOK "Listscripts completed."\r\nOK "Setactive completed."\r\n'
                       b'"main" ACTIVE\r\n"other"\r\nOK "Listscripts completed."\r\n'
                       + b"{%d}\r\n" % len(SCRIPT) + SCRIPT + b'\r\nOK "Getscript completed."\r\n'
                       b'NO (ACTIVE) "You may not delete an active script."\r\nOK "Renamescript completed."\r\n'
                       b'OK "Putscript would succeed."\r\nNO (QUOTA/MAXSIZE) "Script is too large."\r\n'
                       b'NO (NONEXISTENT) "There is no script by that name."\r\nOK "Logout complete."\r\n'), i


def test_authenticate_with_continuation_and_failures(tmp_path, emitted):
    core = sieve(tmp_path)
    response = b'"' + encode_plain("jane", "jane-secret").encode() + b'"\r\n'
    out = replies(drive(core, [b'AUTHENTICATE "PLAIN"\r\n', response]))
    assert out == b'""\r\nOK "Authentication successful."\r\n'
    assert b"SASL" not in replies(drive(core, [b"CAPABILITY\r\n"]))
    core = sieve(tmp_path)
    bad = b'AUTHENTICATE "PLAIN" "' + encode_plain("jane", "x").encode() + b'"\r\n'
    out = replies(drive(core, [bad * 3]))
    assert out == b'NO "Authentication failed."\r\n' * 2 + b'BYE "Too many authentication failures."\r\n'
    assert names(emitted) == ["auth.failed"] * 3


def test_no_auth_without_tls(tmp_path):
    core = sieve(tmp_path, ctx={"tls_available": True})
    assert b'"SASL" ""\r\n"STARTTLS"\r\n' in core.greeting()
    assert replies(drive(core, [AUTH])) == b'NO (ENCRYPT-NEEDED) "Authentication requires TLS, use STARTTLS first."\r\n'


def test_invalid_scripts_refused(tmp_path):
    core = sieve(tmp_path)
    out = replies(drive(core, [AUTH + b'PUTSCRIPT "bad" "if true { keep;"\r\nCHECKSCRIPT "keep"\r\n'
                               b'CHECKSCRIPT "keep;"\r\nPUTSCRIPT "../x" "keep;"\r\nLISTSCRIPTS\r\n']))
    assert out == (b'OK "Authentication successful."\r\nNO "unbalanced brackets at the end of the script."\r\n'
                   b'NO "the last command is missing its \';\'."\r\nOK "Script is valid."\r\n'
                   b'NO "Invalid script name."\r\nOK "Listscripts completed."\r\n')


def test_bad_commands_before_auth(tmp_path, emitted):
    core = sieve(tmp_path, max_errors=3)
    out = replies(drive(core, [b"FOO\r\nLISTSCRIPTS\r\nPUTSCRIPT\r\n\r\nBAR\r\n"]))
    assert out == (b'NO "Unknown command."\r\nNO "Not authenticated."\r\nNO "Not authenticated."\r\n'
                   b'NO "Missing command."\r\nBYE "Too many invalid commands."\r\n')
    assert names(emitted) == ["manage-sieve.invalid-command"] * 3


def test_check_script():
    assert check_script(SCRIPT) is None
    assert check_script(b"vacation :days 1 text:\r\nGone.\r\n.\r\n;\r\n") is None
    assert check_script(b"/* open") == "line 1: unterminated comment."
    assert check_script(b"\xff") == "Script is not valid UTF-8."


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([AUTH.rstrip(), b'PUTSCRIPT "a" "keep;"', b'PUTSCRIPT "a" {5+}', b"keep;",
                                 b"LISTSCRIPTS", b'SETACTIVE "a"', b'SETACTIVE ""', b'GETSCRIPT "a"',
                                 b'DELETESCRIPT "a"', b'HAVESPACE "a" 10', b"NOOP", b"CAPABILITY", b'"x', b"{3}",
                                 b"STARTTLS", b'AUTHENTICATE "PLAIN"', b"LOGOUT", b"\xff"]), max_size=20))
def test_random_command_sequences(tmp_path_factory, seq):
    core = sieve(tmp_path_factory.mktemp("m"))
    out = replies(drive(core, [b"".join(c + b"\r\n" for c in seq)]))
    assert out == b"" or out.endswith(b"\r\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_after_auth(tmp_path_factory, data):
    core = sieve(tmp_path_factory.mktemp("r"))
    drive(core, [AUTH])
    out = replies(drive(core, [data[i:i + 47] for i in range(0, len(data), 47)] + [b"\r\n"]))
    assert out == b"" or (out.endswith(b"\r\n") and out[:1] in (b"O", b"N", b"B", b'"', b"{", b"\r"))
