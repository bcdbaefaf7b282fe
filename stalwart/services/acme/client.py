"""An RFC 8555 ACME client: directory, nonces, account, orders, authorizations, finalize, download.

Follows tls.md §7.4 with its "We do better" items:

* the ``Replay-Nonce`` of every response is kept and used; ``HEAD newNonce`` only when none is held
  (RFC 8555 §7.2);
* problem documents (RFC 8555 §6.7, RFC 7807) are parsed: ``badNonce`` retries the same request at
  once with the nonce of the error response, up to :data:`BAD_NONCE_RETRIES` times;
  ``rateLimited`` (any status), 429 and 503 become :class:`Backoff` with ``Retry-After``;
* a challenge is POSTed once; the authorization is then polled honouring ``Retry-After``, else
  after 1, 2, 4, 8, 16 s and every 30 s after that, until it leaves ``pending`` or
  :data:`AUTH_DEADLINE` passed;
* ``accountDoesNotExist`` re-registers with the stored key (tls.md §6 "We do better").

Challenge provisioning is delegated to a :class:`ChallengeSolver` so HTTP-01, TLS-ALPN-01 and DNS-01
share one order flow.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ... import events
from ...errors import StalwartError
from .http import HttpClient, HttpError, HttpResponse
from .jws import AccountKey, b64u, external_account_binding

BAD_NONCE_RETRIES = 3
AUTH_DEADLINE = 600.0  # s: tls.md §7.4, an authorization still pending after this is AuthTimeout
ORDER_POLLS = 10  # tls.md §7.4: "processing" polled up to 10 times
MAX_RETRY_AFTER = 600.0  # s: a longer Retry-After on a poll is a Backoff (tls.md §7.4 item 4)
ERR = "urn:ietf:params:acme:error:"
JOSE = "application/jose+json"


class AcmeError(StalwartError):
    """A failed ACME operation. ``temporary`` follows tls.md §7.7's classification; ``retry_after``
    (seconds) is set when the CA said when to come back."""

    kind = "Invalid"
    temporary = False

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class AcmeProblem(AcmeError):
    """The CA answered with an error status: ``type`` and ``detail`` of its problem document."""

    kind = "HttpStatus"
    temporary = True

    def __init__(self, status: int, type_: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{status} {type_ or 'error'}: {detail}", retry_after=retry_after)
        self.status, self.type, self.detail = status, type_, detail


class Backoff(AcmeError):
    kind, temporary = "Backoff", True


class TransportError(AcmeError):
    kind, temporary = "Http", True


class AuthInvalid(AcmeError):
    kind, temporary = "AuthInvalid", True


class AuthTimeout(AcmeError):
    kind, temporary = "AuthTimeout", True


class OrderTimeout(AcmeError):
    kind, temporary = "OrderTimeout", True


class OrderInvalid(AcmeError):
    kind = "OrderInvalid"


class ChallengeNotSupported(AcmeError):
    kind = "ChallengeNotSupported"


class ChallengeSolver:
    """Provisions one challenge type. ``prepare`` makes the challenge answerable (and, for DNS,
    waits for propagation); ``cleanup`` removes it whatever the outcome."""

    type: str = ""

    async def prepare(self, identifier: str, token: str, key_authorization: str) -> None:
        raise AcmeError(f"{type(self).__name__} does not provision challenges")

    async def cleanup(self, identifier: str, token: str, key_authorization: str) -> None:
        return None


@dataclass(slots=True)
class Issued:
    chain_pem: bytes
    key_pem: bytes
    order_url: str


def retry_after(resp: HttpResponse, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = resp.header("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also accepts "²", which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')


def links(resp: HttpResponse, rel: str) -> list[str]:
    """Targets of ``Link`` headers with ``rel`` (RFC 8288), e.g. ``alternate`` chains (RFC 8555 §7.4.2)."""
    out = []
    for value in resp.header_all("link"):
        for m in _LINK.finditer(value):
            params = m.group(2)
            if re.search(rf'rel="?{re.escape(rel)}"?', params):
                out.append(m.group(1))
    return out


def make_csr(names: Sequence[str], key: ec.EllipticCurvePrivateKey) -> bytes:
    """DER CSR with an empty subject and every name as a DNS SAN (tls.md §7.4, RFC 8555 §7.4)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


