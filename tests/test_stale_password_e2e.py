"""security.md §3 stale-password rule, end to end: a client stuck on one wrong password is counted
once, never banned; the same number of *different* wrong passwords is banned."""
import base64
import socket
import threading

import pytest

from harness import Server, free_port, listener, recv_line
from stalwart._fast import proxy_py
from stalwart.accounts import hash_password

pytestmark = pytest.mark.slow
PROXY_SRC = "127.0.0.3"


def attempts(port, client_ip, passwords):
    """One SMTP session through the trusted proxy; AUTH PLAIN with each password until closed.
    Returns how many AUTH replies came back (0: dropped at connect, i.e. banned)."""
    s = socket.socket()
    s.bind((PROXY_SRC, 0))
    s.settimeout(20)
    s.connect(("127.0.0.1", port))
    s.sendall(proxy_py.build_v1(client_ip, "127.0.0.1", 40000, port))
    answered = 0
    try:
        if not recv_line(s).startswith(b"220"):
            return 0
        s.sendall(b"EHLO client.example\r\n")
        while recv_line(s).startswith(b"250-"):
            pass
        for pw in passwords:
            token = base64.b64encode(b"\0jane\0" + pw.encode()).decode()
            s.sendall(f"AUTH PLAIN {token}\r\n".encode())
            line = recv_line(s)
            if not line:
                break
            answered += 1
            if line.startswith(b"421"):
                break
    except (ConnectionResetError, socket.timeout):
        pass
    finally:
        s.close()
    return answered


def run_parallel(port, client_ip, password_sets, threads=20):
    results = []
    lock = threading.Lock()
    sets = list(password_sets)

    def worker():
        while True:
            with lock:
                if not sets:
                    return
                pw = sets.pop()
            n = attempts(port, client_ip, pw)
            with lock:
                results.append(n)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    return results


@pytest.fixture
def server(tmp_path):
    port = free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2,
                           "proxyTrustedNetworks": [PROXY_SRC]},
        "Imap": {"maxAuthFailures": 10},
        "NetworkListener": [listener("smtp", "smtp", port, allowPlainTextAuth=True)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("right", ln=4), "emails": ["jane@example.org"]}],
    }
    srv = Server(tmp_path, cfg).start()
    yield srv, port
    srv.stop()


def test_same_wrong_password_1000_times_is_not_banned(server):
    srv, port = server
    results = run_parallel(port, "192.0.2.77", [["stale-password"] * 10 for _ in range(100)])
    assert sum(results) == 1000 and 0 not in results, results
    assert "security.authentication-ban" not in srv.log()


def test_101_different_wrong_passwords_are_banned(server):
    srv, port = server
    sets = [[f"guess-{i}-{j}" for j in range(10)] for i in range(11)]  # 110 distinct passwords
    run_parallel(port, "192.0.2.88", sets, threads=4)
    srv.wait_log("security.authentication-ban")
    assert attempts(port, "192.0.2.88", ["again"]) == 0  # dropped at connect from now on
