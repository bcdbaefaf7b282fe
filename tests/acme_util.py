"""Let's Encrypt's pebble test CA and pebble-challtestsrv (Debian packages) on ephemeral loopback ports.

``Pebble(tmp_path, http_port=..., tls_port=...)`` starts challtestsrv (its DNS answers 127.0.0.1 for
every A query, so pebble's validation connects to our loopback listeners) and pebble with its own
config JSON and a WFE certificate made here (``ca_file`` is what the ACME client must trust).
``PEBBLE_VA_NOSLEEP=1`` skips pebble's random validation delay; its default 5 % ``badNonce``
rejection stays on, so every test also exercises the nonce retry (anchors.md §5).
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import free_port

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
