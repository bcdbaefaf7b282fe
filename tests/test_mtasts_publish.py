"""Publishing this server's inbound MTA-STS policy (RFC 8461): the ``MtaSts`` object, the policy text and
id, the ``/.well-known/mta-sts.txt`` route on a real stalwartd fetched with curl and parsed back with the
inbound parser, and the ``mtaSts`` records printed by the CLI and published into a real Knot zone."""
from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
from certgen import make_cert
from harness import ROOT, Server, free_port, listener
from knot_util import HAVE_KNOT, Knot

from stalwart.config import parse_bytes
from stalwart.errors import ConfigError
from stalwart.protocols.http.mtasts import active_policy, policy_id, policy_text
from stalwart.services.dns.lookups import parse_mta_sts_record
from stalwart.services.dns.mtasts import parse_policy
from stalwart.services.dnsproviders.managed import ZONE_ORDER, managed_records, publish

CLI = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())"]


def config(mta_sts: dict | None = None, **extra) -> dict:
    cfg = {"SystemSettings": {"defaultHostname": "mail.example.test",
                              "mailExchangers": [{"hostname": "mx1.example.test"},
                                                 {"hostname": "mx2.example.test", "priority": 20}]},
           "Domain": [{"name": "example.test", "reportAddressUri": "mailto:postmaster"}], **extra}
    if mta_sts is not None:
        cfg["MtaSts"] = mta_sts
    return cfg


def parse(cfg: dict):
    return parse_bytes(json.dumps(cfg).encode())


# -- the object ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sts, path, words", [
    ({"mode": "strict"}, "$.MtaSts.mode", "strict"),
    ({"maxAge": 0}, "$.MtaSts.maxAge", "duration"),
    ({"maxAge": 31557601000}, "$.MtaSts.maxAge", "31557600 s"),
    ({"maxAge": 1500}, "$.MtaSts.maxAge", "whole number of seconds"),
    ({"mxHosts": ["mx.example.test", "mx .example.test"]}, "$.MtaSts.mxHosts[1]", "host name"),
    ({"mxHosts": ["*"]}, "$.MtaSts.mxHosts[0]", "'*.' pattern"),
    ({"mxHosts": ["mx.*.example.test"]}, "$.MtaSts.mxHosts[0]", "host name"),
    ({"mxHosts": ["mx.example.test", "192.0.2.25"]}, "$.MtaSts.mxHosts[1]", "host name"),  # §4.1: names only
    ({"mxHost": []}, "$.MtaSts", "mxHost"),
])
def test_invalid_mta_sts_names_the_field(sts, path, words):
    with pytest.raises(ConfigError) as exc:
        parse(config(sts))
    assert exc.value.path == path and words in exc.value.message


def test_defaults_and_normal_form():
    sts = parse(config()).MtaSts  # an absent object is the reference's default
    assert (sts.mode, int(sts.max_age), sts.mx_hosts) == ("testing", 7 * 86400 * 1000, [])
    sts = parse(config({"mxHosts": ["MX1.Example.Test.", "*.Backup.EXAMPLE.test", "mx1.example.test"],
                        "maxAge": 31557600000, "mode": "enforce"})).MtaSts
    assert sts.mx_hosts == ["mx1.example.test", "*.backup.example.test"]
    assert int(sts.max_age) == 31557600000


# -- policy text and id ----------------------------------------------------------------------------

def test_policy_text_is_byte_exact():
    assert policy_text("enforce", 604800, ("mail.example.com", "*.example.net", "backupmx.example.com")) == (
        b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
        b"mx: backupmx.example.com\r\nmax_age: 604800\r\n")
    policy = active_policy(parse(config({"maxAge": 86400000})))
    assert policy.text == (b"version: STSv1\r\nmode: testing\r\nmx: mx1.example.test\r\nmx: mx2.example.test\r\n"
                           b"max_age: 86400\r\n")
    parsed = parse_policy(policy.text, policy.id)
    assert (parsed.mode, parsed.max_age, parsed.mx) == ("testing", 86400, ("mx1.example.test", "mx2.example.test"))


def test_mx_patterns_fall_back_to_the_default_hostname():
    cfg = config()
    cfg["SystemSettings"]["mailExchangers"] = [{"priority": 5}]
    assert active_policy(parse(cfg)).mx == ("mail.example.test",)
    assert active_policy(parse(config({"mode": "disable"}))) is None


