"""Resource downloads (spec/services.md §3 "Resource: download"): real fetches from a local HTTP
server on loopback — CSV files in both families, a malformed row, a file over ``maxSize``, a slow
server past ``timeout``, Bearer and Basic protected URLs, gzip, ``file://`` — and the tables built
from them. Other geo tests import :class:`CsvServer` and :func:`write_fixtures` from here."""
from __future__ import annotations

import base64
import gzip
import http.server
import socket
import threading
import time

import msgspec
import pytest

from stalwart._fast import load
from stalwart.config import parse_bytes
from stalwart.errors import ConfigError
from stalwart.services.geo.config import request_headers
from stalwart.services.geo.fetch import FetchError, fetch_text
from stalwart.services.geo.refresh import build, table_path

ASN_V4 = (
    '1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc."\n'
    "8.8.8.0,8.8.8.255,15169,Google LLC\n"
    "8.0.0.0,8.255.255.255,3356,LEVEL3\n"
    "this,is,not,a,row\n"
    "9.9.9.0,9.9.9.255,19281,Quad9\n"
)
ASN_V6 = (
    "2001:200::,2001:200:ffff:ffff:ffff:ffff:ffff:ffff,2500,WIDE Project\n"
    "2001:4860::,2001:4860:ffff:ffff:ffff:ffff:ffff:ffff,15169,Google LLC"  # no final newline
)
GEO_V4 = "1.0.0.0,1.0.0.255,AU\n8.8.8.0,8.8.8.255,US\n9.9.9.0,9.9.9.255,ch,\n"
GEO_V6 = "2001:200::,2001:200:ffff:ffff:ffff:ffff:ffff:ffff,JP\n"
TOKEN = "s3cr3t-token"


