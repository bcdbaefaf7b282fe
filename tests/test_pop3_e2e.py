"""POP3 through a real stalwartd: smtplib delivers, poplib (STLS and implicit TLS) retrieves and deletes."""
import poplib
import smtplib

import pytest

from harness import Server, client_ctx, free_port, listener
from stalwart.accounts import hash_password


@pytest.fixture(scope="module")
def pop_server(tmp_path_factory):
    ports = {n: free_port() for n in ("smtp", "pop3", "pop3s")}
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2},
        "NetworkListener": [listener("smtp", "smtp", ports["smtp"]), listener("pop3", "pop3", ports["pop3"]),
                            listener("pop3s", "pop3", ports["pop3s"], tlsImplicit=True)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("jane-secret", ln=8), "emails": ["jane@example.org"]}],
    }
    srv = Server(tmp_path_factory.mktemp("pop"), cfg).start()
    yield srv, ports
    srv.stop()


def test_smtp_then_pop3_retrieve_and_delete(pop_server):
    srv, ports = pop_server
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
        for i in range(3):
            s.sendmail("a@remote.test", ["jane@example.org"], f"Subject: m{i}\r\n\r\nbody {i}\r\n.dot\r\n".encode())

    p = poplib.POP3("127.0.0.1", ports["pop3"], timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps
    with pytest.raises(poplib.error_proto):
        p.user("jane")  # no credentials in clear text
    p.stls(context=client_ctx())
    assert "USER" in p.capa()
    p.user("jane")
    p.pass_("jane-secret")
    count, size = p.stat()
    assert count == 3 and size > 0
    uids = [line.split()[1] for line in p.uidl()[1]]
    resp, lines, _ = p.retr(1)
    assert resp.startswith(b"+OK") and b"Subject: m0" in lines and b".dot" in lines and b"body 0" in lines
    resp, lines, _ = p.top(2, 0)
    assert b"Subject: m1" in lines and b"body 1" not in lines
    p.dele(1)
    p.dele(2)
    p.quit()

    p = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], timeout=10, context=client_ctx())
    p.user("jane@example.org")
    p.pass_("jane-secret")
    assert p.stat()[0] == 1
    assert [line.split()[1] for line in p.uidl()[1]] == [uids[2]]  # UIDL stable across sessions
    p.rset()
    p.quit()


def test_pop3_wrong_password(pop_server):
    srv, ports = pop_server
    p = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], timeout=10, context=client_ctx())
    p.user("jane")
    with pytest.raises(poplib.error_proto, match="Authentication failed"):
        p.pass_("nope")
    p.quit()
    assert "auth.failed" in srv.wait_log("auth.failed")
