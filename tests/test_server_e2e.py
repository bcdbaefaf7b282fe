"""End-to-end: a real stalwartd process, real clients, real signals."""
import http.client
import imaplib
import os
import poplib
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest

from harness import Server, free_port, listener, recv_line


@pytest.fixture
def ports():
    return {name: free_port() for name in ("smtp", "lmtp", "imap", "pop3", "sieve", "http")}


def full_config(ports, **system):
    return {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2, **system},
        "NetworkListener": [
            listener("smtp", "smtp", ports["smtp"]),
            listener("lmtp", "lmtp", ports["lmtp"]),
            listener("imap", "imap", ports["imap"]),
            listener("pop3", "pop3", ports["pop3"]),
            listener("sieve", "manageSieve", ports["sieve"]),
            listener("http", "http", ports["http"]),
        ],
    }


@pytest.fixture
def server(tmp_path, ports):
    srv = Server(tmp_path, full_config(ports)).start()
    yield srv
    srv.stop()


def test_every_protocol_greets_and_quits(server, ports):
    s = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=5)
    code, msg = s.ehlo("client.example.test")
    assert code == 250 and msg.startswith(b"mx.example.test")
    assert s.quit() == (221, b"2.0.0 Bye.")

    lm = smtplib.LMTP("127.0.0.1", ports["lmtp"], timeout=5)
    assert lm.ehlo("client.example.test")[0] == 250  # smtplib.LMTP sends LHLO
    assert lm.quit()[0] == 221

    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=5)
    assert "IMAP4REV1" in imap.capabilities
    typ, _ = imap.noop()
    assert typ == "OK"
    assert imap.logout()[0] == "BYE"

    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=5)
    assert pop.getwelcome().startswith(b"+OK")
    assert "UIDL" in pop.capa()
    assert pop.quit().startswith(b"+OK")

    with socket.create_connection(("127.0.0.1", ports["sieve"]), timeout=5) as c:
        lines = [recv_line(c) for _ in range(6)]
        assert lines[0].startswith(b'"IMPLEMENTATION"')
        assert lines[-1].startswith(b"OK ")
        c.sendall(b"LOGOUT\r\n")
        assert recv_line(c).startswith(b"OK")
        assert c.recv(10) == b""

    conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=5)
    conn.request("GET", "/healthz/live")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b'{"status":"ok"}'
    conn.request("GET", "/no/such/thing")  # same keep-alive connection
    r = conn.getresponse()
    assert r.status == 404 and r.getheader("Content-Type") == "application/problem+json"
    r.read()
    conn.close()


def test_processes_are_named(server):
    deadline = time.monotonic() + 5
    while len(server.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(f"/proc/{server.pid}/cmdline", "rb") as fh:
        assert fh.read().startswith(b"stalwartd: master")
    for pid in server.workers():
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            assert fh.read().startswith(b"stalwartd: worker ")


def test_cli_status_and_reload(server):
    env = dict(os.environ)
    cli = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
           "--data-dir", server.data_dir]
    out = subprocess.run(cli + ["status"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert '"generation": 1' in out.stdout
    out = subprocess.run(cli + ["reload"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "generation 2" in out.stdout


def test_graceful_shutdown_sends_farewell_lines(tmp_path, ports):
    srv = Server(tmp_path, full_config(ports)).start()
    try:
        conns = {}
        for name in ("smtp", "imap", "pop3", "sieve"):
            c = socket.create_connection(("127.0.0.1", ports[name]), timeout=5)
            for _ in range(6 if name == "sieve" else 1):
                recv_line(c)
            conns[name] = c
        srv.signal(signal.SIGTERM)
        expected = {
            "smtp": b"421 4.3.0 mx.example.test Server shutting down.\r\n",
            "imap": b"* BYE Server shutting down.\r\n",
            "pop3": b"-ERR Server shutting down.\r\n",
            "sieve": b'BYE "Server shutting down."\r\n',
        }
        for name, c in conns.items():
            assert recv_line(c) == expected[name]
            assert c.recv(10) == b""
            c.close()
        assert srv.proc.wait(20) == 0
    finally:
        srv.stop()


def test_invalid_config_on_sighup_keeps_serving(server, ports):
    server.reload('{"NetworkListener": [{"name": "x", "bind": ["127.0.0.1:99999"]}]}', expect="server.reload-error")
    log = server.log()
    assert "$.NetworkListener[0].bind[0]" in log
    s = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=5)
    assert s.noop()[0] == 250
    s.quit()


def test_reload_adds_listener_and_changes_settings(server, ports):
    cfg = full_config(ports)
    cfg["SystemSettings"]["defaultHostname"] = "mx2.example.test"
    extra = free_port()
    cfg["NetworkListener"].append(listener("smtp2", "smtp", extra))
    server.reload(cfg)
    for port in (ports["smtp"], extra):
        s = smtplib.SMTP("127.0.0.1", port, timeout=5)
        assert s.ehlo()[1].startswith(b"mx2.example.test")
        s.quit()


def test_reload_removing_listener_closes_its_socket(server, ports):
    cfg = full_config(ports)
    cfg["NetworkListener"] = [lst for lst in cfg["NetworkListener"] if lst["name"] != "pop3"]
    server.reload(cfg)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", ports["pop3"]), timeout=1).close()
        except ConnectionRefusedError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the removed listener still accepts connections")


def test_server_wide_connection_cap(tmp_path, ports):
    srv = Server(tmp_path, full_config(ports, maxConnections=5)).start()
    try:
        held = []
        for _ in range(5):
            c = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5)
            assert recv_line(c).startswith(b"220 ")
            held.append(c)
        extra = socket.create_connection(("127.0.0.1", ports["imap"]), timeout=5)
        extra.settimeout(5)
        assert extra.recv(100) == b""  # closed without a reply
        extra.close()
        srv.wait_log("limit.concurrent-connection")
        assert 'Details=server' in srv.log()
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the slot comes back once the server saw the close
            c = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5)
            line = recv_line(c)
            c.close()
            if line.startswith(b"220 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert line.startswith(b"220 ")
        for c in held:
            c.close()
    finally:
        srv.stop()


def test_listener_cap(tmp_path, ports):
    cfg = full_config(ports)
    cfg["NetworkListener"][0]["maxConnections"] = 2
    srv = Server(tmp_path, cfg).start()
    try:
        held = [socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5) for _ in range(2)]
        for c in held:
            assert recv_line(c).startswith(b"220 ")
        c3 = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5)
        assert c3.recv(100) == b""
        other = socket.create_connection(("127.0.0.1", ports["pop3"]), timeout=5)
        assert recv_line(other).startswith(b"+OK")  # other listeners are not affected
        srv.wait_log("limit.concurrent-connection")
        assert "Details=listener" in srv.log()
        for c in (*held, c3, other):
            c.close()
    finally:
        srv.stop()


