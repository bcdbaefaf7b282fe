"""The auto-ban layer without a server: events in, counters, bans, closed sessions (security.md §3-§5)."""
import ipaddress
import json

import pytest

from stalwart import events
from stalwart.config import Config, parse_bytes
from stalwart.security.access import AccessLists
from stalwart.security.autoban import AutoBan, SharedSecurity, mask, subject_text
from stalwart.security.store import AccessStore


class FakeConn:
    def __init__(self, span, ip, port=40000, exempt=False):
        self.span, self.remote_ip, self.remote_port, self.exempt = span, ip, port, exempt
        self.packed = ipaddress.ip_address(ip).packed
        self.core = None
        self._closing = False
        self.aborted = self.closed = False

    def abort(self):
        self.aborted = self._closing = True

    def close(self):
        self.closed = self._closing = True


class FakeLoop:
    def call_soon(self, fn, *args):
        fn(*args)


class FakeWorker:
    def __init__(self, cfg):
        self.sessions = set()
        self.spans = {}  # kept by the driver in a real worker
        self.access = AccessLists.build(cfg)
        self.loop = FakeLoop()

    def connect(self, span, ip, **kw):
        conn = FakeConn(span, ip, **kw)
        self.sessions.add(conn)
        self.spans[span] = conn
        return conn


def config(**security) -> Config:
    return parse_bytes(json.dumps({"Security": security}).encode(), source="<test>")


@pytest.fixture
def logged():
    seen = []

    def record(event, keys):
        seen.append((event, dict(keys)))

    ids = ["security.authentication-ban", "security.abuse-ban", "security.loiter-ban", "security.scan-ban",
           "security.login-throttled", "network.closed"]
    for i in ids:
        events.subscribe(i, record)
    yield seen
    for i in ids:
        events.log().unsubscribe(i, record)


@pytest.fixture
def layers():
    made = []

    def make(cfg=None, shared=None, workers=1):
        cfg = cfg or Config()
        shared = shared or SharedSecurity(256, 256)
        out = []
        for _ in range(workers):
            worker = FakeWorker(cfg)
            ab = AutoBan(worker, shared, cfg)
            worker.autoban = ab
            ab.subscribe()
            made.append(ab)
            out.append((worker, ab))
        return out

    yield make
    for ab in made:
        ab.unsubscribe()


def fail_auth(span, ip, login="alice", password=None):
    keys = {"SpanId": span, "RemoteIp": ip, "AccountName": login, "Protocol": "smtp"}
    if password is not None:
        keys["Credential"] = password
    events.emit("auth.failed", **keys)


def test_auth_failures_ban_at_the_101st(layers, logged):
    [(worker, ab)] = layers()
    conn = worker.connect(1, "192.0.2.10")
    for i in range(100):
        fail_auth(1, "192.0.2.10", password=f"guess{i}")
    assert not ab.is_banned(conn.packed) and not conn.aborted
    fail_auth(1, "192.0.2.10", password="guess100")
    assert ab.is_banned(conn.packed)
    assert conn.aborted  # SMTP/IMAP/POP3/ManageSieve: close, no reply
    bans = [k for e, k in logged if e == "security.authentication-ban"]
    assert bans and bans[0]["RemoteIp"] == "192.0.2.10" and bans[0]["AccountName"] == "alice"
    assert not ab.is_banned(ipaddress.ip_address("192.0.2.11").packed)


def test_stale_password_is_counted_once(layers):
    [(worker, ab)] = layers()
    conn = worker.connect(1, "192.0.2.20")
    for _ in range(1000):
        fail_auth(1, "192.0.2.20", password="old-password")
    assert not ab.is_banned(conn.packed)
    for i in range(100):
        fail_auth(1, "192.0.2.20", password=f"new{i}")
    assert ab.is_banned(conn.packed)


def test_credential_never_reaches_the_log(layers):
    layers()
    keys_seen = []
    events.subscribe("auth.failed", lambda e, k: keys_seen.append(dict(k)))
    fail_auth(0, "192.0.2.30", password="hunter2")
    assert keys_seen and all("Credential" not in k for k in keys_seen)


def test_allowed_and_exempt_addresses_are_never_counted(layers):
    [(worker, ab)] = layers(config(scanBanRate={"count": 1, "period": 60000}))
    lo = worker.connect(1, "127.0.0.1")
    proxy = worker.connect(2, "192.0.2.40", exempt=True)
    for _ in range(5):
        events.emit("smtp.invalid-command", SpanId=1, RemoteIp="127.0.0.1", Reason="Invalid SMTP command")
        events.emit("smtp.invalid-command", SpanId=2, RemoteIp="192.0.2.40", Reason="Invalid SMTP command")
    assert not lo.aborted and not proxy.aborted
    assert not ab.bans.entries(2_000_000_000)


def test_ipv6_clients_are_counted_and_banned_per_64(layers, logged):
    [(worker, ab)] = layers(config(scanBanRate={"count": 2, "period": 60000}))
    for span, ip in enumerate(["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"], 1):
        worker.connect(span, ip)
        events.emit("imap.invalid-command", SpanId=span, RemoteIp=ip, Reason="Invalid IMAP command")
    assert ab.is_banned(ipaddress.ip_address("2001:db8:1:2::99").packed)
    assert not ab.is_banned(ipaddress.ip_address("2001:db8:1:3::1").packed)
    ban = [k for e, k in logged if e == "security.scan-ban"][0]
    assert "2001:db8:1:2::/64" in ban["Details"]


