"""Hosted DNS APIs against local servers speaking their documented request and response shapes
(Cloudflare API v4, deSEC, DigitalOcean API v2, Hetzner DNS, Linode API v4, Vultr API v2, Porkbun API v3), including their error replies (services.md §2.2)."""
from __future__ import annotations

import asyncio
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from stalwart.config import parse_bytes  # the model first: it imports the provider structs
from stalwart.services.dnsproviders import build_updater
from stalwart.services.dnsproviders.records import DnsProviderError

TOKEN = "s3cret-token"
ZONE = "example.test"


class FakeApi(ThreadingHTTPServer):
    """One fake provider: ``records`` is the zone, ``fail_next`` forces one error reply."""

    daemon_threads = True

    def __init__(self, kind: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.kind = kind
        self.records: list[dict] = []
        self.rrsets: dict[tuple[str, str], dict] = {}
        self.ids = itertools.count(1)
        self.fail_next: tuple[int, dict] | None = None
        self.requests: list[tuple[str, str, object]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeApi

    def log_message(self, *args):
        pass

    def reply(self, status: int, doc=None, headers=()):
        body = json.dumps(doc).encode() if doc is not None else b""
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self, method: str):
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), {k: v[0] for k, v in parse_qs(parts.query).items()}
        with srv.lock:
            srv.requests.append((method, self.path, body))
            scheme = "Token" if srv.kind == "desec" else "Bearer"
            if srv.kind == "hetzner":
                authorized = self.headers.get("Auth-API-Token") == TOKEN
            elif srv.kind == "porkbun":
                authorized = isinstance(body, dict) and body.get("apikey") == "pk1" and body.get("secretapikey") == TOKEN
            else:
                authorized = self.headers.get("Authorization") == f"{scheme} {TOKEN}"
            if not authorized:
                return self.reply(*AUTH_ERRORS[srv.kind])
            if srv.fail_next is not None:
                status, doc = srv.fail_next
                srv.fail_next = None
                return self.reply(status, doc, [("Retry-After", "1")] if status == 429 else [])
            return getattr(self, srv.kind)(method, path, query, body)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")

    # https://developers.cloudflare.com/api/resources/dns/subresources/records/
    def cloudflare(self, method, path, query, body):
        srv = self.server
        ok = {"success": True, "errors": [], "messages": []}
        if path == "/zones":
            result = [{"id": "zone-1", "name": ZONE}] if query.get("name") == ZONE else []
            return self.reply(200, {**ok, "result": result, "result_info": {"count": len(result)}})
        assert path.startswith("/zones/zone-1/dns_records"), path
        rest = path[len("/zones/zone-1/dns_records"):]
        if method == "GET":
            result = [r for r in srv.records if r["type"] == query.get("type") and r["name"] == query.get("name")]
            return self.reply(200, {**ok, "result": result})
        if method == "POST":
            if body["type"] == "MX" and "priority" not in body:
                return self.reply(400, {"success": False, "errors": [{"code": 9100, "message": "priority required"}],
                                        "messages": [], "result": None})
            rec = {"id": f"rec{next(srv.ids)}", **body}
            srv.records.append(rec)
            return self.reply(200, {**ok, "result": rec})
        if method == "DELETE":
            rid = rest.strip("/")
            srv.records[:] = [r for r in srv.records if r["id"] != rid]
            return self.reply(200, {**ok, "result": {"id": rid}})
        return self.reply(405, {"success": False, "errors": [{"code": 10000, "message": "method"}]})

    # https://desec.readthedocs.io/en/latest/dns/rrsets.html
    def desec(self, method, path, query, body):
        srv = self.server
        prefix = f"/domains/{ZONE}/rrsets/"
        if not path.startswith(prefix):
            return self.reply(404, {"detail": "Not found."})
        sub, rtype = path[len(prefix):].strip("/").split("/")
        sub = "" if sub == "@" else sub
        key = (sub, rtype)
        if method == "GET":
            if key not in srv.rrsets:
                return self.reply(404, {"detail": "Not found."})
            return self.reply(200, srv.rrsets[key])
        if method == "PUT":
            if body["ttl"] < 3600:
                return self.reply(400, {"ttl": ["Ensure this value is greater than or equal to 3600."]})
            for rec in body["records"]:
                if rtype == "TXT" and not rec.startswith('"'):
                    return self.reply(400, {"records": ["TXT records must be quoted"]})
            if body["records"]:
                srv.rrsets[key] = {"domain": ZONE, "subname": sub, "name": f"{sub + '.' if sub else ''}{ZONE}.",
                                   "type": rtype, "ttl": body["ttl"], "records": body["records"]}
                return self.reply(200, srv.rrsets[key])
            srv.rrsets.pop(key, None)
            return self.reply(204)
        return self.reply(405, {"detail": f'Method "{method}" not allowed.'})

    # https://docs.digitalocean.com/reference/api/digitalocean/#tag/Domain-Records
    def digitalocean(self, method, path, query, body):
        srv = self.server
        prefix = f"/domains/{ZONE}/records"
        if not path.startswith(prefix):
            return self.reply(404, {"id": "not_found", "message": "The resource you were accessing could not be found."})
        if method == "GET":
            rel = query["name"][: -len(ZONE) - 1] if query["name"] != ZONE else "@"
            recs = [r for r in srv.records if r["type"] == query["type"] and r["name"] == rel]
            return self.reply(200, {"domain_records": recs, "links": {}, "meta": {"total": len(recs)}})
        if method == "POST":
            if body["name"].endswith(ZONE):
                return self.reply(422, {"id": "unprocessable_entity", "message": "Name must be relative"})
            rec = {"id": next(srv.ids), "priority": None, "port": None, "weight": None, "flags": None, "tag": None,
                   **body}
            srv.records.append(rec)
            return self.reply(201, {"domain_record": rec})
        if method == "DELETE":
            rid = int(path[len(prefix):].strip("/"))
            srv.records[:] = [r for r in srv.records if r["id"] != rid]
            return self.reply(204)
        return self.reply(405, {"id": "method_not_allowed", "message": "method"})


    # https://dns.hetzner.com/api-docs
    def hetzner(self, method, path, query, body):
        srv = self.server
        if path == "/zones":
            zones = [{"id": "z1", "name": ZONE}] if query.get("name") == ZONE else []
            return self.reply(200, {"zones": zones, "meta": {"pagination": {"total_entries": len(zones)}}})
        if path == "/records" and method == "GET":
            return self.reply(200, {"records": [r for r in srv.records if r["zone_id"] == query.get("zone_id")]})
        if path == "/records" and method == "POST":
            if body["name"].endswith(ZONE):
                return self.reply(422, {"error": {"message": "invalid name", "code": 422}})
            rec = {"id": f"r{next(srv.ids)}", **body}
            srv.records.append(rec)
            return self.reply(200, {"record": rec})
        if path.startswith("/records/") and method == "DELETE":
            rid = path.rsplit("/", 1)[1]
            srv.records[:] = [r for r in srv.records if r["id"] != rid]
            return self.reply(200)
        return self.reply(404, {"error": {"message": "not found", "code": 404}})

    # https://techdocs.akamai.com/linode-api/reference/get-domain-records
    def linode(self, method, path, query, body):
        srv = self.server
        if path == "/domains":
            return self.reply(200, {"data": [{"id": 7, "domain": ZONE}], "page": 1, "pages": 1, "results": 1})
        prefix = "/domains/7/records"
        if not path.startswith(prefix):
            return self.reply(404, {"errors": [{"reason": "Not found"}]})
        if method == "GET":
            return self.reply(200, {"data": srv.records, "page": 1, "pages": 1, "results": len(srv.records)})
        if method == "POST":
            if body["type"] == "MX" and "priority" not in body:
                return self.reply(400, {"errors": [{"reason": "priority is required", "field": "priority"}]})
            rec = {"id": next(srv.ids), "priority": 0, "weight": 0, "port": 0, "tag": None, **body}
            srv.records.append(rec)
            return self.reply(200, rec)
        if method == "DELETE":
            rid = int(path.rsplit("/", 1)[1])
            srv.records[:] = [r for r in srv.records if r["id"] != rid]
            return self.reply(200, {})
        return self.reply(405, {"errors": [{"reason": "Method Not Allowed"}]})


    # https://www.vultr.com/api/#tag/dns
    def vultr(self, method, path, query, body):
        srv = self.server
        prefix = f"/domains/{ZONE}/records"
        if not path.startswith(prefix):
            return self.reply(404, {"error": "Not found", "status": 404})
        if method == "GET":
            return self.reply(200, {"records": srv.records, "meta": {"total": len(srv.records), "links": {}}})
        if method == "POST":
            if body["type"] == "TXT" and not body["data"].startswith('"'):
                return self.reply(400, {"error": "TXT data must be quoted", "status": 400})
            rec = {"id": f"v{next(srv.ids)}", "priority": 0, **body}
            srv.records.append(rec)
            return self.reply(201, {"record": rec})
        if method == "DELETE":
            rid = path.rsplit("/", 1)[1]
            srv.records[:] = [r for r in srv.records if r["id"] != rid]
            return self.reply(204)
        return self.reply(405, {"error": "Method not allowed", "status": 405})

    # https://porkbun.com/api/json/v3/documentation
    def porkbun(self, method, path, query, body):
        srv = self.server
        if method != "POST":
            return self.reply(405, {"status": "ERROR", "message": "POST only"})
        parts = path.strip("/").split("/")
        if parts[:2] == ["dns", "retrieveByNameType"]:
            _dns, _op, _domain, rtype, *sub = parts
            fq = f"{sub[0]}.{ZONE}" if sub else ZONE
            recs = [r for r in srv.records if r["type"] == rtype and r["name"] == fq]
            return self.reply(200, {"status": "SUCCESS", "records": recs})
        if parts[:2] == ["dns", "create"]:
            if int(body["ttl"]) < 600:
                return self.reply(400, {"status": "ERROR", "message": "TTL must be at least 600"})
            rid = str(next(srv.ids))
            name = f"{body['name']}.{ZONE}" if body["name"] else ZONE
            srv.records.append({"id": rid, "name": name, "type": body["type"], "content": body["content"],
                                "ttl": body["ttl"], "prio": body.get("prio", "0"), "notes": ""})
            return self.reply(200, {"status": "SUCCESS", "id": int(rid)})
        if parts[:2] == ["dns", "delete"]:
            srv.records[:] = [r for r in srv.records if r["id"] != parts[3]]
            return self.reply(200, {"status": "SUCCESS"})
        return self.reply(400, {"status": "ERROR", "message": "Invalid endpoint."})


