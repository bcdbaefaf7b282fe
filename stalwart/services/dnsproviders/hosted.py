"""Hosted DNS APIs: Cloudflare (API v4), deSEC, DigitalOcean (API v2), Hetzner DNS, Linode (API v4),
Vultr (API v2) and Porkbun (API v3) (services.md §2.2).

Each speaks its provider's documented REST shapes over :class:`~stalwart.services.acme.http.HttpClient`
(``DnsServer.timeout`` bounds each call). Values cross the interface in zone-file presentation form
(TXT: raw text) and are mapped to each API's fields:

| provider | records | auth |
|---|---|---|
| Cloudflare | ``GET /zones?name=``, ``GET/POST /zones/{id}/dns_records``, ``DELETE .../{record}``; MX ``priority``, SRV/CAA ``data`` | ``Authorization: Bearer`` |
| deSEC | ``GET/PUT /domains/{d}/rrsets/{subname}/{type}/`` — one PUT replaces an RRset atomically, an empty list deletes it | ``Authorization: Token`` |
| DigitalOcean | ``GET/POST /domains/{d}/records``, ``DELETE .../{id}``; relative ``name``, ``priority``/``port``/``weight``/``flags``/``tag`` | ``Authorization: Bearer`` |
| Hetzner | ``GET /zones?name=``, ``GET /records?zone_id=``, ``POST /records``, ``DELETE /records/{id}``; relative ``name``, presentation ``value`` | ``Auth-API-Token`` |
| Linode | ``GET /domains``, ``GET/POST /domains/{id}/records``, ``DELETE .../{id}``; ``target``, ``priority``/``weight``/``port``/``tag`` | ``Authorization: Bearer`` |
| Vultr | ``GET/POST /domains/{d}/records``, ``DELETE .../{id}``; relative ``name``, ``data``, ``priority`` | ``Authorization: Bearer`` |
| Porkbun | ``POST /dns/retrieveByNameType/{d}/{type}/{sub}``, ``/dns/create/{d}``, ``/dns/delete/{d}/{id}``; ``content``, ``prio`` | keys in the JSON body |

Errors keep the provider's message; 429 and 5xx are temporary, other statuses permanent.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from urllib.parse import quote, urlencode

from ... import events
from ...config.secrets import resolve
from ..acme.http import HttpClient, HttpError
from .config import Cloudflare, DeSEC, DigitalOcean, Hetzner, Linode, Porkbun, Vultr
from .records import DnsProviderError, DnsUpdater, check_type, fqdn, split_txt


def _relative(name: str, zone: str, apex: str) -> str:
    name, zone = fqdn(name), fqdn(zone)
    if name == zone:
        return apex
    if not name.endswith("." + zone):
        raise DnsProviderError(f"{name} is not inside zone {zone}")
    return name[: -len(zone) - 1]


def _split(rtype: str, value: str) -> list[str]:
    parts = shlex.split(value) if rtype == "CAA" else value.split()
    return parts


class HostedUpdater(DnsUpdater):
    """Shared plumbing: JSON requests, error mapping, set as delete-stale + add-missing."""

    provider = ""
    auth_scheme = "Bearer"

    def __init__(self, server, path: str):
        self.base = server.base_url.rstrip("/")
        self.token = resolve(server.secret, f"{path}.secret") or ""
        self.http = HttpClient(timeout=int(server.timeout) / 1000.0)
        self.ttl = server.ttl_seconds

    async def call(self, method: str, path: str, body=None, ok=(200, 201, 204)):
        data = json.dumps(body).encode() if body is not None else b""
        headers = [*self.headers(), ("Accept", "application/json")]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        try:
            resp = await self.http.request(method, self.base + path, data, headers)
        except HttpError as exc:
            raise DnsProviderError(f"{self.provider}: {exc}", temporary=True) from None
        try:
            doc = json.loads(resp.body) if resp.body else None
        except ValueError:
            doc = None
        if resp.status not in ok:
            raise DnsProviderError(f"{self.provider}: {method} {path}: HTTP {resp.status}: {self.message(doc, resp)}",
                                   temporary=resp.status == 429 or resp.status >= 500)
        return doc, resp

    def message(self, doc, resp) -> str:
        return resp.body[:200].decode("utf-8", "replace")

    def headers(self) -> list[tuple[str, str]]:
        return [("Authorization", f"{self.auth_scheme} {self.token}")]

    # provider hooks: records at (name, type) as (id, value) pairs; create one; delete one
    async def records(self, zone: str, name: str, rtype: str) -> list[tuple[str, str]]:
        raise DnsProviderError(f"{self.provider} cannot list records")

    async def create(self, zone: str, name: str, rtype: str, value: str) -> None:
        raise DnsProviderError(f"{self.provider} cannot create records")

    async def delete(self, zone: str, record_id: str) -> None:
        raise DnsProviderError(f"{self.provider} cannot delete records")

    async def list_rrset(self, zone: str, name: str, rtype: str) -> list[str]:
        return [v for _id, v in await self.records(zone, name, check_type(rtype))]

    async def set_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str]) -> None:
        rtype = check_type(rtype)
        wanted = list(dict.fromkeys(values))
        current = await self.records(zone, name, rtype)
        have = {v for _id, v in current}
        for record_id, value in current:
            if value not in wanted:
                await self.delete(zone, record_id)
        for value in wanted:
            if value not in have:
                await self.create(zone, name, rtype, value)
        if wanted:
            events.emit("dns.record-created", Hostname=fqdn(name), Details=f"{rtype} {wanted}")

    async def add_to_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str]) -> None:
        rtype = check_type(rtype)
        have = {v for _id, v in await self.records(zone, name, rtype)}
        for value in dict.fromkeys(values):
            if value not in have:
                await self.create(zone, name, rtype, value)
        if values:
            events.emit("dns.record-created", Hostname=fqdn(name), Details=f"{rtype} {list(values)}")

    async def remove_from_rrset(self, zone: str, name: str, rtype: str, values: Sequence[str]) -> None:
        rtype = check_type(rtype)
        try:
            for record_id, value in await self.records(zone, name, rtype):
                if value in values:
                    await self.delete(zone, record_id)
        except DnsProviderError as exc:
            events.emit("dns.record-deletion-failed", level="warn", Hostname=fqdn(name), Reason=str(exc))
            raise


class CloudflareUpdater(HostedUpdater):
    provider = "Cloudflare"

    def __init__(self, server: Cloudflare, path: str):
        super().__init__(server, path)
        self._zones: dict[str, str] = {}

    def message(self, doc, resp) -> str:
        if isinstance(doc, dict) and doc.get("errors"):
            return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in doc["errors"])
        return super().message(doc, resp)

    async def zone_id(self, zone: str) -> str:
        zone = fqdn(zone)
        if zone not in self._zones:
            doc, _ = await self.call("GET", "/zones?" + urlencode({"name": zone}))
            result = (doc or {}).get("result") or []
            if not result:
                raise DnsProviderError(f"Cloudflare: no zone named {zone} for this token")
            self._zones[zone] = result[0]["id"]
        return self._zones[zone]

    @staticmethod
    def _value(rec: dict) -> str:
        t, data = rec["type"], rec.get("data") or {}
        if t == "MX":
            return f"{rec.get('priority', 0)} {fqdn(rec['content'])}."
        if t == "SRV":
            return f"{data['priority']} {data['weight']} {data['port']} {fqdn(data['target'])}."
        if t == "CAA":
            return f'{data["flags"]} {data["tag"]} "{data["value"]}"'
        if t == "CNAME":
            return fqdn(rec["content"]) + "."
        if t == "TXT":
            content = rec["content"]
            return content[1:-1] if len(content) >= 2 and content[0] == content[-1] == '"' else content
        return rec["content"]

    async def records(self, zone, name, rtype):
        zid = await self.zone_id(zone)
        doc, _ = await self.call("GET", f"/zones/{zid}/dns_records?" + urlencode({"type": rtype, "name": fqdn(name),
                                                                                   "per_page": 5000}))
        return [(r["id"], self._value(r)) for r in (doc or {}).get("result") or [] if r.get("type") == rtype]

    async def create(self, zone, name, rtype, value):
        body: dict = {"type": rtype, "name": fqdn(name), "ttl": self.ttl}
        parts = _split(rtype, value)
        if rtype == "MX":
            body.update(priority=int(parts[0]), content=fqdn(parts[1]))
        elif rtype == "SRV":
            body["data"] = {"priority": int(parts[0]), "weight": int(parts[1]), "port": int(parts[2]),
                            "target": fqdn(parts[3])}
        elif rtype == "CAA":
            body["data"] = {"flags": int(parts[0]), "tag": parts[1], "value": parts[2]}
        elif rtype == "CNAME":
            body["content"] = fqdn(value)
        else:
            body["content"] = value
        await self.call("POST", f"/zones/{await self.zone_id(zone)}/dns_records", body)

    async def delete(self, zone, record_id):
        await self.call("DELETE", f"/zones/{await self.zone_id(zone)}/dns_records/{quote(record_id)}")


class DeSECUpdater(HostedUpdater):
    """deSEC RRsets: one PUT replaces the set atomically; records in presentation form."""

    provider = "deSEC"
    auth_scheme = "Token"

    def message(self, doc, resp) -> str:
        if isinstance(doc, dict):
            if "detail" in doc:
                return str(doc["detail"])
            return "; ".join(f"{k}: {v}" for k, v in doc.items())
        if isinstance(doc, list):
            return "; ".join(str(d) for d in doc)
        return super().message(doc, resp)

    def _path(self, zone: str, name: str, rtype: str) -> str:
        sub = _relative(name, zone, "@")
        return f"/domains/{quote(fqdn(zone))}/rrsets/{quote(sub)}/{rtype}/"

    @staticmethod
    def _encode(rtype: str, value: str) -> str:
        if rtype == "TXT":  # strings of at most 255 bytes, cut between UTF-8 characters
            chunks = [c.decode("utf-8") for c in split_txt(value)]
            return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
        return value

    @staticmethod
    def _decode(rtype: str, value: str) -> str:
        if rtype == "TXT":
            return "".join(shlex.split(value))
        return value

    async def list_rrset(self, zone, name, rtype):
        rtype = check_type(rtype)
        doc, _ = await self.call("GET", self._path(zone, name, rtype), ok=(200, 404))
        if not isinstance(doc, dict) or "records" not in doc:
            return []
        return [self._decode(rtype, r) for r in doc["records"]]

    async def set_rrset(self, zone, name, rtype, values):
        rtype = check_type(rtype)
        sub = _relative(name, zone, "")
        body = {"subname": sub, "type": rtype, "ttl": self.ttl,
                "records": [self._encode(rtype, v) for v in dict.fromkeys(values)]}
        await self.call("PUT", self._path(zone, name, rtype), body)
        if values:
            events.emit("dns.record-created", Hostname=fqdn(name), Details=f"{rtype} {list(values)}")

    async def add_to_rrset(self, zone, name, rtype, values):
        current = await self.list_rrset(zone, name, rtype)
        if all(v in current for v in values):
            return
        await self.set_rrset(zone, name, rtype, [*current, *values])

    async def remove_from_rrset(self, zone, name, rtype, values):
        current = await self.list_rrset(zone, name, rtype)
        if any(v in current for v in values):
            await self.set_rrset(zone, name, rtype, [v for v in current if v not in values])


class DigitalOceanUpdater(HostedUpdater):
    provider = "DigitalOcean"

    def message(self, doc, resp) -> str:
        if isinstance(doc, dict) and "message" in doc:
            return f"{doc.get('id', 'error')}: {doc['message']}"
        return super().message(doc, resp)

    @staticmethod
    def _value(rec: dict) -> str:
        t = rec["type"]
        if t == "MX":
            return f"{rec.get('priority', 0)} {fqdn(rec['data'])}."
        if t == "SRV":
            return f"{rec.get('priority', 0)} {rec.get('weight', 0)} {rec.get('port', 0)} {fqdn(rec['data'])}."
        if t == "CAA":
            return f'{rec.get("flags", 0)} {rec.get("tag")} "{rec["data"]}"'
        if t == "CNAME":
            return fqdn(rec["data"]) + "."
        return rec["data"]

    async def records(self, zone, name, rtype):
        query = urlencode({"type": rtype, "name": fqdn(name), "per_page": 200})
        doc, _ = await self.call("GET", f"/domains/{quote(fqdn(zone))}/records?{query}")
        return [(str(r["id"]), self._value(r)) for r in (doc or {}).get("domain_records") or []
                if r.get("type") == rtype]

    async def create(self, zone, name, rtype, value):
        body: dict = {"type": rtype, "name": _relative(name, zone, "@"), "ttl": self.ttl}
        parts = _split(rtype, value)
        if rtype == "MX":
            body.update(priority=int(parts[0]), data=fqdn(parts[1]) + ".")
        elif rtype == "SRV":
            body.update(priority=int(parts[0]), weight=int(parts[1]), port=int(parts[2]), data=fqdn(parts[3]) + ".")
        elif rtype == "CAA":
            body.update(flags=int(parts[0]), tag=parts[1], data=parts[2])
        elif rtype == "CNAME":
            body["data"] = fqdn(value) + "."
        else:
            body["data"] = value
        await self.call("POST", f"/domains/{quote(fqdn(zone))}/records", body)

    async def delete(self, zone, record_id):
        await self.call("DELETE", f"/domains/{quote(fqdn(zone))}/records/{quote(record_id)}")


class HetznerUpdater(HostedUpdater):
    """Hetzner DNS: zones by name, records with a relative ``name`` (``@`` at the apex) and one
    ``value`` in presentation form (TXT quoted)."""

    provider = "Hetzner"

    def __init__(self, server: Hetzner, path: str):
        super().__init__(server, path)
        self._zones: dict[str, str] = {}

    def headers(self) -> list[tuple[str, str]]:
        return [("Auth-API-Token", self.token)]

    def message(self, doc, resp) -> str:
        if isinstance(doc, dict):
            err = doc.get("error")
            if isinstance(err, dict) and err.get("message"):
                return f"{err.get('code', resp.status)}: {err['message']}"
            if doc.get("message"):
                return str(doc["message"])
        return super().message(doc, resp)

    async def zone_id(self, zone: str) -> str:
        zone = fqdn(zone)
        if zone not in self._zones:
            doc, _ = await self.call("GET", "/zones?" + urlencode({"name": zone}))
            zones = (doc or {}).get("zones") or []
            if not zones:
                raise DnsProviderError(f"Hetzner: no zone named {zone}")
            self._zones[zone] = zones[0]["id"]
        return self._zones[zone]

    async def records(self, zone, name, rtype):
        zid = await self.zone_id(zone)
        doc, _ = await self.call("GET", "/records?" + urlencode({"zone_id": zid}))
        rel = _relative(name, zone, "@")
        out = []
        for r in (doc or {}).get("records") or []:
            if r.get("type") == rtype and r.get("name") == rel:
                value = r["value"]
                out.append((r["id"], "".join(shlex.split(value)) if rtype == "TXT" else value))
        return out

    async def create(self, zone, name, rtype, value):
        if rtype == "TXT":
            value = " ".join('"' + c.decode().replace('"', '\\"') + '"' for c in split_txt(value))
        await self.call("POST", "/records", {"zone_id": await self.zone_id(zone), "type": rtype,
                                              "name": _relative(name, zone, "@"), "value": value, "ttl": self.ttl})

    async def delete(self, zone, record_id):
        await self.call("DELETE", f"/records/{quote(record_id)}")


class LinodeUpdater(HostedUpdater):
    """Linode domains: records with a relative ``name`` ("" at the apex), ``target`` and the MX/SRV/CAA
    fields ``priority``, ``weight``, ``port``, ``tag``."""

    provider = "Linode"

    def __init__(self, server: Linode, path: str):
        super().__init__(server, path)
        self._zones: dict[str, int] = {}

    def message(self, doc, resp) -> str:
        if isinstance(doc, dict) and doc.get("errors"):
            return "; ".join(str(e.get("reason")) + (f" ({e['field']})" if e.get("field") else "")
                             for e in doc["errors"])
        return super().message(doc, resp)

    async def zone_id(self, zone: str) -> int:
        zone = fqdn(zone)
        if zone not in self._zones:
            doc, _ = await self.call("GET", "/domains?page_size=500")
            match = [d for d in (doc or {}).get("data") or [] if d.get("domain") == zone]
            if not match:
                raise DnsProviderError(f"Linode: no domain named {zone}")
            self._zones[zone] = match[0]["id"]
        return self._zones[zone]

    @staticmethod
    def _value(rec: dict) -> str:
        t = rec["type"]
        if t == "MX":
            return f"{rec.get('priority', 0)} {fqdn(rec['target'])}."
        if t == "SRV":
            return f"{rec.get('priority', 0)} {rec.get('weight', 0)} {rec.get('port', 0)} {fqdn(rec['target'])}."
        if t == "CAA":
            return f'0 {rec.get("tag")} "{rec["target"]}"'
        if t == "CNAME":
            return fqdn(rec["target"]) + "."
        return rec["target"]

    async def records(self, zone, name, rtype):
        zid = await self.zone_id(zone)
        doc, _ = await self.call("GET", f"/domains/{zid}/records?page_size=500")
        rel = _relative(name, zone, "")
        return [(str(r["id"]), self._value(r)) for r in (doc or {}).get("data") or []
                if r.get("type") == rtype and r.get("name") == rel]

    async def create(self, zone, name, rtype, value):
        body: dict = {"type": rtype, "name": _relative(name, zone, ""), "ttl_sec": self.ttl}
        parts = _split(rtype, value)
        if rtype == "MX":
            body.update(priority=int(parts[0]), target=fqdn(parts[1]))
        elif rtype == "SRV":
            body.update(priority=int(parts[0]), weight=int(parts[1]), port=int(parts[2]), target=fqdn(parts[3]))
        elif rtype == "CAA":
            body.update(tag=parts[1], target=parts[2])
        elif rtype == "CNAME":
            body["target"] = fqdn(value)
        else:
            body["target"] = value
        await self.call("POST", f"/domains/{await self.zone_id(zone)}/records", body)

    async def delete(self, zone, record_id):
        await self.call("DELETE", f"/domains/{await self.zone_id(zone)}/records/{quote(record_id)}")


class VultrUpdater(HostedUpdater):
    """Vultr DNS: records with a relative ``name`` ("" at the apex), ``data`` and ``priority``."""

    provider = "Vultr"

    def message(self, doc, resp) -> str:
        if isinstance(doc, dict) and doc.get("error"):
            return str(doc["error"])
        return super().message(doc, resp)

    @staticmethod
    def _value(rec: dict) -> str:
        t, data = rec["type"], rec["data"]
        if t in ("MX", "SRV"):  # data holds the rest of the record after the priority
            return f"{rec.get('priority', 0)} {data.rstrip('.')}."
        if t == "CNAME":
            return fqdn(data) + "."
        if t == "TXT":
            return data[1:-1] if len(data) >= 2 and data[0] == data[-1] == '"' else data
        return data

    async def records(self, zone, name, rtype):
        doc, _ = await self.call("GET", f"/domains/{quote(fqdn(zone))}/records?per_page=500")
        rel = _relative(name, zone, "")
        return [(r["id"], self._value(r)) for r in (doc or {}).get("records") or []
                if r.get("type") == rtype and r.get("name") == rel]

    async def create(self, zone, name, rtype, value):
        body: dict = {"type": rtype, "name": _relative(name, zone, ""), "ttl": self.ttl}
        parts = _split(rtype, value)
        if rtype in ("MX", "SRV"):
            body.update(priority=int(parts[0]), data=" ".join([*parts[1:-1], fqdn(parts[-1])]))
        elif rtype == "CNAME":
            body["data"] = fqdn(value)
        elif rtype == "TXT":
            body["data"] = f'"{value}"'
        else:
            body["data"] = value
        await self.call("POST", f"/domains/{quote(fqdn(zone))}/records", body)

    async def delete(self, zone, record_id):
        await self.call("DELETE", f"/domains/{quote(fqdn(zone))}/records/{quote(record_id)}")


class PorkbunUpdater(HostedUpdater):
    """Porkbun: every call is a POST whose JSON body carries the two keys; ``status`` says whether it
    worked, ``message`` why not."""

    provider = "Porkbun"

    def __init__(self, server: Porkbun, path: str):
        self.base = server.base_url.rstrip("/")
        self.api_key = server.api_key
        self.token = resolve(server.secret_api_key, f"{path}.secretApiKey") or ""
        self.http = HttpClient(timeout=int(server.timeout) / 1000.0)
        self.ttl = server.ttl_seconds

    def headers(self) -> list[tuple[str, str]]:
        return []

    def message(self, doc, resp) -> str:
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])
        return super().message(doc, resp)

    async def post(self, path: str, body: dict | None = None):
        doc, resp = await self.call("POST", path, {"apikey": self.api_key, "secretapikey": self.token, **(body or {})})
        if not isinstance(doc, dict) or doc.get("status") != "SUCCESS":
            raise DnsProviderError(f"Porkbun: {path}: {self.message(doc, resp)}")
        return doc

    @staticmethod
    def _value(rec: dict) -> str:
        t, content = rec["type"], rec["content"]
        if t in ("MX", "SRV"):
            return f"{rec.get('prio') or 0} {content.rstrip('.')}."
        if t == "CNAME":
            return fqdn(content) + "."
        return content

    async def records(self, zone, name, rtype):
        sub = _relative(name, zone, "")
        doc = await self.post(f"/dns/retrieveByNameType/{quote(fqdn(zone))}/{rtype}/{quote(sub)}".rstrip("/"))
        return [(str(r["id"]), self._value(r)) for r in doc.get("records") or []]

    async def create(self, zone, name, rtype, value):
        body: dict = {"name": _relative(name, zone, ""), "type": rtype, "ttl": str(max(self.ttl, 600))}
        parts = _split(rtype, value)
        if rtype in ("MX", "SRV"):
            body.update(prio=parts[0], content=" ".join([*parts[1:-1], fqdn(parts[-1])]))
        elif rtype == "CNAME":
            body["content"] = fqdn(value)
        else:
            body["content"] = value
        await self.post(f"/dns/create/{quote(fqdn(zone))}", body)

    async def delete(self, zone, record_id):
        await self.post(f"/dns/delete/{quote(fqdn(zone))}/{quote(record_id)}")


def hosted_updater(server, path: str) -> HostedUpdater:
    if isinstance(server, Cloudflare):
        return CloudflareUpdater(server, path)
    if isinstance(server, DeSEC):
        return DeSECUpdater(server, path)
    if isinstance(server, DigitalOcean):
        return DigitalOceanUpdater(server, path)
    if isinstance(server, Hetzner):
        return HetznerUpdater(server, path)
    if isinstance(server, Linode):
        return LinodeUpdater(server, path)
    if isinstance(server, Vultr):
        return VultrUpdater(server, path)
    if isinstance(server, Porkbun):
        return PorkbunUpdater(server, path)
    raise DnsProviderError(f"{path}: no hosted API for {type(server).__name__}")
