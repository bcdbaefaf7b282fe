"""Management API through the sans-IO core, with the master's control socket replaced by a recorder."""
import base64

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stalwart.accounts import hash_password
from stalwart.protocols import NEED_DATA
from stalwart.protocols.base import Blocking
from stalwart.protocols.http import HttpService, management
from tests.http_util import config, parse, session

HASH = hash_password("s3cret", ln=4)
CFG = {"Domain": [{"name": "example.org"}],
       "Account": [{"name": "admin", "secret": HASH, "emails": ["admin@example.org"]},
                   {"name": "jane", "secret": HASH, "emails": ["jane@example.org"]}],
       "Http": {"administrators": ["admin"]}}
STATUS = {"ok": True, "pid": 1, "generation": 3, "hostname": "h", "connections": 5,
          "workers": [{"pid": 2, "worker": 1, "generation": 3, "ready": True, "accepting": True, "heartbeat": 1.0}],
          "listeners": {"http": 2, 'we"ird': 3}}


@pytest.fixture
def control(monkeypatch):
    calls = []
    replies = {"status": STATUS,
               "blocked.list": {"ok": True, "entries": [{"address": "192.0.2.0/24", "reason": "manual",
                                                         "source": "runtime"}]},
               "allowed.list": {"ok": True, "entries": []},
               "blocked.add": {"ok": True, "entry": {"address": "198.51.100.0/24"}},
               "blocked.remove": {"ok": False, "error": "198.51.100.9 is not in the blocked list"},
               "allowed.remove": {"ok": False, "error": "10.0.0.0/8 comes from the configuration file: edit it"},
               "reload": {"ok": True, "message": "generation 4"},
               "geo.lookup": {"ok": True, "address": "198.51.100.7", "source": "Mmdb", "found": True,
                              "asn": 64500, "asnName": "EXAMPLE-NET", "country": "US"}}

    def fake(data_dir, command, timeout=0, **args):
        calls.append((command, args))
        return replies[command]

    monkeypatch.setattr(management, "control_request", fake)
    return calls


def auth(user="admin", password="s3cret"):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(method, target, body=b"", authorization=None, svc=None, **extra):
    svc = svc or HttpService(config(CFG), data_dir="/nonexistent")
    core = session(svc, **{"tls": True, **extra})
    hdrs = "Host: x\r\n" + (f"Authorization: {authorization}\r\n" if authorization else "")
    if body or method in ("POST", "DELETE"):
        hdrs += f"Content-Length: {len(body)}\r\n"
    core.receive_data(f"{method} {target} HTTP/1.1\r\n{hdrs}\r\n".encode() + body)
    out = b""
    while True:
        ev = core.next_event()
        if ev is NEED_DATA:
            break
        if isinstance(ev, Blocking):  # what the driver does: run it off the loop, hand back the result
            try:
                result, error = ev.fn(*ev.args), None
            except Exception as exc:  # noqa: BLE001
                result, error = None, exc
            core.blocking_done(result, error)
            continue
        out += ev.data
    return parse(out, [method])[0]


def test_requires_credentials_and_rejects_wrong_password_and_non_admins(control, monkeypatch):
    seen = []
    monkeypatch.setattr(management.events, "emit", lambda event, **keys: seen.append((event, keys)))
    reply = call("GET", "/api/status")
    assert reply.status == 401 and reply.headers["www-authenticate"].startswith("Basic ")
    assert call("GET", "/api/status", authorization=auth(password="nope")).status == 401
    assert call("GET", "/api/status", authorization=auth(user="jane")).status == 401
    assert call("GET", "/api/status", authorization="Basic !!!").status == 401
    assert control == []  # nothing reached the master
    failed = [k for e, k in seen if e == "auth.failed"]  # a request without credentials is not counted
    assert [k["AccountName"] for k in failed] == ["admin", "jane"] and failed[0]["RemoteIp"] == "192.0.2.9"
    assert failed[0]["Credential"].value == "nope" and str(failed[0]["Credential"]) == "***"


def test_status_and_lists(control):
    reply = call("GET", "/api/status", authorization=auth())
    assert reply.status == 200 and reply.json()["listeners"]["http"] == 2 and "ok" not in reply.json()
    reply = call("GET", "/api/blocked-ip", authorization=auth())
    assert reply.json() == {"entries": [{"address": "192.0.2.0/24", "reason": "manual", "source": "runtime"}]}
    head = call("HEAD", "/api/blocked-ip", authorization=auth())
    assert head.status == 200 and head.body == b""


def test_create_and_delete(control):
    body = b'{"address": "198.51.100.0/24", "reason": "other", "expiresAt": "2030-01-01T00:00:00Z"}'
    reply = call("POST", "/api/blocked-ip", body, authorization=auth())
    assert reply.status == 201 and reply.json() == {"entry": {"address": "198.51.100.0/24"}}
    assert control[-1] == ("blocked.add", {"address": "198.51.100.0/24", "reason": "other", "expiresAt": 1893456000})
    assert call("POST", "/api/blocked-ip", b"[1]", authorization=auth()).status == 400
    assert call("POST", "/api/blocked-ip", b"{", authorization=auth()).status == 400
    assert call("DELETE", "/api/blocked-ip/198.51.100.9", authorization=auth()).status == 404
    reply = call("DELETE", "/api/allowed-ip/10.0.0.0%2F8", authorization=auth())
    assert reply.status == 409 and control[-1] == ("allowed.remove", {"address": "10.0.0.0/8"})
    assert call("PUT", "/api/allowed-ip", authorization=auth()).status == 405