AUTH_ERRORS = {
    "cloudflare": (403, {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}],
                         "messages": [], "result": None}),
    "desec": (401, {"detail": "Invalid token."}),
    "digitalocean": (401, {"id": "unauthorized", "message": "Unable to authenticate you"}),
    "hetzner": (401, {"message": "Invalid authentication credentials"}),
    "linode": (401, {"errors": [{"reason": "Invalid Token"}]}),
    "vultr": (401, {"error": "Invalid API token.", "status": 401}),
    "porkbun": (403, {"status": "ERROR", "message": "Invalid API key. (002)"}),
}
TYPES = {"cloudflare": "Cloudflare", "desec": "DeSEC", "digitalocean": "DigitalOcean", "hetzner": "Hetzner",
         "linode": "Linode", "vultr": "Vultr", "porkbun": "Porkbun"}


@pytest.fixture(params=list(TYPES))
def api(request):
    srv = FakeApi(request.param)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def updater(api: FakeApi, token: str = TOKEN, ttl: int = 3600000):
    obj = {"@type": TYPES[api.kind], "id": "p", "secret": {"@type": "Value", "secret": token}, "baseUrl": api.url,
           "ttl": ttl, "timeout": 5000}
    if api.kind == "porkbun":
        obj["apiKey"] = "pk1"
        obj["secretApiKey"] = obj.pop("secret")
    return build_updater(parse_bytes(json.dumps({"DnsServer": [obj]}).encode()).DnsServer[0])


