"""Client autoconfiguration documents: PACC JSON, Mozilla/IETF XML, Autodiscover v1 XML and v2 JSON (http.md §4-§8).

Everything that does not depend on the request (the PACC body, the advertised endpoints, the local
domains) is computed once per configuration load. JSON comes from an encoder and every value put
into XML goes through :func:`xml_text`, so no client-supplied byte can change a document's structure.
"""
from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit
from xml.parsers import expat

import msgspec

from ...config import Config
from .advertise import (
    DAV_SERVICES,
    HTTP_PATHS,
    MAIL_SERVICES,
    Endpoint,
    endpoints,
    https_endpoint,
)
from .messages import JSON, JSON_UTF8, XML_UTF8, Response, problem

PUBLIC = ("Cache-Control", "public, max-age=3600")
PRIVATE = ("Cache-Control", "private, max-age=3600")
PLACEHOLDER = "%EMAILADDRESS%"
DISCOVER_PATH = "/autodiscover/autodiscover.xml"
DEPLOYMENT_ID = "644560b8-a1ce-429c-8ace-23395843f701"
NS_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
NS_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
NS_MOBILESYNC = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
LOGO_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
              ".webp": "image/webp", ".gif": "image/gif"}
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
MAX_AUTODISCOVER_BODY = 8192


class _Refused(Exception):
    """A DOCTYPE or entity declaration in an Autodiscover request."""


def _refuse(*_args) -> None:
    raise _Refused


def parse_autodiscover(body: bytes) -> tuple[str | None, str | None]:
    """``(EMailAddress, AcceptableResponseSchema)`` of an Outlook Autodiscover request (http.md §6).

    Namespace-aware (element local names compared ASCII case-insensitively whatever the prefix),
    comments and processing instructions ignored, DOCTYPE and entity declarations refused so no
    entity is ever expanded. Anything unusable gives ``(None, None)``.
    """
    if not body or len(body) > MAX_AUTODISCOVER_BODY:
        return None, None
    parser = expat.ParserCreate(namespace_separator="\x01")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    stack: list[str] = []
    text: list[str] = []
    found: dict[str, str] = {}

    def start(name: str, _attrs) -> None:
        stack.append(name.rsplit("\x01", 1)[-1].lower())
        text.clear()
        if len(stack) == 1 and stack[0] != "autodiscover":
            raise _Refused

    def end(_name: str) -> None:
        local = stack.pop()
        if len(stack) == 2 and stack[1] == "request" and local in ("emailaddress", "acceptableresponseschema"):
            found.setdefault(local, "".join(text).strip())

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(body, True)
    except (expat.ExpatError, _Refused, ValueError):
        return None, None
    email = found.get("emailaddress")
    return (email.lower() if email else None), found.get("acceptableresponseschema")


def xml_text(value: str) -> str:
    """Escape ``& < > " '`` and drop characters XML 1.0 cannot carry at all (§2.2 Char)."""
    return _XML_INVALID.sub("", value).translate(_XML_ESCAPES)


def host_domain(host: bytes | None, label: str) -> str | None:
    """The ``Host`` header without port and without a leading ``label`` (``autoconfig.``), lower-case."""
    if not host:
        return None
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return None  # an IP literal is no mail domain
    text = text.rsplit(":", 1)[0] if ":" in text else text
    text = text.rstrip(".")
    text = text.removeprefix(label)
    return text or None


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def pacc_document(cfg: Config, hostname: str, eps: dict[str, list[Endpoint]], issuer: str) -> bytes:
    """The PACC body (draft-ietf-mailmaint-pacc-02; http.md §4), compact JSON in the fixed key order."""
    protocols: dict[str, dict] = {}
    for service in ("jmap", "imap", "pop3", "smtp", "caldav", "carddav", "webdav", "managesieve"):
        entry = cfg.SystemSettings.services.get(service)
        if entry is None:
            continue
        host = entry.hostname or hostname
        if service in HTTP_PATHS:
            chosen = eps[service][0] if eps.get(service) else Endpoint(service, host, 443, True)
            protocols[service] = {"url": chosen.https_base() + HTTP_PATHS[service] + ("/" if service != "jmap" else "")}
        else:
            protocols[service] = {"host": host}
    info = cfg.SystemSettings.provider_info
    provider: dict = {"name": info.get("providerName") or "Stalwart"}
    if info.get("providerShortName"):
        provider["shortName"] = info["providerShortName"]
    if info.get("logoUrl"):
        logo: dict = {"url": info["logoUrl"]}
        path = urlsplit(info["logoUrl"]).path.lower()
        ext = path[path.rfind("."):] if "." in path.rsplit("/", 1)[-1] else ""
        if ext in LOGO_TYPES:
            logo["content-type"] = LOGO_TYPES[ext]
        for key, member in (("logoWidth", "width"), ("logoHeight", "height")):
            number = _int(info.get(key))
            if number is not None:
                logo[member] = number
        provider["logo"] = [logo]
    doc: dict = {
        "protocols": protocols,
        "authentication": {"oauth-public": {"issuer": issuer}, "password": True},
        "info": {"provider": provider},
    }
    help_: dict = {}
    if info.get("userDocumentation"):
        help_["documentation"] = info["userDocumentation"]
    if info.get("developerDocumentation"):
        help_["developer"] = info["developerDocumentation"]
    if info.get("contactUri"):
        help_["contact"] = [info["contactUri"]]
    if help_:
        doc["info"]["help"] = help_
    return msgspec.json.encode(doc)


