"""Bearer API keys for the management API: ``stalwart-cli api-key`` writes them, a real stalwartd
takes ``Authorization: Bearer`` from curl, and wrong, expired or non-administrator keys are refused
and counted like a wrong Basic password."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from harness import Server, free_port, listener

from stalwart.accounts import hash_password
from stalwart.accounts.model import api_key_hash
from stalwart.protocols.http.management import ManagementApi, _AuthFailed, bearer_token
from tests.http_util import config

HASH = hash_password("adm1n pass", ln=4)
BASE = {
    "SystemSettings": {"defaultHostname": "mail.example.test", "threadPoolSize": 2},
    "Http": {"administrators": ["admin"]},
    "Domain": [{"name": "example.org"}],
    "Account": [{"name": "admin", "secret": HASH, "emails": ["admin@example.org"]},
                {"name": "jane", "secret": HASH, "emails": ["jane@example.org"]}],
}
EXPIRED_TOKEN = "stw_" + "e" * 43
CLI = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())"]


def cli(*args):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False, env=env)


def add_key(config_path, account, *extra):
    out = cli("--config", config_path, "api-key", "add", account, *extra)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("stw_") and len(token) == 4 + 43 and "\n" not in token
    return token


def test_bearer_token_header_forms():
    assert bearer_token(b"Bearer stw_abc") == "stw_abc"
    assert bearer_token(b"bearer   stw_abc ") == "stw_abc"
    for value in (None, b"", b"Bearer", b"Bearer ", b"Basic abc", b"Bearer a b", b"Bearer \xff"):
        assert bearer_token(value) is None


def test_administrator_check_by_key():
    doc = json.loads(json.dumps(BASE))
    doc["ApiKey"] = [{"account": "admin", "secret": api_key_hash("stw_good")},
                     {"account": "Jane", "secret": api_key_hash("stw_jane")},
                     {"account": "admin", "secret": api_key_hash("stw_old"), "expiresAt": "2026-01-01T00:00:00Z"}]
    api = ManagementApi(config(doc), "/nonexistent")
    now = 1767225600 - 1  # one second before the expiry
    assert api.administrator(("bearer", "", "stw_good"), now) == "admin"
    assert api.administrator(("bearer", "", "stw_old"), now) == "admin"
    for token, account, reason in (("stw_old", "admin", "expired API key"), ("stw_jane", "Jane", "not an administrator"),
                                   ("stw_bad", "", "unknown API key"), ("", "", "unknown API key")):
        failed = api.administrator(("bearer", "", token), now + 1)
        assert isinstance(failed, _AuthFailed) and (failed.account, failed.reason) == (account, reason)


@pytest.mark.parametrize("entry, path", [
    ({"account": "nobody", "secret": api_key_hash("x")}, "$.ApiKey[0].account"),
    ({"account": "admin", "secret": "stw_the-token-itself"}, "$.ApiKey[0].secret"),
    ({"account": "admin", "secret": api_key_hash("x").upper()}, "$.ApiKey[0].secret"),
    ({"account": "admin", "secret": api_key_hash("x"), "expiresAt": "tomorrow"}, "$.ApiKey[0].expiresAt"),
])
def test_config_errors_name_the_field(entry, path):
    from stalwart.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        config({**BASE, "ApiKey": [entry]})
    assert info.value.path == path


def test_cli_add_list_remove_round_trip(tmp_path):
    path = str(tmp_path / "config.json")
    with open(path, "w") as fh:
        json.dump(BASE, fh)
    token = add_key(path, "admin", "--description", "ci bot", "--expires", "2099-01-01T00:00:00Z")
    second = add_key(path, "jane")
    text = open(path).read()
    assert token not in text and second not in text and api_key_hash(token) in text
    listed = cli("--config", path, "api-key", "list")
    assert listed.returncode == 0
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert [r[1:] for r in rows] == [["admin", "2099-01-01T00:00:00Z", "ci", "bot"], ["jane", "never"]]
    check = subprocess.run([sys.executable, "-m", "stalwart.cli", "check", "--config", path], capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0 and api_key_hash(token) not in check.stdout
    assert [k["secret"] for k in json.loads(check.stdout)["ApiKey"]] == ["***", "***"]
    assert cli("--config", path, "api-key", "remove", rows[0][0]).returncode == 0
    assert [line.split()[1] for line in cli("--config", path, "api-key", "list").stdout.splitlines()] == ["jane"]
    gone = cli("--config", path, "api-key", "remove", rows[0][0])
    assert gone.returncode == 1 and "no ApiKey has id" in gone.stderr
    for args, needle in ((("add", "nobody"), "$.ApiKey[1].account: no Account is named 'nobody'"),
                         (("add", "admin", "--expires", "2001-01-01T00:00:00Z"), "is in the past")):
        out = cli("--config", path, "api-key", *args)
        assert out.returncode != 0 and needle in out.stderr
    assert cli("api-key", "list").returncode == 2  # no --config


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (scripts/test-deps)")
def test_curl_with_bearer_tokens(tmp_path):
    port = free_port()
    doc = {**BASE, "NetworkListener": [listener("http", "http", port)],
           "ApiKey": [{"account": "admin", "secret": api_key_hash(EXPIRED_TOKEN), "expiresAt": "2025-01-01T00:00:00Z"}]}
    srv = Server(tmp_path, doc, extra_args=["--log-level", "debug"])
    admin = add_key(srv.config_path, "admin", "--description", "curl")
    jane = add_key(srv.config_path, "jane")
    srv.start()
    base = f"http://127.0.0.1:{port}"

    def curl(path, token=None):
        hdr = ("-H", f"Authorization: Bearer {token}") if token is not None else ()
        out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *hdr, base + path],
                             capture_output=True, timeout=20, check=False)
        assert out.returncode == 0, out.stderr
        body, _, code = out.stdout.rpartition(b"\n")
        return int(code), body

    try:
        code, body = curl("/api/status", admin)
        assert code == 200 and json.loads(body)["listeners"] == {"http": 1}
        code, body = curl("/metrics", admin)
        assert code == 200 and b"stalwart_connections" in body
        for token, reason in ((admin[:-1] + ("A" if admin[-1] != "A" else "B"), "unknown API key"),
                              (EXPIRED_TOKEN, "expired API key"), (jane, "not an administrator")):
            code, body = curl("/api/status", token)
            assert code == 401 and json.loads(body)["status"] == 401
            line = next(ln for ln in srv.wait_log(f'Reason="{reason}"').splitlines() if reason in ln)
            assert "auth.failed" in line and "Protocol=http" in line and token not in line
        assert "AccountName=jane" in srv.log()
        n = srv.log().count("auth.failed")
        code, _ = curl("/api/status")  # no credentials: refused, not counted
        assert code == 401
        time.sleep(0.6)  # longer than the failure delay: a counted failure would be logged by now
        assert srv.log().count("auth.failed") == n
        # remove the key, reload: the same token is refused from then on
        key_id = next(line.split()[0] for line in cli("--config", srv.config_path, "api-key", "list").stdout.splitlines()
                      if line.rstrip().endswith("curl"))
        assert cli("--config", srv.config_path, "api-key", "remove", key_id).returncode == 0
        srv.reload()
        assert curl("/api/status", admin)[0] == 401
    finally:
        srv.stop()
