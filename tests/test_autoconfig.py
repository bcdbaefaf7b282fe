"""Autoconfig and autodiscover documents through the HTTP core, parsed with real parsers (http.md §3-§9)."""
import base64
import hashlib
import json
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.protocols.http import HttpService
from stalwart.protocols.http.advertise import endpoints
from stalwart.protocols.http.dns import records
from tests.http_util import config, request

NS_MS = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
NS_OUT = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
OUTLOOK = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{email}</EMailAddress>
    <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""
OUTLOOK_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
MOBILESYNC = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"


def L(name, proto, port, **kw):
    return {"name": name, "protocol": proto, "bind": [f"192.0.2.1:{port}"], **kw}


NONSTANDARD = {
    "SystemSettings": {"defaultHostname": "mail.example.com",
                       "services": {"imap": {}, "pop3": {}, "smtp": {"cleartext": True}, "jmap": {},
                                    "caldav": {}, "carddav": {"hostname": "dav.example.com"}, "managesieve": {}}},
    "NetworkListener": [
        L("imaps", "imap", 10993, tlsImplicit=True), L("imap", "imap", 10143),
        L("imaps2", "imap", 20993, tlsImplicit=True),
        L("pop3", "pop3", 10110), L("mx", "smtp", 25), L("submission", "smtp", 10587),
        L("submissions", "smtp", 10465, tlsImplicit=True), L("https", "http", 8443, tlsImplicit=True),
        L("plainhttp", "http", 8080, useTls=False), L("sieve", "manageSieve", 14190),
        L("lmtp", "lmtp", 24), {"name": "local", "protocol": "imap", "bind": ["127.0.0.1:30993"], "tlsImplicit": True},
    ],
}


@pytest.fixture(scope="module")
def svc():
    return HttpService(config(NONSTANDARD))


def ports(eps):
    return [(e.port, e.implicit) for e in eps]


def test_endpoints_come_from_listeners(svc):
    eps = svc.autoconfig.endpoints
    assert ports(eps["imap"]) == [(10993, True)]  # lowest implicit; STARTTLS not asked for
    assert ports(eps["pop3"]) == [(10110, False)]  # no implicit listener: STARTTLS advertised
    assert ports(eps["smtp"]) == [(10465, True), (10587, False)]  # 25 is the MX port, never submission
    assert ports(eps["jmap"]) == [(8443, True)]
    assert eps["carddav"][0].host == "dav.example.com"
    assert ports(eps["managesieve"]) == [(14190, False)]


def test_well_known_port_preferred_and_fallback_without_listeners():
    cfg = config({"SystemSettings": {"defaultHostname": "h.example", "services": {"imap": {"cleartext": True},
                                                                                 "pop3": {}}},
                  "NetworkListener": [L("a", "imap", 993, tlsImplicit=True), L("b", "imap", 800, tlsImplicit=True)]})
    eps = endpoints(cfg, "h.example")
    assert ports(eps["imap"]) == [(993, True)]  # STARTTLS wanted but no explicit listener: none
    assert ports(eps["pop3"]) == [(995, True)]  # no listener at all: the well-known fallback


def test_pacc_reference_shape_for_defaults():
    cfg = config({"SystemSettings": {"defaultHostname": "mail.example.com"}})
    reply = request(HttpService(cfg), "GET", "/.well-known/user-agent-configuration.json")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "public, max-age=3600"
    assert reply.headers["access-control-allow-origin"] == "*"
    assert reply.body == (
        b'{"protocols":{"jmap":{"url":"https://mail.example.com/jmap/session"},"imap":{"host":"mail.example.com"},'
        b'"pop3":{"host":"mail.example.com"},"smtp":{"host":"mail.example.com"},'
        b'"caldav":{"url":"https://mail.example.com/dav/cal/"},"carddav":{"url":"https://mail.example.com/dav/card/"},'
        b'"webdav":{"url":"https://mail.example.com/dav/file/"},"managesieve":{"host":"mail.example.com"}},'
        b'"authentication":{"oauth-public":{"issuer":"https://mail.example.com"},"password":true},'
        b'"info":{"provider":{"name":"Stalwart"}}}')


