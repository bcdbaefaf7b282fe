"""Auto-ban across two stalwartd nodes sharing a real redis-server (issue 6, "Clusters").

Both nodes trust the test's proxy address 127.0.0.3, which names the offending client in a PROXY
v2 header (loopback itself is always allowed). Garbage commands are split between the nodes so
that neither node's own counter goes over the limit: only the shared Redis window can ban.
"""
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from harness import Server, free_port, listener, recv_line
from stalwart._fast import proxy_py

pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")

PROXY_SRC = "127.0.0.3"
CLIENT = "198.51.100.77"


@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def node(tmp_path, name, url, key_prefix="stalwart-test:"):
    port = free_port()
    cfg = {"SystemSettings": {"defaultHostname": f"{name}.example.test", "threadPoolSize": 2,
                              "proxyTrustedNetworks": [PROXY_SRC]},
           "Security": {"scanBanRate": {"count": 2, "period": 60000}},
           "Redis": {"url": url, "keyPrefix": key_prefix},
           "NetworkListener": [listener("smtp", "smtp", port, useTls=False)]}
    return Server(tmp_path / name, cfg).start(), port


def session(port, client=CLIENT):
    s = socket.socket()
    s.bind((PROXY_SRC, 0))
    s.settimeout(15)
    s.connect(("127.0.0.1", port))
    s.sendall(proxy_py.build_v2(proxy_py.PROXY, client, "127.0.0.1", 40000, 25))
    return s


def served(port, client=CLIENT) -> bool:
    try:
        with session(port, client) as s:
            return recv_line(s, 10.0).startswith(b"220 ")
    except (ConnectionResetError, socket.timeout):
        return False


def garbage(port, n):
    with session(port) as s:
        assert recv_line(s, 10.0).startswith(b"220 ")
        for _ in range(n):
            s.sendall(b"GARBAGE\r\n")
            if not recv_line(s, 10.0):
                break


def wait_until(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def cli(srv, *args):
    cmd = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
           "--data-dir", srv.data_dir, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_two_nodes_share_counters_and_bans(tmp_path, redis_url):
    a, port_a = node(tmp_path, "a", redis_url)
    try:
        b, port_b = node(tmp_path, "b", redis_url)  # same Redis, same key prefix: one cluster
        try:
            garbage(port_a, 1)  # node a counts 1
            garbage(port_b, 2)  # node b counts 2: no node alone is over 2, the cluster is at 3
            assert wait_until(lambda: "security.scan-ban" in a.log() + b.log())
            # the ban reaches both nodes within about a second
            assert wait_until(lambda: not served(port_a) and not served(port_b), 10)
            assert served(port_a, "198.51.100.78") and served(port_b, "198.51.100.78")
            assert wait_until(lambda: CLIENT in cli(a, "blocked", "list").stdout
                              and CLIENT in cli(b, "blocked", "list").stdout)
            # a lift on one node lifts it on every node
            out = cli(a, "blocked", "remove", CLIENT)
            assert out.returncode == 0, out.stdout + out.stderr
            assert wait_until(lambda: served(port_a) and served(port_b), 10)
        finally:
            b.stop()
    finally:
        a.stop()


def test_unreachable_redis_fails_open(tmp_path):
    """A cluster store that cannot be reached is logged; local auto-ban keeps working."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    srv, port = node(tmp_path, "solo", dead)
    try:
        garbage(port, 3)
        srv.wait_log("security.scan-ban", timeout=15)
        assert not served(port)
        assert served(port, "198.51.100.78")
        srv.wait_log("security.cluster-error", timeout=15)
    finally:
        srv.stop()
