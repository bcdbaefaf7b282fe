"""Managed record sets (services.md §2.4-§2.6) computed from the configuration and reconciled into
a real zone (Knot, RFC 2136): missing records added, stale ones replaced, foreign ones kept."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from knot_util import HAVE_KNOT, Knot
from rootcli import needs_root, owners, root_cli
from stalwart.config import parse_bytes  # the model first: it imports the provider structs
from stalwart.services.dnsproviders.managed import caa_family, managed_records, owned_txt, publish, txt_family

FOREIGN = '@ TXT "google-site-verification=abc"\n@ TXT "v=spf1 -all"\n@ MX 50 backup.other.test.\n'


def config(knot_server: dict | None = None, priority: int = 10, **domain) -> dict:
    dom = {"name": "example.test", "reportAddressUri": "mailto:postmaster", **domain}
    if knot_server is not None:
        dom["dnsManagement"] = {"@type": "Automatic", "dnsServerId": "knot"}
    cfg = {"SystemSettings": {"defaultHostname": "mail.example.test",
                              "mailExchangers": [{"hostname": "mail.example.test", "priority": priority}]},
           "NetworkListener": [{"name": "imaps", "protocol": "imap", "bind": ["127.0.0.1:993"], "tlsImplicit": True},
                               {"name": "https", "protocol": "http", "bind": ["127.0.0.1:443"], "tlsImplicit": True}],
           "Domain": [dom]}
    if knot_server is not None:
        cfg["DnsServer"] = [knot_server]
    return cfg


def parse(cfg: dict):
    return parse_bytes(json.dumps(cfg).encode())


def test_record_set_from_configuration():
    rows = managed_records(parse(config()), "example.test")
    got = {(o, t, v) for o, t, v, _k in rows}
    assert ("example.test.", "MX", "10 mail.example.test.") in got
    assert ("mail.example.test.", "TXT", "v=spf1 a -all") in got
    assert ("example.test.", "TXT", "v=spf1 mx -all") in got
    assert ("_dmarc.example.test.", "TXT", "v=DMARC1; p=reject; rua=mailto:postmaster@example.test") in got
    assert ("_smtp._tls.example.test.", "TXT", "v=TLSRPTv1; rua=mailto:postmaster@example.test") in got
    assert ("autoconfig.example.test.", "CNAME", "mail.example.test.") in got
    assert ("_imaps._tcp.example.test.", "SRV", "0 1 993 mail.example.test.") in got
    assert all(o.endswith(".") for o, *_ in rows)
    only_mx = managed_records(parse(config()), "example.test", publish=["mx"])
    assert [r[1] for r in only_mx] == ["MX"]


def test_caa_with_automatic_certificates(tmp_path):
    tsig = {"@type": "Tsig", "id": "knot", "host": "127.0.0.1", "keyName": "k", "key": {"@type": "Value", "secret": "a2V5"}}
    cfg = config(tsig, certificateManagement={"@type": "Automatic", "acmeProviderId": "le"})
    cfg["AcmeProvider"] = [{"id": "le", "contact": ["a@example.test"], "challengeType": "Dns01"}]
    from stalwart.services.acme.jws import AccountKey
    from stalwart.services.acme.state import AcmeState

    AcmeState(str(tmp_path)).save_account("le", "https://acme-v02.api.letsencrypt.org/directory",
                                          AccountKey.generate(), "https://acme.example/acct/1", [])
    rows = {(o, t, v) for o, t, v, _k in managed_records(parse(cfg), "example.test", str(tmp_path))}
    assert ("example.test.", "CAA", '0 issue "letsencrypt.org; accounturi=https://acme.example/acct/1"') in rows
    assert ("example.test.", "CAA", '0 iodef "mailto:postmaster@example.test"') in rows
    assert ("_validation-persist.example.test.", "TXT",
            "letsencrypt.org; accounturi=https://acme.example/acct/1; policy=wildcard") in rows


def test_family_rules():
    assert txt_family("v=spf1 mx -all") == "spf1" and txt_family("V=DMARC1; p=none") == "dmarc1"
    assert txt_family("google-site-verification=x") is None
    assert caa_family('0 issue "letsencrypt.org; accounturi=x"') == ("issue", "letsencrypt.org")
    assert owned_txt("_dmarc.example.test.") and owned_txt("s1._domainkey.example.test.")
    assert not owned_txt("example.test.")


@pytest.mark.skipif(not HAVE_KNOT, reason="knot is not installed (scripts/test-deps)")
def test_reconcile_against_knot(tmp_path):
    knot = Knot(str(tmp_path / "knot"), records=FOREIGN).start()
    try:
        data = str(tmp_path / "data")
        cfg = parse(config(knot.server()))
        changes = asyncio.run(publish(cfg, "example.test", data))
        assert changes
        assert knot.query("example.test", "MX") == ["10 mail.example.test.", "50 backup.other.test."]
        assert knot.txt("example.test") == ["google-site-verification=abc", "v=spf1 mx -all"]  # spf replaced
        assert knot.txt("_dmarc.example.test") == ["v=DMARC1; p=reject; rua=mailto:postmaster@example.test"]
        assert knot.query("autoconfig.example.test", "CNAME") == ["mail.example.test."]
        assert knot.query("_imaps._tcp.example.test", "SRV") == ["0 1 993 mail.example.test."]
        assert asyncio.run(publish(cfg, "example.test", data)) == []  # idempotent
        # The MX this server published changes; the hand-made one stays.
        cfg2 = parse(config(knot.server(), priority=20))
        asyncio.run(publish(cfg2, "example.test", data))
        assert knot.query("example.test", "MX") == ["20 mail.example.test.", "50 backup.other.test."]
        # Through the CLI, offline from --config and --data-dir.
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config(knot.server(), priority=30)))
        out = subprocess.run([sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
                              "--config", str(path), "--data-dir", data, "dns-records", "example.test", "--publish"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "record sets changed" in out.stdout
        assert knot.query("example.test", "MX") == ["30 mail.example.test.", "50 backup.other.test."]
    finally:
        knot.stop()


def test_withdrawn_groups_lose_only_what_the_server_published(tmp_path):
    """An MTA-STS policy set to disable (and a type taken out of publishRecords) withdraws the records
    this server had published there; records it never published stay (services.md §2.6 "We do better")."""
    knot = Knot(str(tmp_path / "knot"), records=FOREIGN + 'srvnote TXT "hand-made"\n').start()
    try:
        data = str(tmp_path / "data")
        cfg = config(knot.server())
        cfg["MtaSts"] = {"mode": "enforce"}
        asyncio.run(publish(parse(cfg), "example.test", data))
        assert knot.query("mta-sts.example.test", "CNAME") == ["mail.example.test."]
        assert knot.txt("_mta-sts.example.test")[0].startswith("v=STSv1; id=")
        assert knot.query("_imaps._tcp.example.test", "SRV") == ["0 1 993 mail.example.test."]

        cfg["MtaSts"] = {"mode": "disable"}
        cfg["Domain"][0]["dnsManagement"]["publishRecords"] = ["mx", "spf", "dmarc", "tlsRpt", "autoConfig"]
        changes = asyncio.run(publish(parse(cfg), "example.test", data))
        assert any("withdrawn" in c and "_mta-sts" in c for c in changes), changes
        assert knot.query("mta-sts.example.test", "CNAME") == []
        assert knot.txt("_mta-sts.example.test") == []
        assert knot.query("_imaps._tcp.example.test", "SRV") == []  # srv no longer published
        assert knot.query("ua-auto-config.example.test", "CNAME") == ["mail.example.test."]  # autoConfig: still published
        assert knot.query("autoconfig.example.test", "CNAME") == []  # autoConfigLegacy: withdrawn
        assert knot.query("example.test", "MX") == ["10 mail.example.test.", "50 backup.other.test."]
        assert knot.txt("example.test") == ["google-site-verification=abc", "v=spf1 mx -all"]
        assert knot.txt("srvnote.example.test") == ["hand-made"]
        assert asyncio.run(publish(parse(cfg), "example.test", data)) == []  # nothing left to withdraw
    finally:
        knot.stop()


@pytest.fixture
def nobody_data_dir():
    """An empty data directory owned by ``nobody`` (the service user), reachable by it."""
    import pwd
    import shutil
    import tempfile

    user = pwd.getpwnam("nobody")
    top = tempfile.mkdtemp(prefix="dns-owner-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        data = os.path.join(top, "data")
        os.mkdir(data, 0o700)
        os.chown(data, user.pw_uid, user.pw_gid)
        yield data, user
    finally:
        shutil.rmtree(top)


@needs_root
@pytest.mark.skipif(not HAVE_KNOT, reason="knot is not installed (scripts/test-deps)")
def test_root_publish_writes_as_the_owner_of_the_data_directory(tmp_path, nobody_data_dir):
    """`sudo stalwart-cli dns-records D --publish` records what it published as the server's user, so
    the server can later update that record (and withdraw what it published); a root that cannot
    switch touches nothing."""
    data, user = nobody_data_dir
    knot = Knot(str(tmp_path / "knot"), records=FOREIGN).start()
    try:
        path = tmp_path / "config.json"  # root-only, like /etc: read before the CLI switches
        path.write_text(json.dumps(config(knot.server())))
        refused = root_cli("+dac_read_search", data, "dns-records", "example.test", "--publish", "--config", str(path))
        assert refused.returncode == 1, refused.stderr
        assert "cannot switch to that user" in refused.stderr
        assert os.listdir(data) == [] and knot.query("example.test", "MX") == ["50 backup.other.test."]

        out = root_cli("+setuid,+setgid,+dac_read_search", data, "dns-records", "example.test", "--publish",
                       "--config", str(path))
        assert out.returncode == 0, out.stderr
        assert f"acting as nobody:nogroup (uid {user.pw_uid}, gid {user.pw_gid}), the owner of {data}" in out.stderr
        assert knot.query("example.test", "MX") == ["10 mail.example.test.", "50 backup.other.test."]
        found = owners(data)
        assert "dns/published/example.test.json" in found, sorted(found)
        assert {p: o for p, o in found.items() if o != (user.pw_uid, user.pw_gid)} == {}
    finally:
        knot.stop()
