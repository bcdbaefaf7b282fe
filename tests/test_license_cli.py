"""``stalwart-cli license show`` and ``stalwart-cli ai ask`` run offline from --config and --data-dir."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stalwart.cli import cli_main
from stalwart.services.license import key as lkey
from stalwart.services.license import trust
from test_ai_support import FakeOpenAi

DAY = 86400


@pytest.fixture
def signer():
    private = Ed25519PrivateKey.generate()
    with trust.use_test_key(private.public_key()):
        yield private


def write_config(tmp_path, licence=None, models=(), api_key=None):
    doc = {"SystemSettings": {"defaultHostname": "mx1.example.org"}, "AiModel": list(models)}
    ent = {}
    if licence:
        ent["licenseKey"] = {"@type": "Value", "secret": licence}
    if api_key:
        ent["apiKey"] = {"@type": "Value", "secret": api_key}
    if ent:
        doc["Enterprise"] = ent
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return str(path)


def current(signer, **kw):
    now = int(time.time())
    return lkey.issue(signer, kw.get("domain", "*.example.org"), kw.get("accounts", 25),
                      kw.get("valid_from", now - DAY), kw.get("valid_to", now + 10 * DAY + 3600))


def test_license_show_valid(signer, tmp_path, capsys):
    cfg = write_config(tmp_path, current(signer), api_key="k")
    assert cli_main(["license", "show", "--config", cfg, "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "edition:" in out and "enterprise" in out
    assert "*.example.org" in out and "0 of 25" in out and "10 d 0 h left" in out or "10 d 1 h left" in out
    assert "configured (Enterprise.licenseKey)" in out and "renewal:" in out and "/api/license" in out


def test_license_show_json_and_invalid_exit_code(signer, tmp_path, capsys):
    cfg = write_config(tmp_path, current(signer, domain="example.net"))
    assert cli_main(["license", "show", "--json", "--config", cfg]) == 1
    status = json.loads(capsys.readouterr().out)
    assert status["edition"] == "community"
    assert status["reason"] == 'License issued to domain "example.net" does not match "mx1.example.org"'


def test_license_show_without_licence_is_community(tmp_path, capsys):
    assert cli_main(["license", "show", "--config", write_config(tmp_path)]) == 0
    assert "community" in capsys.readouterr().out


def test_license_show_in_a_real_process_uses_the_embedded_key(tmp_path):
    """Outside the test hook the project's own trust root applies: a test-signed key is refused."""
    private = Ed25519PrivateKey.generate()
    cfg = write_config(tmp_path, current(private))
    proc = subprocess.run([sys.executable, "-m", "stalwart.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    proc = subprocess.run([sys.executable, "-c", "import sys; from stalwart.cli import cli_main; "
                           f"sys.exit(cli_main(['license', 'show', '--config', {cfg!r}]))"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Failed to validate license key" in proc.stdout


def model(url, name="m"):
    return {"name": name, "url": url, "model": "test-model", "httpAuth": {"@type": "Unauthenticated"}}


def test_ai_ask_prints_the_answer(signer, tmp_path, capsys):
    with FakeOpenAi() as srv:
        srv.reply = "Pong."
        cfg = write_config(tmp_path, current(signer), [model(srv.url("/v1/chat/completions"))])
        assert cli_main(["ai", "ask", "m", "Ping?", "--config", cfg, "-v"]) == 0
        assert srv.requests[-1].json()["messages"][0]["content"] == "Ping?"
    captured = capsys.readouterr()
    assert captured.out == "Pong.\n"
    assert "TotalTokens=14" in captured.err


def test_ai_ask_is_refused_without_a_licence(tmp_path, capsys):
    with FakeOpenAi() as srv:
        cfg = write_config(tmp_path, None, [model(srv.url("/v1/chat/completions"))])
        assert cli_main(["ai", "ask", "m", "Ping?", "--config", cfg]) == 1
        assert srv.requests == []
    err = capsys.readouterr().err
    assert "AI models are refused" in err and "only available in the Enterprise edition" in err


def test_ai_ask_reports_errors_and_unknown_models(signer, tmp_path, capsys):
    with FakeOpenAi() as srv:
        cfg = write_config(tmp_path, current(signer), [model(srv.url("/malformed"))])
        assert cli_main(["ai", "ask", "m", "x", "--config", cfg]) == 1
        assert "malformed JSON" in capsys.readouterr().err
        assert cli_main(["ai", "ask", "other", "x", "--config", cfg]) == 2
        assert "no AiModel named 'other' (configured: m)" in capsys.readouterr().err


def test_issuing_tool_round_trip(tmp_path):
    script = [sys.executable, "scripts/issue-license"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    keyfile = tmp_path / "signing.pem"
    out = subprocess.run([*script, "keygen", "--out", str(keyfile)], cwd=root, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    public = out.split("PUBLIC_KEY_HEX): ")[1].strip()
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"
    licence = subprocess.run([*script, "issue", "--key", str(keyfile), "--domain", "*.Example.org", "--accounts", "5",
                              "--from", "2026-01-01T00:00:00Z", "--to", "2099-01-01T00:00:00Z"],
                             cwd=root, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    lic = lkey.decode(licence, Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)))
    assert (lic.domain, lic.accounts) == ("*.example.org", 5)
    ok = subprocess.run([*script, "verify", "--public-key", public, "--hostname", "mx.example.org", licence],
                        cwd=root, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("valid:")
    bad = subprocess.run([*script, "verify", "--public-key", public, "--hostname", "mx.example.com", licence],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "does not match" in bad.stdout


@pytest.mark.slow
def test_stalwartd_runs_with_ai_and_enterprise_objects(tmp_path):
    """The objects load in a real server start and reload; SMTP still greets (nothing else changes)."""
    import socket

    from harness import Server, free_port, listener, recv_line

    port = free_port()
    doc = {"SystemSettings": {"defaultHostname": "mx1.example.org", "threadPoolSize": 1},
           "NetworkListener": [listener("smtp", "smtp", port)],
           "AiModel": [model("http://127.0.0.1:9/v1/chat/completions")],
           "SpamLlm": {"@type": "Enable", "modelId": "m", "prompt": "Classify."},
           "Enterprise": {"licenseKey": {"@type": "Value", "secret": "bm90IGEgbGljZW5jZQ=="}}}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    check = subprocess.run([sys.executable, "-m", "stalwart.cli", "check", "--config", str(tmp_path / "c.json")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert '"modelType": "Chat"' in check.stdout and '"renewalUrl"' in check.stdout
    assert "bm90IGEgbGljZW5jZQ==" not in check.stdout  # the licence key is a secret: masked
    server = Server(tmp_path / "srv", doc).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert recv_line(s).startswith(b"220 ")
        server.reload(doc)
    finally:
        server.stop()


def test_account_creation_is_refused_past_the_licence(signer, tmp_path):
    from stalwart.accounts import hash_password
    from stalwart.config import parse_bytes
    from stalwart.services.license import AccountLimitExceeded, ensure_can_add_account

    def cfg(n, licence):
        doc = json.loads(open(write_config(tmp_path, licence)).read())
        doc["Account"] = [{"name": f"u{i}", "secret": hash_password("pw", "scrypt"), "emails": [f"u{i}@example.org"]}
                          for i in range(n)]
        doc["Domain"] = [{"name": "example.org"}]
        return parse_bytes(json.dumps(doc).encode())

    licence = current(signer, accounts=2)
    ensure_can_add_account(cfg(1, licence))
    with pytest.raises(AccountLimitExceeded, match="only allows 2 accounts, found 3"):
        ensure_can_add_account(cfg(2, licence))
    ensure_can_add_account(cfg(2, None))  # Community edition: no licence, no cap
