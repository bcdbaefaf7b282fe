"""Auto-ban through a real stalwartd with real clients (security.md §4-§5, issue 6).

Loopback is always allowed (security.md §2), so clients that must be counted either come through
a trusted proxy that names them in a PROXY header, or connect from documentation addresses
(192.0.2.0/24, 2001:db8::/32) put on ``lo`` inside a private network namespace that the test
creates for itself (no traffic ever leaves the namespace).
"""
import ctypes
import http.client
import imaplib
import os
import poplib
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import traceback

import pytest

from harness import Server, free_port, listener, recv_line
from stalwart._fast import proxy_py
from stalwart.accounts import hash_password

PROXY_SRC = "127.0.0.3"  # the only trusted proxy
CLONE_NEWNET = 0x40000000
NETNS_ADDRESSES = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "2001:db8:1:2::5",
                   "2001:db8:1:3::5")


def run_in_netns(fn, *args, timeout=180.0):
    """Run ``fn(*args)`` in a forked child inside a new network namespace with the documentation
    addresses on ``lo``; its assertion errors are re-raised here."""
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed (scripts/test-deps installs it)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                os.write(w, b"SKIP unshare(CLONE_NEWNET) is not permitted here")
                code = 0
            else:
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
                for addr in NETNS_ADDRESSES:
                    extra = ["nodad"] if ":" in addr else []
                    subprocess.run(["ip", "addr", "add", addr + ("/128" if ":" in addr else "/32"), "dev", "lo",
                                    *extra], check=True)
                fn(*args)
                code = 0
        except BaseException:  # noqa: BLE001 - the parent reports it
            os.write(w, traceback.format_exc().encode()[-8000:])
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("scenario did not finish in time")
        time.sleep(0.05)
    with os.fdopen(r, "rb") as fh:
        report = fh.read().decode()
    if report.startswith("SKIP "):
        pytest.skip(report[5:])
    assert os.waitstatus_to_exitcode(status) == 0, report


def connect(port, src=None, host="127.0.0.1", timeout=15.0):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam)
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    s.connect((host, port))
    return s


def greeted(port, src=None, header=b"", host="127.0.0.1") -> bool:
    """True when the server greets; False when it closes without a word."""
    try:
        with connect(port, src, host) as s:
            if header:
                s.sendall(header)
            return recv_line(s, 10.0).startswith(b"220 ")
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError, socket.timeout):
        return False


class Pop3From(poplib.POP3):
    """poplib.POP3 connecting from a chosen source address."""

    def __init__(self, host, port, source, timeout=20):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


class ImapFrom(imaplib.IMAP4):
    """imaplib.IMAP4 connecting from a chosen source address."""

    def __init__(self, host, port, source, timeout=20):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


def wait_until(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def cli(srv, *args):
    cmd = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
           "--data-dir", srv.data_dir, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def blocked(srv):
    out = cli(srv, "--json", "blocked", "list")
    if out.returncode != 0:
        out = cli(srv, "blocked", "list")
    return out.stdout


def base_config(ports, security, **extra):
    return {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2,
                           "proxyTrustedNetworks": [PROXY_SRC]},
        "Security": security,
        "MtaInboundSession": {"timeout": 1000},
        "NetworkListener": [
            listener("smtp", "smtp", ports["smtp"], useTls=False, allowPlainTextAuth=True),
            {"name": "smtp6", "protocol": "smtp", "bind": [f"[::1]:{ports['smtp6']}"], "useTls": False},
        ],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("jane-secret", ln=4), "emails": ["jane@example.org"]}],
        **extra,
    }


def ports_():
    return {"smtp": free_port(), "smtp6": free_port("::1")}


# -- scenarios, run inside the namespace -------------------------------------------------------------

def scenario_untrusted_proxy_scan(tmp):
    ports = ports_()
    srv = Server(tmp, base_config(ports, {"scanBanRate": {"count": 3, "period": 60000}})).start()
    try:
        header = proxy_py.build_v1("203.0.113.50", "127.0.0.1", 40000, ports["smtp"])
        for _ in range(4):
            with connect(ports["smtp"], "192.0.2.1") as s:
                s.sendall(header)
                got = b""
                while chunk := s.recv(4096):  # the greeting at most, then the close
                    got += chunk
            assert got in (b"", b"220 mx.example.test ESMTP\r\n") or got.startswith(b"220 "), got
            assert got.count(b"\r\n") <= 1, got  # nothing answers the PROXY bytes
        srv.wait_log("security.scan-ban", timeout=15)
        # the scanner's next connections are dropped without a greeting, on every worker
        assert not any(greeted(ports["smtp"], "192.0.2.1") for _ in range(6))
        assert greeted(ports["smtp"], "192.0.2.2")  # another address is served
        assert "Untrusted PROXY header" in srv.log()
        assert wait_until(lambda: "192.0.2.1" in blocked(srv))
        listing = blocked(srv)
        assert "portScanning" in listing, listing
        # bans survive a restart: the master loads them back into the shared table
        srv.stop()
        srv.start()
        assert not greeted(ports["smtp"], "192.0.2.1")
        # `blocked remove` lifts it on every worker at once
        out = cli(srv, "blocked", "remove", "192.0.2.1")
        assert out.returncode == 0, out.stderr + out.stdout
        assert wait_until(lambda: all(greeted(ports["smtp"], "192.0.2.1") for _ in range(4)))
    finally:
        srv.stop()


