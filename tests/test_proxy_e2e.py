"""PROXY protocol, trusted proxies and allow/block lists through a real stalwartd.

haproxy (Debian) is the real PROXY sender; the test itself plays a trusted proxy where it needs an
attributed address outside the loopback range (loopback is always allowed, security.md §2).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from harness import Server, free_port, listener, recv_line
from stalwart._fast import proxy_py

PROXY_SRC = "127.0.0.3"  # the address our test proxies connect from; the only trusted one


def as_proxy(port, header: bytes, src=PROXY_SRC, timeout=5.0) -> socket.socket:
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    if header:
        s.sendall(header)
    return s


def v1(client, port=25):
    return proxy_py.build_v1(client, "127.0.0.1", 40000, port)


def greeted(sock) -> bool:
    try:
        return recv_line(sock).startswith(b"220 ")
    except (ConnectionResetError, socket.timeout):
        return False


def cli(srv, *args):
    cmd = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
           "--data-dir", srv.data_dir, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    ports = {n: free_port() for n in ("smtp", "smtps", "http", "slow")}
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2,
                           "proxyTrustedNetworks": [PROXY_SRC]},
        "Http": {"useXForwarded": True},
        "NetworkListener": [
            listener("smtp", "smtp", ports["smtp"]),
            listener("smtps", "smtp", ports["smtps"], tlsImplicit=True),
            listener("http", "http", ports["http"]),
            listener("slow", "smtp", ports["slow"], tlsTimeout=1000),
        ],
    }
    srv = Server(tmp_path_factory.mktemp("proxy"), cfg, extra_args=["--log-level", "debug"]).start()
    yield srv, ports
    srv.stop()


def test_trusted_proxy_v1_and_v2_reach_the_session(proxied):
    srv, ports = proxied
    s = as_proxy(ports["smtp"], v1("198.51.100.10"))
    assert greeted(s)
    s.close()
    hdr = proxy_py.build_v2(source="2001:db8::10", destination="2001:db8::25", source_port=1234,
                            destination_port=25, crc=True)
    s = as_proxy(ports["smtp"], hdr + b"NOOP\r\n")
    assert greeted(s)
    assert recv_line(s) == b"250 2.0.0 OK\r\n"  # bytes after the header go to the protocol
    s.close()
    log = srv.wait_log("RemoteIp=2001:db8::10")
    assert "RemoteIp=198.51.100.10" in log


def test_untrusted_client_sending_proxy_header_is_refused(proxied):
    srv, ports = proxied
    s = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5)
    assert greeted(s)  # server speaks first; the guard applies to what the client sends
    s.sendall(v1("203.0.113.9") + b"QUIT\r\n")
    assert s.recv(100) == b""  # closed, not a single byte reached the SMTP parser
    s.close()
    srv.wait_log("network.proxy-untrusted")
    s = socket.create_connection(("127.0.0.1", ports["smtps"]), timeout=5)
    s.sendall(proxy_py.build_v2(source="203.0.113.9", destination="127.0.0.1", source_port=1, destination_port=2))
    assert s.recv(100) == b""  # before the TLS handshake too
    s.close()


def test_trusted_peer_garbage_or_silence_is_closed_without_greeting(proxied):
    srv, ports = proxied
    s = as_proxy(ports["smtp"], b"EHLO not-a-proxy-header\r\n")
    assert s.recv(100) == b""
    s.close()
    srv.wait_log("Reason=bad-signature")
    s = as_proxy(ports["smtp"], b"PROXY TCP4 192.0.2.1 192.0.2.2 0056324 25\r\n")  # leading zero
    assert s.recv(100) == b""
    s.close()
    srv.wait_log("Reason=bad-address")
    s = as_proxy(ports["slow"], b"", timeout=10)
    start = time.monotonic()
    assert s.recv(100) == b""  # nothing within tlsTimeout (1 s)
    assert time.monotonic() - start < 5
    s.close()
    srv.wait_log("Reason=timeout")


def test_proxy_local_command_is_the_proxy_itself(proxied):
    srv, ports = proxied
    s = as_proxy(ports["smtp"], proxy_py.build_v2(command="LOCAL"))
    assert greeted(s)
    s.close()


def test_ssl_tlv_marks_session_as_tls(proxied):
    srv, ports = proxied
    hdr = proxy_py.build_v2(source="198.51.100.20", destination="127.0.0.1", source_port=1, destination_port=25,
                            tlvs=[proxy_py.ssl_tlv(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")])
    s = as_proxy(ports["smtp"], hdr + b"EHLO x\r\n")
    assert greeted(s)
    ehlo = b""
    while True:
        line = recv_line(s)
        ehlo += line
        if not line.startswith(b"250-"):
            break
    assert b"STARTTLS" not in ehlo
    s.sendall(b"STARTTLS\r\n")
    assert recv_line(s).startswith(b"504 5.7.4")
    s.close()


def test_implicit_tls_behind_proxy(proxied):
    import ssl

    srv, ports = proxied
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = as_proxy(ports["smtps"], v1("198.51.100.30", 465))
    t = ctx.wrap_socket(s, server_hostname="mx.example.test")
    assert recv_line(t).startswith(b"220 ")
    t.close()


def test_http_trusted_proxy_may_omit_header_with_use_x_forwarded(proxied):
    srv, ports = proxied
    s = as_proxy(ports["http"], b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert s.recv(200).startswith(b"HTTP/1.1 200 OK")
    s.close()


def test_cli_block_drops_range_on_every_worker_and_remove_restores(proxied):
    srv, ports = proxied
    out = cli(srv, "blocked", "add", "192.0.2.0/24", "--reason", "manual")
    assert out.returncode == 0, out.stderr
    time.sleep(1.0)  # propagation bound: 1 s
    for i in range(20):  # enough connections to land on both workers
        s = as_proxy(ports["smtp"], v1(f"192.0.2.{i + 1}"))
        assert s.recv(100) == b"", i
        s.close()
    assert "security.ip-blocked" in srv.log()
    listing = cli(srv, "blocked", "list").stdout
    assert "192.0.2.0/24" in listing
    assert cli(srv, "blocked", "remove", "192.0.2.0/24").returncode == 0
    time.sleep(1.0)
    for i in range(10):
        s = as_proxy(ports["smtp"], v1(f"192.0.2.{i + 1}"))
        assert greeted(s)
        s.close()


def test_allowed_host_inside_blocked_network_and_expiry(proxied):
    srv, ports = proxied
    assert cli(srv, "blocked", "add", "203.0.0.0/16").returncode == 0
    assert cli(srv, "allowed", "add", "203.0.113.77", "--reason", "partner").returncode == 0
    assert cli(srv, "blocked", "add", "198.18.0.1", "--ttl", "2").returncode == 0
    time.sleep(1.0)
    s = as_proxy(ports["smtp"], v1("203.0.113.77"))
    assert greeted(s)
    s.close()
    s = as_proxy(ports["smtp"], v1("203.0.113.78"))
    assert s.recv(100) == b""
    s.close()
    s = as_proxy(ports["smtp"], v1("198.18.0.1"))
    assert s.recv(100) == b""
    s.close()
    time.sleep(2.2)  # the entry expires: it stops matching at once, purge or not
    s = as_proxy(ports["smtp"], v1("198.18.0.1"))
    assert greeted(s)
    s.close()
    assert cli(srv, "blocked", "remove", "203.0.0.0/16").returncode == 0
    assert cli(srv, "allowed", "remove", "203.0.113.77").returncode == 0
    bad = cli(srv, "blocked", "add", "10.0.0.0/4")
    assert bad.returncode == 1 and "prefix length" in bad.stderr


def test_new_block_closes_open_sessions(proxied):
    srv, ports = proxied
    s = as_proxy(ports["smtp"], v1("198.51.100.99"))
    assert greeted(s)
    assert cli(srv, "blocked", "add", "198.51.100.99").returncode == 0
    s.settimeout(3)
    assert s.recv(100) == b""
    s.close()
    assert cli(srv, "blocked", "remove", "198.51.100.99").returncode == 0


def test_runtime_blocks_survive_restart(tmp_path):
    port = free_port()
    cfg = {"SystemSettings": {"threadPoolSize": 1, "proxyTrustedNetworks": [PROXY_SRC]},
           "NetworkListener": [listener("smtp", "smtp", port)]}
    srv = Server(tmp_path, cfg).start()
    try:
        assert cli(srv, "blocked", "add", "192.0.2.55").returncode == 0
    finally:
        srv.stop()
    srv = Server(tmp_path, cfg).start()
    try:
        s = as_proxy(port, v1("192.0.2.55"))
        assert s.recv(100) == b""
        s.close()
    finally:
        srv.stop()


HAPROXY_CFG = """
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend plain_v1
    bind 127.0.0.1:{f1}
    default_backend to_v1