class AcmeClient:
    """One account at one CA. ``sleep`` and ``clock`` are injectable for tests."""

    def __init__(self, directory_url: str, key: AccountKey, http: HttpClient, *, account_uri: str | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, clock: Callable[[], float] = time.time):
        self.directory_url = directory_url
        self.key = key
        self.http = http
        self.account_uri = account_uri
        self.sleep = sleep
        self.clock = clock
        self.dir: dict | None = None
        self._nonces: list[str] = []
        self._contact: list[str] = []
        self._eab: tuple[str, str] | None = None
        #: False while a rolled-over key is unresolved (keychange.py): an ``accountDoesNotExist`` for
        #: the old key may only mean the CA now knows the new one, and registering the old key again
        #: would create a second account instead of recovering the first
        self.may_reregister = True

    # -- transport -------------------------------------------------------------------------------
    async def _call(self, method: str, url: str, body: bytes = b"", headers=None) -> HttpResponse:
        try:
            resp = await self.http.request(method, url, body, headers)
        except HttpError as exc:
            raise TransportError(str(exc)) from None
        nonce = resp.header("replay-nonce")
        if nonce:
            self._nonces.append(nonce)
        return resp

    async def directory(self) -> dict:
        if self.dir is None:
            resp = await self._call("GET", self.directory_url)
            if resp.status != 200:
                raise self._problem(resp)
            try:
                d = json.loads(resp.body)
                for k in ("newNonce", "newAccount", "newOrder"):
                    if not isinstance(d.get(k), str):
                        raise ValueError(f"no {k}")
            except ValueError as exc:
                raise AcmeError(f"bad ACME directory at {self.directory_url}: {exc}") from None
            self.dir = d
        return self.dir

    async def _nonce(self) -> str:
        if self._nonces:
            return self._nonces.pop()
        d = await self.directory()
        resp = await self._call("HEAD", d["newNonce"])
        if not self._nonces:
            raise AcmeError(f"newNonce gave no Replay-Nonce (status {resp.status})")
        return self._nonces.pop()

    def _problem(self, resp: HttpResponse) -> AcmeError:
        wait = retry_after(resp, self.clock())
        type_, detail = "", resp.body[:300].decode("utf-8", "replace")
        if (resp.header("content-type") or "").startswith("application/problem+json"):
            try:
                doc = json.loads(resp.body)
                type_ = str(doc.get("type", ""))
                detail = str(doc.get("detail", ""))
                for sub in doc.get("subproblems") or []:
                    detail += f"; {sub.get('identifier', {}).get('value', '?')}: {sub.get('detail', '')}"
            except (ValueError, AttributeError):
                pass
        if type_ == ERR + "rateLimited" or resp.status in (429, 503):
            return Backoff(f"{resp.status} {type_ or 'backoff'}: {detail}", retry_after=wait)
        return AcmeProblem(resp.status, type_, detail, wait)

    async def post(self, url: str, payload, *, jwk: bool = False) -> HttpResponse:
        """A signed POST (``payload`` None: POST-as-GET). Retries ``badNonce`` at once (§6.5) and
        re-registers once on ``accountDoesNotExist``."""
        reregistered = False
        attempt = 0
        while True:
            if not jwk and self.account_uri is None:
                await self.register()
            nonce = await self._nonce()
            body = self.key.sign(url, payload, nonce=nonce, kid=None if jwk else self.account_uri)
            resp = await self._call("POST", url, body, [("Content-Type", JOSE)])
            if resp.status < 400:
                return resp
            err = self._problem(resp)
            if isinstance(err, AcmeProblem) and err.type == ERR + "badNonce" and attempt < BAD_NONCE_RETRIES:
                attempt += 1
                continue
            if (isinstance(err, AcmeProblem) and err.type == ERR + "accountDoesNotExist" and not jwk
                    and not reregistered and self.may_reregister):
                reregistered = True
                self.account_uri = None
                continue
            raise err

    async def get(self, url: str) -> tuple[dict, HttpResponse]:
        resp = await self.post(url, None)
        try:
            return json.loads(resp.body), resp
        except ValueError:
            raise AcmeError(f"POST-as-GET {url}: response is not JSON") from None

    # -- account (RFC 8555 §7.3) -------------------------------------------------------------------
    def configure_account(self, contact: Sequence[str], eab: tuple[str, str] | None = None) -> None:
        self._contact = list(contact)
        self._eab = eab

    async def register(self) -> str:
        d = await self.directory()
        payload: dict = {"termsOfServiceAgreed": True, "contact": self._contact}
        if self._eab is not None:
            payload["externalAccountBinding"] = external_account_binding(self.key, *self._eab, d["newAccount"])
        resp = await self.post(d["newAccount"], payload, jwk=True)
        uri = resp.header("location")
        if not uri:
            raise AcmeError("newAccount response has no Location")
        self.account_uri = uri
        events.emit("acme.account-registered", Url=uri)
        return uri

    async def existing_account(self) -> str | None:
        """RFC 8555 §7.3.1 ``onlyReturnExisting``: the URL of the account this client's key belongs
        to, or None when the CA says it has none (``accountDoesNotExist``). Other answers raise:
        only that error type means "unknown key" (a signature the CA cannot check against an
        account is ``malformed``, which also covers unrelated faults)."""
        d = await self.directory()
        try:
            resp = await self.post(d["newAccount"], {"onlyReturnExisting": True}, jwk=True)
        except AcmeProblem as exc:
            if exc.type == ERR + "accountDoesNotExist":
                return None
            raise
        uri = resp.header("location")
        if not uri:
            raise AcmeError("newAccount (onlyReturnExisting) response has no Location")
        return uri

    async def update_contact(self, contact: Sequence[str]) -> None:
        """RFC 8555 §7.3.2: tell the CA about edited contacts."""
        self._contact = list(contact)
        await self.post(self.account_uri or await self.register(), {"contact": self._contact})

    async def change_key(self, new_key: AccountKey) -> None:
        """RFC 8555 §7.3.5: the inner JWS (new key, ``jwk``, no nonce) inside one signed by the old key."""
        d = await self.directory()
        if "keyChange" not in d:
            raise AcmeError("the CA offers no keyChange")
        if self.account_uri is None:
            await self.register()
        inner = json.loads(new_key.sign(d["keyChange"], {"account": self.account_uri, "oldKey": self.key.jwk},
                                        nonce=None, kid=None))
        await self.post(d["keyChange"], inner)
        self.key = new_key

    async def deactivate(self) -> None:
        """RFC 8555 §7.3.6: the account can no longer be used (irreversible)."""
        if self.account_uri is None:
            await self.register()
        await self.post(self.account_uri, {"status": "deactivated"})

    async def revoke(self, cert_der: bytes, reason: int | None = None) -> None:
        """RFC 8555 §7.6, signed with the account key; ``reason`` is an RFC 5280 §5.3.1 code."""
        d = await self.directory()
        if "revokeCert" not in d:
            raise AcmeError("the CA offers no revokeCert")
        payload: dict = {"certificate": b64u(cert_der)}
        if reason is not None:
            payload["reason"] = reason
        await self.post(d["revokeCert"], payload)

    # -- ACME Renewal Information (RFC 9773) -------------------------------------------------------
    async def renewal_window(self, leaf: x509.Certificate) -> tuple[float, float, float | None] | None:
        """``(start, end, retry_after)`` of the CA's suggested renewal window (RFC 9773 §4.2), or
        None when the directory has no ``renewalInfo``. Times are Unix seconds."""
        d = await self.directory()
        base = d.get("renewalInfo")
        if not isinstance(base, str):
            return None
        resp = await self._call("GET", f"{base.rstrip('/')}/{ari_cert_id(leaf)}")
        if resp.status != 200:
            raise self._problem(resp)
        try:
            window = json.loads(resp.body)["suggestedWindow"]
            start = _rfc3339(window["start"])
            end = _rfc3339(window["end"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AcmeError(f"renewalInfo: malformed window: {exc}") from None
        if end < start:
            raise AcmeError("renewalInfo: window ends before it starts")
        return start, end, retry_after(resp, self.clock())

    # -- orders (RFC 8555 §7.4) --------------------------------------------------------------------
    async def issue(self, names: Sequence[str], solver: ChallengeSolver, *,
                    key: ec.EllipticCurvePrivateKey | None = None, preferred_chain: str | None = None,
                    replaces: str | None = None) -> Issued:
        """Order a certificate for ``names``, solve its authorizations, finalize and download.
        ``replaces`` is the ARI certificate id of the certificate this one succeeds (RFC 9773 §5)."""
        d = await self.directory()
        payload: dict = {"identifiers": [{"type": "dns", "value": n} for n in names]}
        if replaces and "renewalInfo" in d:
            payload["replaces"] = replaces
        resp = await self.post(d["newOrder"], payload)
        order_url = resp.header("location")
        if not order_url:
            raise AcmeError("newOrder response has no Location")
        order = json.loads(resp.body)
        key = key or ec.generate_private_key(ec.SECP256R1())
        polls = 0
        while True:
            status = order.get("status")
            if status == "pending":
                polls += 1
                if polls > ORDER_POLLS:  # every authorization is valid, yet the order did not move
                    raise OrderTimeout(f"order {order_url} still pending after {ORDER_POLLS} rounds")
                # One after another: "*.d" and "d" share "_acme-challenge.d" for DNS-01 (tls.md §7.5).
                for authz in order.get("authorizations", []):
                    await self.authorize(authz, solver)
                order, resp = await self.get(order_url)
            elif status == "ready":
                order, resp = await self._finalize(order, names, key)
            elif status == "processing":
                polls = max(polls, 0) + 1
                if polls > ORDER_POLLS:
                    raise OrderTimeout(f"order {order_url} still processing after {ORDER_POLLS} polls")
                await self._pause(resp, min(2 ** (polls - 1), 512))
                order, resp = await self.get(order_url)
            elif status == "valid":
                chain = await self._download(order["certificate"], preferred_chain)
                return Issued(chain, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()), order_url)
            else:
                raise OrderInvalid(f"order {order_url} is {status}: {order.get('error')}")

    async def _finalize(self, order: dict, names: Sequence[str], key) -> tuple[dict, HttpResponse]:
        resp = await self.post(order["finalize"], {"csr": b64u(make_csr(names, key))})
        return json.loads(resp.body), resp

    async def _pause(self, resp: HttpResponse, default: float) -> None:
        wait = retry_after(resp, self.clock())
        if wait is not None and wait > MAX_RETRY_AFTER:
            raise Backoff(f"the CA asked to come back in {wait:.0f} s", retry_after=wait)
        await self.sleep(default if wait is None else wait)

    async def authorize(self, url: str, solver: ChallengeSolver) -> None:
        """Solve one authorization (RFC 8555 §7.5); valid ones (reuse) need nothing."""
        authz, resp = await self.get(url)
        status = authz.get("status")
        if status == "valid":
            return
        if status != "pending":
            raise AuthInvalid(f"authorization {url} is {status}")
        ident = authz.get("identifier", {}).get("value", "")
        if authz.get("wildcard"):
            ident = f"*.{ident}"
        chall = next((c for c in authz.get("challenges", []) if c.get("type") == solver.type), None)
        if chall is None:
            offered = ", ".join(sorted(c.get("type", "?") for c in authz.get("challenges", [])))
            raise ChallengeNotSupported(f"{ident}: the CA does not offer {solver.type} (offers {offered})")
        token = chall["token"]
        keyauth = self.key.key_authorization(token)
        try:
            await solver.prepare(ident, token, keyauth)
            await self.post(chall["url"], {})  # once (tls.md §7.4 "We do better")
            deadline = self.clock() + AUTH_DEADLINE
            i = 0
            while True:
                await self._pause(resp, 2 ** i if i < 5 else 30)
                i += 1
                authz, resp = await self.get(url)
                status = authz.get("status")
                if status == "valid":
                    events.emit("acme.auth-valid", level="debug", Hostname=ident)
                    return
                if status != "pending":
                    errors = "; ".join(str((c.get("error") or {}).get("detail", "")) for c in authz.get("challenges", [])
                                       if c.get("error"))
                    raise AuthInvalid(f"{ident}: authorization {status}: {errors or 'no detail'}")
                if self.clock() > deadline:
                    raise AuthTimeout(f"{ident}: authorization still pending after {AUTH_DEADLINE:.0f} s")
        finally:
            try:
                await solver.cleanup(ident, token, keyauth)
            except Exception as exc:  # noqa: BLE001 - cleanup failure must not hide the outcome
                events.emit("acme.cleanup-error", level="warn", Hostname=ident, Reason=str(exc))

    async def _download(self, url: str, preferred: str | None) -> bytes:
        resp = await self.post(url, None)
        chain = resp.body
        if preferred and _top_issuer_cn(chain) != preferred:
            for alt in links(resp, "alternate"):
                alt_resp = await self.post(alt, None)
                if _top_issuer_cn(alt_resp.body) == preferred:
                    return alt_resp.body
        return chain


def ari_cert_id(leaf: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(DER serial number bytes)."""
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier or b""
    serial = leaf.serial_number
    return f"{b64u(aki)}.{b64u(serial.to_bytes((serial.bit_length() + 8) // 8, 'big'))}"


def _rfc3339(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _top_issuer_cn(chain_pem: bytes) -> str | None:
    """Issuer CN of the top-most certificate of a PEM chain (tls.md §6 ``preferredChain``)."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        return None
    if not certs:
        return None
    cns = certs[-1].issuer.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None
