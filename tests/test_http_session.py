"""The HTTP core's request pipeline: block check, banned paths, forwarded clients, headers, and fuzzing."""
import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stalwart.config import Config
from stalwart.protocols.http import HttpService
from stalwart.protocols.http.forwarded import pack
from stalwart.security.access import AccessLists
from tests.http_util import config, parse, request, session, wire


def lists(blocked=(), allowed=()):
    cfg = config({"BlockedIp": [{"address": a} for a in blocked], "AllowedIp": [{"address": a} for a in allowed]})
    built = AccessLists.build(cfg)
    return {"is_blocked": built.is_blocked, "is_allowed": built.is_allowed}


XFF = config({"SystemSettings": {"proxyTrustedNetworks": ["10.0.0.0/8"]}, "Http": {"useXForwarded": True}})


def test_blocked_client_gets_403_problem_on_every_request():
    core = session(HttpService(Config()), remote_ip="198.51.100.5", **lists(["198.51.100.0/24"]),
                   packed=pack("198.51.100.5"))
    out, closed = wire(core, b"GET /healthz/live HTTP/1.1\r\nHost: a\r\n\r\n" * 2)
    replies = parse(out, ["GET", "GET"])
    assert [r.status for r in replies] == [403, 403] and not closed
    assert replies[0].json() == {"type": "about:blank", "status": 403, "title": "Forbidden", "detail": "Forbidden"}
    assert replies[0].headers["cache-control"] == "no-store"


def test_forwarded_client_from_trusted_proxy_is_blocked_untrusted_header_ignored():
    svc = HttpService(XFF)
    access = lists(["203.0.113.0/24"])
    hdr = {"X-Forwarded-For": "203.0.113.7"}
    assert request(svc, "GET", "/healthz/live", headers=hdr, remote_ip="10.0.0.2", **access).status == 403
    # the same header from a client that is not a trusted proxy is ignored
    assert request(svc, "GET", "/healthz/live", headers=hdr, remote_ip="192.0.2.50", **access).status == 200
    # the proxy itself is never blocked, even if listed
    access = lists(["10.0.0.0/8"])
    assert request(svc, "GET", "/healthz/live", remote_ip="10.0.0.2", **access, exempt=False).status == 200


def test_forwarded_headers_ignored_when_use_x_forwarded_is_off():
    svc = HttpService(config({"SystemSettings": {"proxyTrustedNetworks": ["10.0.0.0/8"]}}))
    reply = request(svc, "GET", "/healthz/live", headers={"X-Forwarded-For": "203.0.113.7"},
                    remote_ip="10.0.0.2", **lists(["203.0.113.0/24"]))
    assert reply.status == 200


def test_banned_path_is_403_and_close_before_routing_and_allowed_clients_pass():
    svc = HttpService(Config())
    reply = request(svc, "GET", "/.well-known/wp-login.php/../user-agent-configuration.json")
    assert reply.status == 403 and reply.headers["connection"] == "close"
    reply = request(svc, "GET", "/%2e%2e/healthz/live")
    assert reply.status == 403
    svc = HttpService(config({"Security": {"scanBanPaths": ["*healthz*"]}}))
    assert request(svc, "GET", "/healthz/live").status == 403
    assert request(svc, "GET", "/healthz/live", **lists(allowed=["192.0.2.9"])).status == 200


def test_response_headers_and_hsts_replace_same_named():
    svc = HttpService(config({"Http": {"responseHeaders": {"Cache-Control": "no-cache", "X-Frame-Options": "DENY"},
                                       "enableHsts": True}}))
    reply = request(svc, "GET", "/.well-known/user-agent-configuration.json")
    assert reply.headers["cache-control"] == "no-cache" and reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


def test_head_has_gets_headers_without_body():
    svc = HttpService(Config())
    for path in ("/mail/config-v1.1.xml", "/healthz/ready", "/nothing"):
        get, head = request(svc, "GET", path), request(svc, "HEAD", path)
        assert head.status == get.status and head.body == b""
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.body))


def test_chunked_request_body_reaches_autodiscover():
    body = b"<Autodiscover><Request><EMailAddress>a@example.org</EMailAddress></Request></Autodiscover>"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    core = session(HttpService(Config()))
    out, _ = wire(core, b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: a\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert b"<LoginName>a@example.org</LoginName>" in parse(out, ["POST"])[0].body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=6), st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"POST /a"]))
