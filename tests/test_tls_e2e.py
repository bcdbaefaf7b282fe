"""TLS through a real stalwartd: implicit TLS, STARTTLS, handshake deadline, garbage, slots."""
import imaplib
import poplib
import smtplib
import socket
import subprocess
import time

import pytest

from harness import Server, client_ctx, free_port, listener, recv_line


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    ports = {n: free_port() for n in ("smtp", "smtps", "imaps", "pop3s", "imap", "slow", "https")}
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2},
        "NetworkListener": [
            listener("smtp", "smtp", ports["smtp"]),
            listener("smtps", "smtp", ports["smtps"], tlsImplicit=True),
            listener("imaps", "imap", ports["imaps"], tlsImplicit=True),
            listener("pop3s", "pop3", ports["pop3s"], tlsImplicit=True),
            listener("imap", "imap", ports["imap"], useTls=False),
            listener("slow", "smtp", ports["slow"], tlsImplicit=True, tlsTimeout=1000),
            listener("https", "http", ports["https"], tlsImplicit=True),
        ],
    }
    srv = Server(tmp_path_factory.mktemp("tls"), cfg).start()
    yield srv, ports
    srv.stop()


def status(srv):
    from stalwart.server.control import request

    return request(srv.data_dir, "status", timeout=10)


def wait_idle(srv, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status(srv)["connections"] == 0:
            return True
        time.sleep(0.05)
    return False


def test_implicit_tls_with_real_clients(tls_server):
    srv, ports = tls_server
    s = smtplib.SMTP_SSL("127.0.0.1", ports["smtps"], timeout=5, context=client_ctx())
    assert s.ehlo()[0] == 250 and s.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert b"STARTTLS" not in s.ehlo_resp
    s.quit()
    imap = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=client_ctx(), timeout=5)
    assert "STARTTLS" not in imap.capabilities
    imap.logout()
    pop = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], context=client_ctx(), timeout=5)
    assert pop.getwelcome().startswith(b"+OK")
    pop.quit()


def test_starttls_with_smtplib(tls_server):
    srv, ports = tls_server
    s = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=5)
    s.ehlo()
    assert s.has_extn("starttls")
    assert s.starttls(context=client_ctx())[0] == 220
    s.ehlo()
    assert not s.has_extn("starttls")
    assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert s.docmd("STARTTLS")[0] == 504  # already in TLS
    s.quit()


def test_starttls_command_injection_is_discarded(tls_server):
    """CVE-2011-0411: plaintext pipelined after STARTTLS must not be executed after the handshake."""
    srv, ports = tls_server
    raw = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5)
    recv_line(raw)
    raw.sendall(b"STARTTLS\r\nHELO injected.example\r\n")
    assert recv_line(raw).startswith(b"220 2.0.0")
    tls = client_ctx().wrap_socket(raw, server_hostname="mx.example.test")
    tls.sendall(b"NOOP\r\n")
    assert recv_line(tls) == b"250 2.0.0 OK\r\n"  # the first reply is for NOOP, not the injected HELO
    tls.sendall(b"QUIT\r\n")
    assert recv_line(tls).startswith(b"221")
    tls.close()


def test_starttls_refused_without_tls(tls_server):
    srv, ports = tls_server
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=5)
    assert "STARTTLS" not in imap.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        imap.starttls(ssl_context=client_ctx())
    imap.logout()


def test_handshake_deadline_closes_silent_client_and_frees_slot(tls_server):
    srv, ports = tls_server
    c = socket.create_connection(("127.0.0.1", ports["slow"]), timeout=10)
    start = time.monotonic()
    assert c.recv(10) == b""  # nothing written; closed by tlsTimeout (1 s)
    assert time.monotonic() - start < 8
    c.close()
    assert wait_idle(srv)
    srv.wait_log("tls.handshake-error")


def test_garbage_instead_of_client_hello(tls_server):
    srv, ports = tls_server
    c = socket.create_connection(("127.0.0.1", ports["smtps"]), timeout=5)
    c.sendall(b"EHLO plaintext.example\r\n" * 4)
    try:
        data = c.recv(100)
    except ConnectionResetError:
        data = b""
    assert data == b"" or data[0] == 0x15  # closed, at most after a TLS alert record; never plaintext
    c.close()
    assert wait_idle(srv)
    s = smtplib.SMTP_SSL("127.0.0.1", ports["smtps"], timeout=5, context=client_ctx())
    s.quit()


def test_many_handshakes_leave_no_slot_behind(tls_server):
    srv, ports = tls_server
    for i in range(60):
        if i % 3 == 0:
            s = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=5)
            s.starttls(context=client_ctx())
            s.quit()
        elif i % 3 == 1:
            s = smtplib.SMTP_SSL("127.0.0.1", ports["smtps"], timeout=5, context=client_ctx())
            s.quit()
        else:
            c = socket.create_connection(("127.0.0.1", ports["smtps"]), timeout=5)
            c.close()  # gives up before the handshake
    assert wait_idle(srv)


def test_openssl_s_client_and_curl(tls_server):
    srv, ports = tls_server
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{ports['smtps']}", "-servername",
                          "mx.example.test", "-brief", "-ign_eof"], input=b"QUIT\r\n", capture_output=True, timeout=20)
    text = (out.stdout + out.stderr).decode()
    assert "Protocol version: TLSv1.3" in text
    assert "220 mx.example.test" in text
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{ports['smtp']}", "-starttls", "smtp",
                          "-brief", "-ign_eof"], input=b"QUIT\r\n", capture_output=True, timeout=20)
    assert "CONNECTION ESTABLISHED" in (out.stdout + out.stderr).decode()
    out = subprocess.run(["curl", "-sk", f"https://127.0.0.1:{ports['https']}/healthz/ready"],
                         capture_output=True, timeout=20)
    assert out.stdout == b'{"status":"ok"}'