def local_domains(cfg: Config) -> set[str] | None:
    """Names and aliases of the configured Domain objects; None when this configuration has none, in
    which case no address is refused for its domain (the reference's behaviour)."""
    domains = getattr(cfg, "Domain", None)
    if not domains:
        return None
    names: set[str] = set()
    for domain in domains:
        name = getattr(domain, "name", None)
        if name:
            names.add(str(name).lower())
        for alias in getattr(domain, "aliases", None) or ():
            names.add(str(alias).lower())
    return names


def default_domain(cfg: Config, hostname: str) -> str:
    wanted = cfg.SystemSettings.default_domain_id
    for pos, domain in enumerate(getattr(cfg, "Domain", None) or ()):
        if wanted is not None and (getattr(domain, "id", None) or str(pos)) == wanted:
            return str(getattr(domain, "name", hostname)).lower()
    return hostname


class Autoconfig:
    """Every autoconfig and autodiscover answer of one configuration load."""

    def __init__(self, cfg: Config, hostname: str, clock: Callable[[], float] = time.time,
                 public_url: str | None = None):
        self.hostname = hostname
        self.clock = clock
        self.endpoints = endpoints(cfg, hostname)
        self.domains = local_domains(cfg)
        self.default_domain = default_domain(cfg, hostname)
        if public_url:
            issuer = public_url.rstrip("/")
        else:
            jmap = cfg.SystemSettings.services.get("jmap")
            issuer = https_endpoint(cfg, (jmap.hostname if jmap else None) or hostname).https_base()
        self.pacc = pacc_document(cfg, hostname, self.endpoints, issuer)
        self.pacc_response = Response(200, self.pacc, JSON, [PUBLIC])
        self.discover_base = https_endpoint(cfg, hostname).https_base()
        self.discover_url = self.discover_base + DISCOVER_PATH
        self.error_id = str(zlib.crc32(hostname.encode()))

    def is_local(self, domain: str) -> bool:
        return self.domains is None or domain in self.domains

    def _domain_for(self, host: bytes | None, label: str) -> str:
        domain = host_domain(host, label)
        if domain and self.domains is not None and domain in self.domains:
            return domain
        return self.default_domain

    # -- Mozilla / IETF autoconfig (http.md §5) --------------------------------------------------
    def mozilla(self, emailaddress: str | None, host: bytes | None) -> Response:
        email = (emailaddress or "").strip().lower()
        if "@" in email:
            domain = email.rsplit("@", 1)[1]
            if not domain or not self.is_local(domain):
                return problem(404)
        else:
            email = PLACEHOLDER
            domain = self._domain_for(host, "autoconfig.")
        e, d = xml_text(email), xml_text(domain)
        out = ['<?xml version="1.0" encoding="UTF-8"?>', '<clientConfig version="1.1">',
               f'\t<emailProvider id="{d}">', f"\t\t<domain>{d}</domain>",
               f"\t\t<displayName>{e}</displayName>", f"\t\t<displayShortName>{d}</displayShortName>"]
        for service, eps in self.endpoints.items():
            if service not in MAIL_SERVICES:
                continue
            tag = "outgoingServer" if service == "smtp" else "incomingServer"
            for ep in eps:
                out += [f'\t\t<{tag} type="{service}">', f"\t\t\t<hostname>{xml_text(ep.host)}</hostname>",
                        f"\t\t\t<port>{ep.port}</port>",
                        f"\t\t\t<socketType>{'SSL' if ep.implicit else 'STARTTLS'}</socketType>",
                        f"\t\t\t<username>{e}</username>",
                        "\t\t\t<authentication>password-cleartext</authentication>", f"\t\t</{tag}>"]
        out.append("\t</emailProvider>")
        dav_tags = {"caldav": "calendar", "carddav": "addressBook", "webdav": "fileShare"}
        for service, eps in self.endpoints.items():
            if service not in DAV_SERVICES or not eps:
                continue
            tag = dav_tags[service]
            url = xml_text(eps[0].https_base() + HTTP_PATHS[service])
            out += [f'\t<{tag} type="{service}">', f"\t\t<username>{e}</username>",
                    "\t\t<authentication>http-basic</authentication>", f"\t\t<url>{url}</url>",
                    f"\t\t<serverURL>{url}</serverURL>", f"\t</{tag}>"]
        out += [f'\t<clientConfigUpdate url="https://autoconfig.{d}/mail/config-v1.1.xml"></clientConfigUpdate>',
                "</clientConfig>", ""]
        return Response(200, "\n".join(out).encode(), XML_UTF8, [PRIVATE])

    # -- Autodiscover v1 (http.md §6) ------------------------------------------------------------
    def autodiscover_error(self, code: int, message: str, namespace: str | None = None) -> Response:
        now = self.clock()
        t = time.gmtime(now)
        stamp = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{int(now % 1 * 10_000_000):07d}"
        response = f'\t<Response xmlns="{namespace}">' if namespace else "\t<Response>"
        body = "\n".join([
            '<?xml version="1.0" encoding="UTF-8"?>', f'<Autodiscover xmlns="{NS_RESPONSE}">', response,
            f'\t\t<Error Time="{stamp}" Id="{self.error_id}">', f"\t\t\t<ErrorCode>{code}</ErrorCode>",
            f"\t\t\t<Message>{xml_text(message)}</Message>", "\t\t\t<DebugData />", "\t\t</Error>",
            "\t</Response>", "</Autodiscover>", ""])
        return Response(200, body.encode(), XML_UTF8, [("Cache-Control", "no-store")])

    def autodiscover_v1(self, email: str | None, schema: str | None) -> Response:
        """The answer to a parsed request (``email`` None: the body was not a usable request)."""
        if schema is not None and schema.strip() == NS_MOBILESYNC:
            return self.autodiscover_error(601, "Provider is not available.", NS_MOBILESYNC)
        if email is None or "@" not in email:
            return self.autodiscover_error(600, "Invalid Request")
        domain = email.rsplit("@", 1)[1]
        if not domain or not self.is_local(domain):
            return self.autodiscover_error(500, "The email address cannot be found.")
        e = xml_text(email)
        out = ['<?xml version="1.0" encoding="UTF-8"?>', f'<Autodiscover xmlns="{NS_RESPONSE}">',
               f'\t<Response xmlns="{NS_OUTLOOK}">', "\t\t<User>", f"\t\t\t<DisplayName>{e}</DisplayName>",
               f"\t\t\t<AutoDiscoverSMTPAddress>{e}</AutoDiscoverSMTPAddress>",
               f"\t\t\t<DeploymentId>{DEPLOYMENT_ID}</DeploymentId>", "\t\t</User>", "\t\t<Account>",
               "\t\t\t<AccountType>email</AccountType>", "\t\t\t<Action>settings</Action>"]
        for service, eps in self.endpoints.items():
            if service not in MAIL_SERVICES:
                continue
            for ep in eps:
                # Outlook reads Encryption TLS as STARTTLS and SSL as implicit TLS (reference #3248).
                out += ["\t\t\t<Protocol>", f"\t\t\t\t<Type>{service.upper()}</Type>",
                        f"\t\t\t\t<Server>{xml_text(ep.host)}</Server>", f"\t\t\t\t<Port>{ep.port}</Port>",
                        f"\t\t\t\t<LoginName>{e}</LoginName>", "\t\t\t\t<AuthRequired>on</AuthRequired>",
                        "\t\t\t\t<DirectoryPort>0</DirectoryPort>", "\t\t\t\t<ReferralPort>0</ReferralPort>",
                        "\t\t\t\t<SSL>on</SSL>", f"\t\t\t\t<Encryption>{'SSL' if ep.implicit else 'TLS'}</Encryption>",
                        "\t\t\t\t<SPA>off</SPA>", "\t\t\t</Protocol>"]
        out += ["\t\t</Account>", "\t</Response>", "</Autodiscover>", ""]
        return Response(200, "\n".join(out).encode(), XML_UTF8, [PRIVATE])

    # -- Autodiscover v2 (http.md §7) ------------------------------------------------------------
    def autodiscover_v2(self, protocol: str | None, email: str | None, host: bytes | None = None,
                        certificate_for: Callable[[str], object] | None = None) -> Response:
        """http.md §7: ``Url`` names ``autodiscover.<domain>`` when a usable certificate covers that
        name (``certificate_for``: the TLS store's exact/wildcard lookup, tls.md §4), else
        ``defaultHostname``, where a client would otherwise meet a certificate error."""
        if (protocol or "").lower() != "autodiscoverv1":
            clean = _NOT_ALNUM.sub("", protocol or "")
            body = msgspec.json.encode({
                "ErrorCode": "InvalidProtocol",
                "ErrorMessage": f"The given protocol value '{clean}' is invalid. "
                                "Supported values are 'AutodiscoverV1'"})
            return Response(400, body, JSON_UTF8, [("Cache-Control", "no-store")])
        if email is not None:
            email = email.strip().lower()
            domain = email.rsplit("@", 1)[1] if "@" in email else ""
            if not domain:
                return problem(400, "Missing domain in email address")
            if not self.is_local(domain):
                return problem(404)
        else:
            domain = host_domain(host, "autodiscover.") or ""
            if self.domains is None or domain not in self.domains:
                domain = self.hostname
        url = self.discover_url
        if certificate_for is not None and certificate_for(f"autodiscover.{domain}") is not None:
            url = self.discover_base.replace(f"//{self.hostname}", f"//autodiscover.{domain}", 1) + DISCOVER_PATH
        body = msgspec.json.encode({"Protocol": "AutodiscoverV1", "Url": url})
        return Response(200, body, JSON_UTF8, [PRIVATE])