def scenario_auth_and_invalid_commands(tmp):
    ports = ports_()
    srv = Server(tmp, base_config(ports, {"authBanRate": {"count": 2, "period": 60000},
                                          "scanBanRate": {"count": 4, "period": 60000}})).start()
    try:
        # smtplib AUTH failures with different wrong passwords: the 3rd bans and closes, no reply
        client = smtplib.SMTP("127.0.0.1", ports["smtp"], source_address=("192.0.2.1", 0), timeout=20)
        client.ehlo("scanner.example")
        outcomes = []
        for i in range(3):
            client.user, client.password = "jane", f"wrong-{i}"
            try:
                client.auth("PLAIN", client.auth_plain)  # one mechanism: one failure per attempt
            except smtplib.SMTPAuthenticationError:
                outcomes.append("refused")
            except smtplib.SMTPServerDisconnected:
                outcomes.append("closed")
                break
        assert outcomes == ["refused"] * 2 + ["closed"], outcomes
        srv.wait_log("security.authentication-ban", timeout=15)
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
            smtplib.SMTP("127.0.0.1", ports["smtp"], source_address=("192.0.2.1", 0), timeout=15)
        # IPv6 garbage commands before authentication: counted per /64 (2001:db8:1:2::5)
        with connect(ports["smtp6"], "2001:db8:1:2::5", host="::1") as s:
            assert recv_line(s).startswith(b"220 ")
            replies = []
            for _ in range(5):
                s.sendall(b"XYZZY plugh\r\n")
                replies.append(recv_line(s, 10.0))
        assert replies[:4] == [b"500 5.5.1 Invalid command.\r\n"] * 4 or all(
            r.startswith((b"500", b"501", b"502")) for r in replies[:4]), replies
        assert replies[4] == b"", replies  # banned: closed without a reply
        srv.wait_log("security.scan-ban", timeout=15)
        assert not greeted(ports["smtp6"], "2001:db8:1:2::5", host="::1")
        assert greeted(ports["smtp6"], "2001:db8:1:3::5", host="::1")  # another /64
        assert greeted(ports["smtp"], "192.0.2.2")
    finally:
        srv.stop()


def scenario_loiter(tmp):
    ports = ports_()
    srv = Server(tmp, base_config(ports, {"loiterBanRate": {"count": 1, "period": 60000}})).start()
    try:
        for _ in range(2):
            with connect(ports["smtp"], "192.0.2.1") as s:
                assert recv_line(s).startswith(b"220 ")
                line = recv_line(s, 15.0)  # idle past MtaInboundSession.timeout without a command
                assert line.startswith(b"421 "), line
        srv.wait_log("security.loiter-ban", timeout=15)
        assert not greeted(ports["smtp"], "192.0.2.1")
        assert greeted(ports["smtp"], "192.0.2.2")
    finally:
        srv.stop()