def run(coro):
    return asyncio.run(coro)


def test_records_are_set_listed_added_and_removed(api):
    u = updater(api)
    name = f"_acme-challenge.{ZONE}"
    run(u.add_to_rrset(ZONE, name, "TXT", ["one"]))
    run(u.add_to_rrset(ZONE, name, "TXT", ["two"]))
    assert sorted(run(u.list_rrset(ZONE, name, "TXT"))) == ["one", "two"]
    run(u.remove_from_rrset(ZONE, name, "TXT", ["one"]))
    assert run(u.list_rrset(ZONE, name, "TXT")) == ["two"]
    run(u.set_rrset(ZONE, ZONE, "MX", ["10 mail.example.test."]))
    assert run(u.list_rrset(ZONE, ZONE, "MX")) == ["10 mail.example.test."]
    run(u.set_rrset(ZONE, ZONE, "MX", ["20 mx2.example.test."]))
    assert run(u.list_rrset(ZONE, ZONE, "MX")) == ["20 mx2.example.test."]
    run(u.set_rrset(ZONE, f"_imaps._tcp.{ZONE}", "SRV", ["0 1 993 mail.example.test."]))
    assert run(u.list_rrset(ZONE, f"_imaps._tcp.{ZONE}", "SRV")) == ["0 1 993 mail.example.test."]
    run(u.set_rrset(ZONE, ZONE, "CAA", ['0 issue "letsencrypt.org"']))
    assert run(u.list_rrset(ZONE, ZONE, "CAA")) == ['0 issue "letsencrypt.org"']
    run(u.set_rrset(ZONE, f"autoconfig.{ZONE}", "CNAME", ["mail.example.test."]))
    assert run(u.list_rrset(ZONE, f"autoconfig.{ZONE}", "CNAME")) == ["mail.example.test."]
    run(u.set_rrset(ZONE, ZONE, "MX", []))
    assert run(u.list_rrset(ZONE, ZONE, "MX")) == []
    long = "v=DKIM1; k=rsa; p=" + "A" * 300 + "é" * 80 + '"quoted"'
    run(u.set_rrset(ZONE, f"s1._domainkey.{ZONE}", "TXT", [long]))
    assert run(u.list_rrset(ZONE, f"s1._domainkey.{ZONE}", "TXT")) == [long]


