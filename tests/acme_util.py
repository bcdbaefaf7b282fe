"""Let's Encrypt's pebble test CA and pebble-challtestsrv (Debian packages) on ephemeral loopback ports.

``Pebble(tmp_path, http_port=..., tls_port=...)`` starts challtestsrv (its DNS answers 127.0.0.1 for
every A query, so pebble's validation connects to our loopback listeners) and pebble with its own
config JSON and a WFE certificate made here (``ca_file`` is what the ACME client must trust).
``PEBBLE_VA_NOSLEEP=1`` skips pebble's random validation delay; its default 5 % ``badNonce``
rejection stays on, so every test also exercises the nonce retry (anchors.md §5).

``ChallengeHttp(data_dir)`` answers pebble's HTTP-01 requests from the challenge store for
renewals run outside a stalwartd; its ``gate`` holds the answers back while cleared, so a test can
keep an order in progress for as long as it needs.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import free_port, listener

HAVE_PEBBLE = shutil.which("pebble") is not None and shutil.which("pebble-challtestsrv") is not None


def wfe_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: pebble's HTTPS and our trust anchor."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test WFE")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(directory, "wfe.pem")
    key_path = os.path.join(directory, "wfe.key")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert_path, key_path


def _wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


class Pebble:
    """pebble + challtestsrv. ``dns_port`` overrides the resolver pebble validates with (knot)."""

    def __init__(self, directory: str, *, http_port: int = 5002, tls_port: int = 5001, dns_server: str | None = None,
                 eab: dict[str, str] | None = None, env: dict | None = None):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.ca_file, key_file = wfe_certificate(directory)
        self.port = free_port()
        self.mgmt_port = free_port()
        self.chall_dns = free_port()
        self.chall_mgmt = free_port()
        cfg = {"pebble": {"listenAddress": f"127.0.0.1:{self.port}",
                          "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                          "certificate": self.ca_file, "privateKey": key_file,
                          "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
                          "externalAccountBindingRequired": eab is not None,
                          "externalAccountMACKeys": eab or {},
                          "retryAfter": {"authz": 1, "order": 1}}}
        self.config_path = os.path.join(directory, "pebble.json")
        with open(self.config_path, "w") as fh:
            json.dump(cfg, fh)
        self.dns_server = dns_server
        self.env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", **(env or {})}
        self.procs: list[subprocess.Popen] = []

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> "Pebble":
        log = open(os.path.join(self.dir, "pebble.log"), "ab")
        dns = self.dns_server
        if dns is None:
            chall = subprocess.Popen(["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.chall_dns}", "-http01", "",
                                      "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{self.chall_mgmt}",
                                      "-defaultIPv6", ""],
                                     stdout=log, stderr=log, env=self.env)
            self.procs.append(chall)
            _wait_port(self.chall_mgmt, proc=chall)
            dns = f"127.0.0.1:{self.chall_dns}"
        peb = subprocess.Popen(["pebble", "-config", self.config_path, "-dnsserver", dns],
                               stdout=log, stderr=log, env=self.env)
        self.procs.append(peb)
        _wait_port(self.port, proc=peb)
        return self

    def log(self) -> str:
        with open(os.path.join(self.dir, "pebble.log"), encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def roots(self) -> bytes:
        """pebble's current issuing root (its management interface, HTTPS with the WFE certificate)."""
        import ssl

        ctx = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt_port}/roots/0", context=ctx, timeout=5) as resp:
            return resp.read()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []


def pebbles(tmp_path):
    """The body of a ``pebble_factory`` fixture (``yield from pebbles(tmp_path)``): it yields
    ``make(**Pebble kwargs)`` that starts a pebble; all are stopped at the end of the test."""
    started = []

    def make(**kwargs) -> Pebble:
        peb = Pebble(str(tmp_path / f"pebble{len(started)}"), **kwargs).start()
        started.append(peb)
        return peb

    yield make
    for peb in started:
        peb.stop()


def presented_chain(port: int, sni: str, alpn: list[str] | None = None) -> list[x509.Certificate]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            return [x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))]


def cli(data_dir: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
                           "--data-dir", data_dir, *args], capture_output=True, text=True, timeout=timeout)


def leaf_fingerprint(path: str) -> str:
    with open(path, "rb") as fh:
        return x509.load_pem_x509_certificates(fh.read())[0].fingerprint(hashes.SHA256()).hex()


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s")


def server_config(http_port: int, tls_port: int, provider: dict, domain: dict) -> dict:
    return {"SystemSettings": {"defaultHostname": "mail.example.test", "threadPoolSize": 2},
            "NetworkListener": [listener("http", "http", http_port, useTls=False),
                                listener("https", "http", tls_port, tlsImplicit=True)],
            "AcmeProvider": [provider], "Domain": [domain]}


class ChallengeHttp:
    """A plain HTTP-01 responder over the challenge store, for in-process renewals.

    ``requested`` is set when a validation request arrives; the answer waits until ``gate`` is set
    (at most ``GATE_TIMEOUT`` seconds; it starts set)."""

    GATE_TIMEOUT = 20.0

    def __init__(self, data_dir: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from stalwart.services.acme.challenges import ChallengeStore

        store = ChallengeStore(data_dir)
        self.gate = threading.Event()
        self.gate.set()
        self.requested = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requested.set()
                outer.gate.wait(outer.GATE_TIMEOUT)
                answer = store.http_answer(self.path.rsplit("/", 1)[-1])
                self.send_response(200 if answer else 404)
                self.send_header("Content-Length", str(len(answer or b"")))
                self.end_headers()
                self.wfile.write(answer or b"")

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.gate.set()
        self.srv.shutdown()
        self.srv.server_close()


def register_account(directory_url: str, ca_file: str, data_dir: str, provider: str = "p",
                     contact: str = "mailto:admin@example.test"):
    """Register a new account at the CA behind ``directory_url`` and store it as ``provider``'s in
    ``data_dir`` (what the first order would do). Returns ``(key, account URI)``."""
    import asyncio

    from stalwart.services.acme.client import AcmeClient
    from stalwart.services.acme.http import HttpClient
    from stalwart.services.acme.jws import AccountKey
    from stalwart.services.acme.state import AcmeState

    key = AccountKey.generate()

    async def register():
        client = AcmeClient(directory_url, key, HttpClient(ca_file=ca_file))
        client.configure_account([contact])
        return await client.register()

    uri = asyncio.run(register())
    AcmeState(data_dir).save_account(provider, directory_url, key, uri, [contact])
    return key, uri
