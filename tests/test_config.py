import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart.config import default_bytes, parse_bytes, to_json, worker_count
from stalwart.config.secrets import FromEnvironment, FromFile, SecretValue, resolve
from stalwart.config.types import IpMask, SocketAddr, parse_size
from stalwart.errors import ConfigError


def parse(doc) -> object:
    return parse_bytes(json.dumps(doc).encode())


def err(doc) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(doc) if not isinstance(doc, bytes) else parse_bytes(doc)
    return str(exc.value)


def test_issue_example_parses_with_both_set_forms():
    cfg = parse({"SystemSettings": {"defaultHostname": "MX.Example.ORG.", "threadPoolSize": 2, "maxConnections": 8192},
                 "NetworkListener": [{"name": "smtp", "protocol": "smtp", "bind": ["127.0.0.1:2525"]},
                                     {"name": "imaps", "protocol": "imap", "bind": {"[::]:993": True}, "tlsImplicit": True}]})
    assert cfg.SystemSettings.default_hostname == "mx.example.org"
    assert [str(a) for a in cfg.NetworkListener[1].bind] == ["[::]:993"]
    assert cfg.NetworkListener[0].id == "0" and cfg.NetworkListener[1].id == "1"
    assert worker_count(cfg) == 2


def test_listener_defaults_match_reference():
    lst = parse({"NetworkListener": [{"name": "a", "bind": ["127.0.0.1:1"]}]}).NetworkListener[0]
    assert lst.protocol == "smtp"
    assert lst.socket_backlog == 1024 and lst.socket_no_delay and lst.socket_reuse_address and lst.socket_reuse_port
    assert lst.use_tls and not lst.tls_implicit and lst.tls_timeout == 60000 and lst.tls_ignore_client_order
    assert lst.max_connections == 8192


def test_security_defaults():
    sec = parse({}).Security
    assert (sec.auth_ban_rate.count, sec.auth_ban_rate.period) == (100, 86400000)
    assert sec.abuse_ban_rate.count == 35 and sec.loiter_ban_rate.count == 150 and sec.scan_ban_rate.count == 30
    assert "*.php*" in sec.scan_ban_paths and sec.ipv4_ban_prefix == 32 and sec.ipv6_ban_prefix == 64


@pytest.mark.parametrize("doc,needle", [
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"]}, {"name": "b", "bind": ["1.2.3.4:2"]},
                          {"name": "c", "bind": ["[::]:99999"]}]},
     "$.NetworkListener[2].bind[0]: '[::]:99999' is not a valid socket address"),
    ({"SystemSettings": {"threadPoolSize": 0}}, "$.SystemSettings.threadPoolSize: Expected `int` >= 1"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"], "tlsTimeout": 0}]},
     "$.NetworkListener[0].tlsTimeout: Invalid duration value"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"], "tlsTimeout": 1.5}]},
     "$.NetworkListener[0].tlsTimeout: Invalid duration value"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"], "protocol": "ftp"}]}, "$.NetworkListener[0].protocol"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"], "bogus": 1}]}, "unknown field `bogus`"),
    ({"NetworkListener": [{"name": "a", "bind": []}]}, "$.NetworkListener[0].bind: at least one bind address"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"]}, {"name": "a", "bind": ["1.2.3.4:2"]}]},
     "$.NetworkListener[1].name: duplicate listener name 'a'"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"]}, {"name": "b", "bind": ["1.2.3.4:1"]}]},
     "$.NetworkListener[1].bind[0]: \"1.2.3.4:1\" is already bound by listener 'a'"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"], "tlsDisableProtocols": ["tls12", "tls13"]}]},
     "$.NetworkListener[0].tlsDisableProtocols"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"], "tlsDisableProtocols": ["tls12"],
                           "tlsDisableCipherSuites": ["tls13-aes-256-gcm-sha384", "tls13-aes-128-gcm-sha256",
                                                      "tls13-chacha20-poly1305-sha256"]}]},
     "every TLSv1.3 suite is disabled"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"], "tlsDisableCipherSuites": ["rc4-md5"]}]},
     "$.NetworkListener[0].tlsDisableCipherSuites[0]"),
    ({"NetworkListener": [{"name": "a", "bind": ["1.2.3.4:1"], "useTls": False, "tlsImplicit": True}]},
     "$.NetworkListener[0].tlsImplicit"),
    ({"SystemSettings": {"proxyTrustedNetworks": ["10.0.0.0/4"]}}, "$.SystemSettings.proxyTrustedNetworks[0]"),
    ({"SystemSettings": {"proxyTrustedNetworks": ["0.0.0.0"]}}, "unspecified"),
    ({"SystemSettings": {"proxyTrustedNetworks": ["fe80::1%eth0"]}}, "zone"),
    ({"SystemSettings": {"defaultCertificateId": "nope"}}, "$.SystemSettings.defaultCertificateId"),
    ({"Security": {"authBanRate": {"count": 0, "period": 1000}}}, "$.Security.authBanRate"),
    ({"MtaInboundSession": {"transferLimit": "1.5mb"}}, "$.MtaInboundSession.transferLimit"),
    ({"Widgets": []}, "$.Widgets: unknown object"),
    ({"BlockedIp": [{"address": "10.0.0.0/8"}, {"address": "10.1.2.3/8"}]}, "$.BlockedIp[1].address"),
])
def test_errors_name_the_json_path(doc, needle):
    assert needle in err(doc)


