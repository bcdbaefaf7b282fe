"""End-to-end through a real stalwartd: curl fetches every autoconfig endpoint; a trusted reverse proxy
(127.0.0.2) forwards client addresses that an untrusted client (127.0.0.1) cannot forge."""
import json
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest
from harness import Server, free_port, listener
from prometheus_client.parser import text_string_to_metric_families

from stalwart.accounts import hash_password

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (scripts/test-deps)")

OUTLOOK = (b'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
           b'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>Jane@Example.org</EMailAddress>'
           b"<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/"
           b"2006a</AcceptableResponseSchema></Request></Autodiscover>")


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    port, tls_port = free_port(), free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mail.example.test", "threadPoolSize": 2,
                           "proxyTrustedNetworks": ["127.0.0.2"]},
        "Http": {"useXForwarded": True, "administrators": ["admin"]},
        "BlockedIp": [{"address": "203.0.113.0/24"}],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "admin", "secret": hash_password("adm1n pass", ln=4), "emails": ["admin@example.org"]}],
        "NetworkListener": [listener("http", "http", port), listener("https", "http", tls_port, tlsImplicit=True)],
    }
    srv = Server(tmp_path_factory.mktemp("http"), cfg, extra_args=["--log-level", "debug"]).start()
    srv.tls_base = f"https://127.0.0.1:{tls_port}"
    yield srv, f"http://127.0.0.1:{port}"
    srv.stop()


def curl(url, *args, source="127.0.0.1"):
    out = subprocess.run(["curl", "-sS", "--interface", source, "-o", "-", "-w", "\n%{http_code}", *args, url],
                         capture_output=True, timeout=20, check=False)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


def test_curl_fetches_every_endpoint(http):
    _, base = http
    code, body = curl(base + "/.well-known/user-agent-configuration.json")
    assert code == 200 and json.loads(body)["protocols"]["imap"] == {"host": "mail.example.test"}
    for path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml", "/.well-known/mail-v1.xml"):
        code, body = curl(base + path + "?emailaddress=a%3Cb%3E%40example.org")
        assert code == 200
        assert ET.fromstring(body).find("emailProvider/displayName").text == "a<b>@example.org"
        code, body = curl(base + path)
        assert code == 200 and ET.fromstring(body).find("emailProvider/displayName").text == "%EMAILADDRESS%"
    code, body = curl(base + "/autodiscover/autodiscover.xml", "-H", "Content-Type: text/xml", "--data-binary", OUTLOOK)
    assert code == 200 and b"<LoginName>jane@example.org</LoginName>" in body
    code, body = curl(base + "/autodiscover/autodiscover.xml", "--data-binary", "<Autodiscover><Request>")
    assert code == 200 and b"<ErrorCode>600</ErrorCode>" in body
    code, body = curl(base + "/autodiscover/autodiscover.json?Email=jane@example.org&Protocol=AutodiscoverV1")
    assert code == 200 and json.loads(body)["Url"] == "https://mail.example.test/autodiscover/autodiscover.xml"
    code, body = curl(base + "/autodiscover/autodiscover.json/v1.0/jane%40example.org?Protocol=ActiveSync")
    assert code == 400 and json.loads(body)["ErrorCode"] == "InvalidProtocol"
    code, _ = curl(base + "/.well-known/anything", "-X", "OPTIONS")
    assert code == 204


def test_pacc_over_implicit_tls(http):
    srv, _ = http
    code, body = curl(srv.tls_base + "/.well-known/user-agent-configuration.json", "-k")
    assert code == 200 and json.loads(body)["authentication"]["password"] is True


def test_forwarded_address_from_trusted_proxy_only(http):
    srv, base = http
    hdr = ("-H", "X-Forwarded-For: 203.0.113.9")
    code, body = curl(base + "/healthz/live", *hdr, source="127.0.0.2")
    assert code == 403 and json.loads(body)["title"] == "Forbidden"
    srv.wait_log("RemoteIp=203.0.113.9")
    code, _ = curl(base + "/healthz/live", *hdr, source="127.0.0.1")  # not a trusted proxy: header ignored
    assert code == 200
    srv.wait_log("http.x-forwarded-ignored")
    code, _ = curl(base + "/healthz/live", "-H", "Forwarded: for=198.51.100.1", source="127.0.0.2")
    assert code == 200
    code, _ = curl(base + "/healthz/live", source="127.0.0.2")  # the proxy speaking for itself
    assert code == 200
    srv.wait_log("http.x-forwarded-missing")


