"""The ``Cache`` object and the per-worker cache registry (spec/services.md §5.1, "We do better")."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart.config import parse_bytes, to_json
from stalwart.errors import ConfigError
from stalwart.services.cache import CACHE_SIZE_DEFAULTS, NEGATIVE, MIN_CACHE_SIZE, Negative
from stalwart.services.cache.config import SIZE_FIELDS, CacheSettings
from stalwart.services.cache.registry import CacheRegistry


def cache_cfg(doc: dict) -> CacheSettings:
    return parse_bytes(json.dumps({"Cache": doc}).encode()).Cache


def test_every_reference_field_with_its_default():
    cfg = parse_bytes(b"{}").Cache
    assert cfg.sizes() == dict(CACHE_SIZE_DEFAULTS)  # the struct and the helper's table agree
    assert list(SIZE_FIELDS) == list(CACHE_SIZE_DEFAULTS)
    assert cfg.negative_ttl == 3_600_000 and cfg.negative_ttl_seconds == 3600.0
    for name in ("messages", "events", "accounts", "domains", "domainNames", "domainNamesNegative",
                 "emailAddresses", "emailAddressesNegative", "tenants", "accessTokens", "httpAuth",
                 "dnsTxt", "dnsMx", "dnsPtr", "dnsIpv4", "dnsIpv6", "dnsTlsa", "dnsMtaSts", "dnsRbl"):
        assert name in SIZE_FIELDS


@pytest.mark.parametrize("value, expected", [
    (2048, 2048), ("50mb", 52428800), ("1GB", 1073741824), ("512Kb", 524288), ("4096", 4096),
    ("2kb", 2048), (10485760, 10485760),
])
def test_sizes_take_integers_and_suffix_strings(value, expected):
    cfg = cache_cfg({"dnsTxt": value})
    assert cfg.dns_txt == expected and type(cfg.size("dnsTxt")) is int


@pytest.mark.parametrize("value, message", [
    (2047, "at least 2048 bytes, got 2047"),
    ("1kb", "at least 2048 bytes, got 1024"),
    (0, "at least 2048"),
    ("50 parsecs", "not a byte size"),
    ("-5mb", "not a byte size"),
    (1.5, ""),
    (True, ""),
])
def test_bad_sizes_name_the_field(value, message):
    with pytest.raises(ConfigError) as info:
        cache_cfg({"emailAddressesNegative": value})
    assert info.value.path == "$.Cache.emailAddressesNegative"
    assert message in info.value.message


def test_unknown_fields_and_bad_negative_ttl():
    with pytest.raises(ConfigError) as info:
        cache_cfg({"dnsSrv": 4096})
    assert "dnsSrv" in str(info.value)
    with pytest.raises(ConfigError) as info:
        cache_cfg({"negativeTtl": 0})
    assert info.value.path == "$.Cache.negativeTtl"


def test_effective_configuration_prints_integers():
    cfg = parse_bytes(b'{"Cache": {"dnsMx": "2mb", "negativeTtl": 60000}}')
    printed = json.loads(to_json(cfg))["Cache"]
    assert printed["dnsMx"] == 2097152 and printed["negativeTtl"] == 60000
    assert printed["dnsRbl"] == 5242880
    # and it reads back to the same object
    assert parse_bytes(json.dumps({"Cache": printed}).encode()).Cache == cfg.Cache


def test_stalwartd_check_reports_the_path(tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text('{"Cache": {"dnsPtr": "1kb"}}')
    out = subprocess.run([sys.executable, "-c", "from stalwart.cli import stalwartd_main; raise SystemExit(stalwartd_main())",
                          "check", "--config", str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "$.Cache.dnsPtr: a cache size must be at least 2048 bytes, got 1024" in out.stderr


@given(st.one_of(
    st.integers(min_value=MIN_CACHE_SIZE, max_value=1 << 40),
    st.tuples(st.integers(min_value=2, max_value=4096), st.sampled_from(["kb", "KB", "Mb", "mb", "gb"])).map(
        lambda t: f"{t[0]}{t[1]}")))
def test_any_accepted_size_is_stored_as_bytes(value):
    size = cache_cfg({"dnsIpv6": value}).dns_ipv6
    if isinstance(value, str):
        n, unit = int(value[:-2]), value[-2:].lower()
        assert size == n * {"kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}[unit]
    else:
        assert size == value


@given(st.integers(min_value=-(1 << 31), max_value=MIN_CACHE_SIZE - 1))
def test_any_size_below_the_minimum_is_refused(value):
    with pytest.raises(ConfigError) as info:
        cache_cfg({"accounts": value})
    assert info.value.path == "$.Cache.accounts"


def test_registry_builds_caches_on_first_use_at_their_configured_size():
    reg = CacheRegistry(cache_cfg({"dnsMx": "64kb"}))
    assert reg.caches() == []
    assert reg.cache("dnsMx").capacity == 65536
    assert reg.cache("dnsMx") is reg.cache("dnsMx")
    assert reg.cache("accounts").capacity == 20971520
    with pytest.raises(KeyError):
        reg.cache("dnsSrv")
    assert set(reg.stats()) == {"dnsMx", "accounts"}


def test_registry_reconfigure_resizes_built_caches():
    reg = CacheRegistry(cache_cfg({"dnsTxt": "64kb"}))
    cache = reg.cache("dnsTxt")
    for i in range(2000):
        cache.put(f"name-{i}.example.", b"x" * 100, ttl=3600)
    assert cache.weight > 32768
    changed = reg.reconfigure(cache_cfg({"dnsTxt": "32kb", "dnsMx": "8kb"}))
    assert changed == {"dnsTxt": (65536, 32768)}  # dnsMx was never built: nothing to resize
    assert reg.cache("dnsTxt") is cache and cache.capacity == 32768 and cache.weight <= 32768
    assert reg.cache("dnsMx").capacity == 8192
    assert reg.settings.dns_txt == 32768


def test_negative_caches_use_negative_ttl():
    now = [100.0]
    reg = CacheRegistry(cache_cfg({"negativeTtl": 2000}), clock=lambda: now[0])

    async def go():
        loading = reg.loading("emailAddressesNegative")

        async def load(key):
            return True

        await loading.get_or_load("nobody@example.org", load)
        now[0] += 1.9
        assert loading.get("nobody@example.org") is True
        now[0] += 0.2
        assert loading.get("nobody@example.org") is None
        # a reload with another negativeTtl applies to later inserts
        reg.reconfigure(cache_cfg({"negativeTtl": 10000}))
        await loading.get_or_load("other@example.org", load)
        now[0] += 9.0
        assert loading.get("other@example.org") is True

        async def missing(key):
            return Negative(5.0)

        assert await reg.loading("domainNames").get_or_load("gone.example", missing) is NEGATIVE
    asyncio.run(go())
    assert reg.loading("emailAddressesNegative") is reg.loading("emailAddressesNegative")


@pytest.mark.slow
def test_server_runs_and_reloads_with_cache_and_resolver_objects(tmp_path):
    """The objects go through a real stalwartd start and SIGHUP: a bad size keeps the running
    configuration and names the field; a good one becomes the new generation."""
    import socket

    from harness import Server, free_port, listener, recv_line

    port = free_port()
    base = {"SystemSettings": {"threadPoolSize": 1}, "NetworkListener": [listener("smtp", "smtp", port)],
            "Cache": {"dnsMx": "1mb", "negativeTtl": 60000},
            "DnsResolver": {"@type": "Custom", "servers": [{"address": "127.0.0.1", "port": 5353}]}}
    server = Server(tmp_path, base).start()
    try:
        server.reload(dict(base, Cache={"dnsMx": "100"}), expect="$.Cache.dnsMx")
        assert "at least 2048 bytes" in server.log()
        server.reload(dict(base, Cache={"dnsMx": "2mb", "dnsTxt": 65536}))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert recv_line(sock).startswith(b"220 ")
    finally:
        assert server.stop() == 0
