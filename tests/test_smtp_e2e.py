"""SMTP, submission and LMTP through a real stalwartd with real clients (smtplib, swaks)."""
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time

import pytest
from harness import Server, client_ctx, free_port, listener, recv_line
from mailcore import arrival_sorted

from stalwart.accounts import hash_password


def mail_config(ports, **extra):
    return {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2},
        "NetworkListener": [
            listener("smtp", "smtp", ports["smtp"]),
            listener("submission", "smtp", ports["submission"]),
            listener("lmtp", "lmtp", ports["lmtp"], useTls=False),
            listener("pop3", "pop3", ports["pop3"]),
            listener("imap", "imap", ports["imap"]),
            listener("sieve", "manageSieve", ports["sieve"]),
            listener("rig", "smtp", ports["rig"], useTls=False, allowPlainTextAuth=True),
        ],
        "Domain": [{"name": "example.org"}],
        "Account": [
            {"name": "jane", "secret": hash_password("jane-secret", ln=8), "emails": ["jane@example.org"]},
            {"name": "bob", "secret": hash_password("bob-secret", ln=8), "emails": ["bob@example.org"]},
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def mail_server(tmp_path_factory):
    ports = {n: free_port() for n in ("smtp", "submission", "lmtp", "pop3", "imap", "sieve", "rig")}
    srv = Server(tmp_path_factory.mktemp("mail"), mail_config(ports)).start()
    yield srv, ports
    srv.stop()


def inbox(srv, account):
    new = os.path.join(srv.data_dir, "mail", account, "new")
    if not os.path.isdir(new):
        return []
    return [open(os.path.join(new, n), "rb").read() for n in arrival_sorted(os.listdir(new))]


def wait_inbox(srv, account, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = inbox(srv, account)
        if len(msgs) >= n:
            return msgs
        time.sleep(0.05)
    return inbox(srv, account)


def test_plain_smtp_delivers_to_local_mailbox(mail_server):
    srv, ports = mail_server
    before = len(inbox(srv, "bob"))
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
        code, caps = s.ehlo("client.example.test")
        assert code == 250 and b"STARTTLS" in caps and b"AUTH" not in caps
        s.sendmail("sender@remote.test", ["bob@example.org"], b"Subject: plain\r\n\r\nHello Bob.\r\n.dot line\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            s.sendmail("sender@remote.test", ["nobody@example.org"], b"Subject: x\r\n\r\nx\r\n")
        assert info.value.recipients["nobody@example.org"][0] == 550
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            s.sendmail("sender@remote.test", ["someone@remote.test"], b"Subject: x\r\n\r\nx\r\n")
        assert info.value.recipients["someone@remote.test"] == (554, b"5.7.1 Relay access denied.")
    msgs = inbox(srv, "bob")
    assert len(msgs) == before + 1
    assert msgs[-1].startswith(b"Received: from client.example.test (unknown [127.0.0.1])")
    assert msgs[-1].endswith(b"Subject: plain\r\n\r\nHello Bob.\r\n.dot line\r\n")
    log = srv.log()
    assert "smtp.mailbox-does-not-exist" in log and "smtp.relay-not-allowed" in log


def test_submission_starttls_and_auth(mail_server):
    srv, ports = mail_server
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=10) as s:
        s.ehlo("laptop")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            s.login("jane", "jane-secret")  # no AUTH offered before TLS
        s.starttls(context=client_ctx())
        code, caps = s.ehlo("laptop")
        assert b"AUTH PLAIN LOGIN" in caps
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            s.login("jane", "wrong")
        assert info.value.smtp_code == 535
        assert s.login("jane@example.org", "jane-secret")[0] == 235
        s.sendmail("jane@example.org", ["bob@example.org"], b"Subject: submitted\r\n\r\nvia 587\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            s.sendmail("jane@example.org", ["friend@remote.test"], b"Subject: x\r\n\r\nx\r\n")
        assert info.value.recipients["friend@remote.test"][0] == 451
    msg = [m for m in inbox(srv, "bob") if b"Subject: submitted" in m]
    assert msg and b"with ESMTPSA" in msg[0] and b"(using TLSv1.3 with cipher" in msg[0]
    assert "auth.failed" in srv.log() and "AccountName=jane" in srv.log()


def test_plain_text_auth_rig_listener(mail_server):
    srv, ports = mail_server
    with smtplib.SMTP("127.0.0.1", ports["rig"], timeout=10) as s:
        s.ehlo("rig")
        assert s.has_extn("auth")
        s.login("bob", "bob-secret")


def test_lmtp_multi_recipient_replies(mail_server):
    srv, ports = mail_server
    with smtplib.LMTP("127.0.0.1", ports["lmtp"], timeout=10) as s:
        s.ehlo("mta")  # smtplib.LMTP sends LHLO
        s.mail("sender@remote.test")
        assert s.rcpt("jane@example.org")[0] == 250
        assert s.rcpt("bob@example.org")[0] == 250
        assert s.rcpt("ghost@example.org")[0] == 550
        s.putcmd("data")
        assert s.getreply()[0] == 354
        s.send(b"Subject: lmtp\r\n\r\nfor two\r\n.\r\n")
        assert s.getreply() == (250, b"2.1.5 <jane@example.org> delivered.")
        assert s.getreply() == (250, b"2.1.5 <bob@example.org> delivered.")
    assert any(b"Subject: lmtp" in m for m in inbox(srv, "jane"))


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (scripts/test-deps)")
def test_swaks_starttls_and_auth(mail_server):
    srv, ports = mail_server
    res = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(ports["submission"]), "--tls",
                          "--auth", "PLAIN", "--auth-user", "jane", "--auth-password", "jane-secret",
                          "--from", "jane@example.org", "--to", "bob@example.org", "--header", "Subject: swaks",
                          "--body", "from swaks", "--timeout", "10"], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert b"250 2.0.0 Message accepted for delivery." in res.stdout
    assert any(b"Subject: swaks" in m for m in wait_inbox(srv, "bob", 1))


def test_dropped_connection_mid_data_delivers_nothing(mail_server):
    srv, ports = mail_server
    before = len(inbox(srv, "jane"))
    sock = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5)
    recv_line(sock)
    sock.sendall(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\n")
    for _ in range(9):  # EHLO (7 lines), MAIL, RCPT
        recv_line(sock)
    assert recv_line(sock).startswith(b"354")
    sock.sendall(b"Subject: partial\r\n\r\n" + b"x" * 10000)
    sock.close()
    time.sleep(0.5)
    assert len(inbox(srv, "jane")) == before
    tmp = os.path.join(srv.data_dir, "mail", "jane", "tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == []


def test_account_added_by_cli_is_live_after_sighup(tmp_path):
    ports = {n: free_port() for n in ("smtp", "submission", "lmtp", "pop3", "imap", "sieve", "rig")}
    srv = Server(tmp_path, mail_config(ports))
    try:
        srv.start()
        import sys

        cmd = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
               "--config", srv.config_path, "account", "add", "carol", "--email", "carol@example.net",
               "--password-stdin"]
        res = subprocess.run(cmd, input=b"carol-pw\n", capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert json.load(open(srv.config_path))["Account"][-1]["name"] == "carol"
        srv.reload()
        with smtplib.SMTP("127.0.0.1", ports["rig"], timeout=10) as s:
            s.ehlo("x")
            s.login("carol@example.net", "carol-pw")
            s.sendmail("carol@example.net", ["carol@example.net"], b"Subject: self\r\n\r\nme\r\n")
        assert len(inbox(srv, "carol")) == 1
    finally:
        srv.stop()


def test_shutdown_mid_data_finishes_the_message_first(tmp_path):
    ports = {n: free_port() for n in ("smtp", "submission", "lmtp", "pop3", "imap", "sieve", "rig")}
    srv = Server(tmp_path, mail_config(ports)).start()
    try:
        sock = socket.create_connection(("127.0.0.1", ports["lmtp"]), timeout=10)
        recv_line(sock)
        sock.sendall(b"LHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<jane@example.org>\r\nDATA\r\n")
        while not recv_line(sock).startswith(b"354"):
            pass
        sock.sendall(b"Subject: during shutdown\r\n\r\nstart")
        time.sleep(0.2)
        srv.signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(b" end\r\n.\r\n")
        assert recv_line(sock) == b"250 2.1.5 <jane@example.org> delivered.\r\n"
        assert recv_line(sock) == b"421 4.3.0 mx.example.test Server shutting down.\r\n"
        sock.close()
    finally:
        srv.stop()
    assert any(b"start end" in m for m in inbox(srv, "jane"))


def test_auth_offered_behind_a_tls_terminating_proxy(tmp_path):
    """A trusted proxy's PROXY v2 header with the SSL TLV marks the session as TLS: AUTH is offered
    and the Received header names the proxy's TLS facts."""
    from stalwart._fast import proxy_py
    from stalwart.accounts.sasl import encode_plain

    port = free_port()
    cfg = mail_config({n: free_port() for n in ("smtp", "submission", "lmtp", "pop3", "imap", "sieve", "rig")})
    cfg["SystemSettings"]["proxyTrustedNetworks"] = ["127.0.0.2"]
    cfg["NetworkListener"] = [listener("proxied", "smtp", port)]
    srv = Server(tmp_path, cfg).start()
    try:
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(proxy_py.build_v2(source="198.51.100.7", destination="127.0.0.1", source_port=40000,
                                    destination_port=port,
                                    tlvs=[proxy_py.ssl_tlv(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")]))
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"EHLO laptop\r\n")
        ehlo = [f.readline()]
        while ehlo[-1].startswith(b"250-"):
            ehlo.append(f.readline())
        assert ehlo[-1] == b"250 AUTH PLAIN LOGIN\r\n" and not any(b"STARTTLS" in x for x in ehlo)
        s.sendall(b"AUTH PLAIN " + encode_plain("jane", "jane-secret").encode() + b"\r\n"
                  b"MAIL FROM:<jane@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        assert [f.readline()[:3] for _ in range(4)] == [b"235", b"250", b"250", b"354"]
        s.sendall(b"Subject: proxied\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert f.readline().startswith(b"250 ")
        s.close()
        msg = [m for m in inbox(srv, "bob") if b"Subject: proxied" in m][0]
        assert msg.startswith(b"Received: from laptop (unknown [198.51.100.7])\r\n\t(using TLSv1.3 with cipher "
                              b"TLS_AES_256_GCM_SHA384)") and b"with ESMTPSA" in msg
    finally:
        srv.stop()