def scenario_rcpt_pop3_http_and_max_duration(tmp):
    ports = dict(ports_(), pop3=free_port(), http=free_port())
    cfg = base_config(ports, {"authBanRate": {"count": 2, "period": 60000},
                              "abuseBanRate": {"count": 2, "period": 60000},
                              "loiterBanRate": {"count": 1, "period": 60000}},
                      MtaInboundSession={"timeout": 5000, "maxDuration": 1500})
    cfg["NetworkListener"] += [listener("pop3", "pop3", ports["pop3"], useTls=False, allowPlainTextAuth=True),
                               listener("http", "http", ports["http"])]
    srv = Server(tmp, cfg).start()
    try:
        # smtplib RCPT TO unknown users: the 3rd earns the ban, its 550 is written, then the close
        client = smtplib.SMTP("127.0.0.1", ports["smtp"], source_address=("192.0.2.1", 0), timeout=20)
        client.ehlo("relay.example")
        assert client.mail("someone@example.net")[0] == 250
        codes = []
        for i in range(3):
            codes.append(client.rcpt(f"nobody{i}@example.org")[0])
        assert codes == [550, 550, 550], codes
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
            client.noop()
        srv.wait_log("security.abuse-ban", timeout=15)
        assert not greeted(ports["smtp"], "192.0.2.1")

        # poplib USER/PASS failures
        outcomes = []
        pop = Pop3From("127.0.0.1", ports["pop3"], "192.0.2.2")
        for i in range(3):
            try:
                pop.user("jane")
                pop.pass_(f"wrong-{i}")
            except poplib.error_proto:
                outcomes.append("refused")
            except (ConnectionError, EOFError, OSError):
                outcomes.append("closed")
                break
        srv.wait_log("security.authentication-ban", timeout=15)
        assert outcomes[:2] == ["refused", "refused"], outcomes
        with pytest.raises((poplib.error_proto, ConnectionError, OSError, EOFError)):
            Pop3From("127.0.0.1", ports["pop3"], "192.0.2.2", timeout=15)

        # an HTTP GET of a scanBanPaths match bans at once
        conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=15, source_address=("192.0.2.3", 0))
        conn.request("GET", "/wp-login.php")
        assert conn.getresponse().status in (403, 404)
        conn.close()
        assert wait_until(lambda: "security.scan-ban" in srv.log())
        conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=15, source_address=("192.0.2.3", 0))
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.request("GET", "/.well-known/autoconfig/mail/config-v1.1.xml")
            conn.getresponse()
        conn.close()

        # an SMTP session still sending after maxDuration: 421 4.3.2, twice bans for loitering
        for _ in range(2):
            with connect(ports["smtp"], "192.0.2.4") as s:
                assert recv_line(s).startswith(b"220 ")
                deadline = time.monotonic() + 15
                line = b""
                while time.monotonic() < deadline:
                    s.sendall(b"NOOP\r\n")
                    line = recv_line(s, 10.0)
                    if not line.startswith(b"250"):
                        break
                    time.sleep(0.3)
                assert line.startswith(b"421 4.3.2 "), line
        srv.wait_log("security.loiter-ban", timeout=15)
        assert not greeted(ports["smtp"], "192.0.2.4")
        assert greeted(ports["smtp"], "192.0.2.5")
    finally:
        srv.stop()


def scenario_imap_and_managesieve(tmp):
    ports = dict(ports_(), imap=free_port(), sieve=free_port())
    cfg = base_config(ports, {"authBanRate": {"count": 2, "period": 60000},
                              "scanBanRate": {"count": 2, "period": 60000}})
    cfg["NetworkListener"] += [listener("imap", "imap", ports["imap"], useTls=False, allowPlainTextAuth=True),
                               listener("sieve", "manageSieve", ports["sieve"], useTls=False, allowPlainTextAuth=True)]
    srv = Server(tmp, cfg).start()
    try:
        # imaplib LOGIN failures: the 3rd bans (close, no reply)
        outcomes = []
        imap = ImapFrom("127.0.0.1", ports["imap"], "192.0.2.1")
        for i in range(3):
            try:
                imap.login("jane", f"wrong-{i}")
            except imaplib.IMAP4.error as exc:
                outcomes.append("closed" if isinstance(exc, imaplib.IMAP4.abort) else "refused")
            except (ConnectionError, OSError):
                outcomes.append("closed")
            if outcomes[-1] == "closed":
                break
        srv.wait_log("security.authentication-ban", timeout=15)
        assert outcomes[:2] == ["refused", "refused"], outcomes
        with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, ConnectionError, OSError)):
            ImapFrom("127.0.0.1", ports["imap"], "192.0.2.1", timeout=15)

        # garbage IMAP commands before authentication
        with connect(ports["imap"], "192.0.2.2") as s:
            assert recv_line(s).startswith(b"* OK")
            replies = []
            for i in range(3):
                s.sendall(b"a%d FROBNICATE\r\n" % i)
                replies.append(recv_line(s, 10.0))
        assert all(b"BAD" in r for r in replies[:2]), replies
        assert replies[2] == b"", replies
        n = srv.log().count("security.scan-ban")
        assert n >= 1
        # ManageSieve garbage from another address
        with connect(ports["sieve"], "192.0.2.3") as s:
            s.settimeout(3)
            time.sleep(0.2)
            s.recv(65536)  # the capability greeting
            for _ in range(3):
                s.sendall(b"FROBNICATE\r\n")
                time.sleep(0.1)
        srv.wait_log("security.scan-ban", timeout=15, count=n + 1)
        assert not greeted(ports["smtp"], "192.0.2.3")
        assert greeted(ports["smtp"], "192.0.2.4")
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
frontend front
    bind 127.0.0.1:{front}
    default_backend back
backend back
    server s1 127.0.0.1:{smtp} send-proxy-v2 source {src}
