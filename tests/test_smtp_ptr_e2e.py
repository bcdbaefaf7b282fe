"""SMTP resolves the client's forward-confirmed PTR before its greeting and puts it in Received:
(issue 8 "Use it", services.md §3). The resolver is pointed at a real unbound on loopback; the
client addresses are only claimed in PROXY headers, so no packet ever leaves the machine."""
import os
import shutil
import smtplib
import socket
import time

import pytest

from harness import Server, free_port, listener
from stalwart._fast import proxy_py
from stalwart.accounts import hash_password

PROXY_SRC = "127.0.0.3"


def send_as(port, client_ip):
    raw = socket.socket()
    raw.bind((PROXY_SRC, 0))
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    raw.sendall(proxy_py.build_v1(client_ip, "127.0.0.1", 40000, port))
    s = smtplib.SMTP()
    s.sock, s.file = raw, None
    start = time.monotonic()
    assert s.getreply()[0] == 220
    waited = time.monotonic() - start
    s.sendmail("sender@client.test", ["jane@example.org"], b"Subject: ptr\r\n\r\nhi\r\n")
    s.quit()
    return waited


def test_received_header_carries_the_verified_ptr(tmp_path):
    if shutil.which("unbound") is None and not os.path.exists("/usr/sbin/unbound"):
        pytest.skip("unbound is not installed (scripts/test-deps installs it)")
    from dns_harness import Unbound

    dns_dir = tmp_path / "dns"
    dns_dir.mkdir()
    unbound = Unbound(dns_dir, [
        "4.3.2.1.in-addr.arpa. 300 IN PTR mail.client.test.",
        "mail.client.test. 300 IN A 1.2.3.4",
        "5.3.2.1.in-addr.arpa. 300 IN PTR liar.client.test.",
        "liar.client.test. 300 IN A 1.2.3.99",  # does not point back: unconfirmed
    ], zones=("client.test.", "4.3.2.1.in-addr.arpa.", "5.3.2.1.in-addr.arpa.")).start()
    port = free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 1,
                           "proxyTrustedNetworks": [PROXY_SRC]},
        "DnsResolver": {"@type": "Custom", "servers": [{"address": "127.0.0.1", "port": unbound.port}]},
        "NetworkListener": [listener("smtp", "smtp", port)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("pw", ln=4), "emails": ["jane@example.org"]}],
    }
    srv = Server(tmp_path / "srv", cfg).start()
    try:
        send_as(port, "1.2.3.4")
        send_as(port, "1.2.3.5")
        waited = send_as(port, "198.51.100.7")  # not globally routable: no lookup at all
        assert waited < 1.0
        new = os.path.join(srv.data_dir, "mail", "jane", "new")
        heads = [open(os.path.join(new, n), "rb").read().split(b"\r\n\r\n", 1)[0] for n in sorted(os.listdir(new))]
        joined = b"\n".join(heads)
        assert b"(mail.client.test [1.2.3.4])" in joined
        assert b"(unknown [1.2.3.5])" in joined
        assert b"(unknown [198.51.100.7])" in joined
    finally:
        srv.stop()
        unbound.stop()


def test_management_api_dns_lookup_with_cache_state(tmp_path):
    """GET /api/dns/<TYPE>/<name>: the lookup runs through the worker's resolver and caches; the
    second answer comes from the cache, with its remaining TTL."""
    import base64
    import http.client
    import json

    if shutil.which("unbound") is None and not os.path.exists("/usr/sbin/unbound"):
        pytest.skip("unbound is not installed (scripts/test-deps installs it)")
    from dns_harness import Unbound

    dns_dir = tmp_path / "dns"
    dns_dir.mkdir()
    unbound = Unbound(dns_dir, ["mail.client.test. 300 IN A 192.0.2.25"], zones=("client.test.",)).start()
    port = free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 1},
        "DnsResolver": {"@type": "Custom", "servers": [{"address": "127.0.0.1", "port": unbound.port}]},
        "NetworkListener": [listener("http", "http", port)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "admin", "secret": hash_password("s3cret", ln=4), "emails": ["admin@example.org"]}],
        "Http": {"administrators": ["admin"]},
    }
    srv = Server(tmp_path / "srv", cfg).start()
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()}
    try:
        answers = []
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.request("GET", "/api/dns/A/mail.client.test", headers=auth)
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            answers.append(json.loads(resp.read()))
            conn.close()
        assert "192.0.2.25" in json.dumps(answers[0]["result"])
        assert answers[1]["cached"] is True and answers[1]["cache"] == "dnsIpv4" and 0 < answers[1]["ttl"] <= 300
    finally:
        srv.stop()
        unbound.stop()
