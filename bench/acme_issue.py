"""ACME through a running stalwartd against pebble (Debian ``pebble``): how long an order takes and
how soon the issued certificate is served.

For ``--rounds`` renewals (``stalwart-cli acme renew``, HTTP-01 served by stalwartd's own HTTP
listener), it prints per round:

* order time: ``acme.renewal-start`` to ``acme.certificate-issued`` in the server log (the CA's
  validation of our listener included);
* install latency: ``acme.certificate-issued`` to the first client handshake on the implicit-TLS
  listener that presents the new leaf (polled every 10 ms), against the 60 s the workers' periodic
  certificate check would take without the master's epoch bump.

Usage: ``python bench/acme_issue.py [--rounds 5]``
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402

from acme_util import Pebble  # noqa: E402
from harness import Server, free_port, listener  # noqa: E402


def served(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).fingerprint(hashes.SHA256()).hex()


def stamp(line: str) -> float:
    return dt.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def lines(log: str, event: str) -> list[str]:
    return [ln for ln in log.splitlines() if f" {event} " in ln or ln.endswith(f" {event}")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cli = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())"]
    with tempfile.TemporaryDirectory() as tmp:
        http_port, tls_port = free_port(), free_port()
        peb = Pebble(os.path.join(tmp, "pebble"), http_port=http_port, tls_port=tls_port).start()
        cfg = {"SystemSettings": {"defaultHostname": "mail.example.test", "threadPoolSize": 2},
               "NetworkListener": [listener("http", "http", http_port, useTls=False),
                                   listener("https", "http", tls_port, tlsImplicit=True)],
               "AcmeProvider": [{"id": "p", "directory": peb.directory_url, "challengeType": "Http01",
                                 "contact": ["admin@example.test"], "caFile": peb.ca_file}],
               "Domain": [{"name": "example.test", "certificateManagement": {
                   "@type": "Automatic", "acmeProviderId": "p", "subjectAlternativeNames": ["mail"]}}]}
        srv = Server(os.path.join(tmp, "srv"), cfg).start()
        orders, installs = [], []
        try:
            for i in range(args.rounds + 1):  # round 0 is the first issuance at start-up
                if i:
                    subprocess.run([*cli, "--data-dir", srv.data_dir, "acme", "renew", "example.test"], check=True,
                                   capture_output=True, timeout=20)
                srv.wait_log("acme.certificate-issued", timeout=60, count=i + 1)
                issued_at = stamp(lines(srv.log(), "acme.certificate-issued")[i])
                cert = os.path.join(srv.data_dir, "acme", "certs", "example.test.pem")
                with open(cert, "rb") as fh:
                    want = x509.load_pem_x509_certificates(fh.read())[0].fingerprint(hashes.SHA256()).hex()
                while served(tls_port) != want:
                    time.sleep(0.01)
                installs.append(time.time() - issued_at)
                orders.append(issued_at - stamp(lines(srv.log(), "acme.renewal-start")[i]))
        finally:
            srv.stop()
            peb.stop()
    print(f"{'round':>5} {'order s':>8} {'install s':>10}")
    for i, (o, s) in enumerate(zip(orders, installs)):
        print(f"{i:5d} {o:8.2f} {s:10.3f}")
    med = statistics.median(installs)
    print(f"median order {statistics.median(orders):.2f} s; median install {med:.3f} s, "
          f"{60.0 / max(med, 1e-3):.0f}x sooner than the 60 s periodic check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
