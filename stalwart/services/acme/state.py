"""What the ACME client keeps in ``<data-dir>/acme/`` so it survives restarts (tls.md §7.6, adapted).

The reference keeps the account in the AcmeProvider object and certificates in Certificate objects;
here the configuration file is operator-written, so server-set state lives beside it:

| file | holds |
|---|---|
| ``accounts/<provider-id>.json`` | directory URL, account URI, contacts and the PKCS#8 PEM account key (0600) |
| ``certs/<domain>.pem`` | the issued chain then its key (0600); the TLS store serves every file here |
| ``orders/<domain>.json`` | the last order: URL, names, when it finished |
| ``schedule.json`` | per domain: next renewal, attempts, last error (the scheduler's memory) |

Every write is atomic (temporary file and rename), so a crash leaves the old or the new file.
"""
from __future__ import annotations

import json
import os
import re

from ...tls.certs import CertificateError, ParsedCertificate, parse_certificate
from .challenges import acme_dir, write_private
from .jws import AccountKey

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(name: str) -> str:
    return _SAFE.sub("_", name) or "_"


class AcmeState:
    """Paths and (de)serialisation of the files above."""

    def __init__(self, data_dir: str):
        self.base = acme_dir(data_dir)

    def _path(self, *parts: str) -> str:
        return os.path.join(self.base, *parts)

    def cert_dir(self) -> str:
        return self._path("certs")

    # -- account -----------------------------------------------------------------------------------
    def load_account(self, provider_id: str, directory: str) -> tuple[AccountKey, str | None, list[str]]:
        """The provider's account key, URI and registered contacts; a new key when there is none or
        the directory changed (an account belongs to one CA)."""
        path = self._path("accounts", f"{_safe(provider_id)}.json")
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
            if doc.get("directory") == directory:
                return AccountKey.from_pem(doc["keyPem"].encode("ascii")), doc.get("accountUri"), doc.get("contact", [])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        key = AccountKey.generate()
        self.save_account(provider_id, directory, key, None, [])
        return key, None, []

    def save_account(self, provider_id: str, directory: str, key: AccountKey, uri: str | None,
                     contact: list[str]) -> None:
        doc = {"directory": directory, "accountUri": uri, "contact": contact, "keyPem": key.to_pem().decode("ascii")}
        write_private(self._path("accounts", f"{_safe(provider_id)}.json"), json.dumps(doc, indent=1).encode())

    def account_uri(self, provider_id: str) -> str | None:
        try:
            with open(self._path("accounts", f"{_safe(provider_id)}.json"), encoding="utf-8") as fh:
                return json.load(fh).get("accountUri")
        except (OSError, ValueError):
            return None

    # -- certificates ------------------------------------------------------------------------------
    def cert_path(self, domain: str) -> str:
        return self._path("certs", f"{_safe(domain)}.pem")

    def install(self, domain: str, chain_pem: bytes, key_pem: bytes) -> ParsedCertificate:
        """Check the chain and key, then write them where the TLS store reads them (tls.md §7.2
        step 8); raises :class:`CertificateError` before writing when they do not parse or match."""
        parsed = parse_certificate(chain_pem, key_pem, cert_id=f"file:{_safe(domain)}")
        write_private(self.cert_path(domain), parsed.chain_pem + parsed.key_pem)
        return parsed

    def certificate(self, domain: str) -> ParsedCertificate | None:
        try:
            with open(self.cert_path(domain), "rb") as fh:
                text = fh.read()
            return parse_certificate(text, text, cert_id=f"file:{_safe(domain)}")
        except (OSError, CertificateError):
            return None

    # -- orders and schedule -----------------------------------------------------------------------
    def save_order(self, domain: str, doc: dict) -> None:
        write_private(self._path("orders", f"{_safe(domain)}.json"), json.dumps(doc, indent=1).encode())

    def load_schedule(self) -> dict[str, dict]:
        try:
            with open(self._path("schedule.json"), encoding="utf-8") as fh:
                doc = json.load(fh)
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_schedule(self, schedule: dict[str, dict]) -> None:
        write_private(self._path("schedule.json"), json.dumps(schedule, indent=1, sort_keys=True).encode())
