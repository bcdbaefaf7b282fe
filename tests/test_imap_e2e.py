"""IMAP through a real stalwartd: smtplib delivers, imaplib lists, fetches, flags and expunges."""
import imaplib
import smtplib

import pytest

from harness import Server, client_ctx, free_port, listener
from stalwart.accounts import hash_password


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory):
    ports = {n: free_port() for n in ("smtp", "imap", "imaps")}
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2},
        "NetworkListener": [listener("smtp", "smtp", ports["smtp"]), listener("imap", "imap", ports["imap"]),
                            listener("imaps", "imap", ports["imaps"], tlsImplicit=True)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("jane-secret", ln=8), "emails": ["jane@example.org"]}],
    }
    srv = Server(tmp_path_factory.mktemp("imap"), cfg).start()
    yield srv, ports
    srv.stop()


def test_smtp_then_imap_list_fetch_flag_expunge(imap_server):
    srv, ports = imap_server
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
        for i in range(3):
            s.sendmail("a@remote.test", ["jane@example.org"],
                       f"From: Alice <a@remote.test>\r\nTo: jane@example.org\r\nSubject: m{i}\r\n"
                       f"Message-ID: <m{i}@remote.test>\r\n\r\nbody {i}\r\n".encode())

    m = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=10)
    assert "LOGINDISABLED" in m.capabilities
    m.starttls(ssl_context=client_ctx())
    m.login("jane", "jane-secret")
    typ, boxes = m.list()
    assert typ == "OK" and boxes == [b'(\\HasNoChildren) "/" INBOX']
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"3"]
    uidvalidity = m.response("UIDVALIDITY")[1][0]
    typ, data = m.search(None, "UNSEEN")
    assert data == [b"1 2 3"]
    typ, data = m.fetch("1", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODY.PEEK[HEADER])")
    assert typ == "OK" and b"UID 1" in data[0][0] and b'"m0"' in data[0][0]
    assert b"Subject: m0" in data[0][1]
    typ, data = m.fetch("2", "(BODY[])")
    assert data[0][1].endswith(b"body 1\r\n")
    typ, data = m.search(None, "SEEN")
    assert data == [b"2"]
    typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
    assert len([d for d in data if d]) == 3
    typ, data = m.store("1", "+FLAGS", "(\\Deleted \\Flagged)")
    assert typ == "OK" and b"\\Deleted" in data[0]
    typ, data = m.expunge()
    assert typ == "OK" and data == [b"1"]
    typ, data = m.uid("SEARCH", None, "ALL")
    assert data == [b"2 3"]
    typ, data = m.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY)")
    assert b"MESSAGES 2" in data[0] and b"UNSEEN 1" in data[0] and b"UIDNEXT 4" in data[0]
    m.close()
    m.logout()

    # UIDs and UIDVALIDITY are stable in a new session (implicit TLS this time).
    m = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], timeout=10, ssl_context=client_ctx())
    m.login("jane@example.org", "jane-secret")
    m.select("INBOX", readonly=True)
    assert m.response("UIDVALIDITY")[1][0] == uidvalidity
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS)")
    assert [d.split(b"UID ")[1].split(b" ")[0].rstrip(b")") for d in data] == [b"2", b"3"]
    assert b"\\Seen" in data[0]
    typ, data = m.store("1", "+FLAGS", "(\\Deleted)")
    assert typ == "NO"  # EXAMINE is read-only
    m.logout()


def test_imap_idle_and_new_mail(imap_server):
    srv, ports = imap_server
    m = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], timeout=10, ssl_context=client_ctx())
    m.login("jane", "jane-secret")
    typ, data = m.select("INBOX")
    before = int(data[0])
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
        s.sendmail("a@remote.test", ["jane@example.org"], b"Subject: new\r\n\r\nnew\r\n")
    tag = m._new_tag().decode()
    m.send(f"{tag} IDLE\r\n".encode())
    assert m.readline().startswith(b"+")
    m.send(b"DONE\r\n")
    lines = [m.readline() for _ in range(3)]
    assert lines[0] == f"* {before + 1} EXISTS\r\n".encode()
    assert lines[2].startswith(f"{tag} OK".encode())
    m.logout()


def test_imap_bad_login(imap_server):
    srv, ports = imap_server
    m = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], timeout=10, ssl_context=client_ctx())
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login("jane", "nope")
    m.logout()


def test_imap_idle_pushes_new_mail(imap_server):
    srv, ports = imap_server
    m = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], timeout=15, ssl_context=client_ctx())
    m.login("jane", "jane-secret")
    typ, data = m.select("INBOX")
    before = int(data[0])
    tag = m._new_tag().decode()
    m.send(f"{tag} IDLE\r\n".encode())
    assert m.readline().startswith(b"+")
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
        s.sendmail("a@remote.test", ["jane@example.org"], b"Subject: pushed\r\n\r\nnew\r\n")
    assert m.readline() == f"* {before + 1} EXISTS\r\n".encode()  # within one poll interval, no DONE needed
    m.send(b"DONE\r\n")
    while not (line := m.readline()).startswith(tag.encode()):
        pass
    assert b"OK" in line
    m.logout()