def _id_in_fresh_process(tmp_path, cfg: dict, seed: str) -> str:
    path = tmp_path / f"cfg-{seed}.json"
    path.write_text(json.dumps(cfg))
    code = ("import sys; from stalwart.config import load; from stalwart.protocols.http.mtasts import active_policy; "
            "print(active_policy(load(sys.argv[1])).id)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED=seed), check=True)
    return out.stdout.strip()


def test_policy_id_is_stable_across_processes_and_follows_the_policy(tmp_path):
    base = config({"mode": "enforce", "maxAge": 604800000, "mxHosts": ["mx1.example.test", "*.example.test"]})
    first, second = _id_in_fresh_process(tmp_path, base, "1"), _id_in_fresh_process(tmp_path, base, "2")
    assert first == second == active_policy(parse(base)).id
    assert first.isdigit() and 1 <= len(first) <= 20 and int(first) < 2**64  # RFC 8461 §3.1: 1-32 alnum
    parse_mta_sts_record(f"v=STSv1; id={first}".encode())  # the inbound TXT parser accepts it
    ids = {first}
    for change in ({"mode": "testing"}, {"maxAge": 604801000}, {"mxHosts": ["mx1.example.test"]},
                   {"mxHosts": ["mx1.example.test", "*.example.test", "mx3.example.test"]}):
        ids.add(active_policy(parse(config({**base["MtaSts"], **change}))).id)
    assert len(ids) == 5  # every change of mode, max_age or patterns gives a new id
    same = config({**base["MtaSts"], "mxHosts": ["*.example.test", "MX1.example.test"]})
    assert active_policy(parse(same)).id == first  # the same set of patterns is the same policy
    assert policy_id("enforce", 604800, ("a", "b")) != policy_id("enforce", 604800, ("ab",))


# -- records ---------------------------------------------------------------------------------------

def test_managed_records_carry_the_mta_sts_pair_in_zone_order():
    cfg = parse(config({"mode": "enforce"}))
    rows = managed_records(cfg, "example.test")
    got = {(o, t, v): k for o, t, v, k in rows}
    pid = active_policy(cfg).id
    assert got[("mta-sts.example.test.", "CNAME", "mail.example.test.")] == "mtaSts"
    assert got[("_mta-sts.example.test.", "TXT", f"v=STSv1; id={pid}")] == "mtaSts"
    kinds = [k for *_, k in rows]
    assert kinds == sorted(kinds, key=ZONE_ORDER.index)
    assert kinds.index("mtaSts") > kinds.index("srv") and kinds.index("mtaSts") < kinds.index("tlsRpt")
    assert not [r for r in managed_records(parse(config({"mode": "disable"})), "example.test") if r[3] == "mtaSts"]
    assert not [r for r in managed_records(cfg, "example.test", publish=["mx", "spf"]) if r[3] == "mtaSts"]


def test_tlsa_for_mta_sts_host_follows_the_mta_sts_records(tmp_path):
    from stalwart.services.acme.state import AcmeState

    names = ["example.test", "mta-sts.example.test", "autoconfig.example.test"]
    cert_pem, key_pem, _ = make_cert(names)
    AcmeState(str(tmp_path)).install("example.test", cert_pem.encode(), key_pem.encode())

    def tlsa_owners(sts: dict, kinds: list[str]) -> set[str]:
        rows = managed_records(parse(config(sts)), "example.test", str(tmp_path), publish=kinds)
        return {o for o, t, _v, _k in rows if t == "TLSA"}

    assert "_443._tcp.mta-sts.example.test." in tlsa_owners({}, ["tlsa", "mtaSts"])
    assert "_443._tcp.mta-sts.example.test." not in tlsa_owners({}, ["tlsa", "autoConfigLegacy"])
    assert "_443._tcp.autoconfig.example.test." in tlsa_owners({}, ["tlsa", "autoConfigLegacy"])
    assert "_443._tcp.mta-sts.example.test." not in tlsa_owners({"mode": "disable"}, ["tlsa", "mtaSts"])


def test_cli_dns_records_prints_both_records(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config({"mode": "enforce", "mxHosts": ["*.example.test"]})))
    out = subprocess.run([*CLI, "--config", str(path), "dns-records", "example.test"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    lines = [line.split(None, 3) for line in out.stdout.splitlines()]
    pid = policy_id("enforce", 604800, ("*.example.test",))
    assert ["mta-sts.example.test.", "IN", "CNAME", "mail.example.test."] in lines
    assert ["_mta-sts.example.test.", "IN", "TXT", f'"v=STSv1; id={pid}"'] in lines


@pytest.mark.skipif(not HAVE_KNOT, reason="knot is not installed (scripts/test-deps)")
def test_publish_into_knot_and_read_back(tmp_path):
    knot = Knot(str(tmp_path / "knot"), records='_mta-sts TXT "v=STSv1; id=old"\nmta-sts CNAME elsewhere.test.\n').start()
    try:
        data = str(tmp_path / "data")
        doc = config({"mode": "enforce"})
        doc["Domain"][0]["dnsManagement"] = {"@type": "Automatic", "dnsServerId": "knot"}
        doc["DnsServer"] = [knot.server()]
        cfg = parse(doc)
        changes = asyncio.run(publish(cfg, "example.test", data))
        assert any(c.startswith("_mta-sts.example.test. TXT") for c in changes)
        first = active_policy(cfg).id
        assert knot.query("mta-sts.example.test", "CNAME") == ["mail.example.test."]  # replaced, not added
        assert knot.txt("_mta-sts.example.test") == [f"v=STSv1; id={first}"]  # an owned name: the old id is gone
        assert parse_mta_sts_record(f"v=STSv1; id={first}".encode()).id == first
        assert asyncio.run(publish(cfg, "example.test", data)) == []  # idempotent
        doc["MtaSts"]["mxHosts"] = ["mx1.example.test"]
        cfg2 = parse(doc)
        asyncio.run(publish(cfg2, "example.test", data))
        second = active_policy(cfg2).id
        assert second != first and knot.txt("_mta-sts.example.test") == [f"v=STSv1; id={second}"]
    finally:
        knot.stop()


# -- the route on a real server --------------------------------------------------------------------

pytestmark_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (scripts/test-deps)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port, tls_port = free_port(), free_port()
    doc = config({"mode": "enforce", "maxAge": 86400000},
                 NetworkListener=[listener("http", "http", port), listener("https", "http", tls_port, tlsImplicit=True)])
    doc["SystemSettings"]["threadPoolSize"] = 2
    srv = Server(tmp_path_factory.mktemp("mtasts"), doc).start()
    srv.doc, srv.port, srv.tls_port = doc, port, tls_port
    yield srv
    srv.stop()


def curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    out = subprocess.run(["curl", "-sS", "-D", "-", "-o", "-", *args, url], capture_output=True, timeout=20, check=False)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytestmark_curl
def test_curl_fetches_the_policy_and_it_parses_back(server):
    url = f"http://127.0.0.1:{server.port}/.well-known/mta-sts.txt"
    code, headers, body = curl(url, "-H", "Host: mta-sts.example.test")
    assert code == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    expected = active_policy(parse(server.doc))
    assert body == expected.text
    policy = parse_policy(body, expected.id)
    assert (policy.mode, policy.max_age, policy.mx) == ("enforce", 86400, ("mx1.example.test", "mx2.example.test"))
    assert policy.matches("MX2.example.test.") and not policy.matches("mx3.example.test")
    # The id the DNS side announces is the one of the text served here.
    assert policy_id(policy.mode, policy.max_age, policy.mx) == expected.id
    code, _, body = curl(url, "-H", "Host: MTA-STS.Example.Test.:8443")  # case and port do not matter
    assert code == 200 and body == expected.text
    code, headers, body = curl(url, "-I", "-H", "Host: mta-sts.example.test")
    assert code == 200 and b"STSv1" not in body and headers["content-length"] == str(len(expected.text))
    # Over implicit TLS, as a sender fetches it (SNI and Host both mta-sts.<domain>).
    code, _, body = curl(f"https://mta-sts.example.test:{server.tls_port}/.well-known/mta-sts.txt", "-k",
                         "--resolve", f"mta-sts.example.test:{server.tls_port}:127.0.0.1")
    assert code == 200 and body == expected.text


@pytestmark_curl
@pytest.mark.parametrize("host", ["example.test", "mail.example.test", "mta-sts.other.test", "mta-sts.",
                                  "xmta-sts.example.test", "[::1]"])
def test_other_hosts_get_404(server, host):
    code, headers, body = curl(f"http://127.0.0.1:{server.port}/.well-known/mta-sts.txt", "-H", f"Host: {host}")
    assert code == 404 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 404


@pytestmark_curl
def test_post_is_405_and_disable_is_404(server):
    url = f"http://127.0.0.1:{server.port}/.well-known/mta-sts.txt"
    code, headers, _ = curl(url, "-X", "POST", "-H", "Host: mta-sts.example.test")
    assert code == 405 and headers["allow"] == "GET, HEAD"
    disabled = copy.deepcopy(server.doc)
    disabled["MtaSts"]["mode"] = "disable"
    server.reload(disabled)
    try:
        code, _, body = curl(url, "-H", "Host: mta-sts.example.test")
        assert code == 404 and json.loads(body)["status"] == 404
    finally:
        server.reload(server.doc)
    code, _, _ = curl(url, "-H", "Host: mta-sts.example.test")
    assert code == 200
