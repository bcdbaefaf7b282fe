"""Certificates through a real stalwartd: SNI selection, defaults, rotation under load."""
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from certgen import make_cert, peer_serial
from harness import Server, free_port, listener, recv_line


def handshake(port, sni, host="127.0.0.1"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host, port), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname=sni)
    try:
        assert recv_line(tls).startswith(b"220 ")
        return peer_serial(tls)
    finally:
        tls.close()


def write(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@pytest.fixture
def certs(tmp_path):
    out = {}
    for name, names, days in (("exact", ["mail.example.test"], 30), ("wild", ["*.example.test"], 60),
                              ("wild_old", ["*.example.test"], 10), ("other", ["other.test"], 30)):
        cert, key, serial = make_cert(names, days=days)
        (tmp_path / f"{name}.crt").write_text(cert)
        (tmp_path / f"{name}.key").write_text(key)
        out[name] = serial
    return out


def cert_obj(tmp_path, name, id_):
    return {"id": id_, "certificate": {"@type": "File", "filePath": str(tmp_path / f"{name}.crt")},
            "privateKey": {"@type": "File", "filePath": str(tmp_path / f"{name}.key")}}


def test_sni_selection_through_stalwartd(tmp_path, certs):
    port = free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2, "defaultCertificateId": "other"},
        "Certificate": [cert_obj(tmp_path, "exact", "exact"), cert_obj(tmp_path, "wild", "wild"),
                        cert_obj(tmp_path, "wild_old", "wild_old"), cert_obj(tmp_path, "other", "other")],
        "NetworkListener": [listener("smtps", "smtp", port, tlsImplicit=True)],
    }
    srv = Server(tmp_path / "srv", cfg).start()
    try:
        assert handshake(port, "mail.example.test") == certs["exact"]  # exact beats wildcard
        assert handshake(port, "MAIL.Example.Test") == certs["exact"]  # case-insensitive
        assert handshake(port, "imap.example.test") == certs["wild"]  # one label; latest notValidAfter
        assert handshake(port, "a.b.example.test") == certs["other"]  # wildcard covers one label only
        assert handshake(port, "example.test") == certs["other"]  # nor the apex
        assert handshake(port, None) == certs["other"]  # no SNI: defaultCertificateId
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                              "pop.example.test", "-ign_eof"], input=b"QUIT\r\n", capture_output=True, timeout=20)
        assert "CN = *.example.test" in out.stdout.decode()
    finally:
        srv.stop()


def test_certificate_rotation_under_load(tmp_path):
    port = free_port()
    cert_a, key_a, serial_a = make_cert(["mx.example.test"])
    cert_b, key_b, serial_b = make_cert(["mx.example.test"])
    crt, key = tmp_path / "mx.crt", tmp_path / "mx.key"
    write(crt, cert_a)
    write(key, key_a)
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2},
        "Certificate": [{"certificate": {"@type": "File", "filePath": str(crt)},
                         "privateKey": {"@type": "File", "filePath": str(key)}}],
        "NetworkListener": [listener("smtps", "smtp", port, tlsImplicit=True)],
    }
    srv = Server(tmp_path / "srv", cfg).start()
    stop = threading.Event()
    results = {"ok": 0, "failed": 0, "serials": set()}

    def load():
        while not stop.is_set():
            try:
                results["serials"].add(handshake(port, "mx.example.test"))
                results["ok"] += 1
            except (OSError, AssertionError):
                results["failed"] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        assert handshake(port, "mx.example.test") == serial_a
        for t in threads:
            t.start()
        time.sleep(1.5)
        write(crt, cert_b)
        write(key, key_b)
        cli = [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
               "--data-dir", srv.data_dir, "reload-certificates"]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        time.sleep(1.5)
        assert handshake(port, "mx.example.test") == serial_b
        srv.reload()  # and a full SIGHUP reload under the same load
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        srv.stop()
    assert results["failed"] == 0, results
    assert results["ok"] > 50
    assert results["serials"] == {serial_a, serial_b}
