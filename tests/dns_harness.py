"""DNS servers for the resolver tests, all on loopback with ephemeral ports.

* :class:`Unbound`: a real ``unbound`` (Debian package) serving ``local-data`` zones over UDP, TCP
  and DNS over TLS with a test certificate whose SAN holds ``127.0.0.1`` and ``dns.test``; stopped
  by PID.
* :class:`CountingServer`: a small in-process UDP server on dnspython that counts queries, can
  delay its answers and can set the AD flag (a validating upstream), for single-flight and DANE
  tests where unbound's answers cannot be instrumented.
* :func:`silent_udp`: a bound UDP socket that never answers (timeouts).
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

UNBOUND = shutil.which("unbound") or ("/usr/sbin/unbound" if os.path.exists("/usr/sbin/unbound") else None)

SOA = "example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 2"


def free_udp_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no port free for both TCP and UDP")


def make_ip_cert(directory: Path, names: tuple[str, ...] = ("dns.test",),
                 ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
    """A self-signed certificate with DNS and IP SANs; returns (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "dns-cert.pem", directory / "dns-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Unbound:
    """``unbound -d`` with ``local-zone``/``local-data`` lines, on ``port`` (UDP and TCP) and
    ``tls_port`` (DNS over TLS)."""

    def __init__(self, directory: Path, local_data: list[str], zones: tuple[str, ...] = ("example.test.",)):
        self.dir = directory
        self.port = free_udp_tcp_port()
        self.tls_port = free_udp_tcp_port()
        self.cert, self.key = make_ip_cert(directory)
        lines = [
            "server:",
            "    verbosity: 0",
            f"    interface: 127.0.0.1@{self.port}",
            f"    interface: 127.0.0.1@{self.tls_port}",
            f"    port: {self.port}",
            f"    tls-port: {self.tls_port}",
            f"    tls-service-key: \"{self.key}\"",
            f"    tls-service-pem: \"{self.cert}\"",
            "    do-ip6: no",
            "    do-daemonize: no",
            "    username: \"\"",
            "    chroot: \"\"",
            f"    directory: \"{directory}\"",
            f"    pidfile: \"{directory}/unbound.pid\"",
            "    use-syslog: no",
            f"    logfile: \"{directory}/unbound.log\"",
            "    access-control: 127.0.0.0/8 allow",
            "    module-config: \"iterator\"",
            "    num-threads: 1",
        ]
        for zone in zones:
            lines.append(f"    local-zone: \"{zone}\" static")
        for rr in local_data:
            lines.append(f"    local-data: '{rr}'")
        lines += ["remote-control:", "    control-enable: no"]
        self.conf = directory / "unbound.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "Unbound":
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        q = dns.message.make_query("example.test.", "SOA")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                dns.query.udp(q, "127.0.0.1", timeout=0.2, port=self.port)
                dns.query.tcp(q, "127.0.0.1", timeout=0.2, port=self.port)
                return self
            except (OSError, dns.exception.Timeout):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("unbound did not answer within the start timeout")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


def silent_udp(host: str = "127.0.0.1") -> tuple[socket.socket, int]:
    """A UDP socket on ``host`` that receives and never answers; close it when done."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s, s.getsockname()[1]


class CountingServer(asyncio.DatagramProtocol):
    """UDP DNS server answering from ``zone`` (``{(name, type): [rdata text, …]}``) with TTL
    ``ttl``; unknown names get NXDOMAIN with the example.test SOA. Counts queries by (name, type)."""

    def __init__(self, zone: dict[tuple[str, str], list[str]], ttl: int = 300, delay: float = 0.0,
                 ad: bool = False):
        self.zone = {(n.lower(), t.upper()): v for (n, t), v in zone.items()}
        self.ttl = ttl
        self.delay = delay
        self.ad = ad
        self.queries: dict[tuple[str, str], int] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> "CountingServer":
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        query = dns.message.from_wire(data)
        asyncio.get_running_loop().call_later(self.delay, self._answer, query, addr)

    def _answer(self, query: dns.message.Message, addr) -> None:
        q = query.question[0]
        name, rtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
        self.queries[(name, rtype)] = self.queries.get((name, rtype), 0) + 1
        resp = dns.message.make_response(query)
        if self.ad:
            resp.flags |= dns.flags.AD
        data = self.zone.get((name, rtype))
        cname = self.zone.get((name, "CNAME"))
        if data:
            resp.answer.append(dns.rrset.from_text_list(name, self.ttl, "IN", rtype, data))
        elif cname:  # the CNAME alone, as an authoritative server for another zone answers
            resp.answer.append(dns.rrset.from_text_list(name, self.ttl, "IN", "CNAME", cname))
        else:
            if not any(n == name for n, _ in self.zone):
                resp.set_rcode(dns.rcode.NXDOMAIN)
            soa = SOA.split()
            resp.authority.append(dns.rrset.from_text(soa[0], int(soa[1]), "IN", "SOA", " ".join(soa[4:])))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(resp.to_wire(), addr)