def test_pacc_provider_info_and_logo_type(svc):
    cfg = config({"SystemSettings": {"defaultHostname": "m.example", "providerInfo": {
        "providerName": 'Ex "Mail"', "providerShortName": "ExMail", "logoUrl": "https://example.com/l.PNG?v=1",
        "logoWidth": "128", "logoHeight": "x", "contactUri": "mailto:it@example.com"}}})
    info = request(HttpService(cfg), "GET", "/.well-known/user-agent-configuration.json").json()["info"]
    assert info == {"provider": {"name": 'Ex "Mail"', "shortName": "ExMail", "logo": [
        {"url": "https://example.com/l.PNG?v=1", "content-type": "image/png", "width": 128}]},
        "help": {"contact": ["mailto:it@example.com"]}}
    cfg = config({"SystemSettings": {"providerInfo": {"logoUrl": "https://example.com/logo.bmp"}}})
    logo = request(HttpService(cfg), "GET", "/.well-known/user-agent-configuration.json").json()["info"]["provider"]["logo"]
    assert logo == [{"url": "https://example.com/logo.bmp"}]  # unknown type: member omitted


def test_pacc_ports_and_head(svc):
    doc = request(svc, "GET", "/.well-known/user-agent-configuration.json").json()
    assert doc["protocols"]["jmap"]["url"] == "https://mail.example.com:8443/jmap/session"
    assert doc["protocols"]["carddav"]["url"] == "https://dav.example.com:8443/dav/card/"
    head = request(svc, "HEAD", "/.well-known/user-agent-configuration.json")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 100


def mozilla(svc, target, **kw):
    reply = request(svc, "GET", target, **kw)
    assert reply.status == 200 and reply.headers["content-type"] == "application/xml; charset=utf-8"
    assert reply.headers["cache-control"] == "private, max-age=3600"
    return reply, ET.fromstring(reply.body)


@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml",
                                  "/.well-known/mail-v1.xml"])
def test_mozilla_xml_with_listener_ports(svc, path):
    reply, root = mozilla(svc, path + "?emailaddress=Jane@Example.org")
    prov = root.find("emailProvider")
    assert prov.get("id") == "example.org" and prov.findtext("displayName") == "jane@example.org"
    servers = [(s.tag, s.get("type"), s.findtext("port"), s.findtext("socketType")) for s in prov
               if s.tag.endswith("Server")]
    assert servers == [("incomingServer", "imap", "10993", "SSL"), ("incomingServer", "pop3", "10110", "STARTTLS"),
                       ("outgoingServer", "smtp", "10465", "SSL"), ("outgoingServer", "smtp", "10587", "STARTTLS")]
    cal = root.find("calendar")
    assert cal.findtext("url") == cal.findtext("serverURL") == "https://mail.example.com:8443/dav/cal"
    assert root.find("addressBook").findtext("url") == "https://dav.example.com:8443/dav/card"
    assert root.find("clientConfigUpdate").get("url") == "https://autoconfig.example.org/mail/config-v1.1.xml"
    assert ("access-control-allow-origin" in reply.headers) == path.startswith("/.well-known/autoconfig/")


def test_mozilla_without_address_uses_placeholder(svc):
    _, root = mozilla(svc, "/mail/config-v1.1.xml")
    assert root.find("emailProvider/displayName").text == "%EMAILADDRESS%"
    assert root.find("emailProvider").get("id") == "mail.example.com"


def test_xml_special_characters_come_back_escaped(svc):
    evil = "a<b>&\"'c@example.org"
    _, root = mozilla(svc, "/mail/config-v1.1.xml?emailaddress=" + evil.replace("&", "%26").replace("<", "%3C")
                      .replace(">", "%3E").replace('"', "%22").replace("'", "%27"))
    assert root.find("emailProvider/displayName").text == evil
    body = OUTLOOK.format(email="x&amp;&lt;y@example.org", schema=OUTLOOK_SCHEMA).encode()
    root = ET.fromstring(request(svc, "POST", "/autodiscover/autodiscover.xml", body).body)
    assert root.find(f"{NS_OUT}Response/{NS_OUT}User/{NS_OUT}DisplayName").text == "x&<y@example.org"


def test_autodiscover_v1_outlook_request(svc):
    for first in ("autodiscover", "Autodiscover", "AutoDiscover"):
        body = OUTLOOK.format(email="Jane@Example.org", schema=OUTLOOK_SCHEMA).encode()
        reply = request(svc, "POST", f"/{first}/AutoDiscover.XML", body)
        assert reply.status == 200 and reply.headers["content-type"] == "application/xml; charset=utf-8"
        account = ET.fromstring(reply.body).find(f"{NS_OUT}Response/{NS_OUT}Account")
        protos = [(p.findtext(f"{NS_OUT}Type"), p.findtext(f"{NS_OUT}Port"), p.findtext(f"{NS_OUT}SSL"),
                   p.findtext(f"{NS_OUT}Encryption")) for p in account.findall(f"{NS_OUT}Protocol")]
        assert protos == [("IMAP", "10993", "on", "SSL"), ("POP3", "10110", "on", "TLS"),
                          ("SMTP", "10465", "on", "SSL"), ("SMTP", "10587", "on", "TLS")]