def test_geo_lookup(control):
    reply = call("GET", "/api/geo/198.51.100.7", authorization=auth())
    assert reply.status == 200 and reply.json()["asn"] == 64500 and reply.json()["country"] == "US"
    assert control[-1] == ("geo.lookup", {"address": "198.51.100.7"})
    assert call("POST", "/api/geo/198.51.100.7", authorization=auth()).status == 405
    assert call("GET", "/api/geo/198.51.100.7").status == 401


def test_dns_lookup_runs_in_the_worker(control):
    asked = []

    def lookup(rtype, name, timeout):
        asked.append((rtype, name))
        return {"ok": True, "type": rtype.upper(), "name": name, "result": ["192.0.2.1"], "cache": "dnsIpv4",
                "cached": True, "negative": False, "weight": 120, "ttl": 299.5}

    reply = call("GET", "/api/dns/a/mx.example.org", authorization=auth(), dns_lookup=lookup)
    assert reply.status == 200 and reply.json()["cached"] is True and reply.json()["result"] == ["192.0.2.1"]
    assert asked == [("a", "mx.example.org")] and all(c[0] != "dns.lookup" for c in control)
    bad = call("GET", "/api/dns/a/x", authorization=auth(),
               dns_lookup=lambda *a: {"ok": False, "status": 400, "error": "unsupported type"})
    assert bad.status == 400
    assert call("GET", "/api/dns/a", authorization=auth(), dns_lookup=lookup).status == 400


def test_reload(control):
    reply = call("POST", "/api/reload", authorization=auth())
    assert reply.status == 200 and reply.json() == {"message": "generation 4"}
    assert call("GET", "/api/reload", authorization=auth()).headers["allow"] == "POST"


def test_metrics_parse_as_prometheus_text(control):
    reply = call("GET", "/metrics", authorization=auth())
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    conns = {s.labels["listener"]: s.value for s in families["stalwart_connections"].samples}
    assert conns == {"http": 2, 'we"ird': 3}
    assert families["stalwart_generation"].samples[0].value == 3
    blocked = [s for s in families["stalwart_ip_list_entries"].samples if s.labels["list"] == "blocked"]
    assert [(s.labels["reason"], s.value) for s in blocked] == [("manual", 1)]


def test_control_socket_down_is_503(monkeypatch):
    def down(*_a, **_k):
        raise management.ControlError("cannot reach stalwartd")

    monkeypatch.setattr(management, "control_request", down)
    assert call("GET", "/api/status", authorization=auth()).status == 503


def test_disabled_without_administrators(control):
    svc = HttpService(config({k: v for k, v in CFG.items() if k != "Http"}), data_dir="/nonexistent")
    assert call("GET", "/api/status", authorization=auth(), svc=svc).status == 404


def test_pipelined_request_waits_for_the_deferred_one(control):
    core = session(HttpService(config(CFG), data_dir="/x"), tls=True)
    a = auth()
    core.receive_data((f"GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: {a}\r\n\r\n"
                       "GET /healthz/live HTTP/1.1\r\nHost: x\r\n\r\n").encode())
    ev = core.next_event()
    assert isinstance(ev, Blocking) and core.next_event() is NEED_DATA
    core.blocking_done(ev.fn(*ev.args), None)
    out = b""
    while (ev := core.next_event()) is not NEED_DATA:
        out += ev.data
    first, second = parse(out, ["GET", "GET"])
    assert first.json()["generation"] == 3 and second.body == b'{"status":"ok"}'


def test_failure_that_bans_is_answered_429(control):
    svc = HttpService(config(CFG), data_dir="/x")
    banned = []
    core = session(svc, tls=True, is_blocked=lambda packed: bool(banned))
    core.receive_data(f"GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: {auth(password='x')}\r\n\r\n".encode())
    ev = core.next_event()
    result = ev.fn(*ev.args)
    banned.append(True)  # what the auto-ban layer does on the auth.failed event that crossed the rate
    core.blocking_done(result, None)
    reply = parse(core.next_event().data, ["GET"])[0]
    assert reply.status == 429 and reply.json()["title"] == "Too Many Authentication Attempts"


def test_authenticated_rate_limit(control):
    import mmap

    from stalwart._fast import ratecounter_py

    counters = ratecounter_py.RateCounter(mmap.mmap(-1, ratecounter_py.size_for(64)), 64)
    svc = HttpService(config({**CFG, "Http": {"administrators": ["admin"],
                                              "rateLimitAuthenticated": {"count": 2, "period": 60000}}}),
                      data_dir="/x")
    statuses = [call("GET", "/api/status", authorization=auth(), svc=svc, counters=counters).status for _ in range(3)]
    assert statuses == [200, 200, 429] and len(control) == 2  # the refused one never reached the master
    reply = call("GET", "/api/status", authorization=auth(), svc=svc, counters=counters)
    assert reply.headers["ratelimit-policy"] == '"authenticated";q=2;w=60'


def test_credentials_only_over_tls_loopback_or_allowed_plaintext(control):
    reply = call("GET", "/api/status", authorization=auth(), tls=False)
    assert reply.status == 403 and "TLS" in reply.json()["detail"] and control == []
    assert call("GET", "/api/status", authorization=auth(), tls=False, remote_ip="127.0.0.1").status == 200
    assert call("GET", "/api/status", authorization=auth(), tls=False, remote_ip="::1").status == 200
    lst = {"name": "http", "protocol": "http", "bind": ["192.0.2.1:8080"], "allowPlainTextAuth": True}
    svc = HttpService(config({**CFG, "NetworkListener": [lst]}), data_dir="/x")
    assert call("GET", "/api/status", authorization=auth(), svc=svc, tls=False).status == 200