def test_null_rate_disables_the_category(layers):
    cfg = parse_bytes(json.dumps({"Security": {"loiterBanRate": None}}).encode(), source="<test>")
    [(worker, ab)] = layers(cfg)
    worker.connect(1, "192.0.2.50")
    for _ in range(500):
        events.emit("smtp.loitering", SpanId=1, RemoteIp="192.0.2.50")
    assert not ab.bans.entries(2_000_000_000)


def test_rcpt_ban_writes_the_reply_first_and_closes_other_sessions(layers):
    [(worker, ab)] = layers(config(abuseBanRate={"count": 2, "period": 60000}))
    trigger = worker.connect(1, "198.51.100.7")
    other = worker.connect(2, "198.51.100.7", port=40001)
    bystander = worker.connect(3, "198.51.100.8")
    for i in range(3):
        events.emit("smtp.mailbox-does-not-exist", SpanId=1, RemoteIp="198.51.100.7", To=f"u{i}@example.org")
    assert trigger.closed and not trigger.aborted  # the 550 is written, then the session closes
    assert other.aborted and not bystander.aborted


def test_login_counter_throttles_but_never_bans(layers, logged):
    [(worker, ab)] = layers(config(authBanRate={"count": 3, "period": 60000}))
    # four addresses, each under its own limit, hammer one login
    for span, ip in enumerate(["192.0.2.61", "192.0.2.62", "192.0.2.63", "192.0.2.64", "192.0.2.65"], 1):
        worker.connect(span, ip)
        fail_auth(span, ip, login="Victim ", password=f"p{span}")
    assert not ab.bans.entries(2_000_000_000)
    throttled = [k for e, k in logged if e == "security.login-throttled"]
    assert throttled and throttled[0]["AccountName"] == "victim"


def test_banned_path_bans_at_once(layers, logged):
    [(worker, ab)] = layers()
    conn = worker.connect(7, "203.0.113.9")
    events.emit("security.banned-path", ListenerId="http", RemoteIp="203.0.113.9", SpanId=7,
                Path="/wp-login.php", Details="*/wp-*")
    assert ab.is_banned(conn.packed)
    assert conn.closed and not conn.aborted  # the 403 goes out first
    assert [k for e, k in logged if e == "security.scan-ban"][0]["Path"] == "/wp-login.php"


def test_a_ban_reaches_the_other_workers_sessions(layers):
    shared = SharedSecurity(256, 256)
    (w1, a1), (w2, a2) = layers(config(scanBanRate={"count": 1, "period": 60000}), shared, workers=2)
    w1.connect(1, "192.0.2.77")
    elsewhere = w2.connect(2, "192.0.2.77")
    for _ in range(2):
        a1._on_scan("smtp.invalid-command", {"SpanId": 1, "RemoteIp": "192.0.2.77"})
    assert not elsewhere.aborted
    a2.sweep()
    assert elsewhere.aborted and a2.is_banned(elsewhere.packed)


def test_ban_period_sets_expiry(layers):
    [(worker, ab)] = layers(config(scanBanRate={"count": 1, "period": 60000}, scanBanPeriod=1500))
    worker.connect(1, "192.0.2.88")
    for _ in range(2):
        events.emit("network.proxy-untrusted", ListenerId="smtp", LocalPort=25, RemoteIp="192.0.2.88",
                    RemotePort=40000)
    [entry] = ab.bans.entries(0)
    import time
    assert int(time.time()) + 1 <= entry[3] <= int(time.time()) + 3


def test_master_persists_loads_and_lifts(tmp_path, layers):
    shared = SharedSecurity(256, 256)
    [(worker, ab)] = layers(config(authBanRate={"count": 1, "period": 60000}, authBanPeriod=3_600_000,
                                   ipv6BanPrefix=48), shared)
    worker.connect(1, "2001:db8:aa:bb::1")
    fail_auth(1, "2001:db8:aa:bb::1", password="x")
    fail_auth(1, "2001:db8:aa:bb::1", password="y")
    store = AccessStore(str(tmp_path / "access.db"))
    assert shared.persist(store) == 1
    assert shared.persist(store) == 0  # written once
    [row] = store.entries("blocked")
    assert (row.address, row.reason) == ("2001:db8:aa::/48", "authFailure") and row.expires_at
    # a restart: a fresh table gets the ban back from the store
    fresh = SharedSecurity(256, 256)
    assert fresh.load(store) == 1
    assert fresh.bans.contains(ipaddress.ip_address("2001:db8:aa:ff::5").packed, row.expires_at - 1)
    assert fresh.unban("2001:db8:aa::/48")
    assert not fresh.bans.contains(ipaddress.ip_address("2001:db8:aa:ff::5").packed, row.expires_at - 1)
    store.close()


def test_mask_and_text():
    packed = ipaddress.ip_address("192.0.2.77").packed
    assert mask(packed, 24, 64) == (bytes([192, 0, 2, 0]), 24)
    assert subject_text(*mask(packed, 32, 64)) == "192.0.2.77"
    assert subject_text(*mask(ipaddress.ip_address("2001:db8:1:2:3::").packed, 32, 64)) == "2001:db8:1:2::/64"