def test_random_bytes_get_a_valid_response_or_a_close(chunks, prefix):
    core = session(HttpService.default())
    out, closed = b"", False
    for i, chunk in enumerate(chunks):
        data, c = wire(core, (prefix if i == 0 else b"") + chunk)
        out, closed = out + data, closed or c
    data, c = wire(core, b"")
    out, closed = out + data, closed or c
    # whatever was written parses as a sequence of complete HTTP/1.1 responses
    client = h11.Connection(h11.CLIENT)
    client.receive_data(out)
    while out:
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        while True:
            ev = client.next_event()
            assert ev is not h11.NEED_DATA, out
            if isinstance(ev, h11.EndOfMessage):
                break
        if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
            break
        client.start_next_cycle()
        if client.their_state is h11.IDLE and not client.trailing_data[0]:
            break
    assert closed or not core.closed


def test_malformed_request_is_reported_as_scanning(monkeypatch):
    from stalwart.protocols.http import session as session_mod

    seen = []
    monkeypatch.setattr(session_mod.events, "emit", lambda event, **keys: seen.append((event, keys)))
    core = session(HttpService.default(), remote_ip="198.51.100.3")
    out, closed = wire(core, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n")
    assert closed and parse(out, ["GET"])[0].status == 400
    assert seen == [("http.invalid-request", {"SpanId": 0, "RemoteIp": "198.51.100.3",
                                              "Reason": "Invalid HTTP request"})]


def _counters():
    import mmap

    from stalwart._fast import ratecounter_py

    return ratecounter_py.RateCounter(mmap.mmap(-1, ratecounter_py.size_for(64)), 64)


def test_anonymous_rate_limit_is_429_with_ratelimit_headers():
    svc = HttpService(config({"Http": {"rateLimitAnonymous": {"count": 3, "period": 60000}}}))
    counters = _counters()
    core = session(svc, remote_ip="198.51.100.4", packed=pack("198.51.100.4"), counters=counters)
    core.now = 1000.0
    out, _ = wire(core, b"GET /.well-known/user-agent-configuration.json HTTP/1.1\r\nHost: a\r\n\r\n" * 4
                  + b"GET /healthz/live HTTP/1.1\r\nHost: a\r\n\r\n")
    replies = parse(out, ["GET"] * 5)
    assert [r.status for r in replies] == [200, 200, 200, 429, 200]  # health checks are not limited
    limited = replies[3]
    assert limited.json()["status"] == 429 and 1 <= int(limited.headers["retry-after"]) <= 61
    assert limited.headers["ratelimit-policy"] == '"anonymous";q=3;w=60'
    assert limited.headers["ratelimit"] == f'"anonymous";r=0;t={limited.headers["retry-after"]}'
    # another address has its own window; an allowed one is never counted
    assert request(svc, "GET", "/mail/config-v1.1.xml", remote_ip="198.51.100.5", counters=counters).status == 200
    allowed = lists(allowed=["198.51.100.4"])
    assert request(svc, "GET", "/mail/config-v1.1.xml", remote_ip="198.51.100.4", counters=counters,
                   **allowed).status == 200


def test_allowed_endpoints_constant_and_loopback_exemption():
    import pytest

    from stalwart.errors import ConfigError

    svc = HttpService(config({"Http": {"allowedEndpoints": {"else": "403"}}}))
    reply = request(svc, "GET", "/healthz/live")
    assert reply.status == 403 and reply.json()["detail"] == "Access to this endpoint is not allowed."
    assert request(svc, "GET", "/healthz/live", remote_ip="127.0.0.1").status == 200
    assert request(svc, "GET", "/healthz/live", remote_ip="::1").status == 200
    with pytest.raises(ConfigError, match="allowedEndpoints.match"):
        config({"Http": {"allowedEndpoints": {"match": [{"if": "x", "then": "403"}], "else": "200"}}})
    with pytest.raises(ConfigError, match="allowedEndpoints.else"):
        config({"Http": {"allowedEndpoints": {"else": "ok"}}})


def test_forwarding_headers_are_not_applied_on_top_of_a_proxy_header():
    svc = HttpService(XFF)
    hdr = {"X-Forwarded-For": "203.0.113.7"}
    # the PROXY header said the client is 10.0.0.9 (a trusted address): its XFF is not applied on top
    reply = request(svc, "GET", "/healthz/live", headers=hdr, remote_ip="10.0.0.9", proxy=object(),
                    **lists(["203.0.113.0/24"]))
    assert reply.status == 200
