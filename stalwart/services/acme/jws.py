"""JSON Web Signatures for ACME (RFC 8555 §6.2, RFC 7515 flattened JSON, RFC 7518 §3.4 ES256).

The account key is ECDSA P-256; signatures are the fixed-length ``r || s`` form JWS requires, not
the DER form ``cryptography`` produces. Key authorizations use the RFC 7638 thumbprint of the
account JWK (RFC 8555 §8.1).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64u(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Inverse of :func:`b64u`; raises ``ValueError`` on bad input."""
    text = text.strip()
    if any(c in text for c in "+/="):
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


class AccountKey:
    """An ECDSA P-256 account key and its JWS helpers."""

    __slots__ = ("key", "jwk", "thumbprint")

    def __init__(self, key: ec.EllipticCurvePrivateKey):
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("ACME account keys are ECDSA P-256 (ES256)")
        self.key = key
        nums = key.public_key().public_numbers()
        # RFC 7638 §3.2: only the required members, lexicographic order, no whitespace.
        self.jwk = {"crv": "P-256", "kty": "EC", "x": b64u(nums.x.to_bytes(32, "big")),
                    "y": b64u(nums.y.to_bytes(32, "big"))}
        self.thumbprint = b64u(hashlib.sha256(_json(self.jwk)).digest())

    @classmethod
    def generate(cls) -> "AccountKey":
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> "AccountKey":
        return cls(serialization.load_pem_private_key(pem, password=None))  # type: ignore[arg-type]

    def to_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def key_authorization(self, token: str) -> str:
        """RFC 8555 §8.1: ``token || '.' || base64url(Thumbprint(accountKey))``."""
        return f"{token}.{self.thumbprint}"

    def sign(self, url: str, payload, *, nonce: str | None, kid: str | None) -> bytes:
        """A flattened JWS (RFC 8555 §6.2). ``payload`` None is POST-as-GET (empty payload, §6.3);
        ``kid`` None embeds the JWK (newAccount, §7.3)."""
        protected = {"alg": "ES256", "url": url}
        if nonce is not None:
            protected["nonce"] = nonce
        if kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = kid
        p64 = b64u(_json(protected))
        body = "" if payload is None else b64u(_json(payload))
        der = self.key.sign(f"{p64}.{body}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return _json({"protected": p64, "payload": body, "signature": b64u(sig)})


def external_account_binding(account: AccountKey, key_id: str, hmac_key_b64u: str, url: str) -> dict:
    """RFC 8555 §7.3.4: a JWS over the account JWK, HS256 with the CA-issued MAC key."""
    try:
        mac_key = b64u_decode(hmac_key_b64u)
    except ValueError as exc:
        raise ValueError(f"eabHmacKey is not base64url: {exc}") from None
    protected = b64u(_json({"alg": "HS256", "kid": key_id, "url": url}))
    payload = b64u(_json(account.jwk))
    sig = hmac.new(mac_key, f"{protected}.{payload}".encode("ascii"), hashlib.sha256).digest()
    return {"protected": protected, "payload": payload, "signature": b64u(sig)}
