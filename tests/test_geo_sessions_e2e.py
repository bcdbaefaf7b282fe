"""ASN and country reach the sessions: the SMTP Received: header and the session events
(services.md §3 "Use of results")."""
import ipaddress
import os
import smtplib
import socket
import time

from harness import Server, free_port, listener
from mailcore import arrival_sorted

from stalwart._fast import proxy_py
from stalwart.accounts import hash_password
from stalwart.services.geo.mmdb import asn_record, country_record, write_database

PROXY_SRC = "127.0.0.3"


def _range(cidr):
    net = ipaddress.ip_network(cidr)
    return int(net.network_address), int(net.broadcast_address)


def test_received_header_and_events_carry_asn_and_country(tmp_path):
    asn_db, cc_db = str(tmp_path / "asn.mmdb"), str(tmp_path / "cc.mmdb")
    write_database(asn_db, [(*_range("198.51.100.0/24"), asn_record(64500, "EXAMPLE-NET"))], [])
    write_database(cc_db, [(*_range("198.51.100.0/24"), country_record("US"))], [], database_type="GeoLite2-Country")
    port = free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 1,
                           "proxyTrustedNetworks": [PROXY_SRC]},
        "NetworkListener": [listener("smtp", "smtp", port)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("pw", ln=8), "emails": ["jane@example.org"]}],
        "Asn": {"@type": "Mmdb", "asnDatabase": asn_db, "countryDatabase": cc_db},
    }
    srv = Server(tmp_path / "srv", cfg, extra_args=["--log-level", "debug"]).start()
    try:
        new = os.path.join(srv.data_dir, "mail", "jane", "new")
        deadline = time.monotonic() + 15
        message = None
        while message is None and time.monotonic() < deadline:  # the master maps the tables just after start
            raw = socket.socket()
            raw.bind((PROXY_SRC, 0))
            raw.settimeout(10)
            raw.connect(("127.0.0.1", port))
            raw.sendall(proxy_py.build_v1("198.51.100.7", "127.0.0.1", 40000, port))
            s = smtplib.SMTP()
            s.sock = raw
            s.file = None
            assert s.getreply()[0] == 220
            s.sendmail("sender@example.net", ["jane@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
            s.quit()
            names = arrival_sorted(os.listdir(new))
            last = open(os.path.join(new, names[-1]), "rb").read()
            if b"AS64500" in last:
                message = last
            else:
                time.sleep(0.5)
        assert message is not None, "no message carried the ASN"
        head = message.split(b"\r\n\r\n", 1)[0]
        assert b"(unknown [198.51.100.7] (AS64500 EXAMPLE-NET, US))" in head
        log = srv.wait_log("Asn=64500")
        assert "Country=US" in log
    finally:
        srv.stop()
