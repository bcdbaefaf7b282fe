"""``stalwart-cli dns-records DOMAIN --publish``: reconcile the zone with the managed record set
(services.md §2.5), offline from ``--config`` and ``--data-dir`` like the renewal helper would."""
from __future__ import annotations

import asyncio
import sys

from ...errors import StalwartError
from ...privileges import become_owner_of
from .managed import managed_records, publish


def publish_command(cfg, domain: str, data_dir: str) -> int:
    try:
        # Run as root (sudo): become the server's user before dns/published/ is written, or the
        # server could no longer update the record of what it published (stalwart.privileges).
        notice = become_owner_of(data_dir)
    except StalwartError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    if notice:
        print(f"stalwart-cli: {notice}", file=sys.stderr, flush=True)
    rows = managed_records(cfg, domain, data_dir)
    try:
        changes = asyncio.run(publish(cfg, domain, data_dir))
    except StalwartError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the data directory: the zone may be changed, the record of it is not
        print(f"stalwart-cli: cannot record what was published under {data_dir}: {exc}; run the command "
              "as the user the server runs as", file=sys.stderr)
        return 1
    for line in changes:
        print(f"changed {line}")
    print(f"{domain}: {len(rows)} records managed, {len(changes)} record sets changed")
    return 0