def test_bad_token_is_a_permanent_error_with_the_providers_message(api):
    u = updater(api, token="wrong")
    with pytest.raises(DnsProviderError) as info:
        run(u.set_rrset(ZONE, f"x.{ZONE}", "TXT", ["v"]))
    assert not info.value.temporary
    assert {"cloudflare": "Authentication error", "desec": "Invalid token", "digitalocean": "Unable to authenticate",
            "hetzner": "Invalid authentication credentials", "linode": "Invalid Token",
            "vultr": "Invalid API token", "porkbun": "Invalid API key"}[api.kind] in str(info.value)


@pytest.mark.parametrize("status", [429, 500])
def test_rate_limit_and_server_errors_are_temporary(api, status):
    u = updater(api)
    api.fail_next = (status, {"success": False, "errors": [{"code": 971, "message": "slow down"}]}
                     if api.kind == "cloudflare" else {"detail": "Request was throttled."}
                     if api.kind == "desec" else {"id": "too_many_requests", "message": "API Rate limit exceeded."})
    with pytest.raises(DnsProviderError) as info:
        run(u.list_rrset(ZONE, f"x.{ZONE}", "TXT"))
    assert info.value.temporary and str(status) in str(info.value)


def test_validation_error_reply_is_reported():
    """deSEC's documented validation error (minimum TTL 3600 s) reaches the operator verbatim."""
    srv = FakeApi("desec")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        u = updater(srv, ttl=300000)
        with pytest.raises(DnsProviderError, match="greater than or equal to 3600") as info:
            run(u.set_rrset(ZONE, f"x.{ZONE}", "TXT", ["v"]))
        assert not info.value.temporary
    finally:
        srv.shutdown()
        srv.server_close()


def test_unreachable_api_is_temporary():
    obj = {"@type": "Cloudflare", "id": "p", "secret": {"@type": "Value", "secret": TOKEN},
           "baseUrl": "http://127.0.0.1:1", "timeout": 2000}
    u = build_updater(parse_bytes(json.dumps({"DnsServer": [obj]}).encode()).DnsServer[0])
    with pytest.raises(DnsProviderError) as info:
        run(u.list_rrset(ZONE, ZONE, "MX"))
    assert info.value.temporary


def test_deprecated_variant_loads_but_does_not_build():
    cfg = parse_bytes(json.dumps({"DnsServer": [{"@type": "Deprecated1"}]}).encode())
    with pytest.raises(DnsProviderError, match="no longer supported"):
        build_updater(cfg.DnsServer[0])