def test_banned_path_bans_the_forwarded_client(http):
    srv, base = http
    # loopback clients are on the allow list, which is never banned by path: come in through the proxy
    fwd = ("-H", "X-Forwarded-For: 198.51.100.77")
    code, body = curl(base + "//WP-Admin//setup.php", "--path-as-is", *fwd, source="127.0.0.2")
    assert code == 403 and json.loads(body)["status"] == 403
    log = srv.wait_log("security.scan-ban")
    assert "RemoteIp=198.51.100.77" in log.split("security.banned-path", 1)[1].splitlines()[0]
    # the ban is shared: every later request of that client, on any worker, is refused
    assert all(curl(base + "/healthz/live", *fwd, source="127.0.0.2")[0] == 403 for _ in range(6))
    assert curl(base + "/healthz/live", "-H", "X-Forwarded-For: 198.51.100.78", source="127.0.0.2")[0] == 200
    assert curl(base + "/healthz/live", source="127.0.0.2")[0] == 200  # the proxy is never banned


def test_management_api_with_curl(http):
    srv, base = http
    admin = ("-u", "admin:adm1n pass")
    code, body = curl(base + "/api/status", *admin)
    assert code == 200 and json.loads(body)["listeners"] == {"http": 1, "https": 0}
    code, _ = curl(base + "/api/status", "-u", "admin:wr0ng-pa55")
    assert code == 401
    log = srv.wait_log("AccountName=admin Protocol=http")
    assert "wr0ng-pa55" not in log  # the credential reaches the auto-ban layer, never the log
    code, _ = curl(base + "/api/status")
    assert code == 401

    # a block added through the API reaches every worker, like `stalwart-cli blocked add`
    code, body = curl(base + "/api/blocked-ip", *admin, "-H", "Content-Type: application/json",
                      "--data-binary", '{"address": "198.51.100.0/24", "reason": "manual"}')
    assert code == 201 and json.loads(body)["entry"]["address"] == "198.51.100.0/24"
    time.sleep(1.0)  # propagation bound: 1 s
    fwd = ("-H", "X-Forwarded-For: 198.51.100.20")
    assert all(curl(base + "/healthz/live", *fwd, source="127.0.0.2")[0] == 403 for _ in range(6))
    code, body = curl(base + "/api/blocked-ip", *admin)
    assert "198.51.100.0/24" in {e["address"] for e in json.loads(body)["entries"]}
    code, _ = curl(base + "/api/blocked-ip/198.51.100.0%2F24", *admin, "-X", "DELETE")
    assert code == 200
    code, _ = curl(base + "/api/blocked-ip/203.0.113.0%2F24", *admin, "-X", "DELETE")
    assert code == 409  # from the configuration file
    time.sleep(1.0)
    assert curl(base + "/healthz/live", *fwd, source="127.0.0.2")[0] == 200

    code, body = curl(base + "/metrics", *admin)
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {s.labels["listener"] for s in families["stalwart_connections"].samples} == {"http", "https"}
    assert families["stalwart_workers"].samples

    def value(name, **labels):
        return next(s.value for f in families.values() for s in f.samples if s.name == name and s.labels == labels)

    assert value("stalwart_connections_accepted_total", listener="http") >= 20  # every curl above, all workers
    assert value("stalwart_sessions_total", protocol="http") >= 20
    assert value("stalwart_connections_refused_total", listener="http", reason="blocked") >= 6
    assert value("stalwart_bans_total", category="portScanning") >= 1  # the banned path
    assert value("stalwart_tls_handshakes_total", listener="https", result="ok") >= 1

    code, body = curl(base + "/api/reload", *admin, "-X", "POST")
    assert code == 200, body
    srv.wait_log("server.reload-complete")
