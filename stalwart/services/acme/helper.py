"""The ACME helper process: ``python -m stalwart.services.acme.helper`` runs one renewal.

The master never blocks on the network (STYLE.md "The master"), so :class:`~.scheduler.AcmeScheduler`
starts this helper with one JSON request on stdin::

    {"config": <the running configuration>, "dataDir": "...", "domain": "example.org", "force": false}

(``"task": "dns"`` runs the DNS-management task instead) and reads one JSON line back: ``{"ok": true, "result": {...}}`` (see :func:`.renewal.renew`) or
``{"ok": false, "error": "...", "kind": "...", "temporary": bool, "retryAfter": seconds|null}``.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

import msgspec

from ... import events

from ...config import loader
from ...errors import StalwartError
from ...tls.certs import CertificateError
from ..dnsproviders.records import DnsProviderError
from .client import AcmeError
from .renewal import renew

DNS_REFRESH = 86400.0  # s: published records are re-checked daily (drift, hand edits)


async def publish_records(cfg, domain: str, data_dir: str) -> dict:
    """The DNS-management task (services.md §2.5): reconcile, then check again in a day."""
    from ..dnsproviders.managed import publish

    changes = await publish(cfg, domain, data_dir)
    return {"status": "published", "changes": len(changes), "renewAt": time.time() + DNS_REFRESH,
            "names": [c.split(":", 1)[0] for c in changes]}


def run(request: dict) -> dict:
    try:
        cfg = loader.parse_bytes(msgspec.json.encode(request["config"]), source="<acme helper>")
        if request.get("task") == "dns":
            result = asyncio.run(publish_records(cfg, request["domain"], request["dataDir"]))
        else:
            result = asyncio.run(renew(cfg, request["domain"], request["dataDir"], force=bool(request.get("force"))))
        return {"ok": True, "result": result}
    except DnsProviderError as exc:
        return {"ok": False, "error": str(exc), "kind": "Dns", "temporary": exc.temporary, "retryAfter": None}
    except AcmeError as exc:
        return {"ok": False, "error": str(exc), "kind": exc.kind, "temporary": exc.temporary,
                "retryAfter": exc.retry_after}
    except CertificateError as exc:
        return {"ok": False, "error": f"issued certificate unusable: {exc}", "kind": "Crypto", "temporary": False,
                "retryAfter": None}
    except StalwartError as exc:
        return {"ok": False, "error": str(exc), "kind": "Invalid", "temporary": False, "retryAfter": None}
    except Exception as exc:  # noqa: BLE001 - reported to the master, which keeps the schedule
        return {"ok": False, "error": f"internal error: {exc!r}", "kind": "Internal", "temporary": True,
                "retryAfter": None}


class _ForwardedLog(events.EventLog):
    """Events of the helper go to the master as JSON lines, which logs them in its own log."""

    def emit(self, event: str, level: str | None = None, **keys) -> None:
        line = {"event": event, "level": level, "keys": {k: v if isinstance(v, (int, float, bool)) else str(v)
                                                          for k, v in keys.items()}}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def main() -> int:
    events._log = _ForwardedLog()  # the helper's only log is its master's
    request = json.loads(sys.stdin.read())
    sys.stdout.write(json.dumps(run(request)) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
