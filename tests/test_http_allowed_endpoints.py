"""End-to-end: ``Http.allowedEndpoints`` expressions in a real stalwartd, judged on the attributed client.

Loopback clients are exempt, so the clients come in through a trusted reverse proxy (127.0.0.2,
``X-Forwarded-For``) as in test_http_e2e.py; curl from 127.0.0.1 shows the exemption."""
import json
import shutil
import subprocess
import sys

import pytest
from harness import Server, free_port, listener

from stalwart.accounts import hash_password

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (scripts/test-deps)")

ADMIN_NET = "198.51.100.10"
ENDPOINTS = {
    "match": [
        # a run-time type error: this branch never matches, an eval.error event says why
        {"if": "lower(remote_port) == 'x'", "then": "500"},
        # the connection's own variables: a wrong value would fail every request below
        {"if": "local_ip != '127.0.0.1' || local_port < 1024 || is_tls || protocol != 'http' || "
               "listener != 'http' || method != 'GET' || !starts_with(url, '/')", "then": "500"},
        {"if": f"starts_with(url_path, '/api') && remote_ip != '{ADMIN_NET}'", "then": "404"},
        {"if": "starts_with(remote_ip, '192.168.1.') || "
               "contains(['robots.txt', '.well-known'], split(url_path, '/')[1])", "then": "200"},
        {"if": "headers['X-Debug'] == 'yes' || matches('^/healthz/(ready|started)$', url_path)", "then": "403"},
        {"if": "is_ip_in_cidr(remote_ip, '203.0.113.0/24')", "then": "451"},
    ],
    "else": "200",
}


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    port = free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mail.example.test", "threadPoolSize": 2,
                           "proxyTrustedNetworks": ["127.0.0.2"]},
        "Http": {"useXForwarded": True, "administrators": ["admin"], "allowedEndpoints": ENDPOINTS},
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "admin", "secret": hash_password("adm1n pass", ln=4), "emails": ["admin@example.org"]}],
        # the proxy terminates TLS in front of this listener: credentials may arrive in clear
        "NetworkListener": [listener("http", "http", port, allowPlainTextAuth=True)],
    }
    srv = Server(tmp_path_factory.mktemp("endpoints"), cfg).start()
    yield srv, f"http://127.0.0.1:{port}"
    srv.stop()


def curl(url, *args, client=None):
    """One request; ``client`` set: through the trusted proxy address with that forwarded client."""
    source = ("--interface", "127.0.0.2", "-H", f"X-Forwarded-For: {client}") if client else ("--interface", "127.0.0.1")
    out = subprocess.run(["curl", "-sS", *source, "-o", "-", "-w", "\n%{http_code}", *args, url],
                         capture_output=True, timeout=20, check=False)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


def test_api_only_for_the_admin_address(http):
    srv, base = http
    admin = ("-u", "admin:adm1n pass")
    code, body = curl(base + "/api/status", *admin, client=ADMIN_NET)
    assert code == 200 and json.loads(body)["listeners"] == {"http": 1}
    code, body = curl(base + "/api/status", *admin, client="198.51.100.11")
    assert code == 404
    assert json.loads(body) == {"type": "about:blank", "status": 404, "title": "Not Found",
                                "detail": "Access to this endpoint is not allowed."}
    assert curl(base + "/api/status", *admin)[0] == 200  # loopback: exempt
    assert curl(base + "/healthz/live", client="198.51.100.11")[0] == 200  # else
    log = srv.wait_log("eval.error")
    assert 'Path="$.Http.allowedEndpoints.match[0]"' in log and "lower() expects a string" in log


def test_branches_in_order(http):
    _, base = http
    # the reference's second example allows these before the 403 and 451 branches are reached
    assert curl(base + "/healthz/ready", client="192.168.1.7")[0] == 200
    assert curl(base + "/.well-known/user-agent-configuration.json", client="203.0.113.5")[0] == 200
    code, body = curl(base + "/healthz/ready", client="198.51.100.30")
    assert code == 403 and json.loads(body)["detail"] == "Access to this endpoint is not allowed."
    code, body = curl(base + "/healthz/readyz", client="198.51.100.30")  # allowed, then no such route
    assert code == 404 and json.loads(body)["detail"] == "The requested resource does not exist on this server."
    assert curl(base + "/healthz/live", client="198.51.100.30")[0] == 200
    assert curl(base + "/healthz/live", "-H", "X-Debug: yes", client="198.51.100.30")[0] == 403
    code, body = curl(base + "/healthz/live", client="203.0.113.5")
    assert code == 451 and json.loads(body)["status"] == 451
    assert curl(base + "/healthz/live", client="203.0.113.5")[0] == 451


def test_bad_expression_is_a_load_error_with_path_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"Http": {"allowedEndpoints": {
        "match": [{"if": "true", "then": "403"}, {"if": "starts_with(url_path, '/api') && remote_addr == '1'",
                                                 "then": "404"}], "else": "200"}}}))
    out = subprocess.run([sys.executable, "-m", "stalwart.cli", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "$.Http.allowedEndpoints.match[1].if: column 34: unknown variable 'remote_addr'" in out.stderr
