"""What the ACME client keeps in ``<data-dir>/acme/`` so it survives restarts (tls.md §7.6, adapted).

The reference keeps the account in the AcmeProvider object and certificates in Certificate objects;
here the configuration file is operator-written, so server-set state lives beside it:

| file | holds |
|---|---|
| ``accounts/<provider-id>.json`` | directory URL, account URI, contacts and the PKCS#8 PEM account key (0600); \
during a key rollover also ``pendingKey``, the new key (:mod:`.keychange`) |
| ``certs/<domain>.pem`` | the issued chain then its key (0600); the TLS store serves every file here |
| ``certs/.history/<domain>/<archived-at>-<serial>.pem`` | the certificates a renewal replaced, newest \
last, at most :data:`HISTORY_KEEP` (0600); never served: the store skips dot-names and directories |
| ``certs/.history/<domain>/rolled-back/`` | what ``acme rollback`` took out of service, for inspection |
| ``locks/<provider-id>.lock`` | the provider's advisory lock and its holder (:mod:`.lock`) |
| ``orders/<domain>.json`` | the last order: URL, names, when it finished |
| ``schedule.json`` | per domain: next renewal, attempts, last error (the scheduler's memory) |

Every write is atomic (temporary file and rename), so a crash leaves the old or the new file.
Account files are also made durable (the directory is fsynced after the rename): the CA may act on
what the file says as soon as the call returns.

Why the pending key of a rollover lives in the account file rather than a file of its own: each
step of a rollover (stage the new key, promote it, drop it) is then one atomic rename of one file,
so no crash can leave two files that disagree (a promoted key with its pending file still there, or
a pending file whose account file was replaced by a newer account); and the key is only ever in a
0600 file that the provider's lock already guards.

Why keep replaced certificates: a CA can issue a certificate that parses and matches its key but
that clients reject (a broken or cross-signed chain, a wrong intermediate, a policy change).
``stalwart-cli acme rollback DOMAIN`` puts the previous one back at once, without waiting for the CA.
It is not for key compromise: a compromised key is handled by ``acme revoke`` and a new order, and
rolling back to a certificate of a compromised key would be wrong.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from dataclasses import dataclass

from cryptography import x509

from ... import events
from ...fileio import fsync_dir
from ...tls.certs import CertificateError, ParsedCertificate, parse_certificate
from .challenges import acme_dir, write_private
from .client import AcmeError
from .jws import AccountKey

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
HISTORY_KEEP = 3  # replaced certificates kept per domain
HISTORY_DIR = ".history"  # a dot-name: tls.certs.read_directory never serves what is under it
ROLLED_BACK = "rolled-back"


class RollbackError(AcmeError):
    """Nothing usable to roll back to."""


@dataclass(frozen=True)
class HistoryEntry:
    """One replaced certificate; ``cert`` is None when the file no longer parses."""

    path: str
    archived_at: float
    serial: str
    cert: ParsedCertificate | None

    def to_json(self) -> dict:
        return {"file": os.path.basename(self.path), "archivedAt": self.archived_at, "serial": self.serial,
                "notAfter": self.cert.not_valid_after if self.cert else None,
                "fingerprint": self.cert.fingerprint if self.cert else None}


def leaf_serial(cert: ParsedCertificate) -> str:
    return format(x509.load_pem_x509_certificates(cert.chain_pem)[0].serial_number, "x")


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
    def _account_path(self, provider_id: str) -> str:
        return self._path("accounts", f"{_safe(provider_id)}.json")

    def _account_doc(self, provider_id: str, directory: str) -> dict | None:
        """The account file's JSON when it is for ``directory``, else None."""
        try:
            with open(self._account_path(provider_id), encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("directory") == directory else None

    def _write_account(self, provider_id: str, doc: dict) -> None:
        path = self._account_path(provider_id)
        write_private(path, json.dumps(doc, indent=1).encode())
        fsync_dir(os.path.dirname(path))

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
        """Write the account. A pending key of the same account (same directory and URI) is kept:
        only the CA's answer may drop it (:mod:`.keychange`), never a save of something else."""
        doc = {"directory": directory, "accountUri": uri, "contact": contact, "keyPem": key.to_pem().decode("ascii")}
        old = self._account_doc(provider_id, directory)
        if uri is not None and old is not None and old.get("accountUri") == uri and "pendingKey" in old:
            doc["pendingKey"] = old["pendingKey"]
        self._write_account(provider_id, doc)

    # -- the pending key of a rollover (RFC 8555 §7.3.5, see :mod:`.keychange`) ----------------------
    def has_pending_key(self, provider_id: str, directory: str) -> bool:
        return self.pending_key_staged_at(provider_id, directory) is not None

    def pending_key_staged_at(self, provider_id: str, directory: str) -> float | None:
        """When the unresolved rollover key was staged (Unix seconds), or None when there is none."""
        doc = self._account_doc(provider_id, directory)
        entry = doc.get("pendingKey") if doc else None
        if not isinstance(entry, dict):
            return None
        staged = entry.get("stagedAt")
        return float(staged) if isinstance(staged, (int, float)) else 0.0

    def pending_key(self, provider_id: str, directory: str) -> AccountKey | None:
        """The new key of a rollover whose outcome is not known yet; None when there is none.
        Raises ``ValueError`` when the entry is there but is not a usable key."""
        doc = self._account_doc(provider_id, directory)
        entry = doc.get("pendingKey") if doc else None
        if entry is None:
            return None
        try:
            return AccountKey.from_pem(entry["keyPem"].encode("ascii"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"pendingKey is not a usable account key ({exc})") from None

    def stage_pending_key(self, provider_id: str, directory: str, key: AccountKey, now: float | None = None) -> None:
        """Record ``key`` as the account's pending key, durably, before the CA is asked to switch to
        it. The caller holds the provider's lock."""
        doc = self._account_doc(provider_id, directory)
        if doc is None or not doc.get("accountUri"):
            raise AcmeError(f"AcmeProvider {provider_id!r} has no account to change the key of")
        if "pendingKey" in doc:
            raise AcmeError(f"AcmeProvider {provider_id!r}: the new key of an interrupted rollover is still "
                            "waiting for the CA's answer (asked at every use of the account)")
        doc["pendingKey"] = {"keyPem": key.to_pem().decode("ascii"),
                             "stagedAt": round(time.time() if now is None else now, 3)}
        self._write_account(provider_id, doc)

    def promote_pending_key(self, provider_id: str, directory: str) -> AccountKey:
        """The CA uses the pending key: it becomes the account key (one atomic replace)."""
        doc = self._account_doc(provider_id, directory)
        key = self.pending_key(provider_id, directory)
        if doc is None or key is None:
            raise AcmeError(f"AcmeProvider {provider_id!r} has no pending key to promote")
        doc["keyPem"] = doc.pop("pendingKey")["keyPem"]
        self._write_account(provider_id, doc)
        return key

    def discard_pending_key(self, provider_id: str, directory: str) -> None:
        """The CA does not know the pending key (or it is unusable): the account key stays."""
        doc = self._account_doc(provider_id, directory)
        if doc is not None and doc.pop("pendingKey", None) is not None:
            self._write_account(provider_id, doc)

    def read_account(self, provider_id: str, directory: str) -> tuple[AccountKey, str | None] | None:
        """Like :meth:`load_account` but never writes: None when there is no usable account file."""
        try:
            with open(self._path("accounts", f"{_safe(provider_id)}.json"), encoding="utf-8") as fh:
                doc = json.load(fh)
            if doc.get("directory") == directory:
                return AccountKey.from_pem(doc["keyPem"].encode("ascii")), doc.get("accountUri")
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def account_uri(self, provider_id: str) -> str | None:
        try:
            with open(self._path("accounts", f"{_safe(provider_id)}.json"), encoding="utf-8") as fh:
                return json.load(fh).get("accountUri")
        except (OSError, ValueError):
            return None

    # -- certificates ------------------------------------------------------------------------------
    def cert_path(self, domain: str) -> str:
        return self._path("certs", f"{_safe(domain)}.pem")

    def install(self, domain: str, chain_pem: bytes, key_pem: bytes, keep: int = HISTORY_KEEP) -> ParsedCertificate:
        """Check the chain and key, then write them where the TLS store reads them (tls.md §7.2
        step 8); raises :class:`CertificateError` before writing when they do not parse or match.
        The certificate being replaced is archived first (at most ``keep`` are kept), best effort:
        when that fails (a full disk, a read-only or foreign-owned history) a warning is emitted and
        the new certificate is installed anyway. Failing instead would leave the old certificate in
        service and make every retry order again from the CA, into its duplicate-certificate limit,
        while the only loss is a rollback target."""
        parsed = parse_certificate(chain_pem, key_pem, cert_id=f"file:{_safe(domain)}")
        current = self.certificate(domain)
        if current is not None and current.fingerprint != parsed.fingerprint:
            history = self.history_dir(domain)
            try:
                self._archive(current, history)
            except OSError as exc:
                events.emit("acme.archive-error", level="warn", Hostname=domain, Path=history,
                            Reason=f"{type(exc).__name__}: {exc}")
            else:
                self._prune(history, keep)
        write_private(self.cert_path(domain), parsed.chain_pem + parsed.key_pem)
        return parsed

    def certificate(self, domain: str) -> ParsedCertificate | None:
        try:
            with open(self.cert_path(domain), "rb") as fh:
                text = fh.read()
            return parse_certificate(text, text, cert_id=f"file:{_safe(domain)}")
        except (OSError, CertificateError):
            return None

    # -- history and rollback ----------------------------------------------------------------------
    def history_dir(self, domain: str) -> str:
        return self._path("certs", HISTORY_DIR, _safe(domain))

    @staticmethod
    def _archive(cert: ParsedCertificate, directory: str) -> str:
        # The name sorts by when the certificate left service: the newest entry is the one served
        # just before the current one, whatever the CA put in notAfter.
        now = time.time()
        stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = os.path.join(directory, f"{stamp}-{leaf_serial(cert)}.pem")
        write_private(path, cert.chain_pem + cert.key_pem)
        return path

    @staticmethod
    def _entries(directory: str) -> list[str]:
        try:
            return sorted((n for n in os.listdir(directory) if n.endswith(".pem") and not n.startswith(".")),
                          reverse=True)
        except OSError:
            return []

    def _prune(self, directory: str, keep: int) -> None:
        for name in self._entries(directory)[max(0, keep):]:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass

    def history(self, domain: str) -> list[HistoryEntry]:
        """The replaced certificates of ``domain``, newest first."""
        directory = self.history_dir(domain)
        out = []
        for name in self._entries(directory):
            path = os.path.join(directory, name)
            stamp, _, serial = name[:-4].partition("-")
            try:
                archived = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()
            except ValueError:
                archived = 0.0
            try:
                with open(path, "rb") as fh:
                    text = fh.read()
                cert = parse_certificate(text, text, cert_id=f"history:{name[:-4]}")
            except (OSError, CertificateError):
                cert = None
            out.append(HistoryEntry(path, archived, serial, cert))
        return out

    def rollback(self, domain: str, now: float | None = None,
                 keep: int = HISTORY_KEEP) -> tuple[HistoryEntry, ParsedCertificate | None]:
        """Put the newest replaced certificate that is still valid back in service (atomically: the
        TLS store sees the old or the restored file). The certificate taken out goes to
        ``rolled-back/`` so a second rollback goes further back instead of undoing the first.
        Returns the restored entry and the certificate it replaced. The caller holds the lock."""
        now = time.time() if now is None else now
        entries = self.history(domain)
        usable = [e for e in entries if e.cert is not None and e.cert.usable_at(now)]
        if not usable:
            why = f"{len(entries)} in history, none valid now" if entries else "the history is empty"
            raise RollbackError(f"no earlier certificate of {domain} to roll back to ({why})")
        entry = usable[0]
        current = self.certificate(domain)
        if current is not None:
            rolled = os.path.join(self.history_dir(domain), ROLLED_BACK)
            self._archive(current, rolled)
            self._prune(rolled, keep)
        os.replace(entry.path, self.cert_path(domain))
        return entry, current

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