def error_code(reply, ns=NS_MS):
    assert reply.status == 200 and reply.headers["cache-control"] == "no-store"
    err = ET.fromstring(reply.body).find(f"{ns}Response/{ns}Error")
    assert err.get("Id").isdigit() and len(err.get("Time").split(".")[1]) == 7
    return err.findtext(f"{ns}ErrorCode")


@pytest.mark.parametrize("body", [
    b"", b"<Autodiscover><Request>", b"not xml at all",
    (b'<!DOCTYPE a [<!ENTITY x "jane@example.org">]><Autodiscover><Request><EMailAddress>&x;</EMailAddress>'
     b"</Request></Autodiscover>"),
    b"<Autodiscover><Request><LegacyDN>/o=x</LegacyDN></Request></Autodiscover>",
    b"<Autodiscover><Request><EMailAddress>no-at-sign</EMailAddress></Request></Autodiscover>",
    b"<Other><Request><EMailAddress>a@b</EMailAddress></Request></Other>",
    b"<Autodiscover><Request><EMailAddress>" + b"a" * 9000 + b"@b</EMailAddress></Request></Autodiscover>",
])
def test_autodiscover_v1_bad_bodies_are_error_600(svc, body):
    assert error_code(request(svc, "POST", "/autodiscover/autodiscover.xml", body)) == "600"


def test_autodiscover_v1_mobilesync_is_refused_clearly(svc):
    body = OUTLOOK.format(email="jane@example.org", schema=MOBILESYNC).encode()
    reply = request(svc, "POST", "/autodiscover/autodiscover.xml", body)
    assert error_code(reply, ns=f"{{{MOBILESYNC}}}") == "601"
    assert ET.fromstring(reply.body).find(f"{{{MOBILESYNC}}}Response").tag == f"{{{MOBILESYNC}}}Response"


def test_autodiscover_v1_prefixed_names_and_get_is_405(svc):
    body = (b'<a:autodiscover xmlns:a="urn:x"><!-- hi --><a:Request><?pi?><a:EmailAddress>j@example.org'
            b"</a:EmailAddress></a:Request></a:autodiscover>")
    assert b"<LoginName>j@example.org</LoginName>" in request(svc, "POST", "/autodiscover/autodiscover.xml", body).body
    reply = request(svc, "GET", "/autodiscover/autodiscover.xml")
    assert reply.status == 405 and reply.headers["allow"] == "POST"


def test_autodiscover_v2(svc):
    url = "https://mail.example.com:8443/autodiscover/autodiscover.xml"
    reply = request(svc, "GET", "/autodiscover/autodiscover.json?Email=jane@example.org&Protocol=AutodiscoverV1")
    assert reply.status == 200 and reply.json() == {"Protocol": "AutodiscoverV1", "Url": url}
    assert reply.headers["content-type"] == "application/json; charset=utf-8"
    reply = request(svc, "GET", "/Autodiscover/autodiscover.json/v1.0/jane%40example.org?Protocol=autodiscoverv1")
    assert reply.json()["Url"] == url
    reply = request(svc, "GET", "/autodiscover/autodiscover.json?Email=jane@example.org&Protocol=Ews%22%3C")
    assert reply.status == 400 and reply.json() == {
        "ErrorCode": "InvalidProtocol",
        "ErrorMessage": "The given protocol value 'Ews' is invalid. Supported values are 'AutodiscoverV1'"}
    reply = request(svc, "GET", "/autodiscover/autodiscover.json?Email=jane@&Protocol=AutodiscoverV1")
    assert reply.status == 400 and reply.json()["detail"] == "Missing domain in email address"
    assert request(svc, "POST", "/autodiscover/autodiscover.json").status == 405


def test_options_on_well_known_is_cors(svc):
    reply = request(svc, "OPTIONS", "/.well-known/anything")
    assert reply.status == 204 and reply.headers["access-control-allow-methods"].startswith("POST, GET")


def test_dns_records_match_the_served_pacc_body(svc):
    cfg = config(NONSTANDARD)
    rows = records(cfg, "Example.org")
    body = request(HttpService(cfg), "GET", "/.well-known/user-agent-configuration.json").body
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    table = {(o, t): r for o, t, r in rows}
    assert table[("_ua-auto-config.example.org.", "TXT")] == f'"v=UAAC1; a=sha256; d={digest}"'
    assert table[("_imaps._tcp.example.org.", "SRV")] == "0 1 10993 mail.example.com."
    assert table[("_imap._tcp.example.org.", "SRV")] == "0 0 0 ."  # not offered (RFC 6186)
    assert table[("_submission._tcp.example.org.", "SRV")] == "0 1 10587 mail.example.com."
    assert table[("_sieve._tcp.example.org.", "SRV")] == "0 1 14190 mail.example.com."
    assert table[("_autodiscover._tcp.example.org.", "SRV")] == "0 1 8443 mail.example.com."
    assert table[("_carddavs._tcp.example.org.", "TXT")] == '"path=/dav/card/"'
    assert table[("autoconfig.example.org.", "CNAME")] == "mail.example.com."
    assert json.loads(body)  # sanity