def test_bind_in_use_fails_startup(tmp_path, ports):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports["imap"]))
    blocker.listen(1)
    try:
        srv = Server(tmp_path, full_config(ports)).start(wait=False)
        assert srv.proc.wait(20) == 1
        err = srv.proc.stderr.read().decode()
        assert "listener 'imap'" in err and f"127.0.0.1:{ports['imap']}" in err
        assert "in use" in err
        srv.stop()
    finally:
        blocker.close()


def test_invalid_config_at_startup_names_the_field(tmp_path, ports):
    cfg = full_config(ports)
    cfg["NetworkListener"][2]["bind"] = ["[::]:99999"]
    srv = Server(tmp_path, cfg).start(wait=False)
    assert srv.proc.wait(20) == 2
    err = srv.proc.stderr.read().decode()
    assert '$.NetworkListener[2].bind[0]: \'[::]:99999\' is not a valid socket address' in err
    srv.stop()


def test_kill_9_worker_keeps_queued_connections_and_refills_slot(tmp_path, ports):
    """Connections queued on the shared socket survive a worker's death (anchors.md §1)."""
    srv = Server(tmp_path, full_config(ports)).start()
    try:
        deadline = time.monotonic() + 5
        while len(srv.workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        w1, w2 = srv.workers()
        os.kill(w1, signal.SIGSTOP)
        os.kill(w2, signal.SIGSTOP)
        queued = [socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=10) for _ in range(20)]
        os.kill(w1, signal.SIGKILL)
        os.kill(w2, signal.SIGCONT)
        for c in queued:
            assert recv_line(c, timeout=10).startswith(b"220 ")
            c.sendall(b"QUIT\r\n")
            assert recv_line(c).startswith(b"221 ")
            c.close()
        srv.wait_log("server.worker-exit")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = srv.workers()
            if len(pids) == 2 and w1 not in pids:
                break
            time.sleep(0.1)
        assert len(srv.workers()) == 2 and w1 not in srv.workers()
    finally:
        srv.stop()


def test_workers_ignore_sighup_to_process_group(server, ports):
    deadline = time.monotonic() + 5
    while len(server.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = set(server.workers())
    for pid in before:
        os.kill(pid, signal.SIGHUP)
    time.sleep(0.5)
    assert set(server.workers()) == before
    s = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=5)
    s.quit()


@pytest.mark.slow
def test_hung_worker_is_replaced(tmp_path, ports):
    srv = Server(tmp_path, full_config(ports), extra_args=["--heartbeat-timeout", "2"]).start()
    try:
        deadline = time.monotonic() + 5
        while len(srv.workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = srv.workers()[0]
        os.kill(victim, signal.SIGSTOP)
        srv.wait_log("server.worker-hung", timeout=15)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pids = srv.workers()
            if len(pids) == 2 and victim not in pids:
                break
            time.sleep(0.1)
        assert victim not in srv.workers() and len(srv.workers()) == 2
    finally:
        srv.stop()


def _status(srv):
    from stalwart.server.control import request

    return request(srv.data_dir, "status", timeout=10)


def test_dead_workers_slots_are_given_back(tmp_path, ports):
    """network.md §1 crash accounting: a killed worker's held slots return to the counters."""
    srv = Server(tmp_path, full_config(ports)).start()
    try:
        held = []
        for _ in range(4):
            c = socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5)
            assert recv_line(c).startswith(b"220 ")
            held.append(c)
        assert _status(srv)["connections"] == 4
        for pid in srv.workers():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = _status(srv)
            if st["connections"] == 0 and len(st["workers"]) == 2 and all(w["ready"] for w in st["workers"]):
                break
            time.sleep(0.1)
        assert st["connections"] == 0 and st["listeners"]["smtp"] == 0
        for c in held:
            c.close()
        s = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=5)
        s.quit()
    finally:
        srv.stop()


def test_sigusr1_reopens_log_file(server, ports):
    rotated = server.log_path + ".1"
    os.rename(server.log_path, rotated)
    server.signal(signal.SIGUSR1)
    time.sleep(0.5)
    server.reload()  # writes server.reload-complete into the new file
    assert "server.reload-complete" in server.log()
    with open(rotated) as fh:
        assert "server.reload-complete" not in fh.read()
