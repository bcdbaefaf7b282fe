"""Knot DNS (Debian ``knot``) as a real authoritative server on an ephemeral loopback port, with one
zone that accepts RFC 2136 updates signed by one TSIG key."""
from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time

import dns.message
import dns.query

from harness import free_port

KNOTD = shutil.which("knotd") or ("/usr/sbin/knotd" if os.path.exists("/usr/sbin/knotd") else None)
HAVE_KNOT = KNOTD is not None


def _udp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (knot listens on both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


class Knot:
    def __init__(self, directory: str, zone: str = "example.test", algorithm: str = "hmac-sha512",
                 records: str = ""):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.zone = zone
        self.port = _udp_port()
        self.key_name = "stalwart-key"
        self.algorithm = algorithm
        self.secret = base64.b64encode(os.urandom(32)).decode()
        with open(os.path.join(directory, f"{zone}.zone"), "w") as fh:
            fh.write(f"$ORIGIN {zone}.\n$TTL 300\n@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n"
                     f"@ NS ns.{zone}.\nns A 127.0.0.1\n{records}")
        conf = f"""server:
    listen: 127.0.0.1@{self.port}
    rundir: {directory}
log:
  - target: stderr
    any: info
key:
  - id: {self.key_name}
    algorithm: {algorithm}
    secret: {self.secret}
acl:
  - id: update
    key: {self.key_name}
    action: update
database:
    storage: {directory}/db
control:
    listen: {directory}/knot.sock
zone:
  - domain: {zone}
    storage: {directory}
    file: {zone}.zone
    acl: update
    zonefile-sync: -1
    journal-content: none
"""
        self.conf = os.path.join(directory, "knot.conf")
        with open(self.conf, "w") as fh:
            fh.write(conf)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Knot":
        log = open(os.path.join(self.dir, "knotd.log"), "ab")
        self.proc = subprocess.Popen([KNOTD, "-c", self.conf], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"knotd exited: {open(os.path.join(self.dir, 'knotd.log')).read()}")
            try:
                resp = dns.query.udp(dns.message.make_query(f"{self.zone}.", "SOA"), "127.0.0.1", port=self.port,
                                     timeout=0.5)
                if resp.answer:
                    return self
            except (OSError, dns.exception.Timeout):
                pass
            time.sleep(0.05)
        raise AssertionError("knotd did not answer")

    def server(self, **extra) -> dict:
        """A ``DnsServer`` Tsig object for this instance."""
        return {"@type": "Tsig", "id": "knot", "host": "127.0.0.1", "port": self.port, "keyName": self.key_name,
                "key": {"@type": "Value", "secret": self.secret}, "tsigAlgorithm": self.algorithm,
                "pollingInterval": 100, "propagationTimeout": 10000, **extra}

    def txt(self, name: str) -> list[str]:
        resp = dns.query.tcp(dns.message.make_query(name.rstrip(".") + ".", "TXT"), "127.0.0.1", port=self.port,
                             timeout=2)
        return sorted(b"".join(rd.strings).decode() for rrset in resp.answer for rd in rrset)

    def query(self, name: str, rtype: str) -> list[str]:
        resp = dns.query.tcp(dns.message.make_query(name.rstrip(".") + ".", rtype), "127.0.0.1", port=self.port,
                             timeout=2)
        return sorted(rd.to_text() for rrset in resp.answer for rd in rrset)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
