"""ASN and GeoIP through a real stalwartd: the master downloads the tables from a loopback HTTP
server in its helper, ``stalwart-cli geo …`` answers through the control socket, the last good
tables serve after a restart with the source down, and a reload switches to a DNS TXT zone."""
from __future__ import annotations

import json
import subprocess
import sys

from harness import Server, free_port, listener
from test_geo_dns import ZONE4, ZONE6, TxtZone
from test_geo_fetch import CsvServer, write_fixtures


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main(sys.argv[1:]))",
         "--data-dir", server.data_dir, *args], capture_output=True, text=True, timeout=30)


def config(port: int, asn: dict) -> dict:
    return {"SystemSettings": {"threadPoolSize": 1},
            "NetworkListener": [listener("smtp", "smtp", port)], "Asn": asn}


def test_resource_tables_cli_and_restart(tmp_path):
    with CsvServer() as web:
        write_fixtures(web)
        asn = {"@type": "Resource", "asnUrls": [web.url("/asn-ipv4.csv"), web.url("/asn-ipv6.csv")],
               "geoUrls": [web.url("/geo-ipv4.csv"), web.url("/geo-ipv6.csv.gz")], "expires": 3600000,
               "httpAuth": {"@type": "Unauthenticated"}}
        srv = Server(tmp_path, config(free_port(), asn)).start()
        try:
            srv.wait_log("resource.download-external", count=4)
            srv.wait_log("Invalid ASN/Geo data")
            out = None
            for _ in range(50):  # the table lands just after the last download event
                out = cli(srv, "geo", "lookup", "1.0.0.1")
                if "AS13335" in out.stdout:
                    break
            assert out.returncode == 0 and out.stdout.strip() == "1.0.0.1  AS13335 Cloudflare, Inc.  AU"
            got = json.loads(cli(srv, "geo", "lookup", "2001:200::5", "--json").stdout)
            assert (got["asn"], got["asnName"], got["country"]) == (2500, "WIDE Project", "JP")
            assert cli(srv, "geo", "lookup", "10.1.1.1").stdout.strip() == "10.1.1.1  not found"
            bad = cli(srv, "geo", "lookup", "nope")
            assert bad.returncode == 1 and "not an IP address" in bad.stderr
            status = json.loads(cli(srv, "geo", "status").stdout)
            assert status["tables"]["asn"]["ranges"] == 7 and status["schedule"]["asn"]["dueIn"] > 3000
        finally:
            assert srv.stop() == 0
        # The source goes down; a restarted server serves the last good tables and does not fetch.
        web.fail = True
        requests = len(web.requests)
        srv.start()
        try:
            assert cli(srv, "geo", "lookup", "8.8.8.8").stdout.strip() == "8.8.8.8  AS15169 Google LLC  US"
            assert len(web.requests) == requests
            assert cli(srv, "geo", "refresh").stdout.strip() == "refreshing asn, country"
            srv.wait_log("HTTP status 503")
            assert cli(srv, "geo", "lookup", "8.8.8.8").stdout.strip() == "8.8.8.8  AS15169 Google LLC  US"
        finally:
            assert srv.stop() == 0
        # No server at all: the CLI reads the tables in the data directory.
        off = cli(srv, "geo", "lookup", "1.0.0.1")
        assert off.returncode == 0 and "AS13335" in off.stdout and "not reachable" in off.stderr


def test_reload_to_dns_zone(tmp_path):
    port = free_port()
    srv = Server(tmp_path, config(port, {"@type": "Disabled"})).start()
    try:
        out = cli(srv, "geo", "lookup", "8.8.8.8")
        assert out.returncode == 1 and "disabled" in out.stderr
        with TxtZone() as zone:
            zone.records["8.8.8.8.origin.asn.example."] = (300, [[b"15169 | 8.8.8.0/24 | US | arin"]])
            cfg = config(port, {"@type": "Dns", "zoneIpV4": ZONE4, "zoneIpV6": ZONE6, "indexAsn": 0, "indexCountry": 2})
            # The project resolver, pointed at the loopback zone (no traffic leaves the machine).
            cfg["DnsResolver"] = {"@type": "Custom", "timeout": 3000,
                                  "servers": [{"protocol": "udp", "address": "127.0.0.1", "port": zone.port}]}
            srv.reload(cfg)
            status = json.loads(cli(srv, "geo", "status").stdout)
            assert status["source"] == "Dns" and status["tables"] == {}
            assert cli(srv, "geo", "lookup", "8.8.8.8").stdout.strip() == "8.8.8.8  AS15169  US"
            assert cli(srv, "geo", "lookup", "8.8.4.4").stdout.strip() == "8.8.4.4  not found"  # NXDOMAIN
            # Private addresses are never queried.
            assert cli(srv, "geo", "lookup", "10.0.0.1").stdout.strip() == "10.0.0.1  not found"
            assert "1.0.0.10.origin.asn.example." not in zone.queries
            assert zone.queries.count("8.8.8.8.origin.asn.example.") == 1
    finally:
        assert srv.stop() == 0