"""


def scenario_haproxy(tmp):
    ports = dict(ports_(), front=free_port())
    srv = Server(tmp, base_config(ports, {"scanBanRate": {"count": 2, "period": 60000}})).start()
    path = os.path.join(str(tmp), "haproxy.cfg")
    with open(path, "w") as fh:
        fh.write(HAPROXY_CFG.format(front=ports["front"], smtp=ports["smtp"], src=PROXY_SRC))
    proc = subprocess.Popen(["haproxy", "-f", path, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: greeted(ports["front"], "192.0.2.2"), 10)
        with connect(ports["front"], "192.0.2.1") as s:
            assert recv_line(s).startswith(b"220 ")
            for _ in range(3):
                s.sendall(b"NONSENSE\r\n")
                if not recv_line(s, 10.0):
                    break
        srv.wait_log("security.scan-ban", timeout=15)
        assert "RemoteIp=192.0.2.1" in srv.log()
        # the client is dropped on every worker; the proxy and its other clients are not
        assert not any(greeted(ports["front"], "192.0.2.1") for _ in range(4))
        assert greeted(ports["front"], "192.0.2.2")
        assert PROXY_SRC not in blocked(srv)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        srv.stop()


# -- tests -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_scan_via_untrusted_proxy_header_bans_persists_and_lifts(tmp_path):
    run_in_netns(scenario_untrusted_proxy_scan, tmp_path)


@pytest.mark.slow
def test_auth_failures_and_garbage_commands_ban(tmp_path):
    run_in_netns(scenario_auth_and_invalid_commands, tmp_path)


@pytest.mark.slow
def test_idle_connections_ban_for_loitering(tmp_path):
    run_in_netns(scenario_loiter, tmp_path)


@pytest.mark.slow
def test_rcpt_pop3_http_path_and_max_duration_ban(tmp_path):
    run_in_netns(scenario_rcpt_pop3_http_and_max_duration, tmp_path)


@pytest.mark.slow
def test_imap_and_managesieve_ban(tmp_path):
    run_in_netns(scenario_imap_and_managesieve, tmp_path)


@pytest.mark.slow
def test_through_haproxy_the_client_is_banned_not_the_proxy(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (scripts/test-deps installs it)")
    run_in_netns(scenario_haproxy, tmp_path)


def test_ipv6_rotation_inside_a_64_through_a_trusted_proxy(tmp_path):
    """The proxy is never banned; the clients it names are, per /64."""
    ports = ports_()
    srv = Server(tmp_path, base_config(ports, {"scanBanRate": {"count": 2, "period": 60000}})).start()
    try:
        def via_proxy(client, payload=b""):
            s = connect(ports["smtp"], PROXY_SRC)
            dst = "::1" if ":" in client else "127.0.0.1"
            s.sendall(proxy_py.build_v2(proxy_py.PROXY, client, dst, 40000, 25) + payload)
            return s

        for i in range(3):
            with via_proxy(f"2001:db8:aa:bb::{i + 1}") as s:
                assert recv_line(s).startswith(b"220 ")
                s.sendall(b"GARBAGE\r\n")
                recv_line(s, 10.0)
        srv.wait_log("security.scan-ban", timeout=15)

        def served(client):
            try:
                with via_proxy(client) as s:
                    return recv_line(s, 10.0).startswith(b"220 ")
            except (ConnectionResetError, socket.timeout):
                return False

        assert not any(served("2001:db8:aa:bb:ffff::9") for _ in range(4))  # same /64, every worker
        assert served("2001:db8:aa:bc::1")  # a different /64
        assert served("192.0.2.33")
        assert greeted(ports["smtp"], PROXY_SRC, proxy_py.build_v2(proxy_py.LOCAL))  # the proxy itself
        assert "2001:db8:aa:bb::/64" in srv.log()
    finally:
        srv.stop()


def test_a_ban_expires_and_the_address_can_be_banned_again(tmp_path):
    """security.md §5: with a ban period the address is served again after it, and a new offence
    bans it again at once (the reference cannot re-ban until a restart)."""
    ports = ports_()
    srv = Server(tmp_path, base_config(ports, {"scanBanRate": {"count": 1, "period": 60000},
                                               "scanBanPeriod": 2000})).start()
    try:
        def offend():
            s = connect(ports["smtp"], PROXY_SRC)
            s.sendall(proxy_py.build_v2(proxy_py.PROXY, "198.51.100.61", "127.0.0.1", 40000, 25))
            if recv_line(s, 10.0).startswith(b"220 "):
                for _ in range(2):
                    s.sendall(b"GARBAGE\r\n")
                    if not recv_line(s, 10.0):
                        break
            s.close()

        def served():
            header = proxy_py.build_v2(proxy_py.PROXY, "198.51.100.61", "127.0.0.1", 40000, 25)
            return greeted(ports["smtp"], PROXY_SRC, header)

        offend()
        srv.wait_log("security.scan-ban", timeout=15)
        assert not served()
        assert wait_until(served, 10.0)  # expired after scanBanPeriod
        offend()
        srv.wait_log("security.scan-ban", timeout=15, count=2)
        assert not served()
    finally:
        srv.stop()
