"""The master's side of ACME: when each Domain's certificate is renewed (tls.md §7.2, §7.7).

:class:`AcmeScheduler` is driven by the master's loop (``tick()`` about once a second, like the
GeoIP refresher) and never blocks it: each renewal runs in a helper process (:mod:`.helper`) whose
one JSON line is read without blocking. One helper at a time; domains wait their turn.

Schedule rules (tls.md §7.7 "We do better"):

* a domain with no installed certificate, or whose names changed, is due now; otherwise it is due
  at the certificate's ``renewAt`` (a "not due" answer is a success that sets it);
* a temporary failure retries after ``60 s x 2^(n-1)`` (at most 30 min, jitter x[0.5, 1.5)) while
  ``n <= maxRetries`` and the first failure is less than 6 h old, or at the CA's ``Retry-After``;
  after that every ``min(3600 x 2^min(n', 4), 21600)`` s: 1 h, 2 h, 4 h, then 6 h, for ever. The
  schedule is never dropped while the domain stays Automatic;
* a permanent failure (configuration) waits for the next configuration load or
  ``stalwart-cli acme renew``, and is re-checked every 6 h in case a file it reads changed.

Domains with ``dnsManagement: Automatic`` also get a DNS-management task (entry ``dns:<domain>``,
services.md §2.5): the managed record set is reconciled when it changes, after each issuance, and
daily; at equal due times it runs before the renewal so CAA records exist before ordering.

The schedule is kept in ``<data-dir>/acme/schedule.json`` so a restart keeps pending retries.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import msgspec

from ... import events
from ...config.model import Config
from ...config.types import enc_hook
from ...fileio import read_available
from ..dnsproviders.config import DnsManagementAutomatic
from .config import CertificateAutomatic
from .lock import holder
from .state import AcmeState

RETRY_INITIAL = 60.0
RETRY_MAX = 1800.0
TOTAL_DEADLINE = 6 * 3600.0
PERMANENT_RECHECK = 6 * 3600.0
DNS_PREFIX = "dns:"  # schedule entries of the DNS-management task (services.md §2.5)
HELPER_BUDGET = 900.0  # s: an order's authorizations may poll for 10 min (tls.md §7.4)


def long_retry(n: int) -> float:
    """tls.md §7.7: after the task manager gives up, AcmeRenewal retries 1 h, 2 h, 4 h, then 6 h."""
    return float(min(3600 * 2 ** min(n, 4), 21600))


class AcmeScheduler:
    """One per master. ``on_installed`` is called after a certificate was installed (the master
    rebuilds its TLS store and bumps the certificate epoch so every worker switches)."""

    def __init__(self, data_dir: str, on_installed: Callable[[], None], clock=time.time,
                 rng: random.Random | None = None):
        self.data_dir = data_dir
        self.state = AcmeState(data_dir)
        self.on_installed = on_installed
        self.clock = clock
        self.rng = rng or random.Random()
        self.cfg: Config | None = None
        self.entries: dict[str, dict] = self.state.load_schedule()
        self.proc: subprocess.Popen | None = None
        self.proc_domain: str | None = None
        self.proc_deadline = 0.0
        self.buf = b""

    # -- configuration -------------------------------------------------------------------------
    def configure(self, cfg: Config) -> None:
        """Take a new configuration (start and every reload). Domains that left Automatic are
        forgotten; new ones, and ones whose provider or names changed, are due now (tls.md §7.1)."""
        self.cfg = cfg
        now = self.clock()
        wanted = {}
        for dom in cfg.Domain:
            mgmt = dom.certificate_management
            if isinstance(mgmt, CertificateAutomatic):
                wanted[dom.name] = f"{mgmt.acme_provider_id}|{','.join(sorted(mgmt.subject_alternative_names))}"
        for dom in cfg.Domain:
            if isinstance(dom.dns_management, DnsManagementAutomatic):
                # services.md §2.5: the DNS-management task; its fingerprint is the computed record
                # set, so any configuration change that alters a record publishes again.
                wanted[DNS_PREFIX + dom.name] = self._records_fingerprint(cfg, dom.name)
        for name in [n for n in self.entries if n not in wanted]:
            del self.entries[name]
        for name, fingerprint in wanted.items():
            entry = self.entries.get(name)
            stale = entry is not None and entry.get("status") in ("issued", "not-due") and \
                not name.startswith(DNS_PREFIX) and self.state.certificate(name) is None  # removed by hand
            if entry is None or stale or entry.get("config") != fingerprint or entry.get("status") == "failed":
                self.entries[name] = {"config": fingerprint, "due": now, "status": "pending", "attempts": 0,
                                      "firstFailure": None, "lastError": None, "longRetries": 0}
        self._save()

    # -- the loop ------------------------------------------------------------------------------
    def tick(self) -> None:
        if self.proc is not None:
            self._poll_helper()
            return
        if self.cfg is None:
            return
        now = self.clock()
        # DNS publication first at equal times: CAA records exist before an order (tls.md §7.1).
        due = sorted((e["due"], not name.startswith(DNS_PREFIX), name) for name, e in self.entries.items()
                     if e["due"] <= now)
        if due:
            self._start_helper(due[0][2])

    def _start_helper(self, domain: str) -> None:
        entry = self.entries[domain]
        req = {"config": msgspec.to_builtins(self.cfg, enc_hook=enc_hook), "dataDir": self.data_dir,
               "domain": domain.removeprefix(DNS_PREFIX), "force": bool(entry.pop("force", False)),
               "task": "dns" if domain.startswith(DNS_PREFIX) else "acme"}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "stalwart.services.acme.helper"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                         start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self.proc.stdin.write(json.dumps(req).encode())
            self.proc.stdin.close()
        except OSError as exc:
            self.proc = None
            self._finished(domain, {"ok": False, "error": f"cannot start the ACME helper: {exc}", "kind": "Internal",
                                    "temporary": True, "retryAfter": None})
            return
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.proc_domain = domain
        self.proc_deadline = time.monotonic() + HELPER_BUDGET
        self.buf = b""
        entry["status"] = "running"
        if domain.startswith(DNS_PREFIX):
            events.emit("dns.management-start", Hostname=domain.removeprefix(DNS_PREFIX))
        else:
            events.emit("acme.renewal-start", Hostname=domain)

    def _poll_helper(self) -> None:
        proc = self.proc
        data, eof = read_available(proc.stdout.fileno())
        self.buf += data
        if not eof and time.monotonic() > self.proc_deadline:
            self._stop_helper()
            self.buf = b""
            eof = True
        if not eof:
            return
        proc.stdout.close()
        try:
            proc.wait(timeout=1.0)
        except (subprocess.TimeoutExpired, ChildProcessError):
            pass
        self.proc = None
        domain, self.proc_domain = self.proc_domain, None
        msg = {"ok": False, "error": "the ACME helper exited without a result", "kind": "Internal",
               "temporary": True, "retryAfter": None}
        for line in self.buf.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if "event" in doc:
                events.emit(doc["event"], level=doc.get("level"), **doc.get("keys", {}))
            elif "ok" in doc:
                msg = doc
        if not msg.get("ok") and proc.returncode not in (0, None):
            msg["error"] += f" (helper exit status {proc.returncode})"
        if domain in self.entries:
            self._finished(domain, msg)

    def _stop_helper(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass

    def _finished(self, domain: str, msg: dict) -> None:
        entry = self.entries[domain]
        now = self.clock()
        if msg.get("ok"):
            result = msg["result"]
            entry.update(status=result["status"], due=result["renewAt"], attempts=0, firstFailure=None,
                         lastError=None, longRetries=0, notAfter=result.get("notAfter"), names=result.get("names"))
            if domain.startswith(DNS_PREFIX):
                events.emit("dns.management-complete", Hostname=domain.removeprefix(DNS_PREFIX),
                            Total=result.get("changes", 0))
            if result["status"] == "issued":
                entry["issuedAt"] = now
                dns = self.entries.get(DNS_PREFIX + domain)
                if dns is not None:
                    dns["due"] = now  # services.md §2.6: TLSA and CAA follow the new certificate and account
                events.emit("acme.certificate-issued", Hostname=domain, Details=",".join(result.get("names", [])))
                try:
                    self.on_installed()
                except Exception as exc:  # noqa: BLE001 - the file is installed; workers pick it up within a minute
                    events.emit("tls.certificates-reload-error", level="error", Reason=str(exc))
            self._save()
            return
        entry["lastError"] = msg.get("error")
        entry["attempts"] = attempts = entry.get("attempts", 0) + 1
        if entry.get("firstFailure") is None:
            entry["firstFailure"] = now
        events.emit("acme.renewal-error", level="warn", Hostname=domain, Reason=msg.get("error"),
                    Details=msg.get("kind"), Total=attempts)
        if not msg.get("temporary"):
            entry.update(status="failed", due=now + PERMANENT_RECHECK)
        else:
            entry["status"] = "retry"
            provider = self._provider_of(domain)
            max_attempts = provider.max_retries if provider is not None else 10
            wait = msg.get("retryAfter")
            if attempts <= max_attempts and now - entry["firstFailure"] < TOTAL_DEADLINE:
                if wait is None:
                    wait = min(RETRY_INITIAL * 2 ** (attempts - 1), RETRY_MAX) * self.rng.uniform(0.5, 1.5)
                else:
                    wait = float(wait) + 1.0
            else:
                entry["longRetries"] = entry.get("longRetries", 0) + 1
                wait = max(float(wait or 0.0), long_retry(entry["longRetries"] - 1))
            entry["due"] = now + wait
        self._save()

    def _records_fingerprint(self, cfg: Config, domain: str) -> str:
        from ..dnsproviders.managed import managed_records

        try:
            rows = managed_records(cfg, domain, self.data_dir)
        except Exception as exc:  # noqa: BLE001 - the helper reports the real error when it runs
            return f"error:{exc!r}"
        return hashlib.sha256(repr(sorted(rows)).encode()).hexdigest()

    def _provider_of(self, domain: str):
        if self.cfg is None:
            return None
        dom = next((d for d in self.cfg.Domain if d.name == domain), None)
        if dom is None or not isinstance(dom.certificate_management, CertificateAutomatic):
            return None
        return next((p for p in self.cfg.AcmeProvider if p.id == dom.certificate_management.acme_provider_id), None)

    def _save(self) -> None:
        try:
            self.state.save_schedule(self.entries)
        except OSError as exc:
            events.emit("acme.state-error", level="error", Reason=str(exc))

    # -- control socket ------------------------------------------------------------------------
    def command(self, action: str, req: dict) -> dict:
        """``acme.status`` and ``acme.renew`` from ``stalwart-cli``."""
        if action == "status":
            return {"ok": True, "domains": self.status()}
        if action == "renew":
            domain = str(req.get("domain") or "").lower().rstrip(".")
            if domain not in self.entries:
                return {"ok": False, "error": f"{domain!r} is not a Domain with Automatic certificate management"}
            entry = self.entries[domain]
            entry.update(due=self.clock(), force=True, attempts=0, firstFailure=None, longRetries=0)
            if entry.get("status") != "running":
                entry["status"] = "pending"
            self._save()
            return {"ok": True, "message": f"renewal of {domain} scheduled now"}
        return {"ok": False, "error": f"unknown acme action {action!r}"}

    def status(self) -> dict:
        now = self.clock()
        out = {}
        for name, e in sorted(self.entries.items()):
            cert = self.state.certificate(name)
            out[name] = {"status": e.get("status"), "dueIn": max(0, int(e["due"] - now)), "attempts": e.get("attempts", 0),
                         "lastError": e.get("lastError"),
                         "notAfter": cert.not_valid_after if cert else None,
                         "names": list(cert.subject_alternative_names) if cert else None,
                         "fingerprint": cert.fingerprint if cert else None}
            if not name.startswith(DNS_PREFIX):
                out[name]["history"] = [h.to_json() for h in self.state.history(name)]
                provider = self._provider_of(name)
                out[name]["lockedBy"] = holder(self.data_dir, provider.id) if provider is not None else None
                out[name]["pendingKeySince"] = (self.state.pending_key_staged_at(provider.id, provider.directory)
                                                if provider is not None else None)
        return out

    def close(self) -> None:
        self._stop_helper()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2.0)
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass
            self.proc = None