def test_malformed_json_gives_line_and_column():
    message = err(b'{\n  "SystemSettings": {,}\n}')
    assert "line 2" in message and "not valid JSON" in message


def test_host_bits_cleared_and_sets_deduplicated():
    cfg = parse({"SystemSettings": {"proxyTrustedNetworks": {"10.1.2.3/8": True, "10.0.0.0/8": True, "192.0.2.7/32": True}}})
    assert [str(m) for m in cfg.SystemSettings.proxy_trusted_networks] == ["10.0.0.0/8", "192.0.2.7"]


def test_sizes():
    assert parse_size("50mb") == 52428800 and parse_size("10 KB") == 10240 and parse_size(2048) == 2048
    assert parse_size("2g") == 2 * 1024**3
    for bad in ("1.5mb", "-1", "+5", "12tb", True, 2**63):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse({"MtaInboundSession": {"transferLimit": "250mb"}}).MtaInboundSession.transfer_limit == 262144000


def test_secrets(tmp_path, monkeypatch):
    assert resolve(SecretValue(" x "), "$") == " x "
    monkeypatch.setenv("SW_SECRET", "abc")
    assert resolve(FromEnvironment(" SW_SECRET "), "$") == "abc"
    with pytest.raises(ConfigError, match="Environment variable 'NOPE_X' not found"):
        resolve(FromEnvironment("NOPE_X"), "$.a")
    f = tmp_path / "s"
    f.write_text("key\n\n")
    assert resolve(FromFile(str(f)), "$") == "key"
    f.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve(FromFile(str(f)), "$")
    with pytest.raises(ConfigError, match="Failed to read secret from file"):
        resolve(FromFile(str(tmp_path / "missing")), "$")
    assert "secret=***" in repr(SecretValue("hunter2"))


def test_effective_config_masks_secrets():
    cfg = parse({"Certificate": [{"certificate": {"@type": "Text", "value": "PEM"},
                                  "privateKey": {"@type": "Text", "secret": "topsecret"}}]})
    out = to_json(cfg).decode()
    assert "topsecret" not in out and "***" in out


def test_embedded_default_is_the_standard_listener_set():
    cfg = parse_bytes(default_bytes())
    ports = {lst.name: (lst.bind[0].port, lst.tls_implicit) for lst in cfg.NetworkListener}
    assert ports == {"smtp": (25, False), "submission": (587, False), "submissions": (465, True),
                     "imap": (143, False), "imaps": (993, True), "pop3": (110, False), "pop3s": (995, True),
                     "sieve": (4190, False), "https": (443, True), "http": (8080, False)}


@given(st.ip_addresses(), st.integers(0, 65535))
def test_socket_addr_round_trip(ip, port):
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    addr = SocketAddr.parse(text)
    assert SocketAddr.parse(str(addr)) == addr and addr.port == port


@given(st.text(max_size=30))
def test_socket_addr_rejects_garbage_cleanly(text):
    try:
        SocketAddr.parse(text)
    except ValueError:
        pass


@pytest.mark.parametrize("text", ["1.2.3.4:080", "1.2.3.4:+80", "1.2.3.4:", ":25", "[::1]25", "[::1]:65536", "host:25", "[1.2.3.4]:25"])
def test_socket_addr_rejects(text):
    with pytest.raises(ValueError):
        SocketAddr.parse(text)


@given(st.ip_addresses(), st.integers(8, 128))
def test_ipmask_normal_form(ip, prefix):
    prefix = min(prefix, 32 if ip.version == 4 else 128)
    if ip.is_unspecified and prefix == ip.max_prefixlen:
        # 0.0.0.0/32 and ::/128 name no client: refused on purpose (see IpMask.parse)
        with pytest.raises(ValueError, match="unspecified"):
            IpMask.parse(f"{ip}/{prefix}")
        return
    mask = IpMask.parse(f"{ip}/{prefix}")
    assert IpMask.parse(str(mask)) == mask


def test_effective_config_masks_password_hashes_and_url_passwords():
    from stalwart.accounts import hash_password

    cfg = parse({"Domain": [{"name": "example.org"}],
                 "Account": [{"name": "jane", "secret": hash_password("pw"), "emails": ["jane@example.org"]}],
                 "Redis": {"url": "redis://user:s3cret@127.0.0.1:6379/0"}})
    out = to_json(cfg).decode()
    assert "$scrypt$" not in out and "$pbkdf2" not in out
    assert "s3cret" not in out and "redis://user:***@127.0.0.1:6379/0" in out


def test_auto_ban_table_capacities():
    sec = parse({}).Security
    assert (sec.ban_table_capacity, sec.rate_counter_capacity) == (65536, 32768)
    sec = parse({"Security": {"banTableCapacity": 1024, "rateCounterCapacity": 512}}).Security
    assert (sec.ban_table_capacity, sec.rate_counter_capacity) == (1024, 512)
    assert "$.Security.banTableCapacity" in err({"Security": {"banTableCapacity": 1}})