DOMAINS = {"SystemSettings": {"defaultHostname": "mail.example.com", "defaultDomainId": "main"},
           "Domain": [{"id": "main", "name": "example.org"}, {"name": "example.net"}]}


def test_unknown_domains_with_local_domains_configured():
    svc = HttpService(config(DOMAINS))
    assert request(svc, "GET", "/mail/config-v1.1.xml?emailaddress=a@example.net").status == 200
    reply = request(svc, "GET", "/mail/config-v1.1.xml?emailaddress=a@elsewhere.test")
    assert reply.status == 404 and reply.headers["content-type"] == "application/problem+json"
    body = OUTLOOK.format(email="a@elsewhere.test", schema=OUTLOOK_SCHEMA).encode()
    assert error_code(request(svc, "POST", "/autodiscover/autodiscover.xml", body)) == "500"
    reply = request(svc, "GET", "/autodiscover/autodiscover.json?Email=a@elsewhere.test&Protocol=AutodiscoverV1")
    assert reply.status == 404


def test_placeholder_domain_from_host_or_default_domain():
    svc = HttpService(config(DOMAINS))
    _, root = mozilla(svc, "/mail/config-v1.1.xml", headers={"Host": "autoconfig.example.net:443"})
    assert root.find("emailProvider").get("id") == "example.net"
    _, root = mozilla(svc, "/mail/config-v1.1.xml", headers={"Host": "autoconfig.unknown.test"})
    assert root.find("emailProvider").get("id") == "example.org"  # SystemSettings.defaultDomainId


def test_well_known_redirects():
    svc = HttpService(config(DOMAINS))
    reply = request(svc, "GET", "/.well-known/jmap")
    assert reply.status == 307 and reply.headers["location"] == "/jmap/session"
    assert request(svc, "HEAD", "/.well-known/carddav").headers["location"] == "/dav/card"


def test_autodiscover_v2_names_autodiscover_host_only_with_a_certificate(svc):
    covered = {"autodiscover.example.org"}

    def certificate_for(name):
        return object() if name in covered else None

    core_url = "https://mail.example.com:8443/autodiscover/autodiscover.xml"
    target = "/autodiscover/autodiscover.json?Email=jane@example.org&Protocol=AutodiscoverV1"
    reply = request(svc, "GET", target, certificate_for=certificate_for)
    assert reply.json()["Url"] == "https://autodiscover.example.org:8443/autodiscover/autodiscover.xml"
    covered.clear()
    assert request(svc, "GET", target, certificate_for=certificate_for).json()["Url"] == core_url
    # no email: the domain comes from Host (only a local one; none configured here -> defaultHostname)
    reply = request(svc, "GET", "/autodiscover/autodiscover.json?Protocol=AutodiscoverV1",
                    headers={"Host": "autodiscover.example.org"}, certificate_for=certificate_for)
    assert reply.json()["Url"] == core_url


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_autodiscover_body_gets_well_formed_xml(body):
    reply = request(HttpService.default(), "POST", "/autodiscover/autodiscover.xml", body)
    assert reply.status == 200
    ET.fromstring(reply.body)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_email_address_gives_well_formed_xml_or_404(text):
    from urllib.parse import quote

    reply = request(HttpService.default(), "GET", "/mail/config-v1.1.xml?emailaddress=" + quote(text, safe=""))
    if reply.status == 200:
        ET.fromstring(reply.body)
    else:
        assert reply.status == 404 and reply.json()["status"] == 404


def test_cli_dns_records_prints_zone_lines(tmp_path, capsys):
    from stalwart.cli import cli_main

    path = tmp_path / "config.json"
    path.write_text(json.dumps(NONSTANDARD))
    assert cli_main(["--config", str(path), "dns-records", "Example.ORG."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["autoconfig.example.org.", "IN", "CNAME", "mail.example.com."]
    assert ["_imaps._tcp.example.org.", "IN", "SRV", "0", "1", "10993", "mail.example.com."] in [x.split() for x in lines]
    assert cli_main(["dns-records", "not a domain"]) == 2