class CsvServer:
    """A threaded HTTP server on 127.0.0.1 serving ``files`` (path -> bytes), with a few special
    paths: ``/slow/…`` trickles its body, ``/bearer/…`` and ``/basic/…`` need credentials,
    ``/status/<code>`` answers that code. Every request's headers are kept in ``requests``."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict]] = []
        self.fail = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, dict(self.headers)))
                path = self.path
                if outer.fail or path.startswith("/status/"):
                    code = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 503
                    return self._send(code, b"no")
                if path.startswith("/bearer/"):
                    if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                        return self._send(401, b"who are you")
                    path = path[len("/bearer"):]
                if path.startswith("/basic/"):
                    want = "Basic " + base64.b64encode(b"geo:pw").decode()
                    if self.headers.get("Authorization") != want:
                        return self._send(401, b"who are you")
                    path = path[len("/basic"):]
                if path.startswith("/slow/"):
                    body = outer.files.get(path[len("/slow"):], b"")
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    deadline = time.monotonic() + 10
                    for i in range(len(body)):  # one byte every 50 ms, bounded
                        if time.monotonic() > deadline:
                            break
                        try:
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.05)
                    return
                body = outer.files.get(path)
                if body is None:
                    return self._send(404, b"not here")
                self._send(200, body)

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> CsvServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_fixtures(server: CsvServer) -> None:
    server.files.update({
        "/asn-ipv4.csv": ASN_V4.encode(), "/asn-ipv6.csv": ASN_V6.encode(),
        "/geo-ipv4.csv": GEO_V4.encode(), "/geo-ipv6.csv.gz": gzip.compress(GEO_V6.encode()),
    })


@pytest.fixture
def server():
    with CsvServer() as s:
        write_fixtures(s)
        yield s


def asn_config(asn_urls, geo_urls=(), **extra):
    doc = {"Asn": {"@type": "Resource", "asnUrls": list(asn_urls), "geoUrls": list(geo_urls),
                   "httpAuth": {"@type": "Unauthenticated"}, **extra}}
    return parse_bytes(msgspec.json.encode(doc)).Asn


class Events(list):
    def __call__(self, event, level=None, **keys):
        self.append((event, keys))

    def named(self, name):
        return [k for e, k in self if e == name]


def p(text):
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def test_tables_from_http_in_both_families(server, tmp_path):
    cfg = asn_config([server.url("/asn-ipv4.csv"), server.url("/asn-ipv6.csv")],
                     [server.url("/geo-ipv4.csv"), server.url("/geo-ipv6.csv.gz")])
    ev = Events()
    assert build(cfg, str(tmp_path), "asn", ev) == (True, 7)  # 8.0.0.0/8 split around 8.8.8.0/24
    assert build(cfg, str(tmp_path), "country", ev) == (True, 4)
    downloads = ev.named("resource.download-external")
    assert [d["Url"] for d in downloads] == [server.url(u) for u in
                                             ("/asn-ipv4.csv", "/asn-ipv6.csv", "/geo-ipv4.csv", "/geo-ipv6.csv.gz")]
    # The malformed row is skipped and counted, and the rows after it still count.
    assert downloads[0]["Invalid"] == 1 and downloads[0]["Total"] == 4
    assert ev.named("resource.error")[0]["Reason"] == "Invalid ASN/Geo data"
    for compiled in (False, True):
        rt = load("rangetable", compiled=compiled)
        with open(table_path(str(tmp_path), "asn"), "rb") as fa, open(table_path(str(tmp_path), "country"), "rb") as fc:
            asn, geo = rt.RangeTable(fa.read()), rt.RangeTable(fc.read())
        assert asn.get(p("1.0.0.9")) == (13335, "Cloudflare, Inc.")
        assert asn.get(p("8.8.8.8")) == (15169, "Google LLC")  # narrowest of two overlapping ranges
        assert asn.get(p("8.8.4.4")) == (3356, "LEVEL3")
        assert asn.get(p("9.9.9.9")) == (19281, "Quad9")
        assert asn.get(p("2001:4860:4860::8888")) == (15169, "Google LLC")  # last line without newline
        assert asn.get(p("2001:200::1")) == (2500, "WIDE Project")
        assert geo.get(p("9.9.9.9"))[1] == "CH"
        assert geo.get(p("2001:200:1::"))[1] == "JP"  # from the gzipped file
        assert geo.get(p("10.0.0.1")) is None


def test_user_agent_custom_headers_and_bearer(server, tmp_path):
    server.files["/x.csv"] = b"1.2.3.0,1.2.3.255,64500,EX\n"
    cfg = asn_config([server.url("/bearer/x.csv")], httpHeaders={" X-Geo-Client ": " test ", "Authorization": "no"},
                     httpAuth={"@type": "Bearer", "bearerToken": {"@type": "Value", "secret": TOKEN}})
    assert build(cfg, str(tmp_path), "asn", Events()) == (True, 1)
    _, headers = server.requests[-1]
    assert headers["User-Agent"] == "Stalwart/1.0.0"
    assert headers["X-Geo-Client"] == "test"
    assert headers["Authorization"] == f"Bearer {TOKEN}"  # httpAuth replaces a user-supplied one


def test_bearer_missing_is_an_error_and_writes_nothing(server, tmp_path):
    server.files["/x.csv"] = b"1.2.3.0,1.2.3.255,64500,EX\n"
    ev = Events()
    assert build(asn_config([server.url("/bearer/x.csv")]), str(tmp_path), "asn", ev) == (False, 0)
    assert "401" in ev.named("resource.error")[0]["Reason"]
    assert not (tmp_path / "geo" / "asn.table").exists()


def test_basic_auth_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GEO_PW", "pw")
    server.files["/x.csv"] = b"1.2.3.0,1.2.3.255,64500,EX\n"
    cfg = asn_config([server.url("/basic/x.csv")], httpAuth={
        "@type": "Basic", "username": "geo", "secret": {"@type": "EnvironmentVariable", "variableName": "GEO_PW"}})
    assert build(cfg, str(tmp_path), "asn", Events()) == (True, 1)


def test_max_size_refuses_large_files(server, tmp_path):
    server.files["/big.csv"] = ASN_V4.encode() * 50
    ev = Events()
    cfg = asn_config([server.url("/big.csv")], maxSize=1000)
    assert build(cfg, str(tmp_path), "asn", ev) == (False, 0)
    assert "too large" in ev.named("resource.error")[0]["Reason"]


def test_max_size_applies_after_decompression(server):
    body = gzip.compress(b"1.2.3.0,1.2.3.255,64500,EX\n" * 10000)  # ~270 kB inflated, tiny deflated
    server.files["/bomb.csv.gz"] = body
    assert len(body) < 4000
    with pytest.raises(FetchError, match="decompressed"):
        fetch_text(server.url("/bomb.csv.gz"), {}, 5.0, 4000)
    assert fetch_text(server.url("/bomb.csv.gz"), {}, 5.0, 10**6).count("\n") == 10000


def test_slow_server_past_timeout(server, tmp_path):
    server.files["/s.csv"] = ASN_V4.encode()
    ev = Events()
    t0 = time.monotonic()
    assert build(asn_config([server.url("/slow/s.csv")], timeout=500), str(tmp_path), "asn", ev) == (False, 0)
    assert time.monotonic() - t0 < 3.0  # cut at the deadline, not after each idle read
    assert "timed out" in ev.named("resource.error")[0]["Reason"]


def test_silent_server_times_out():
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)  # accepts (kernel backlog) but never answers
        t0 = time.monotonic()
        with pytest.raises(FetchError, match="timed out"):
            fetch_text(f"http://127.0.0.1:{lsock.getsockname()[1]}/x.csv", {}, 0.4, 1000)
        assert time.monotonic() - t0 < 2.0


def test_non_2xx_invalid_utf8_and_refused_connection(server):
    with pytest.raises(FetchError, match="404"):
        fetch_text(server.url("/nothing.csv"), {}, 5.0, 1000)
    with pytest.raises(FetchError, match="500"):
        fetch_text(server.url("/status/500"), {}, 5.0, 1000)
    server.files["/latin1.csv"] = "1.2.3.0,1.2.3.255,1,Caf\xe9\n".encode("latin-1")
    with pytest.raises(FetchError, match="UTF-8"):
        fetch_text(server.url("/latin1.csv"), {}, 5.0, 1000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match="request failed"):
        fetch_text(f"http://127.0.0.1:{port}/x.csv", {}, 2.0, 1000)


def test_file_urls_and_their_size_cap(tmp_path):
    f = tmp_path / "asn.csv"
    f.write_text(ASN_V4)
    assert fetch_text(f"file://{f}", {}, 1.0, 10**6) == ASN_V4
    with pytest.raises(FetchError, match="too large"):
        fetch_text(f"file://{f}", {}, 1.0, 10)
    with pytest.raises(FetchError, match="cannot read"):
        fetch_text(f"file://{tmp_path}/missing.csv", {}, 1.0, 10)


def test_config_rules():
    cfg = asn_config(["http://a/x.csv"])
    assert (cfg.expires, cfg.timeout, cfg.max_size) == (86400000, 300000, 104857600)
    doc = (b'{"Asn": {"@type": "Resource", "asnUrls": {"http://a/1.csv": true, "http://a/2.csv": false}, '
           b'"maxSize": "1mb", "httpAuth": {"@type": "Unauthenticated"}}}')
    cfg = parse_bytes(doc).Asn
    assert cfg.asn_urls == ["http://a/1.csv"] and cfg.max_size == 1024 * 1024
    for bad, needle in (
        ('{"@type": "Resource", "asnUrls": ["gopher://x"], "httpAuth": {"@type": "Unauthenticated"}}', "not an http"),
        ('{"@type": "Resource", "httpHeaders": {"Bad Name": "x"}, "httpAuth": {"@type": "Unauthenticated"}}',
         "Invalid header"),
        ('{"@type": "Resource", "timeout": 0, "httpAuth": {"@type": "Unauthenticated"}}', "duration"),
        ('{"@type": "Resource", "asnUrls": []}', "httpAuth"),  # required, as in the reference
        ('{"@type": "Dns", "zoneIpV4": "z"}', "zoneIpV6"),
        ('{"@type": "Dns", "zoneIpV4": ".", "zoneIpV6": "z"}', "zone cannot be empty"),
        ('{"@type": "Mmdb"}', "asnDatabase"),
        ('{"@type": "Nope"}', "Invalid value"),
    ):
        with pytest.raises(ConfigError, match=needle) as err:
            parse_bytes(b'{"Asn": ' + bad.encode() + b"}")
        assert err.value.path.startswith("$.Asn")
    assert type(parse_bytes(b"{}").Asn).__name__ == "AsnDisabled"


def test_missing_secret_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_GEO_VAR", raising=False)
    cfg = asn_config(["http://127.0.0.1:9/x.csv"], httpAuth={
        "@type": "Bearer", "bearerToken": {"@type": "EnvironmentVariable", "variableName": "NO_SUCH_GEO_VAR"}})
    with pytest.raises(ConfigError, match="NO_SUCH_GEO_VAR"):
        request_headers(cfg)
    ev = Events()
    assert build(cfg, str(tmp_path), "asn", ev) == (False, 0)
    assert "NO_SUCH_GEO_VAR" in ev.named("resource.error")[0]["Details"]


def test_redirects_followed_without_leaking_credentials(server):
    with CsvServer() as other:
        other.files["/x.csv"] = b"1.2.3.0,1.2.3.255,64500,EX\n"
        server.files["/x.csv"] = b"1.2.3.0,1.2.3.255,64501,SAME\n"

        headers = {"Authorization": f"Bearer {TOKEN}"}
        with CsvServer() as hop:  # answers every request with a redirect
            hop.httpd.RequestHandlerClass.do_GET = lambda h: (
                h.send_response(302), h.send_header("Location", other.url("/x.csv") if "away" in h.path
                                                    else hop.url("/bearer/x.csv").replace(str(hop.port), str(server.port))),
                h.send_header("Content-Length", "0"), h.end_headers())
            assert "64500" in fetch_text(hop.url("/away"), headers, 5.0, 1000)
            assert "Authorization" not in other.requests[-1][1]
            # Same origin as the redirect target keeps nothing either: the hop is another port.
            with pytest.raises(FetchError, match="401"):
                fetch_text(hop.url("/here"), headers, 5.0, 1000)


def test_check_output_masks_the_token():
    from stalwart.config import to_json

    cfg_doc = b'{"Asn": {"@type": "Resource", "httpAuth": {"@type": "Bearer", "bearerToken": {"@type": "Value", "secret": "TOPSECRET"}}}}'
    assert b"TOPSECRET" not in to_json(parse_bytes(cfg_doc))
