"""The ClientHello peek in the driver: non-TLS bytes on an implicit-TLS port end with a clear event,
count as scanning (security.md §4), and a real ClientHello split across reads still works."""
import socket
import ssl
import time

import pytest

from harness import Server, free_port, listener
from stalwart._fast import proxy_py

PROXY_SRC = "127.0.0.3"


@pytest.fixture(scope="module")
def tls_srv(tmp_path_factory):
    port = free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2,
                           "proxyTrustedNetworks": [PROXY_SRC]},
        "Security": {"scanBanRate": {"count": 3, "period": 60000}},
        "NetworkListener": [listener("smtps", "smtp", port, tlsImplicit=True)],
    }
    srv = Server(tmp_path_factory.mktemp("peek"), cfg).start()
    yield srv, port
    srv.stop()


def via_proxy(port, client_ip, payload: bytes) -> bytes:
    s = socket.socket()
    s.bind((PROXY_SRC, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(proxy_py.build_v1(client_ip, "127.0.0.1", 40000, port) + payload)
    try:
        return s.recv(100)
    except ConnectionResetError:
        return b""
    finally:
        s.close()


def test_plaintext_on_tls_port_is_named_in_the_event(tls_srv):
    srv, port = tls_srv
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"EHLO plaintext.example\r\n")
    assert c.recv(100) == b""  # nothing written: not even a TLS alert to a non-TLS client
    c.close()
    log = srv.wait_log('Reason=not-tls Details="not-tls; sent plaintext-smtp"')
    assert "RemoteIp=127.0.0.1" in log


def test_client_hello_split_in_tiny_writes(tls_srv):
    srv, port = tls_srv
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="mx.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    for i in range(0, len(hello), 7):  # the peek must wait for the whole record
        raw.sendall(hello[i:i + 7])
        time.sleep(0.001)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = raw.recv(65536)
            assert data, "server closed during the handshake"
            incoming.write(data)
            if outgoing.pending:
                raw.sendall(outgoing.read())
    if outgoing.pending:
        raw.sendall(outgoing.read())
    buf = b""
    while b"\r\n" not in buf:
        try:
            buf += obj.read(1024)
        except ssl.SSLWantReadError:
            incoming.write(raw.recv(65536))
    assert buf.startswith(b"220 mx.example.test")
    raw.close()


def test_tls_garbage_counts_as_scanning_and_bans(tls_srv):
    srv, port = tls_srv
    for _ in range(4):  # scanBanRate count 3: the 4th event in the window trips the ban
        assert via_proxy(port, "198.51.100.66", b"GET / HTTP/1.1\r\n\r\n") == b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "security.scan-ban" not in srv.log():
        time.sleep(0.1)
    srv.wait_log("security.scan-ban")
    # banned: even a proper ClientHello from that client is now dropped before the handshake
    assert via_proxy(port, "198.51.100.66", b"\x16\x03\x01\x00\x05hello") == b""
    assert "security.ip-blocked" in srv.log()


def test_acme_tls_alpn_without_pending_challenge_fails_the_handshake(tmp_path):
    """tls.md §7.5: a ClientHello offering only acme-tls/1 for a name with no pending challenge gets
    no handshake; a normal client on the same listener is unaffected."""
    port = free_port()
    cfg = {"SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 1},
           "NetworkListener": [listener("https", "http", port, tlsImplicit=True)]}
    srv = Server(tmp_path, cfg).start()
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        acme = ssl.create_default_context()
        acme.check_hostname = False
        acme.verify_mode = ssl.CERT_NONE
        acme.set_alpn_protocols(["acme-tls/1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            acme.wrap_socket(raw, server_hostname="nothing-pending.example.test")
        raw.close()
        srv.wait_log("acme.tls-alpn-error")
        tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="mx.example.test")
        tls.sendall(b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
        tls.close()
    finally:
        srv.stop()
