"""Accounts: password hash formats, constant-cost authentication, SASL decoding, config rules, CLI."""
import json
import os
import statistics
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import ROOT
from stalwart.accounts import Directory, hash_password, parse_hash, verify_password
from stalwart.accounts.admin import add_account
from stalwart.accounts.directory import AccountEntry
from stalwart.accounts.passwords import PasswordHashError
from stalwart.accounts.sasl import (SaslCancelled, SaslError, b64decode, decode_login_field, decode_plain,
                                    encode_plain)
from stalwart.config import parse_bytes
from stalwart.errors import ConfigError


@pytest.mark.parametrize("scheme,kw", [("scrypt", {"ln": 4}), ("pbkdf2-sha256", {"iterations": 1000})])
def test_hash_roundtrip_and_format(scheme, kw):
    h = hash_password("pässword", scheme, **kw)
    assert h.startswith(f"${scheme}$")
    spec = parse_hash(h)
    assert verify_password("pässword", spec) and not verify_password("password", spec)
    assert hash_password("pässword", scheme, **kw) != h  # fresh salt


def test_default_scrypt_parameters():
    spec = parse_hash(hash_password("x"))
    assert spec.scheme == "scrypt" and spec.params == (14, 8, 1) and len(spec.salt) == 16


@pytest.mark.parametrize("bad", ["", "plain", "$scrypt$ln=99,r=8,p=1$AAAA$AAAA", "$pbkdf2-sha256$i=10$AAAA$AAAA",
                                 "$scrypt$ln=4,r=8,p=1$!!!$AAAA", "$md5$x$y"])
def test_bad_hashes_rejected(bad):
    with pytest.raises(PasswordHashError):
        parse_hash(bad)


def _directory():
    spec = parse_hash(hash_password("right", ln=10))
    return Directory({"example.org"}, [AccountEntry("jane", ("jane@example.org",), spec)])


def test_authenticate_by_name_or_address():
    d = _directory()
    assert d.authenticate("jane", "right").name == "jane"
    assert d.authenticate("JANE@example.org", "right").name == "jane"
    assert d.authenticate("jane", "wrong") is None and d.authenticate("ghost", "right") is None
    assert d.authenticate("", "") is None


def test_unknown_user_costs_the_same_as_a_wrong_password():
    d = _directory()

    def cost(login):
        samples = []
        for _ in range(7):
            t = time.perf_counter()
            d.authenticate(login, "wrong")
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    known, unknown = cost("jane"), cost("nobody-here")
    assert 0.6 < unknown / known < 1.6, (known, unknown)


def test_recipients_and_subaddressing():
    d = _directory()
    assert d.recipient("Jane@Example.org").name == "jane"
    assert d.recipient("jane+lists@example.org").name == "jane"
    assert d.recipient("john@example.org") is None
    assert d.is_local_domain("EXAMPLE.org.") and not d.is_local_domain("example.com")


def test_sasl_plain_and_login():
    assert decode_plain(b64decode(encode_plain("jane", "pw"))) == ("jane", "pw")
    assert decode_plain(b"jane\0jane\0pw") == ("jane", "pw")
    for bad in (b"a\0b\0c", b"\0\0pw", b"only", b"\0a\0b\0c", b"\0\xff\0x"):
        with pytest.raises(SaslError):
            decode_plain(bad)
    assert b64decode(b"=") == b"" and decode_login_field(b"jane") == "jane"
    with pytest.raises(SaslCancelled):
        b64decode(b"*")
    with pytest.raises(SaslError):
        b64decode(b"not base64!")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_sasl_decoders_only_raise_sasl_errors(data):
    for fn in (b64decode, decode_plain, decode_login_field):
        try:
            fn(data)
        except (SaslError, SaslCancelled):
            pass


def _cfg(**objs):
    return parse_bytes(json.dumps(objs).encode(), "t")