backend to_v1
    server s1 127.0.0.1:{smtp} send-proxy source {src}
frontend plain_v2
    bind 127.0.0.1:{f2}
    default_backend to_v2
backend to_v2
    server s2 127.0.0.1:{smtp} send-proxy-v2 source {src}
frontend spoofed_v2
    bind 127.0.0.1:{f3}
    tcp-request connection set-src ipv4(192.0.2.200)
    default_backend to_v2b
backend to_v2b
    server s3 127.0.0.1:{smtp} send-proxy-v2 source {src}
"""


@pytest.fixture
def haproxy(tmp_path, proxied):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (scripts/test-deps installs it)")
    srv, ports = proxied
    hp = {"f1": free_port(), "f2": free_port(), "f3": free_port()}
    path = tmp_path / "haproxy.cfg"
    path.write_text(HAPROXY_CFG.format(smtp=ports["smtp"], src=PROXY_SRC, **hp))
    proc = subprocess.Popen(["haproxy", "-f", str(path), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", hp["f3"]), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield hp
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)


def test_haproxy_send_proxy_v1_and_v2(proxied, haproxy):
    srv, ports = proxied
    for port in (haproxy["f1"], haproxy["f2"]):
        s = socket.socket()
        s.bind(("127.0.0.9", 0))  # the original client, as haproxy will report it
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        assert greeted(s)
        s.sendall(b"QUIT\r\n")
        assert recv_line(s).startswith(b"221 ")
        s.close()
    log = srv.wait_log("RemoteIp=127.0.0.9", count=2)
    assert "network.proxy-error" not in log.split("RemoteIp=127.0.0.9")[-1]


def test_haproxy_blocked_client_dropped_not_the_proxy(proxied, haproxy):
    srv, ports = proxied
    assert cli(srv, "blocked", "add", "192.0.2.200").returncode == 0
    try:
        time.sleep(1.0)
        s = socket.create_connection(("127.0.0.1", haproxy["f3"]), timeout=5)
        assert s.recv(100) == b""  # the spoofed client address is blocked
        s.close()
        s = socket.create_connection(("127.0.0.1", haproxy["f2"]), timeout=5)
        assert greeted(s)  # the proxy itself, carrying another client, is still served
        s.close()
        srv.wait_log("RemoteIp=192.0.2.200")
    finally:
        cli(srv, "blocked", "remove", "192.0.2.200")
