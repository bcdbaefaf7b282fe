"""``stalwart-cli dns-records DOMAIN --publish``: reconcile the zone with the managed record set
(services.md §2.5), offline from ``--config`` and ``--data-dir`` like the renewal helper would."""
from __future__ import annotations

import asyncio
import sys

from ...errors import StalwartError
from .managed import managed_records, publish


def publish_command(cfg, domain: str, data_dir: str) -> int:
    rows = managed_records(cfg, domain, data_dir)
    try:
        changes = asyncio.run(publish(cfg, domain, data_dir))
    except StalwartError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    for line in changes:
        print(f"changed {line}")
    print(f"{domain}: {len(rows)} records managed, {len(changes)} record sets changed")
    return 0