def test_config_rules_name_the_field():
    h = hash_password("x", ln=4)
    ok = _cfg(Domain=[{"name": "Example.org"}], Account=[{"name": "jane", "secret": h, "emails": ["Jane@Example.org"]}])
    assert ok.Account[0].emails == ["jane@example.org"]
    cases = [
        ({"Account": [{"name": "jane", "secret": "clear", "emails": []}]}, "$.Account[0].secret"),
        ({"Account": [{"name": "../x", "secret": h}]}, "$.Account[0].name"),
        ({"Account": [{"name": "jane", "secret": h, "emails": ["jane@other.org"]}]}, "$.Account[0].emails[0]"),
        ({"Domain": [{"name": "example.org"}], "Account": [{"name": "a", "secret": h, "emails": ["x@example.org"]},
                                                          {"name": "b", "secret": h, "emails": ["X@example.org"]}]},
         "$.Account[1].emails[0]"),
        ({"Domain": [{"name": "a.org"}, {"name": "A.org"}]}, "$.Domain[1].name"),
        ({"Account": [{"name": "a", "secret": h}, {"name": "A", "secret": h}]}, "$.Account[1].name"),
    ]
    for objs, path in cases:
        with pytest.raises(ConfigError) as info:
            _cfg(**objs)
        assert info.value.path == path, (objs, info.value)


def test_listener_allow_plain_text_auth_defaults_false():
    cfg = _cfg(NetworkListener=[{"name": "s", "bind": ["127.0.0.1:2525"]}])
    assert cfg.NetworkListener[0].allow_plain_text_auth is False


def test_add_account_writes_a_valid_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"SystemSettings": {"defaultHostname": "mx.example.test"}}))
    os.chmod(path, 0o640)
    assert add_account(str(path), "jane", ["jane@example.org"], "pw", "pbkdf2-sha256") == ["example.org"]
    cfg = parse_bytes(path.read_bytes(), str(path))
    assert cfg.SystemSettings.default_hostname == "mx.example.test"
    assert Directory.from_config(cfg).authenticate("jane@example.org", "pw").name == "jane"
    assert os.stat(path).st_mode & 0o777 == 0o640
    with pytest.raises(ConfigError):
        add_account(str(path), "JANE", ["x@example.org"], "pw")
    with pytest.raises(ConfigError):
        add_account(str(path), "bob", ["jane@example.org"], "pw")  # address taken: file unchanged
    assert len(json.loads(path.read_text())["Account"]) == 1


def test_cli_account_add_password_stdin(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    cmd = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
           "--config", str(path), "account", "add", "bob", "--email", "bob@example.org", "--password-stdin"]
    res = subprocess.run(cmd, input=b"s3cret\n", capture_output=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    cfg = parse_bytes(path.read_bytes(), "c")
    assert Directory.from_config(cfg).authenticate("bob", "s3cret") is not None
    res = subprocess.run(cmd[:3] + ["account", "add", "x", "--email", "x@y.org", "--password-stdin"],
                         input=b"pw\n", capture_output=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and b"--config" in res.stderr


def test_sasl_exchange_plain_and_login():
    import base64

    from stalwart.accounts import sasl

    b64 = lambda s: base64.b64encode(s.encode())  # noqa: E731
    plain = sasl.SaslExchange("PLAIN")
    assert plain.first_challenge == ""
    assert plain.step(b64("\0jane\0pw")) == ("jane", "pw")
    login = sasl.SaslExchange("LOGIN")
    assert login.first_challenge == sasl.LOGIN_USERNAME
    assert login.step(b64("jane")) == sasl.LOGIN_PASSWORD
    assert login.step(b64("pw")) == ("jane", "pw")
    with pytest.raises(sasl.SaslCancelled):
        sasl.SaslExchange("LOGIN").step(b"*")
    with pytest.raises(sasl.SaslError):
        sasl.SaslExchange("PLAIN").step(b"!!not base64!!")
