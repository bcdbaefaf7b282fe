"""ManageSieve through a real stalwartd: STARTTLS, AUTHENTICATE PLAIN, PUTSCRIPT/GETSCRIPT round trip."""
import socket
import ssl

import pytest

from harness import Server, free_port, listener
from stalwart.accounts import hash_password
from stalwart.accounts.sasl import encode_plain

SCRIPT = b'require "fileinto";\r\nif header :is "x-list" "dev" { fileinto "dev"; }\r\n'


@pytest.fixture(scope="module")
def sieve_server(tmp_path_factory):
    port = free_port()
    cfg = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 1},
        "NetworkListener": [listener("sieve", "manageSieve", port)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("jane-secret", ln=8), "emails": ["jane@example.org"]}],
    }
    srv = Server(tmp_path_factory.mktemp("sieve"), cfg).start()
    yield srv, port
    srv.stop()


def read_until_ok(f) -> list[bytes]:
    lines = []
    while True:
        line = f.readline()
        assert line, lines
        lines.append(line)
        if line.startswith((b"OK", b"NO", b"BYE")):
            return lines


def test_starttls_putscript_getscript_round_trip(sieve_server):
    srv, port = sieve_server
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = raw.makefile("rb")
    greeting = read_until_ok(f)
    assert b'"STARTTLS"\r\n' in greeting and greeting[-1].startswith(b"OK")
    raw.sendall(b"STARTTLS\r\n")
    assert f.readline() == b'OK "Begin TLS negotiation now."\r\n'
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(raw, server_hostname="mx.example.test")
    f = tls.makefile("rb")
    caps = read_until_ok(f)
    assert b'"SASL" "PLAIN"\r\n' in caps and b"STARTTLS" not in b"".join(caps)
    tls.sendall(b'AUTHENTICATE "PLAIN" "' + encode_plain("jane", "jane-secret").encode() + b'"\r\n')
    assert f.readline() == b'OK "Authentication successful."\r\n'
    tls.sendall(b'PUTSCRIPT "filters" {%d+}\r\n' % len(SCRIPT) + SCRIPT + b'\r\nSETACTIVE "filters"\r\n'
                b'GETSCRIPT "filters"\r\nLISTSCRIPTS\r\n')
    assert f.readline() == b'OK "Putscript completed."\r\n'
    assert f.readline() == b'OK "Setactive completed."\r\n'
    assert f.readline() == b"{%d}\r\n" % len(SCRIPT)
    assert f.read(len(SCRIPT)) == SCRIPT
    assert read_until_ok(f) == [b"\r\n", b'OK "Getscript completed."\r\n']
    assert read_until_ok(f) == [b'"filters" ACTIVE\r\n', b'OK "Listscripts completed."\r\n']
    tls.sendall(b"LOGOUT\r\n")
    assert f.readline() == b'OK "Logout complete."\r\n'
    tls.close()
